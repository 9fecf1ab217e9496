"""A comparison report on disk (tables, plots, per-run exports), also attached to the sweep's parent run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from gptray.core.errors import ConfigError, DataError
from gptray.core.paths import is_uri
from gptray.tracking.compare import METRICS, format_summary, load_runs, summarize, write_export
from gptray.tracking.mlflow_tracker import RUN_RECORD, read_run_record
from gptray.tracking.plots import bar_chart, loss_curves, run_report

log = logging.getLogger(__name__)


@dataclass
class Comparison:
    records: list
    summaries: list
    metric: str
    info: dict
    files: list[str] = field(default_factory=list)


def compare(tracking_uri: str, *, sweep: str | None = None, experiment: str | None = None,
            run_ids: list[str] | None = None, metric: str | None = None, baseline: str | None = None) -> Comparison:
    """Load the runs and summarize them (the sweep's own metric and baseline unless given)."""
    from mlflow.tracking import MlflowClient

    if metric is not None and metric not in METRICS:  # before any MLflow query
        raise ConfigError("--metric", f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    client = MlflowClient(tracking_uri)
    records, info = load_runs(client, sweep=sweep, experiment=experiment, run_ids=run_ids)
    metric = metric or info.get("metric") or "best_val_loss"
    baseline = baseline or info.get("baseline")
    if baseline is not None and baseline not in {r.label for r in records}:
        baseline = None  # e.g. the baseline's trials all failed before they logged: fall back to the first
    summaries = summarize(records, metric, baseline, info.get("labels"), len(info.get("seeds") or []))
    return Comparison(records, summaries, metric, info)


def write_report(tracking_uri: str, comparison: Comparison, directory: str | Path,
                 exports: tuple[str, ...] = ("results.jsonl", "results.csv")) -> list[str]:
    """summary.{md,csv,json}, curves and bars as PNG, per-run exports; logged to the sweep's parent run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for fmt, suffix in (("markdown", "md"), ("csv", "csv"), ("json", "json")):
        path = directory / f"summary.{suffix}"
        path.write_text(format_summary(comparison.summaries, comparison.metric, fmt))
        files.append(path)
    key = METRICS[comparison.metric][0]
    for path in (loss_curves(client, comparison.records, key, directory / f"curves_{key.replace('/', '_')}.png"),
                 loss_curves(client, comparison.records, "train/loss", directory / "curves_train_loss.png")
                 if key != "train/loss" else None,
                 bar_chart(comparison.summaries, comparison.metric, directory / f"bars_{comparison.metric}.png")):
        if path is not None:
            files.append(path)
    for name in exports:
        path = directory / name
        write_export(comparison.records, str(path))
        files.append(path)
    parent = comparison.info.get("parent_run_id")
    if parent:
        for path in files:
            try:
                client.log_artifact(parent, str(path), "compare")
            except Exception as exc:  # the report on disk stands even if the server is away
                log.warning("could not attach %s to MLflow run %s: %s", path.name, parent, exc)
                break
    comparison.files = [str(f) for f in files]
    return comparison.files


def plot_run(run: str, tracking_uri: str | None = None, out: str | None = None, attach: bool = True,
             default_tracking_uri: str | None = None) -> list[Path]:
    """Draw one run's curves and metrics.csv from its MLflow histories (also for a run still going), and
    attach them to the run. `run`: an MLflow run id, or a run directory whose run record names the run and
    its tracking store (`tracking_uri` beats it; `default_tracking_uri` serves where neither says). Written
    to `out`, by default RUN/plots (a local run directory) or ./plots-<run id>."""
    from mlflow.tracking import MlflowClient

    run_id, saved = run, read_run_record(run)  # a run directory, local or on an object store; else a run id
    if saved:
        run_id, tracking_uri = saved["run_id"], tracking_uri or saved["tracking_uri"]
        out = out or (None if is_uri(run) else str(Path(run) / "plots"))
    elif Path(run).is_dir():
        raise DataError(f"{run} has no {RUN_RECORD}: it is not a tracked run directory")
    tracking_uri = tracking_uri or default_tracking_uri
    if tracking_uri is None:
        raise DataError(f"{run!r} is not a run directory: give the run's --tracking-uri")
    client = MlflowClient(tracking_uri)
    try:
        info = client.get_run(run_id)
    except Exception as exc:
        raise DataError(f"no MLflow run {run_id!r} at {tracking_uri}: {exc}") from None
    histories = {key: {m.step: m.value for m in sorted(client.get_metric_history(run_id, key),
                                                         key=lambda m: (m.step, m.timestamp))}
                 for key in info.data.metrics}  # the last value logged at a step wins
    files = run_report(histories, f"{info.info.run_name} ({run_id[:8]})", out or f"plots-{run_id}")
    if not files:
        raise DataError(f"run {run_id} has no metrics to plot yet")
    if attach:
        for path in files:
            client.log_artifact(run_id, str(path), "plots")
    return files
