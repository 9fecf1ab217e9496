"""Progress bars with an ETA on a terminal; plain log lines in a file, a pipe or CI."""

from __future__ import annotations

import io
import logging

import pytest

from gptray.core.progress_bar import on_terminal, progress_bar
from gptray.data.progress import TaskRecord
from gptray.data.tokenize_job import _log_summary


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(task: int, tokens: int) -> TaskRecord:
    record = TaskRecord(task=task, source=0, task_digest="t", request_digest="r")
    record.stats.tokens, record.stats.documents = tokens, 1
    return record


@pytest.fixture
def logged(caplog):
    """caplog, seeing gptray's records even after configure_logging stopped them propagating to the root."""
    logger = logging.getLogger("gptray")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="gptray"):
        yield caplog
    logger.removeHandler(caplog.handler)


def test_a_bar_only_on_a_terminal():
    assert on_terminal(Terminal()) and not on_terminal(io.StringIO())
    assert progress_bar(3, "work", "item", io.StringIO()) is None
    bar = progress_bar(3, "work", "item", Terminal())
    bar.update(1)
    bar.close()
    assert "work" in bar.fp.getvalue() and "1/3" in bar.fp.getvalue()


def test_tokenize_ends_with_one_summary_line_of_the_work_done_now(logged):
    """Ray Data's progress bars show the job while it runs; the driver logs what the records say once, at the end."""
    kept = _record(1, 2000)
    kept.kept = True
    _log_summary([_record(0, 1000), kept, _record(2, 500)], seconds=1.0)
    lines = [r.getMessage() for r in logged.records]
    assert any("read tasks 3/3 finished (1 kept from an earlier run)" in line and "1,500 tokens" in line
               and "0.00 M tokens/s" in line for line in lines)


# Training: rank 0's bar of steps (gptray/train/progress.py), in local mode drawn in this process.

def test_training_shows_a_bar_of_steps_on_a_terminal():
    from gptray.train.progress import StepBar

    terminal = Terminal()
    bar = StepBar.open(True, step=2, max_steps=10, in_ray_worker=False, stream=terminal)
    for step in range(3, 7):
        bar.at(step)
    bar.at(5)  # a rewind goes back
    bar.close()
    bar.close()  # once only
    shown = terminal.getvalue()
    assert "train" in shown and "5/10" in shown and "step" in shown and "<" in shown


def test_training_keeps_plain_step_lines_elsewhere():
    from gptray.train.progress import StepBar

    for bar in (StepBar.open(True, 0, 10, in_ray_worker=False, stream=io.StringIO()),  # a log file
                StepBar.open(False, 0, 10, in_ray_worker=True),  # the driver is not on a terminal
                StepBar.open(True, 10, 10, in_ray_worker=False, stream=Terminal())):  # nothing left to train
        assert bar.bar is None
        bar.at(3)
        bar.close()


def test_log_lines_print_above_a_bar(monkeypatch):
    """While a bar shows in this process, gptray's log lines are written on a line of their own, the bar
    cleared before and drawn again after, not appended to the bar's line."""
    import sys

    from gptray.core.progress_bar import logs_above

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(terminal)  # a console handler, as configure_logging's is
    logging.getLogger("gptray").addHandler(handler)
    try:
        bar = progress_bar(4, "train", "step", terminal)
        with logs_above(bar):
            bar.update(1)
            logging.getLogger("gptray.train.loop").warning("step 1/4 | loss 1.0")
        bar.close()
    finally:
        logging.getLogger("gptray").removeHandler(handler)
    shown = terminal.getvalue()
    assert "\rstep 1/4 | loss 1.0\n" in shown
    assert shown.rindex("1/4 [") > shown.index("loss 1.0")  # the bar drawn again below the line


# Sweeps: a bar of trials done out of the total (gptray/tune/progress.py), as a Tune callback on the driver.

def test_sweep_shows_a_bar_of_trials_on_a_terminal():
    from ray import cloudpickle  # what Tune saves its state with

    from gptray.tune.progress import sweep_console

    terminal = Terminal()
    settings = sweep_console(3, stream=terminal)
    assert settings["verbose"] == 0  # Tune's status tables would print through the bar
    [callback] = settings["callbacks"]
    cloudpickle.dumps(callback)  # Tune saves its RunConfig before the sweep starts
    callback.setup(stop=None, num_samples=1, total_num_samples=3)
    callback.on_trial_complete(iteration=1, trials=[], trial=None)
    callback.on_trial_error(iteration=2, trials=[], trial=None)
    cloudpickle.dumps(callback)  # and again while it runs: the bar stays out of the state
    callback.on_experiment_end(trials=[])
    shown = terminal.getvalue()
    assert "sweep" in shown and "2/3" in shown and "trial" in shown and "<" in shown


def test_sweep_adds_nothing_elsewhere():
    from gptray.tune.progress import sweep_console

    assert sweep_console(3, stream=io.StringIO()) == {}  # Tune's tables and callbacks as they were


# Eval: a bar of batches for each task scored in this process (gptray/eval/runner.py).

def _perplexity_task():
    import numpy as np

    from gptray.eval.perplexity import stream_units
    from gptray.eval.tasks import TASKS, PreparedTask

    units = stream_units(np.arange(40) % 32, max_length=8, stride=8)
    return PreparedTask(TASKS["perplexity"], "perplexity", units, "40 tokens")


def _tiny_model():
    import torch

    from gptray.config import ModelConfig
    from gptray.model import GPT

    torch.manual_seed(0)
    return GPT(ModelConfig(preset=None, n_layer=1, n_head=2, n_embd=16, block_size=8, vocab_size=32).resolved())


def test_eval_shows_a_bar_of_batches_on_a_terminal(logged, monkeypatch):
    import sys

    import torch

    from gptray.config import EvalConfig
    from gptray.eval.runner import evaluate_in_process

    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    result = evaluate_in_process(_tiny_model(), _perplexity_task(), EvalConfig(batch_size=2), torch.device("cpu"))
    assert "ppl" in result.metrics
    shown = terminal.getvalue()
    assert "perplexity" in shown and "3/3" in shown and "batch" in shown and "<" in shown
    assert not [r for r in logged.records if "batches" in r.getMessage()]  # the bar replaces the lines


def test_eval_logs_plain_lines_elsewhere(logged, monkeypatch):
    import sys

    import torch

    from gptray.config import EvalConfig
    from gptray.eval.runner import evaluate_in_process

    monkeypatch.setattr(sys, "stderr", io.StringIO())
    evaluate_in_process(_tiny_model(), _perplexity_task(), EvalConfig(batch_size=2), torch.device("cpu"))
    lines = [r.getMessage() for r in logged.records]
    assert "perplexity: 1/3 batches" in lines and "perplexity: 3/3 batches" in lines
