"""MLflow logging for a training run: one run per training run, resumed with it, never fatal.

The driver creates (or finds again) the run and logs the resolved config as params; rank 0
logs metrics to it by run id. Metrics leave from a background thread, so a slow or absent server
never holds up a training step. If the tracking server fails, the tracker says so once, keeps the
metrics it could not send, and sends them when the server answers again.
"""

from __future__ import annotations

import atexit
import json
import logging
import os
import threading
import time
import weakref
from pathlib import Path

from gptray.config import ExperimentConfig, flatten
from gptray.core.errors import GptrayError
from gptray.core.paths import is_uri
from gptray.core.storage import Location, Storage
from gptray.data.manifest import Manifest
from gptray.tracking.dataset_input import log_dataset_input

log = logging.getLogger(__name__)

# Both in the run directory, local or on an object store, so any launch of the run finds them.
RUN_RECORD = "mlflow_run.json"  # which MLflow run this training run logs to
OUTBOX = "mlflow_outbox.jsonl"  # metric points the server never got
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_BUFFERED = 100_000  # metric points kept while the server is away
MAX_BATCH = 1000  # MLflow takes at most 1000 metrics per log_batch call
FLUSH_SECONDS = 60.0  # the longest flush() waits for the sender (a request gives up after 10 s and one retry)
STOP_SECONDS = 5.0  # how long finish() and save_outbox() wait for a request still under way before they give up on it
EXIT_FLUSH_SECONDS = 10.0  # at interpreter exit, how long unsent points may hold the process back
MIN_RETRY_SECONDS = 0.5  # the sender's own retries come no faster than this, whatever retry_seconds says
# While all is well, a metrics request begins at most every SEND_SECONDS and carries every step logged since:
# each request costs the server (here on the same 2 cores) ~15 ms of CPU and this process ~3 ms. At one a
# second that was ~1.5% of training's tokens/s, at one every 2 s within the noise (BENCHMARKS.md).
SEND_SECONDS = 2.0
# An MLflow experiment tag the UI reads: with it an experiment opens on its runs (model training), not on the
# GenAI overview. The value is one of the UI's experiment kinds (mlflow/server/js: ExperimentKind).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"


