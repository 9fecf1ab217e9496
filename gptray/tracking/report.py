"""A comparison report on disk (tables, plots, per-run exports), also attached to the sweep's parent run."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from gptray.tracking.compare import METRICS, format_summary, load_runs, summarize, write_export
from gptray.tracking.plots import bar_chart, loss_curves

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

    client = MlflowClient(tracking_uri)
    records, info = load_runs(client, sweep=sweep, experiment=experiment, run_ids=run_ids)
    metric = metric or info.get("metric") or "best_val_loss"
    baseline = baseline or info.get("baseline")
    if baseline is not None and baseline not in {r.label for r in records}:
        baseline = None  # e.g. the baseline's trials all failed before they logged: fall back to the first
    return Comparison(records, summarize(records, metric, baseline), metric, info)


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
