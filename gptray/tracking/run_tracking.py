"""A training run's MLflow run from the driver's side: whether the store fits the cluster, starting it, closing it."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

from gptray.config import ExperimentConfig
from gptray.core.cluster import Cluster
from gptray.core.errors import ConfigError
from gptray.core.storage import Storage
from gptray.tracking.history import read_history
from gptray.tracking.mlflow_tracker import MlflowTracker
from gptray.tracking.plots import run_report

log = logging.getLogger(__name__)


def check_tracking_store(config: ExperimentConfig, cluster: Cluster) -> None:
    """A SQLite file is one machine's store: on a cluster of several nodes, rank 0 and the driver may sit
    on different ones and write it over a shared filesystem, which SQLite does not survive."""
    if config.tracking.enabled and config.tracking_uri().startswith("sqlite:") and \
            (len(cluster.nodes) > 1 or cluster.can_grow):
        raise ConfigError("tracking.uri", f"is SQLite ({config.tracking_uri()}), but the cluster has "
                                          f"{cluster.describe()}: run an MLflow server (mlflow server "
                                          "--backend-store-uri …) and set tracking.uri=http://HOST:5000, or "
                                          "set tracking.enabled=false")


def start_run_tracking(config: ExperimentConfig) -> MlflowTracker | None:
    """The run's MLflow run, started (or continued); None with tracking off or its server unreachable:
    tracking never takes training down."""
    if not config.tracking.enabled:
        return None
    try:
        return MlflowTracker.start(config)
    except Exception as exc:
        log.warning("MLflow tracking unavailable at %s (%s: %s); training without it",
                    config.tracking_uri(), type(exc).__name__, exc)
        return None


def finish_run_tracking(tracker: MlflowTracker, run: Storage, config: ExperimentConfig,
                        sample: tuple[str, str] | None) -> None:
    """What the workers could not send, the final sample (its text and artifact name), the config and the
    run's plots; then close the run."""
    tracker.send_outbox(run)
    if sample is not None:
        tracker.log_text(*sample)
    tracker.log_text(run.read_bytes("config.yaml").decode(), "config.yaml")
    log_run_plots(tracker, run, config)
    if not tracker.finish("FINISHED", run):
        log.warning("MLflow: the run could not be closed now; the next launch of %s closes it", config.name)


def log_run_plots(tracker: MlflowTracker, run: Storage, config: ExperimentConfig) -> None:
    """The run's curves (PNG) and metrics (CSV), drawn from the history the run keeps (not read back from
    MLflow), in run_dir/plots and as MLflow artifacts."""
    with tempfile.TemporaryDirectory(prefix="gptray-plots-") as scratch:
        # drawn where they will stay on local disk; drawn aside and uploaded for an object store
        directory = Path(run.path("plots")) if run.is_local else Path(scratch)
        try:
            files = run_report(read_history(run), f"{config.name} ({tracker.run_id[:8]})", directory)
            if not run.is_local:
                for path in files:
                    run.write_bytes(f"plots/{path.name}", path.read_bytes())
        except Exception as exc:  # plots are a convenience: never fail a finished run over them
            log.warning("could not draw the run's plots: %s: %s", type(exc).__name__, exc)
            return
        for path in files:
            tracker.log_artifact(str(path), "plots")
