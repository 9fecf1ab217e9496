"""Evaluation results: to MLflow (the checkpoint's training run, a run named by id, or a new run) and as a table."""

from __future__ import annotations

import json
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gptray.config import ExperimentConfig, flatten
from gptray.core.errors import ConfigError, StorageError
from gptray.core.paths import parent
from gptray.core.tables import text_table
from gptray.eval.evaluate import EvalReport, format_metric
from gptray.tracking import MlflowTracker
from gptray.tracking.mlflow_tracker import RUN_RECORD, experiment_for, read_run_record, run_exists

log = logging.getLogger(__name__)



@dataclass
class TrackedRun:
    tracking_uri: str
    run_id: str
    created: bool  # a new evaluation run (rather than the training run or one named by id)


def training_run_of(checkpoint: str) -> dict | None:
    """The MLflow run recorded in the checkpoint's run directory (mlflow_run.json), local or on an object
    store, if any."""

    run_dir = parent(checkpoint)
    try:
        saved = read_run_record(run_dir)
    except (OSError, StorageError, ValueError) as exc:  # unreadable, or not JSON
        log.warning("cannot read %s beside %s (%s): not logging to the training run", RUN_RECORD, checkpoint, exc)
        return None
    if not saved:
        return None
    try:
        return {"run_id": saved["run_id"], "tracking_uri": saved["tracking_uri"]}
    except (KeyError, TypeError):
        log.warning("%s beside %s is malformed: not logging to the training run it names", RUN_RECORD, checkpoint)
        return None


def choose_run(report: EvalReport, config: ExperimentConfig, run_id: str | None = None) -> TrackedRun:
    """`run_id` if given; else the checkpoint's training run; else a new run in tracking.experiment."""
    from mlflow.tracking import MlflowClient

    recorded = training_run_of(report.checkpoint)
    checkpoint = Path(report.checkpoint.partition("?")[0])  # for its name and its run directory's name
    if run_id is not None:
        uri = recorded["tracking_uri"] if recorded and recorded["run_id"] == run_id else config.tracking_uri()
        if not run_exists(MlflowClient(uri), run_id):
            raise ConfigError("--run", f"no MLflow run {run_id} at {uri} (set tracking.uri to its server)")
        return TrackedRun(uri, run_id, created=False)
    if recorded is not None:
        if run_exists(MlflowClient(recorded["tracking_uri"]), recorded["run_id"]):
            return TrackedRun(recorded["tracking_uri"], recorded["run_id"], created=False)
        log.warning("the training run %s recorded beside %s is not at %s: logging to a new run", recorded["run_id"],
                    checkpoint, recorded["tracking_uri"])
    uri = config.tracking_uri()
    client = MlflowClient(uri)
    run = client.create_run(experiment_for(client, config), run_name=f"eval-{checkpoint.parent.name}-{checkpoint.name}",
                            tags={"gptray.kind": "eval", "gptray.checkpoint": str(checkpoint)})
    return TrackedRun(uri, run.info.run_id, created=True)


def log_report(report: EvalReport, config: ExperimentConfig, run_id: str | None = None) -> TrackedRun:
    """Metrics eval/<task>/<metric> at the checkpoint's step, the full report as an artifact, tags."""

    target = choose_run(report, config, run_id)
    tracker = MlflowTracker(target.tracking_uri, target.run_id)
    if target.created:
        tracker.log_params({f"eval.{k}": v for k, v in flatten(config.eval.__dict__).items()})
    tracker.log_metrics(report.metrics(), step=report.step)
    tracker.set_tags({f"gptray.eval.{t.label}": f"{t.description} ({report.checkpoint})" for t in report.tasks})
    with tempfile.TemporaryDirectory(prefix="gptray-eval-") as tmp:
        path = Path(tmp) / f"eval_step_{report.step:08d}.json"
        path.write_text(json.dumps(report.to_dict(details=True), indent=1))
        tracker.log_artifact(str(path))
        if report.harness is not None:  # the harness's own results file, as `lm-eval --output_path` writes it
            harness = Path(tmp) / f"lm_eval_results_step_{report.step:08d}.json"
            harness.write_text(json.dumps(report.harness, indent=1, default=str))
            tracker.log_artifact(str(harness))
    if target.created:
        tracker.finish("FINISHED")
    else:
        tracker.flush()  # the results go now, from the sender thread: this command ends next
    if tracker.lost or tracker.unsent:
        log.warning("MLflow could not take the results at %s; they are printed below", target.tracking_uri)
    return target


def format_table(report: EvalReport) -> str:
    rows = []
    for task in report.tasks:
        for i, (name, value) in enumerate(task.metrics.items()):
            rows.append((task.label if i == 0 else "", name, format_metric(name, value)))
    return text_table(("task", "metric", "value"), rows, align="llr")
