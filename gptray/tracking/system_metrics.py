"""Per-node system metrics (CPU, memory, disk, network, GPU) logged to a run by MLflow's own monitor."""

from __future__ import annotations

import importlib.util
import logging

from gptray.tracking.mlflow_tracker import fail_fast_http

log = logging.getLogger(__name__)


class SystemMetrics:
    """A running MLflow system-metrics monitor; stop() ends it and never raises."""

    def __init__(self, monitor=None):
        self._monitor = monitor  # None: nothing is monitored

    def stop(self) -> None:
        if self._monitor is None:
            return
        monitor, self._monitor = self._monitor, None
        try:
            monitor.finish()  # joins its thread (a sampling interval and a request at most), sends what it holds
        except Exception as exc:  # tracking never stops training
            log.warning("MLflow system metrics: stopping failed (%s: %s)", type(exc).__name__, exc)


def start_system_metrics(tracking_uri: str, run_id: str, node_id: str | int,
                         interval_seconds: float = 10.0) -> SystemMetrics:
    """Log this machine's system metrics to a run as system/<node_id>/<metric>, sampled every `interval_seconds`.

    One call per node, each with its own node id, keeps the nodes' metrics apart in the run. MLflow's
    monitor runs in its own daemon thread and ends by itself once the run is no longer RUNNING or the
    server cannot be reached (it does not come back: start it again after an outage). The environment
    variables MLFLOW_SYSTEM_METRICS_NODE_ID and MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL, if set, win over
    the arguments. Never raises: without psutil (MLflow's monitor needs it) or on any failure, nothing
    is monitored and the returned object's stop() does nothing.
    """
    if importlib.util.find_spec("psutil") is None:
        log.info("MLflow system metrics are off: the psutil package is not installed")
        return SystemMetrics()
    fail_fast_http()  # stop() waits for the monitor's thread, which may be inside a request
    try:
        from mlflow.system_metrics.system_metrics_monitor import SystemMetricsMonitor

        # resume_logging: a relaunched run goes on from the last step of its system metrics, not from 0
        monitor = SystemMetricsMonitor(run_id, sampling_interval=interval_seconds, node_id=str(node_id),
                                       tracking_uri=tracking_uri, resume_logging=True)
        monitor.start()
    except Exception as exc:  # tracking never stops training
        log.warning("MLflow system metrics are off for node %s (%s: %s)", node_id, type(exc).__name__, exc)
        return SystemMetrics()
    return SystemMetrics(monitor)
