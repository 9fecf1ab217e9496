"""eval.train_async: the harness tasks of eval.train_tasks run by Ray Train's asynchronous validation on the checkpoint
written at an evaluation step, as a Ray task beside the training workers, and logged to the training run at that
step (the training workers only write the checkpoint, which they do at those steps anyway).

Ray Train 2.60 (`ray/train/v2/_internal/execution/checkpoint/validation_manager.py`) runs one validation at a time
(MAX_IN_FLIGHT_VALIDATIONS = 1), queues the rest, and waits for every queued one before `fit` returns; it attaches
the metrics to its own checkpoint record, so the task logs them to MLflow itself. Local mode has no controller to
run them (refused by the config).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import torch

from gptray.checkpoint.files import read_state
from gptray.config import EvalConfig, ExperimentConfig
from gptray.core.runtime import configure_logging
from gptray.eval.harness_model import GptrayLM
from gptray.eval.harness_tasks import evaluate_harness, shown_measures, task_manager
from gptray.eval.harness_training import harness_names
from gptray.eval.runner import flat_metrics
from gptray.tracking import MlflowTracker

log = logging.getLogger(__name__)

ASYNC_METRIC = "train/lm_eval_async_s"  # seconds a validation task took, beside training


def validation_config(config: ExperimentConfig, tracking_uri: str | None, run_id: str | None):
    """Ray Train's ValidationConfig for the run, or None without eval.train_async."""
    if not config.eval.train_async:
        return None
    from ray.train.v2.api.validation_config import ValidationConfig, ValidationTaskConfig  # heavy

    settings = config.eval.in_training()
    gpus = 1 if settings.device.startswith("cuda") else 0  # auto: CPU, as training may hold every GPU
    kwargs = {"names": harness_names(config), "settings": dataclasses.asdict(settings),
              "tracking_uri": tracking_uri, "run_id": run_id, "retry_seconds": config.tracking.retry_seconds}
    return ValidationConfig(fn=evaluate_reported_checkpoint, task_config=ValidationTaskConfig(fn_kwargs=kwargs),
                            ray_remote_kwargs={"num_cpus": settings.cpus_per_actor, "num_gpus": gpus})


def evaluate_reported_checkpoint(checkpoint, names: list[str], settings: dict, tracking_uri: str | None = None,
                                 run_id: str | None = None, retry_seconds: float = 30.0) -> dict[str, float]:
    """Ray Train's validation function: the harness tasks on a reported checkpoint, logged to the training run
    at the checkpoint's step (tracking failures are warned about, never raised); the metrics, for Ray's record."""
    configure_logging()  # a Ray task's process: its results go to the driver's console like the workers' lines
    started = time.monotonic()
    eval_settings = EvalConfig(**settings)
    torch.set_num_threads(max(1, int(eval_settings.cpus_per_actor)))  # the CPUs Ray gave this task
    with checkpoint.as_directory() as directory:
        step = read_state(Path(directory)).step
        lm = GptrayLM(pretrained=str(directory), device=eval_settings.device, batch_size=eval_settings.batch_size,
                      precision=eval_settings.precision, seed=eval_settings.seed)
        results, _ = evaluate_harness(lm, names, eval_settings, "a Ray Train validation task",
                                      task_manager(eval_settings, names))
    metrics = {**flat_metrics(results), ASYNC_METRIC: time.monotonic() - started}
    for r in results:
        log.info("step %d, %s: %s (asynchronous validation)", step, r.label, shown_measures(r))
    if tracking_uri and run_id:
        tracker = MlflowTracker(tracking_uri, run_id, retry_seconds=retry_seconds)
        tracker.log_metrics(metrics, step=step)
        if not tracker.flush():
            log.warning("step %d: harness results not yet on the MLflow server at %s (still retrying): %s", step,
                        tracking_uri, metrics)
    return metrics
