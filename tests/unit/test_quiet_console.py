"""A quiet console: Ray Train's preemption watcher off as one setting, its per-report dumps kept in its log files."""

from __future__ import annotations

import io
import logging
import os

import pytest

from gptray.cli.main import build_parser
from gptray.core import runtime

REPORT = "Reporting training result 1: TrainingReport(checkpoint=None, metrics={'step': 10}) from rank 1"


def test_the_preemption_watcher_is_off_through_a_variable_ray_train_passes_to_its_controller():
    from ray.train.v2._internal.constants import (
        ENABLE_PREEMPTION_WATCHER_ENV_VAR,
        ENABLE_PRINT_PATCH_ENV_VAR,
        ENV_VARS_TO_PROPAGATE,
    )

    # and print() left as print in the workers: rank 0's progress bar travels as printed lines
    assert runtime.ray_train_environment() == {ENABLE_PREEMPTION_WATCHER_ENV_VAR: "0", ENABLE_PRINT_PATCH_ENV_VAR: "0"}
    for name in runtime.ray_train_environment():  # set in the driver, seen by the controller and its workers
        assert name in ENV_VARS_TO_PROPAGATE
    # an elastic run checkpoints on the watcher's notice of a node about to go: it starts the watcher
    assert runtime.ray_train_environment(elastic=True)[ENABLE_PREEMPTION_WATCHER_ENV_VAR] == "1"


@pytest.fixture
def ray_train_worker_logging(tmp_path, monkeypatch):
    """The root logger as Ray Train configures it in a worker (a console handler and a file handler), and the
    logger Ray Train reports through, both put back afterwards."""
    import ray.train.v2._internal.execution.context as context

    root, reports = logging.getLogger(), logging.getLogger(context.__file__)
    saved = (root.handlers[:], root.level, reports.handlers[:], reports.propagate)
    console, file = logging.StreamHandler(io.StringIO()), logging.FileHandler(tmp_path / "ray-train-app-worker.log")
    root.handlers, reports.handlers, reports.propagate = [console, file], [], True
    root.setLevel(logging.INFO)
    yield reports, console.stream, tmp_path / "ray-train-app-worker.log"
    file.close()
    root.handlers, reports.handlers, reports.propagate = saved[0], saved[2], saved[3]
    root.setLevel(saved[1])


def test_ray_train_reports_go_to_its_log_file_not_the_console(ray_train_worker_logging, monkeypatch):
    reports, console, log_file = ray_train_worker_logging
    monkeypatch.delenv(runtime.VERBOSE_ENV, raising=False)
    runtime.configure_logging()
    runtime.configure_logging()  # workers may call it more than once: one file handler, not two
    reports.info(REPORT)
    logging.getLogger("some.library").warning("a warning still reaches the console")
    assert "TrainingReport" not in console.getvalue()
    assert "a warning still reaches the console" in console.getvalue()
    assert log_file.read_text().count("TrainingReport") == 1


def test_verbose_keeps_ray_train_reports_on_the_console(ray_train_worker_logging, monkeypatch):
    reports, console, log_file = ray_train_worker_logging
    monkeypatch.setenv(runtime.VERBOSE_ENV, "1")
    runtime.configure_logging()
    reports.info(REPORT)
    assert "TrainingReport" in console.getvalue()


def test_verbose_is_taken_before_or_after_the_command():
    parser = build_parser()
    assert parser.parse_args(["--verbose", "config"]).verbose
    assert parser.parse_args(["config", "--verbose"]).verbose
    assert not parser.parse_args(["config"]).verbose


def test_ray_tune_warns_of_a_slow_controller_step_only_past_seconds(monkeypatch):
    """Ray Tune's "may be a performance bottleneck" at 0.5 s fires on a busy small machine; a user's own
    threshold still wins."""
    monkeypatch.delenv("TUNE_WARN_THRESHOLD_S", raising=False)
    runtime.use_ray_tune_settings()
    assert float(os.environ["TUNE_WARN_THRESHOLD_S"]) == runtime.RAY_TUNE_SLOW_STEP_WARNING_S >= 5
    monkeypatch.setenv("TUNE_WARN_THRESHOLD_S", "1")
    runtime.use_ray_tune_settings()
    assert os.environ["TUNE_WARN_THRESHOLD_S"] == "1"
