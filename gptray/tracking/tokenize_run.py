"""The tokenize job's MLflow run: one per dataset written, with its request, the Hub commits it read, counts, bad
input and manifest.

Never fatal: with tracking unreachable the dataset is already written, and the job says so once.
Training runs name the dataset they read by the same fingerprint (dataset_input.py), so the MLflow
UI links a model to the tokenize run that made its data.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

from gptray.config import ExperimentConfig, flatten
from gptray.data.manifest import MANIFEST_NAME, Manifest
from gptray.tracking.dataset_input import dataset_entity
from gptray.tracking.mlflow_tracker import experiment_for, fail_fast_http

log = logging.getLogger(__name__)

CONTEXT = "tokenize"  # the dataset input's context: the run made the dataset
MAX_PARAM_LENGTH = 6000


def tokenize_metrics(manifest: Manifest, seconds: float, tasks: int, kept_tasks: int) -> dict[str, float]:
    """What the job made and how fast: counts per split, bad input per kind, tokens/s over the whole job."""
    metrics = {"documents": manifest.documents, "tokens": manifest.tokens, "seconds": seconds,
               "tokens_per_second": manifest.tokens / seconds if seconds > 0 else 0.0,
               "read_tasks": tasks, "kept_read_tasks": kept_tasks, "bad_input": manifest.problems.total()}
    for split, info in sorted(manifest.splits.items()):
        metrics.update({f"{split}_documents": info.documents, f"{split}_tokens": info.tokens,
                        f"{split}_shards": len(info.shards)})
    metrics.update({f"bad_input.{kind}": n for kind, n in sorted(manifest.problems.counts.items())})
    return {k: float(v) for k, v in metrics.items()}


def revision_params(manifest: Manifest) -> dict[str, str]:
    """The commit each Hugging Face source was read at (`source.<i>.revision`), a param of its own: the request's
    sources are one JSON param, cut at MLflow's length limit on a large dataset."""
    return {f"source.{i}.revision": s.revision for i, s in enumerate(manifest.sources) if s.revision is not None}


def log_tokenize_run(config: ExperimentConfig, request: dict, manifest: Manifest, dataset_dir: str,
                     seconds: float, tasks: int, kept_tasks: int) -> str | None:
    """Log the job as an MLflow run in config.tracking.experiment; its run id, or None when tracking failed."""
    fail_fast_http()
    try:
        from mlflow.entities import DatasetInput, InputTag, Metric, Param
        from mlflow.tracking import MlflowClient
        from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

        client = MlflowClient(config.tracking_uri())
        name = str(dataset_dir).rstrip("/").rsplit("/", 1)[-1]
        run = client.create_run(experiment_for(client, config), run_name=f"tokenize {name}",
                                tags={"gptray.job": "tokenize", "gptray.dataset_dir": str(dataset_dir)})
        run_id = run.info.run_id
        params = [Param(k, str(v)[:MAX_PARAM_LENGTH]) for k, v in flatten({"request": request}).items()]
        params += [Param(k, v) for k, v in revision_params(manifest).items()]
        metrics = [Metric(k, v, 0, 0) for k, v in tokenize_metrics(manifest, seconds, tasks, kept_tasks).items()]
        client.log_batch(run_id, metrics=metrics, params=params)
        client.log_inputs(run_id, datasets=[DatasetInput(dataset_entity(manifest, dataset_dir),
                                                         tags=[InputTag(MLFLOW_DATASET_CONTEXT, CONTEXT)])])
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, MANIFEST_NAME)
            with open(path, "w", encoding="utf-8") as out:
                json.dump(manifest.to_dict(), out, indent=2)
            client.log_artifact(run_id, path)
        client.set_terminated(run_id)
    except Exception as exc:  # an unreachable or broken tracking store: the dataset is written all the same
        log.warning("MLflow: could not log the tokenize job to %s (%s: %s); the dataset is written",
                    config.tracking_uri(), type(exc).__name__, exc)
        return None
    log.info("MLflow: tokenize run %s in experiment %r", run_id, config.tracking.experiment)
    return run_id
