"""The tokenize job's console: Ray Data's progress bars on a terminal; elsewhere gptray's line every half minute
and none of Ray Data's 10-second progress blocks."""

from __future__ import annotations

import io
import logging
import sys
import time

import pytest

from gptray.core.storage import Storage
from gptray.data.job_context import BLOCK_BYTES, configure_job_context, ray_data_bars
from gptray.data.job_progress import PROGRESS_LINE_INTERVAL_S, ProgressLines
from gptray.data.progress import RECORDS_DIR, TaskRecord, record_task


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self):
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def _save(store: Storage, task: int, tokens: int) -> None:
    record = TaskRecord(task=task, source=0, task_digest="t", request_digest="r")
    record.stats.tokens = tokens
    record.save(store)


def test_record_names_give_their_task():
    assert record_task("task-00012.json") == 12 and record_task("task-123456.json") == 123456
    assert record_task("task-00012.json.tmp") is None and record_task("notes.txt") is None


def test_a_progress_line_counts_finished_tasks_tokens_and_time_left(tmp_path):
    store = Storage(str(tmp_path))
    _save(store, 0, 5_000)  # intact from an earlier run: finished, but not this run's tokens
    store.write_bytes(f"{RECORDS_DIR}/notes.txt", b"not a record")
    clock = Clock()
    lines = ProgressLines(store, task_count=5, clock=clock)
    clock.now += 10
    assert lines.line() == ("tokenize: 1/5 read tasks finished (1 from an earlier run), 0 tokens in 10s "
                            "(0.00 M tokens/s)")
    _save(store, 1, 1_000_000)
    _save(store, 2, 2_000_000)
    clock.now += 50  # 2 tasks in 60 s: the 2 left take about another 60 s
    assert lines.line() == ("tokenize: 3/5 read tasks finished (1 from an earlier run), 3,000,000 tokens in 1m00s "
                            "(0.05 M tokens/s), about 1m00s left")
    _save(store, 3, 1_000_000)
    _save(store, 4, 1_000_000)
    clock.now += 3600
    assert lines.line().startswith("tokenize: 5/5 read tasks finished (1 from an earlier run), 5,000,000 tokens in "
                                   "1h01m")
    assert "left" not in lines.line()


def test_progress_lines_are_logged_every_interval_while_the_job_runs(tmp_path, caplog):
    store = Storage(str(tmp_path))
    assert PROGRESS_LINE_INTERVAL_S >= 30  # not the every-few-seconds chatter it replaces
    logger = logging.getLogger("gptray")
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="gptray"):
            with ProgressLines(store, task_count=2, interval=0.05):
                _save(store, 0, 100)
                deadline = time.monotonic() + 5
                while "1/2 read tasks" not in caplog.text and time.monotonic() < deadline:
                    time.sleep(0.02)
            count = caplog.text.count("tokenize: ")
            time.sleep(0.2)
            assert caplog.text.count("tokenize: ") == count  # stopped with the job
    finally:
        logger.removeHandler(caplog.handler)
    assert "tokenize: 1/2 read tasks finished, 100 tokens" in caplog.text


@pytest.mark.parametrize("stdout, stderr, shown", [(Terminal(), Terminal(), True), (io.StringIO(), Terminal(), False),
                                                   (Terminal(), io.StringIO(), False)])
def test_ray_data_draws_its_bars_only_on_a_terminal(monkeypatch, stdout, stderr, shown):
    monkeypatch.setattr(sys, "stdout", stdout)
    monkeypatch.setattr(sys, "stderr", stderr)
    assert ray_data_bars() is shown


def test_off_a_terminal_ray_data_logs_no_progress_of_its_own():
    """Ray Data picks its progress display from the job's context: off a terminal, not the manager that logs a
    block of lines every 10 s, and nothing on the job's context reaches the process's own."""
    from ray.data import DataContext
    from ray.data._internal.progress import get_progress_manager
    from ray.data._internal.progress.logging_progress import LoggingExecutionProgressManager

    current = DataContext.get_current()
    context = current.copy()
    configure_job_context(context, cpus=2, bars=False)
    manager = get_progress_manager(context, "tokenize", {}, verbose_progress=False)
    assert not isinstance(manager, LoggingExecutionProgressManager)
    assert context.execution_options.resource_limits.cpu == 2
    assert current.enable_progress_bars and current.execution_options.resource_limits.cpu != 2
    configure_job_context(context, cpus=2, bars=True)
    assert context.enable_progress_bars


def test_the_job_queues_a_read_task_behind_each_running_one_without_ray_datas_reservation_allocator():
    """The job is one fused operator: the allocator has nothing to divide, costs the driver CPU every scheduling
    step and holds each read task back until the driver's loop dispatches it. Without it nothing would bound the
    tasks handed to Ray, so the job's own policy keeps two per CPU of the cluster in flight, and at least
    MIN_TASKS: demand an autoscaler sees on a cluster that starts empty. The process's own context keeps Ray Data's
    defaults."""
    from types import SimpleNamespace

    from ray.data import DataContext
    from ray.data._internal.execution import create_resource_allocator
    from ray.data._internal.execution.backpressure_policy import get_backpressure_policies

    from gptray.data.tasks_in_flight import MIN_TASKS, TasksInFlightCap, tasks_in_flight

    current = DataContext.get_current()
    context = current.copy()
    configure_job_context(context, cpus=40, bars=False)
    assert create_resource_allocator(None, context) is None  # fails if Ray Data drops or renames the switch
    assert current.op_resource_reservation_enabled
    assert context.target_max_block_size == BLOCK_BYTES != current.target_max_block_size

    # Ray Data's own policy list, built as its executor builds it: Ray Data's policies and the job's cap.
    policies = get_backpressure_policies(context, {}, None)
    caps = [p for p in policies if isinstance(p, TasksInFlightCap)]
    assert len(caps) == 1 and len(policies) > 1
    assert not any(isinstance(p, TasksInFlightCap) for p in get_backpressure_policies(current, {}, None))

    def op(in_flight: int):  # what the policy reads of an operator: its metrics' count of unfinished tasks
        return SimpleNamespace(metrics=SimpleNamespace(num_tasks_running=in_flight))

    assert [caps[0].can_add_input(op(n)) for n in range(78, 82)] == [True, True, False, False]  # 2 × 40 CPUs
    assert caps[0].max_task_output_bytes_to_read(op(0)) is None and caps[0].name == "TasksInFlight"
    assert tasks_in_flight(0) == tasks_in_flight(2) == MIN_TASKS < tasks_in_flight(1000) == 2000
