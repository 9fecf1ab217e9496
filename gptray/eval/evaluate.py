"""Evaluating a checkpoint: prepare every task first (bad input stops before any work), score, report."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from gptray.checkpoint.files import find_checkpoint, has_weights, local_checkpoint, read_config, read_state
from gptray.config import ExperimentConfig, ModelConfig
from gptray.core.errors import CheckpointError, ConfigError
from gptray.core.runtime import init_ray
from gptray.eval.harness_model import GptrayLM
from gptray.eval.harness_pool import RayScorer
from gptray.eval.harness_tasks import check_tasks, evaluate_harness, harness_task_name, task_manager
from gptray.eval.runner import TaskResult, evaluate_in_process, evaluate_with_ray, flat_metrics
from gptray.eval.tasks import PreparedTask, prepare
from gptray.generation.loading import checkpoint_tokenizer, load_model, resolve_device

log = logging.getLogger(__name__)


COUNTS = ("examples", "truncated", "tokens", "windows", "bytes")  # metrics that are counts: shown as integers


def format_metric(name: str, value: float) -> str:
    return f"{value:,.0f}" if name in COUNTS else f"{value:.4f}"


@dataclass
class EvalReport:
    checkpoint: str  # where the checkpoint lives: a local path, or its URI on an object store
    step: int  # the checkpoint's training step: where its metrics go in the run's history
    tasks: list[TaskResult]
    harness: dict | None = None  # the lm-evaluation-harness's own results, when harness tasks ran

    def metrics(self) -> dict[str, float]:
        """Flat MLflow metric names: eval/<task>/<metric>."""
        return flat_metrics(self.tasks)

    def to_dict(self, details: bool = False) -> dict:
        return {"checkpoint": self.checkpoint, "step": self.step, "tasks": [
            {"task": t.label, "description": t.description, "metrics": t.metrics, "seconds": round(t.seconds, 2),
             "workers": t.workers, "notes": t.notes, **({"results": t.results} if details else {})}
            for t in self.tasks]}


def saved_run_config(directory: Path) -> ExperimentConfig | None:
    """The config the checkpoint was trained (or imported) with, if it is readable."""
    try:
        return read_config(directory)
    except (CheckpointError, ConfigError) as exc:
        log.warning("cannot read the config of %s (%s): using the command's config for tokenizer and data", directory,
                    exc)
        return None


def prepare_tasks(directory: Path, config: ExperimentConfig) -> tuple[ModelConfig, list[PreparedTask]]:
    """Tokenize every task's inputs for the checkpoint's model, with the tokenizer its run used."""

    model = ModelConfig.from_saved(read_state(directory).model)
    saved = saved_run_config(directory)
    tokenizer = checkpoint_tokenizer(directory, config.data.tokenizer)
    dataset_dir = config.eval.dataset_dir or (saved.data.dataset_dir if saved else config.data.dataset_dir)
    prepared = []
    for name in dict.fromkeys(config.eval.tasks):  # each task once, in the order given
        if harness_task_name(name) is not None:
            continue  # the harness prepares its own (run_harness_tasks)
        task = prepare(name, config.eval, tokenizer, model, dataset_dir, config.data.cache_dir)
        log.info("%s: %s", task.label, task.description)
        prepared.append(task)
    return model, prepared


def evaluate_checkpoint(checkpoint: str | Path, config: ExperimentConfig) -> EvalReport:
    """Run config.eval.tasks on a checkpoint (or a run directory's latest one): over a Ray Data actor
    pool with eval.distributed (joining or starting Ray as config.ray says), else in this process."""
    found = find_checkpoint(checkpoint)  # a URI for one on an object store, which runs from a local copy
    directory = local_checkpoint(found).absolute()
    step = read_state(directory).step
    if not has_weights(directory):  # found here rather than inside every actor
        raise CheckpointError(f"checkpoint {directory} lacks model.pt")
    harness_names = [n for n in dict.fromkeys(config.eval.tasks) if harness_task_name(n) is not None]
    manager = None
    if harness_names:  # unknown names are refused before any model is loaded
        manager = task_manager(config.eval, [harness_task_name(n) for n in harness_names])
        check_tasks([harness_task_name(n) for n in harness_names], manager)
    _, prepared = prepare_tasks(directory, config)
    model = device = None
    if config.eval.distributed:
        init_ray(config.ray.address, config.ray.num_cpus)
        results = [evaluate_with_ray(directory, task, config.eval, config.ray.autoscaling) for task in prepared]
    else:
        device = resolve_device(config.eval.device)
        model, _ = load_model(directory, device)
        results = [evaluate_in_process(model, task, config.eval, device) for task in prepared]
    harness = None
    if harness_names:
        lm = harness_model(directory, config, model, device)
        harness_results, harness = evaluate_harness(lm, [harness_task_name(n) for n in harness_names],
                                                    config.eval, "this process", manager)
        results += harness_results
    for result in results:
        shown = ", ".join(f"{k} {format_metric(k, v)}" for k, v in result.metrics.items())
        log.info("%s: %s in %.1f s on %s", result.label, shown, result.seconds, result.workers)
    return EvalReport(found if isinstance(found, str) else str(directory), step, results, harness)


def harness_model(directory: Path, config: ExperimentConfig, model=None, device=None):
    """The checkpoint as a harness model: scoring over the Ray Data actor pool with eval.distributed, else
    with the model already loaded in this process."""
    tokenizer = checkpoint_tokenizer(directory, config.data.tokenizer)
    block_size = ModelConfig.from_saved(read_state(directory).model).block_size
    if config.eval.distributed:
        scorer = RayScorer(directory, config.eval, config.ray.autoscaling, seed=config.eval.seed)
        return GptrayLM(scorer=scorer, tokenizer=tokenizer, block_size=block_size)
    return GptrayLM.from_model(model, tokenizer, device, config.eval.batch_size, config.eval.precision,
                               seed=config.eval.seed)
