"""Training against a real `mlflow server` on loopback over HTTP, and surviving its outage."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from gptray.train.pretrain import pretrain
from helpers import small_run_config

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent


class MlflowServer:
    """`mlflow server` with a SQLite backend and a local artifact store, started and stopped at will."""

    def __init__(self, root: Path):
        self.root = root
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        self.uri = f"http://127.0.0.1:{self.port}"
        self.process = None

    def start(self) -> None:
        log = open(self.root / "server.log", "a")
        self.process = subprocess.Popen(
            [str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(self.port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{self.root}/mlflow.db",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"{self.uri}/health", timeout=2)
                return
            except OSError:
                assert self.process.poll() is None and time.monotonic() < deadline, \
                    (self.root / "server.log").read_text()[-3000:]
                time.sleep(0.5)

    def kill(self) -> None:
        os.killpg(self.process.pid, signal.SIGKILL)  # the server and its workers, no goodbye
        self.process.wait()


class Relay:
    """A TCP relay on its own loopback port in front of a server: `down()` refuses connections and cuts
    open ones, as a dead server does, and `up()` is the server back at once, however long a real
    `mlflow server` would take to start on a loaded machine."""

    def __init__(self, target_port: int):
        self.target_port = target_port
        self.port = 0
        self.accepted = 0
        self.open: list[socket.socket] = []
        self.lock = threading.Lock()
        self.up()
        self.uri = f"http://127.0.0.1:{self.port}"

    def up(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", self.port))  # the same address again
        self.port = self.listener.getsockname()[1]
        self.listener.settimeout(0.1)  # a blocked accept() would keep a closed listener alive
        self.serving = True
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def down(self) -> None:
        self.serving = False
        self.acceptor.join()
        self.listener.close()
        with self.lock:
            for s in self.open:
                cut(s)
                s.close()
            self.open = []

    def _accept(self) -> None:
        while self.serving:
            try:
                client, _ = self.listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.accepted += 1
                self.open += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(a, b), daemon=True).start()

    @staticmethod
    def _pump(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            cut(source)
            cut(sink)


def cut(connection: socket.socket) -> None:
    """End a relayed connection in both directions (the peer sees it closed)."""
    try:
        connection.shutdown(socket.SHUT_RDWR)
    except OSError:  # already cut
        pass


@pytest.fixture
def server(tmp_path):
    server = MlflowServer(tmp_path)
    server.start()
    yield server
    if server.process.poll() is None:
        server.kill()


def test_pretrain_logs_to_a_tracking_server_over_http(server, shakespeare_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    config = small_run_config(tmp_path, shakespeare_dataset, "name=remote", "train.max_steps=4",
                              "train.eval_interval=2", f"tracking.uri={server.uri}", "tracking.experiment=remote")
    result = pretrain(config)
    assert result.tracking_uri == server.uri
    client = MlflowClient(server.uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.n_layer"] == "2"
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples"} <= artifacts
    # the artifacts went through the server into its store, not into a local ./mlruns
    assert list((tmp_path / "artifacts").rglob("config.yaml"))


def test_training_outlives_the_tracking_server_and_its_metrics_are_sent_later(server, shakespeare_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    config = small_run_config(tmp_path, shakespeare_dataset, "name=outage", "train.max_steps=36",
                              f"tracking.uri={server.uri}", "tracking.retry_seconds=1")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=pretrain(config, sample=False)))
    thread.start()
    client = MlflowClient(server.uri)
    deadline = time.monotonic() + 300
    while True:  # training has begun logging
        runs = client.search_runs([client.get_experiment_by_name("gptray").experiment_id]) \
            if client.get_experiment_by_name("gptray") else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 3:
            break
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.5)
    server.kill()
    thread.join(timeout=300)  # training ends while the server is still away
    assert not thread.is_alive() and "result" in outcome
    result = outcome["result"]
    assert result.final_step == 36
    outbox = Path(config.run_dir) / "mlflow_outbox.jsonl"
    assert outbox.is_file()  # the points the server never got, kept with the run

    server.start()  # the same store comes back on the same address
    again = pretrain(config, sample=False)  # launching the finished run again delivers them
    assert (again.start_step, again.final_step) == (36, 36) and not outbox.exists()
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "train/loss")})
    assert steps == list(range(1, 37))  # nothing logged during the outage was lost


def test_a_server_back_during_training_gets_the_metrics_from_the_running_job(server, shakespeare_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    # The job reaches the server through a relay, so the server can vanish and be back within 2 s
    # (a restarted `mlflow server` took 10-20 s under load, and the run had to outlast that).
    relay = Relay(server.port)
    config = small_run_config(tmp_path, shakespeare_dataset, "name=blip", "model.n_layer=1", "train.max_steps=50",
                              "train.lr_decay_steps=50", "train.checkpoint_interval=6", "train.eval_interval=25",
                              f"tracking.uri={relay.uri}", "tracking.retry_seconds=1")
    outcome: dict = {}
    thread = threading.Thread(target=lambda: outcome.update(result=pretrain(config, sample=False)))
    thread.start()
    first = Path(config.run_dir) / "checkpoint_00000006" / "state.json"
    deadline = time.monotonic() + 300
    while not first.exists():
        assert thread.is_alive() and time.monotonic() < deadline, outcome
        time.sleep(0.2)
    relay.down()
    time.sleep(2)  # steps go by with the server away
    reconnections = relay.accepted
    relay.up()
    assert thread.is_alive(), "training ended before the server came back: make the run longer"
    thread.join(timeout=300)
    result = outcome["result"]
    client = MlflowClient(server.uri)
    steps = sorted({m.step for m in client.get_metric_history(result.mlflow_run_id, "train/loss")})
    assert relay.accepted > reconnections  # the job's connections were cut, and it came back through new ones
    assert steps == list(range(1, 51)) and client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert not (Path(config.run_dir) / "mlflow_outbox.jsonl").exists()  # nothing was left for later
