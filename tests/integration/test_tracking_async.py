"""Metrics sent off the training thread to slow, absent and returning servers; the experiment kind; system metrics."""

from __future__ import annotations

import contextlib
import logging
import socket
import sqlite3
import sys
import threading
import time

import pytest

from gptray.config import load_config
from gptray.tracking.mlflow_tracker import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, OUTBOX, MlflowTracker
from gptray.tracking.system_metrics import start_system_metrics
from helpers import MlflowServer, Relay


@pytest.fixture
def server(mlflow_server):
    """The session's real `mlflow server`; each test reaches it through its own relay and logs to its own run."""
    return mlflow_server


@pytest.fixture(scope="module")
def sqlite_tracker(tmp_path_factory):
    """A run that gptray started in a fresh SQLite store (creating its tables takes a few seconds)."""
    root = tmp_path_factory.mktemp("sqlite-store")
    config = load_config(None, [f"out_dir={root}/runs", f"tracking.uri=sqlite:///{root}/mlflow.db",
                                "tracking.experiment=kinds", "name=kind"])
    tracker = MlflowTracker.start(config)
    yield tracker
    tracker.finish()


def new_run(server: MlflowServer) -> str:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(server.uri)
    experiment = client.get_experiment_by_name("async")
    experiment_id = experiment.experiment_id if experiment else client.create_experiment("async")
    return client.create_run(experiment_id).info.run_id


def stored_steps(server: MlflowServer, run_id: str, key: str) -> list[int]:
    """The steps of a metric in the order the server stored them (SQLite's rowid follows the inserts)."""
    with contextlib.closing(sqlite3.connect(server.root / "mlflow.db")) as db:
        rows = db.execute("SELECT step FROM metrics WHERE run_uuid = ? AND key = ? ORDER BY rowid", (run_id, key))
        return [step for (step,) in rows]


def sender_threads(run_id: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"gptray-mlflow-metrics-{run_id}"]


def log_steps(tracker: MlflowTracker, steps: range) -> float:
    """Log two metrics at each step, as the training loop does; the seconds the calls took."""
    started = time.perf_counter()
    for step in steps:
        tracker.log_metrics({"train/loss": 10 - step / 10, "train/lr": 1e-3}, step=step)
    return time.perf_counter() - started


@pytest.mark.slow
def test_a_slow_server_holds_up_no_step_and_gets_every_point_in_order(server):
    from mlflow.tracking import MlflowClient

    relay = Relay(server.port, delay=0.3)  # every request waits 0.3 s on its way to the server
    run_id = new_run(server)
    tracker = MlflowTracker(relay.uri, run_id)
    seconds = log_steps(tracker, range(20))
    assert seconds < 0.1 * 20 * relay.delay  # sending at each call would take at least 20 delays
    [thread] = sender_threads(run_id)
    assert thread.daemon  # a crashed process does not wait for it
    assert not tracker.flush(timeout=0.05)  # a request is under way for at least one delay: the wait is bounded
    assert tracker.flush()
    for key in ("train/loss", "train/lr"):
        assert stored_steps(server, run_id, key) == list(range(20))
    history = MlflowClient(server.uri).get_metric_history(run_id, "train/loss")
    assert sorted((m.step, m.value) for m in history) == [(step, 10 - step / 10) for step in range(20)]
    assert tracker.finish() and not sender_threads(run_id)  # the thread ends with the run
    relay.down()