class MlflowTracker:
    """One MLflow run, logged to by run id.

    Metrics are queued by log_metrics and sent by a daemon thread (see _MetricSender): a training
    step never waits on the server. Everything else (params, tags, texts, artifacts, closing the
    run, an earlier launch's outbox) is sent at once from the caller's thread: those calls are made
    by the driver or at the rare steps that sample, not at every step.
    """

    def __init__(self, tracking_uri: str, run_id: str, experiment_id: str = "", retry_seconds: float = 30.0,
                 send_seconds: float = SEND_SECONDS):
        fail_fast_http()
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.client = MlflowClient(tracking_uri)
        self.retry_seconds = retry_seconds  # after a failure, how long to wait before trying again
        self.lost_since: float | None = None
        self._lost_lock = threading.Lock()  # the caller's thread and the sender both report to lost_since
        self._sender = _MetricSender(self._send_metrics, retry_seconds, send_seconds,
                                     name=f"gptray-mlflow-metrics-{run_id}")

    @property
    def lost(self) -> bool:
        return self.lost_since is not None

    @property
    def unsent(self) -> int:
        """Metric points logged but not known to be on the server (queued, kept, or under way)."""
        return self._sender.unsent

    # ---- driver side -------------------------------------------------------------------
    @classmethod
    def start(cls, config: ExperimentConfig, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> MlflowTracker:
        """Create the run for `config` — or reopen the one an earlier launch of this run created.

        With `parent_run_id` the run is nested under it (a sweep's trial under the sweep).
        """
        fail_fast_http()
        from mlflow.tracking import MlflowClient

        uri = config.tracking_uri()
        client = MlflowClient(uri)
        run = Storage(config.run_dir)
        saved = read_run_record(run)
        if saved and saved.get("tracking_uri") == uri and run_exists(client, saved["run_id"]):
            tracker = cls(uri, saved["run_id"], saved.get("experiment_id", ""), config.tracking.retry_seconds)
            client.update_run(saved["run_id"], status="RUNNING")
            tracker._record_config_changes(flatten(config.to_dict()))
            if tags:
                tracker.set_tags(tags)
            log.info("MLflow: resuming run %s in %s", saved["run_id"], uri)
            return tracker
        experiment_id = experiment_for(client, config)
        run_tags = {"gptray.run_dir": config.run_dir, **(tags or {})}
        if parent_run_id:
            run_tags["mlflow.parentRunId"] = parent_run_id  # how MLflow nests runs
        created = client.create_run(experiment_id, run_name=config.name, tags=run_tags)
        tracker = cls(uri, created.info.run_id, experiment_id, config.tracking.retry_seconds)
        tracker.log_params(flatten(config.to_dict()))
        tracker.log_dataset(config.data.dataset_dir)
        record = {"run_id": tracker.run_id, "experiment_id": experiment_id, "tracking_uri": uri}
        run.write_bytes(RUN_RECORD, json.dumps(record, indent=2).encode())
        log.info("MLflow: run %s in experiment %r at %s", tracker.run_id, config.tracking.experiment, uri)
        return tracker

    def _record_config_changes(self, params: dict) -> None:
        """MLflow params are immutable: a resumed run records changed settings as tags instead."""
        logged = self.client.get_run(self.run_id).data.params
        changes = {
            f"gptray.config_change.{key}": f"{logged[key]} -> {str(value)[:MAX_PARAM_LENGTH]}"
            for key, value in params.items() if key in logged and logged[key] != str(value)[:MAX_PARAM_LENGTH]
        }
        if changes:
            log.info("MLflow: config changed since the run began: %s", ", ".join(k.split(".", 2)[2] for k in changes))
            self.set_tags(changes)

    # ---- logging (never raises) --------------------------------------------------------
    def log_params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in params.items()]
        for i in range(0, len(items), 100):  # MLflow takes at most 100 params per call
            self._call(self.client.log_batch, self.run_id, params=items[i : i + 100])

    def log_dataset(self, dataset_dir: str) -> None:
        """Log the token dataset at dataset_dir as the run's training input (its manifest fingerprint the digest);
        nothing if it has no manifest yet (a sweep's parent run may start before its trials tokenize)."""
        try:
            manifest = Manifest.load(dataset_dir)
        except GptrayError:  # none there (yet), or its storage unreadable now: the run goes on without the input
            return
        self._call(log_dataset_input, self.client, self.run_id, manifest, dataset_dir)

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        """Queue one step's metrics for the sender thread and return at once (None values are skipped)."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)  # when the step logged it, not when the server got it
        self._sender.add([Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None])

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(self.client.log_text, self.run_id, text, artifact_file)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self._call(self.client.log_artifact, self.run_id, local_path, artifact_path)

    def flush(self, timeout: float = FLUSH_SECONDS) -> bool:
        """Try now to send the metrics kept, waiting at most `timeout` s; True when nothing is left."""
        return self._sender.flush(timeout)

    def save_outbox(self, run_dir: Location) -> int:
        """Keep undelivered metric points in the run directory, for a later launch to send; stops the sender."""
        self.flush()
        self._sender.stop(STOP_SECONDS)
        points = self._sender.take()  # a batch still under way is kept too: the store ignores a point sent twice
        if not points:
            return 0
        run = Storage.of(run_dir)
        kept_before = run.read_bytes(OUTBOX) if run.exists(OUTBOX) else b""  # object stores cannot append
        lines = "".join(json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value,
                                    "timestamp": m.timestamp, "step": m.step}) + "\n" for m in points)
        run.write_bytes(OUTBOX, kept_before + lines.encode())
        log.warning("MLflow: %d metric point(s) could not be sent; kept in %s for the next launch of this run",
                    len(points), run.uri(OUTBOX))
        return len(points)

    def send_outbox(self, run_dir: Location) -> None:
        """Send the points an earlier process kept (see save_outbox); the file goes once they are sent.

        Sent from the caller's thread: the driver does this before training, not at a step.
        """
        from mlflow.entities import Metric

        run = Storage.of(run_dir)
        if not run.exists(OUTBOX):
            return
        points = [json.loads(line) for line in run.read_bytes(OUTBOX).decode().splitlines() if line.strip()]
        mine = [Metric(p["key"], p["value"], p["timestamp"], p["step"]) for p in points if p["run_id"] == self.run_id]
        # all() stops at the first batch that fails; the whole file stays for the next try (a point sent
        # twice is stored once)
        if all(self._send_metrics(mine[i : i + MAX_BATCH]) for i in range(0, len(mine), MAX_BATCH)):
            run.delete(OUTBOX)
            log.info("MLflow: sent %d metric point(s) kept from an earlier launch", len(points))

    def finish(self, status: str = "FINISHED", run_dir: Location | None = None) -> bool:
        """Close the run; with `run_dir`, note in its run record whether that reached the server.

        The sender stops; metrics it could not send stay in memory for a later flush() or save_outbox().
        """
        closed = self.flush() and self._call(self.client.set_terminated, self.run_id, status)
        self._sender.stop(STOP_SECONDS)
        run = Storage.of(run_dir) if run_dir is not None else None
        if run is not None and (record := read_run_record(run)):
            run.write_bytes(RUN_RECORD, json.dumps({**record, "closed": closed}, indent=2).encode())
        return closed

    def _send_metrics(self, batch: list) -> bool:
        return self._call(self.client.log_batch, self.run_id, metrics=batch)

    def _call(self, fn, *args, **kwargs) -> bool:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # any tracking failure: report, never propagate
            with self._lost_lock:
                if not self.lost:
                    log.warning("MLflow tracking lost (%s: %s); training goes on, metrics are kept for later",
                                type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
                self.lost_since = time.monotonic()
            return False
        with self._lost_lock:
            back, self.lost_since = self.lost, None
        if back:
            log.warning("MLflow tracking is back; sending what was kept")
            self._sender.retry_now()  # the server answered another call: the kept metrics need not wait
        return True


class _MetricSender:
    """Metric points sent oldest first by one daemon thread, one request at a time; what fails is kept.

    `deliver(batch)` makes one attempt to send a batch and says whether it arrived; it never raises.
    A request begins at most every `send_seconds` (sooner while more than a batch waits), and after a
    failed one the next waits `retry_seconds`; flush() asks for one now. At most MAX_BUFFERED points
    wait (the oldest go first), plus the batch under way.
    """

    def __init__(self, deliver, retry_seconds: float, send_seconds: float, name: str):
        self._deliver = deliver
        self._retry_seconds = max(retry_seconds, MIN_RETRY_SECONDS)  # 0 must not spin on a dead server
        self._send_seconds = send_seconds
        self._name = name
        self._cond = threading.Condition()
        self._pending: list = []  # not yet taken by the thread, oldest first
        self._in_flight: list = []  # the batch being sent now
        self._next_at = 0.0  # time.monotonic() before which no request begins (unless one is due sooner)
        self._failing = False  # the last request failed
        self._asked = 0  # flush() calls so far ...
        self._answered = 0  # ... and those answered: by a failed attempt made for them, or by all being sent
        self._stopping = False
        self._thread: threading.Thread | None = None

    def add(self, points: list) -> None:
        with self._cond:
            self._pending.extend(points)
            del self._pending[:-MAX_BUFFERED]
            if self._pending:
                self._start()
            self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Ask for an attempt now and wait (at most `timeout` s) until all is sent or an attempt failed."""
        with self._cond:
            if self._idle():
                return True
            self._start()
            self._asked += 1
            ticket = self._asked
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._idle() or self._answered >= ticket, timeout)
            return self._idle()

    def retry_now(self) -> None:
        with self._cond:
            self._next_at = 0.0
            self._cond.notify_all()

    def stop(self, timeout: float) -> None:
        """End the thread once its request under way (if any) is answered; wait at most `timeout` s."""
        with self._cond:
            thread, self._stopping = self._thread, True
            self._cond.notify_all()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    def take(self) -> list:
        """Remove and return every point not known to be delivered, a batch still under way included."""
        with self._cond:
            points, self._in_flight, self._pending = self._in_flight + self._pending, [], []
            return points

    @property
    def running(self) -> bool:
        return self._thread is not None

    @property
    def unsent(self) -> int:
        with self._cond:
            return len(self._pending) + len(self._in_flight)

    def _idle(self) -> bool:
        return not self._pending and not self._in_flight

    def _start(self) -> None:
        self._stopping = False  # a thread asked to stop but still sending goes on instead
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
            self._thread.start()
            _SENDERS.add(self)

    def _run(self) -> None:
        while (work := self._next()) is not None:
            batch, ticket = work
            try:
                delivered = self._deliver(batch)
            except Exception:  # deliver() reports its own failures; a thread ended by any other loses every later point
                log.exception("MLflow: sending metrics failed unexpectedly")
                delivered = False
            self._settle(batch, ticket, delivered)

    def _next(self) -> tuple[list, int] | None:
        """The next batch to send and the last flush it answers; None when the thread is to end."""
        with self._cond:
            while not self._stopping:
                wait = None
                if self._pending:
                    wait = self._wait()
                    if wait <= 0:
                        self._next_at = time.monotonic() + self._send_seconds
                        self._in_flight, self._pending = self._pending[:MAX_BATCH], self._pending[MAX_BATCH:]
                        return self._in_flight, self._asked
                self._cond.wait(wait)
            self._thread = None  # under the lock: the next add() starts a new thread
            return None

    def _wait(self) -> float:
        """Seconds until the next request may begin (none or fewer: now)."""
        if self._asked > self._answered or (len(self._pending) >= MAX_BATCH and not self._failing):
            return 0.0
        return self._next_at - time.monotonic()

    def _settle(self, batch: list, ticket: int, delivered: bool) -> None:
        with self._cond:
            if self._in_flight is batch:  # not taken meanwhile by take()
                self._in_flight = []
                if not delivered:
                    self._pending[:0] = batch
                    del self._pending[:-MAX_BUFFERED]
            self._failing = not delivered
            if not delivered:
                self._next_at = time.monotonic() + self._retry_seconds
                self._answered = max(self._answered, ticket)
            elif self._idle():
                self._answered = self._asked  # the requests go at their usual pace again
            self._cond.notify_all()


