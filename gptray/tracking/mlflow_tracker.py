"""MLflow logging for a training run: one run per training run, resumed with it, never fatal.

The driver creates (or finds again) the run and logs the resolved config as params; rank 0
logs metrics to it by run id. If the tracking server fails, the tracker says so once, keeps
the metrics it could not send, and sends them when the server answers again.
"""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from gptray.base.paths import is_uri
from gptray.base.storage import Storage
from gptray.config import ExperimentConfig, flatten

log = logging.getLogger(__name__)

# Both in the run directory, local or on an object store, so any launch of the run finds them.
RUN_RECORD = "mlflow_run.json"  # which MLflow run this training run logs to
OUTBOX = "mlflow_outbox.jsonl"  # metric points the server never got
MAX_PARAM_LENGTH = 6000  # MLflow's limit on a param value
MAX_BUFFERED = 100_000  # metric points kept while the server is away


class MlflowTracker:
    def __init__(self, tracking_uri: str, run_id: str, experiment_id: str = "", retry_seconds: float = 30.0):
        _fail_fast_http()
        from mlflow.tracking import MlflowClient

        self.tracking_uri = tracking_uri
        self.run_id = run_id
        self.experiment_id = experiment_id
        self.client = MlflowClient(tracking_uri)
        self.retry_seconds = retry_seconds  # after a failure, how long to wait before trying again
        self.lost_since: float | None = None
        self._buffer: list = []

    @property
    def lost(self) -> bool:
        return self.lost_since is not None

    # ---- driver side -------------------------------------------------------------------
    @classmethod
    def start(cls, config: ExperimentConfig, parent_run_id: str | None = None,
              tags: dict[str, str] | None = None) -> MlflowTracker:
        """Create the run for `config` — or reopen the one an earlier launch of this run created.

        With `parent_run_id` the run is nested under it (a sweep's trial under the sweep).
        """
        _fail_fast_http()
        from mlflow.tracking import MlflowClient

        uri = config.tracking_uri()
        client = MlflowClient(uri)
        run = Storage(config.run_dir)
        saved = read_run_record(run)
        if saved and saved.get("tracking_uri") == uri and _run_exists(client, saved["run_id"]):
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

    def log_metrics(self, metrics: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._buffer.extend(Metric(k, float(v), now, step) for k, v in metrics.items() if v is not None)
        del self._buffer[:-MAX_BUFFERED]
        if self.lost and time.monotonic() - self.lost_since < self.retry_seconds:
            return
        pending = self._buffer
        for i in range(0, len(pending), 1000):  # and at most 1000 metrics
            if not self._call(self.client.log_batch, self.run_id, metrics=pending[i : i + 1000]):
                self._buffer = pending[i:]
                return
        self._buffer = []

    def set_tags(self, tags: dict[str, str]) -> None:
        from mlflow.entities import RunTag

        self._call(self.client.log_batch, self.run_id, tags=[RunTag(k, str(v)) for k, v in tags.items()])

    def log_text(self, text: str, artifact_file: str) -> None:
        self._call(self.client.log_text, self.run_id, text, artifact_file)

    def log_artifact(self, local_path: str, artifact_path: str | None = None) -> None:
        self._call(self.client.log_artifact, self.run_id, local_path, artifact_path)

    def flush(self) -> bool:
        """Try now to send what is kept; True when nothing is left."""
        if self._buffer:
            self.lost_since = None
            self.log_metrics({}, 0)
        return not self._buffer

    def save_outbox(self, run_dir: str | Path | Storage) -> int:
        """Keep undelivered metric points in the run directory, for a later launch to send."""
        if self.flush():
            return 0
        run = Storage.of(run_dir)
        kept_before = run.read_bytes(OUTBOX) if run.exists(OUTBOX) else b""  # object stores cannot append
        lines = "".join(json.dumps({"run_id": self.run_id, "key": m.key, "value": m.value,
                                    "timestamp": m.timestamp, "step": m.step}) + "\n" for m in self._buffer)
        run.write_bytes(OUTBOX, kept_before + lines.encode())
        log.warning("MLflow: %d metric point(s) could not be sent; kept in %s for the next launch of this run",
                    len(self._buffer), run.uri(OUTBOX))
        kept, self._buffer = len(self._buffer), []
        return kept

    def send_outbox(self, run_dir: str | Path | Storage) -> None:
        """Send the points an earlier process kept (see save_outbox); the file goes once they are sent."""
        from mlflow.entities import Metric

        run = Storage.of(run_dir)
        if not run.exists(OUTBOX):
            return
        points = [json.loads(line) for line in run.read_bytes(OUTBOX).decode().splitlines() if line.strip()]
        self._buffer = [Metric(p["key"], p["value"], p["timestamp"], p["step"])
                        for p in points if p["run_id"] == self.run_id] + self._buffer
        if self.flush():
            run.delete(OUTBOX)
            log.info("MLflow: sent %d metric point(s) kept from an earlier launch", len(points))
        else:
            self._buffer = []  # they stay in the file for the next try

    def finish(self, status: str = "FINISHED", run_dir: str | Path | Storage | None = None) -> bool:
        """Close the run; with `run_dir`, note in its run record whether that reached the server."""
        closed = self.flush() and self._call(self.client.set_terminated, self.run_id, status)
        run = Storage.of(run_dir) if run_dir is not None else None
        if run is not None and (record := read_run_record(run)):
            run.write_bytes(RUN_RECORD, json.dumps({**record, "closed": closed}, indent=2).encode())
        return closed

    def _call(self, fn, *args, **kwargs) -> bool:
        try:
            fn(*args, **kwargs)
        except Exception as exc:  # any tracking failure: report, never propagate
            if not self.lost:
                log.warning("MLflow tracking lost (%s: %s); training goes on, metrics are kept for later",
                            type(exc).__name__, str(exc).splitlines()[0][:300] if str(exc) else "")
            self.lost_since = time.monotonic()
            return False
        if self.lost:
            log.warning("MLflow tracking is back; sent what was kept")
            self.lost_since = None
        return True


def experiment_for(client, config: ExperimentConfig) -> str:
    """The id of config.tracking.experiment, created (with artifacts beside a local database) if new."""
    experiment = client.get_experiment_by_name(config.tracking.experiment)
    if experiment is not None:
        return experiment.experiment_id
    return client.create_experiment(
        config.tracking.experiment, artifact_location=_local_artifact_location(config.tracking_uri(), config.out_dir)
    )


def _fail_fast_http() -> None:
    # MLflow retries HTTP requests for minutes by default; a dead server must never stall a
    # training step that long. Users can still set their own values.
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
    # urllib3 warns at every retried request; our own warning says once that tracking was lost.
    logging.getLogger("urllib3.connectionpool").setLevel(logging.ERROR)


def _run_exists(client, run_id: str) -> bool:
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


def tracking_settled(run_dir: str | Path | Storage) -> bool:
    """Nothing left to tell MLflow about a run: no unsent metrics, and its run was closed (or never tracked)."""
    run = Storage.of(run_dir)
    if run.exists(OUTBOX):
        return False
    return read_run_record(run).get("closed", True)


def read_run_record(run_dir: str | Path | Storage) -> dict:
    """The run record of a run directory (which MLflow run it logs to); empty if it has none."""
    run = Storage.of(run_dir)
    return json.loads(run.read_bytes(RUN_RECORD)) if run.exists(RUN_RECORD) else {}