@pytest.mark.slow
def test_points_logged_while_the_server_hangs_wait_in_the_outbox_and_reach_it_later(server, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "1")  # each attempt gives up after 1 s
    relay = Relay(server.port)
    run_id = new_run(server)
    relay.down()
    # Something listens at the relay's address and never answers: a request hangs until MLflow's timeout.
    hole = socket.create_server(("127.0.0.1", relay.port))
    tracker = MlflowTracker(relay.uri, run_id, retry_seconds=30)
    assert log_steps(tracker, range(20)) < 0.2 * 1.0  # against one timeout: no call waited for a request
    assert tracker.save_outbox(tmp_path) == 40  # two metrics a step; flushing found the server still away
    assert (tmp_path / OUTBOX).read_text().count("\n") == 40 and not sender_threads(run_id)
    hole.close()
    monkeypatch.undo()  # MLflow's usual timeout again: a loaded server may take more than 1 s to answer
    relay.up()  # the server answers at the same address again
    MlflowTracker(relay.uri, run_id).send_outbox(tmp_path)  # as the next launch of the run does
    assert not (tmp_path / OUTBOX).exists()
    assert stored_steps(server, run_id, "train/loss") == list(range(20))
    relay.down()


class Warnings(logging.Handler):
    """The messages of the warnings a logger gives, whichever thread gives them."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


@pytest.mark.slow
def test_a_server_back_gets_the_kept_points_without_a_flush_and_one_warning_each_way(server):
    relay = Relay(server.port)
    run_id = new_run(server)
    relay.down()
    tracker = MlflowTracker(relay.uri, run_id, retry_seconds=0.5)
    # On the tracker's own logger: the CLI's logging set-up stops gptray's records at "gptray".
    logger, warnings = logging.getLogger("gptray.tracking.mlflow_tracker"), Warnings()
    logger.addHandler(warnings)
    try:
        log_steps(tracker, range(5))
        time.sleep(1.2)  # the sender retries on its own while the server is away
        relay.up()
        log_steps(tracker, range(5, 10))
        deadline = time.monotonic() + 60
        # the server stores a batch before the sender hears back and says tracking is back: wait for both
        while stored_steps(server, run_id, "train/loss") != list(range(10)) or \
                not (warnings.messages and warnings.messages[-1].startswith("MLflow tracking is back")):
            assert time.monotonic() < deadline, (stored_steps(server, run_id, "train/loss"), tracker.unsent,
                                                 warnings.messages, sender_threads(run_id), relay.accepted)
            time.sleep(0.1)
    finally:
        logger.removeHandler(warnings)
    # One warning as tracking is lost and one as it is back, however many attempts failed in between (a
    # loaded server that fails a request after it came back makes one more pair, not a warning per attempt).
    said = [m.split(" (")[0].split(";")[0] for m in warnings.messages]
    assert said and said == ["MLflow tracking lost", "MLflow tracking is back"] * (len(said) // 2), said
    assert tracker.finish()
    relay.down()


def test_an_experiment_gptray_creates_opens_as_model_training(sqlite_tracker):
    experiment = sqlite_tracker.client.get_experiment(sqlite_tracker.experiment_id)
    assert experiment.tags[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND == "custom_model_development"


def test_system_metrics_of_each_node_are_kept_apart(sqlite_tracker):
    pytest.importorskip("psutil")  # MLflow's monitor needs it
    monitors = [start_system_metrics(sqlite_tracker.tracking_uri, sqlite_tracker.run_id, node, interval_seconds=0.1)
                for node in ("node-0", "node-1")]
    client = sqlite_tracker.client
    deadline = time.monotonic() + 30
    while True:
        keys = set(client.get_run(sqlite_tracker.run_id).data.metrics)
        if {"system/node-0/cpu_utilization_percentage", "system/node-1/cpu_utilization_percentage"} <= keys:
            break
        assert time.monotonic() < deadline, keys
        time.sleep(0.2)
    for monitor in monitors:
        monitor.stop()


def test_system_metrics_are_a_no_op_without_psutil(sqlite_tracker, monkeypatch):
    monkeypatch.setitem(sys.modules, "psutil", None)  # as if it were not installed: importing it fails
    monitor = start_system_metrics(sqlite_tracker.tracking_uri, sqlite_tracker.run_id, "node-9", interval_seconds=0.1)
    time.sleep(0.3)
    monitor.stop()
    logged = sqlite_tracker.client.get_run(sqlite_tracker.run_id).data.metrics
    assert not any(key.startswith("system/node-9/") for key in logged)
