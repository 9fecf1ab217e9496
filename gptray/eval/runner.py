"""Scoring prepared tasks: in this process, or with Ray Data over an actor pool that holds one model per actor.

The distributed path is `map_batches` with a callable class: each actor loads the checkpoint once (one
per GPU, or per CPU slot), and Ray Data streams batches of units through the pool. Units carry their
own tokens, so actors need no tokenizer and no dataset, only the checkpoint path (shared storage on a
multi-node cluster).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from gptray.config import EvalConfig
from gptray.core.cluster import Cluster, Demand, check_fits, live_cluster
from gptray.core.devices import autocast
from gptray.core.errors import ConfigError
from gptray.core.progress_bar import logs_above, progress_bar
from gptray.eval.tasks import TASKS, PreparedTask, batches
from gptray.generation.loading import load_model, resolve_device

log = logging.getLogger(__name__)

@dataclass
class TaskResult:
    label: str
    description: str
    metrics: dict[str, float]
    results: list[dict]  # per unit (example or window), in input order
    seconds: float
    workers: str  # where it ran: "this process (cpu)", "3 Ray Data actors (CPU)"
    notes: list[str] = field(default_factory=list)


def flat_metrics(tasks: list[TaskResult]) -> dict[str, float]:
    """The tasks' metrics under their MLflow names: eval/<task>/<metric>."""
    return {name: value for t in tasks for name, value in task_metrics(t.label, t.metrics).items()}


def task_metrics(label: str, values: dict[str, float]) -> dict[str, float]:
    """One task's metrics under their MLflow names: eval/<label>/<metric>."""
    return {f"eval/{label}/{name}": float(value) for name, value in values.items()}


@torch.no_grad()
def score_units(model, task_name: str, units: list[dict], device: torch.device, precision: str = "fp32") -> list[dict]:
    """One forward pass of `model` over a batch of units."""
    with autocast(device, precision):
        return TASKS[task_name].score(model, units, device)


def finish(prepared: PreparedTask, results: list[dict], started: float, workers: str) -> TaskResult:
    results = sorted(results, key=lambda r: (r.get("source", 0), r.get("index", r.get("begin", 0))))
    metrics = prepared.metrics(prepared.task.totals(results))
    return TaskResult(prepared.label, prepared.description, metrics, results, time.monotonic() - started, workers,
                      list(prepared.notes))


def evaluate_in_process(model, prepared: PreparedTask, settings: EvalConfig, device: torch.device) -> TaskResult:
    started = time.monotonic()
    model.eval()
    chunks = batches(prepared.units, settings.batch_size)
    results: list[dict] = []
    report_every = max(len(chunks) // 10, 1)
    bar = progress_bar(len(chunks), prepared.label, "batch")  # on a terminal; else the lines below
    try:
        with logs_above(bar):
            for i, chunk in enumerate(chunks):
                results += score_units(model, prepared.task.name, chunk, device, settings.precision)
                if bar is not None:
                    bar.update(1)
                elif (i + 1) % report_every == 0 or i + 1 == len(chunks):
                    log.info("%s: %d/%d batches", prepared.label, i + 1, len(chunks))
    finally:
        if bar is not None:
            bar.close()
    return finish(prepared, results, started, f"this process ({device.type})")


class UnitScorer:
    """Ray Data callable class: one per actor, holding the model for every batch the actor scores."""

    def __init__(self, checkpoint: str, task: str, device: str, precision: str, threads: int):
        torch.set_num_threads(threads)  # no more threads than the CPUs Ray gave this actor
        self.device = resolve_device(device)
        self.model, _ = load_model(checkpoint, self.device)
        self.task = task
        self.precision = precision

    def __call__(self, batch):
        import pandas as pd

        units = batch.to_dict("records")
        return pd.DataFrame(score_units(self.model, self.task, units, self.device, self.precision))


def actor_pool(settings: EvalConfig, num_batches: int, cluster: Cluster) -> tuple[int, float, float]:
    """(actors, CPUs per actor, GPUs per actor). One actor per GPU where the cluster has GPUs (and the
    device allows them); else one per CPU slot but one, leaving a CPU for Ray Data's own tasks (on a
    small machine a pool that takes every CPU can wait forever), and never more actors than batches.
    A pool that a cluster which cannot grow will never hold is refused (ConfigError, exit 2)."""
    gpus = 0.0 if settings.device == "cpu" else cluster.total("GPU")
    if settings.device.startswith("cuda") and gpus < 1 and not cluster.can_grow:
        raise ConfigError("eval.device", f"{settings.device!r} asked for, but the Ray cluster has no GPU")
    use_gpu = gpus >= 1 and (settings.device == "auto" or settings.device.startswith("cuda"))
    if settings.num_actors is not None:
        size = settings.num_actors
    elif use_gpu:
        size = int(gpus)
    else:
        size = int(cluster.total("CPU") // settings.cpus_per_actor) - 1
    size = max(1, min(size, num_batches))
    bundle = {"CPU": settings.cpus_per_actor, **({"GPU": 1.0} if use_gpu else {})}
    check_fits(Demand("evaluation", size, bundle, {} if use_gpu else {"CPU": 1.0},
                      f"eval.num_actors={size} × eval.cpus_per_actor={settings.cpus_per_actor:g}"
                      + ("" if use_gpu else ", and a CPU for Ray Data's tasks"), unit="actor"), cluster)
    return size, settings.cpus_per_actor, 1.0 if use_gpu else 0.0


def evaluate_with_ray(checkpoint: str | Path, prepared: PreparedTask, settings: EvalConfig,
                      autoscaling: bool | None = None) -> TaskResult:
    """Score every unit over a Ray Data actor pool (Ray must be initialized)."""
    import ray
    from ray.data import ActorPoolStrategy

    started = time.monotonic()
    num_batches = -(-len(prepared.units) // settings.batch_size)
    actors, cpus, gpus = actor_pool(settings, num_batches, live_cluster(autoscaling))
    device = "cuda" if gpus else ("cpu" if settings.device == "auto" else settings.device)
    where = f"{actors} Ray Data actor(s) ({'1 GPU' if gpus else f'{cpus:g} CPU'} each)"
    log.info("%s: %s in %d batches of %d over %s", prepared.label, prepared.description, num_batches,
             settings.batch_size, where)
    dataset = ray.data.from_items(prepared.units, override_num_blocks=min(num_batches, 4 * actors))
    scored = dataset.map_batches(
        UnitScorer,
        fn_constructor_kwargs=dict(checkpoint=str(checkpoint), task=prepared.task.name, device=device,
                                   precision=settings.precision, threads=max(1, int(cpus))),
        batch_size=settings.batch_size,
        batch_format="pandas",
        compute=ActorPoolStrategy(size=actors),
        num_cpus=cpus,
        num_gpus=gpus,
    )
    results = [_plain(row) for row in scored.take_all()]
    if len(results) != len(prepared.units):  # every unit must come back exactly once
        raise RuntimeError(f"{prepared.label}: {len(results)} results for {len(prepared.units)} units")
    return finish(prepared, results, started, where)


def _plain(row: dict) -> dict:
    """Numpy scalars and arrays from Arrow back to Python values."""
    out = {}
    for key, value in row.items():
        if isinstance(value, np.ndarray):
            value = value.tolist()
        elif isinstance(value, np.generic):
            value = value.item()
        out[key] = value
    return out