# Senders whose thread runs: points still queued when the interpreter exits get one bounded try.
_SENDERS: weakref.WeakSet[_MetricSender] = weakref.WeakSet()


@atexit.register
def _flush_at_exit() -> None:
    # atexit handlers run before daemon threads are stopped, so a sender can still deliver. A run that
    # ended with save_outbox() or finish() has no running sender left here.
    deadline = time.monotonic() + EXIT_FLUSH_SECONDS
    for sender in list(_SENDERS):
        try:
            if sender.running:
                sender.flush(max(0.0, deadline - time.monotonic()))
        except Exception:  # exiting anyway: nothing to report to
            pass


def experiment_for(client, config: ExperimentConfig) -> str:
    """The id of config.tracking.experiment, created (with artifacts beside a local database) if new.

    A new one is marked as model training, so MLflow's UI opens it on its runs.
    """
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(
        config.tracking.experiment, artifact_location=_local_artifact_location(config.tracking_uri(), config.out_dir),
        tags={EXPERIMENT_KIND_TAG: EXPERIMENT_KIND},
    )


def fail_fast_http() -> None:
    """Make MLflow give up on a dead server within seconds, not minutes (unless the user chose otherwise)."""
    # MLflow retries HTTP requests for minutes by default; a dead server must never stall training
    # (a sample's log_text, a flush at the end) that long. Users can still set their own values.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # urllib3 warns at every retried request; our own warning says once that tracking was lost.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def run_exists(client, run_id: str) -> bool:
    """Whether an MLflow run can be logged to: not found, or a server that does not answer, is no."""
    try:
        client.get_run(run_id)
        return True
    except Exception:
        return False


def _local_artifact_location(uri: str, out_dir: str) -> str | None:
    """For a local database, keep artifacts beside it rather than in ./mlruns of whatever directory.

    With out_dir on an object store, the database (given as tracking.uri) is still a local file:
    its artifacts go beside it, where the processes that log them can write.
    """
    if not uri.startswith("sqlite:"):
        return None
    if not is_uri(out_dir):
        return Path(out_dir, "mlartifacts").absolute().as_uri()
    if uri.startswith("sqlite:///"):
        return Path(uri[len("sqlite:///"):]).absolute().parent.joinpath("mlartifacts").as_uri()
    return None


def tracking_settled(run_dir: Location) -> bool:
    """Nothing left to tell MLflow about a run: no unsent metrics, and its run was closed (or never tracked)."""
    run = Storage.of(run_dir)
    if run.exists(OUTBOX):
        return False
    return read_run_record(run).get("closed", True)


def read_run_record(run_dir: Location) -> dict:
    """The run record of a run directory (which MLflow run it logs to); empty if it has none."""
    run = Storage.of(run_dir)
    return json.loads(run.read_bytes(RUN_RECORD)) if run.exists(RUN_RECORD) else {}
