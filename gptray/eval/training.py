"""Evaluation during training: eval.train_tasks every eval.train_interval steps, logged to the training run.

gptray's own tasks: the driver prepares their units once (tokenized, so workers need no tokenizer or
download, and a missing HellaSwag file stops the run before it starts); every rank scores its share with
its own model replica. The forward passes are padded so that each rank runs the same number (FSDP's
all-gathers must pair up), and the sums are all-reduced (a collective: every rank must call `run`).
lm-evaluation-harness tasks: the driver checks that they exist and load; rank 0 runs the harness and every
rank scores a share of its requests (harness_training.py).
"""

from __future__ import annotations

import dataclasses
import logging
import math

import torch

from gptray.config import ExperimentConfig
from gptray.core.devices import all_reduce_sum
from gptray.data.tokenizer_loading import load_tokenizer
from gptray.eval.harness_tasks import harness_task_name
from gptray.eval.harness_training import BLOCKED_METRIC, TrainingHarness, check_training_tasks
from gptray.eval.tasks import TASKS, PreparedTask, batches, prepare

log = logging.getLogger(__name__)


def training_payload(config: ExperimentConfig, tokenizer=None) -> dict | None:
    """What the workers need to evaluate config.eval.train_tasks (plain data), or None without any.
    `tokenizer`: the run's (its dataset's); default the one data.tokenizer names."""
    settings = config.eval
    if not settings.train_tasks:
        return None
    tokenizer = tokenizer or load_tokenizer(config.data.tokenizer)
    limit = settings.train_limit or settings.limit
    names = list(dict.fromkeys(settings.train_tasks))  # each once, in the order given
    harness = [harness_task_name(n) for n in names if harness_task_name(n) is not None]
    if harness:  # refused now, before any worker starts, if one is unknown or cannot be read
        check_training_tasks(harness, settings)
        log.info("evaluating lm-evaluation-harness task(s) %s during training%s", ", ".join(harness),
                 " on its checkpoints, beside it (eval.train_async)" if settings.train_async else "")
    if settings.train_async:
        harness = []  # Ray Train's validation tasks run them (harness_validation.py), not the workers
    own = [n for n in names if harness_task_name(n) is None]
    if not own and not harness:
        return None
    tasks = []
    for name in own:
        task = prepare(name, settings, tokenizer, config.model, settings.dataset_dir or config.data.dataset_dir,
                       config.data.cache_dir, limit)
        log.info("evaluating %s during training: %s", task.label, task.description)
        tasks.append({"name": task.task.name, "label": task.label, "units": task.units})
    return {"interval": settings.train_interval or config.train.eval_interval, "batch_size": settings.batch_size,
            "tasks": tasks, "harness": harness, "harness_settings": dataclasses.replace(settings, limit=limit),
            "tokenizer": tokenizer if harness else None}


class TrainingEvaluator:
    def __init__(self, payload: dict, rank: int, world_size: int):
        self.interval = payload["interval"]
        self.batch_size = payload["batch_size"]
        self.rank, self.world_size = rank, world_size
        self.tasks = [PreparedTask(TASKS[t["name"]], t["label"], t["units"], "") for t in payload["tasks"]]
        self.harness = TrainingHarness(payload["harness"], payload["harness_settings"], payload["tokenizer"], rank,
                                       world_size) if payload.get("harness") else None

    @torch.no_grad()
    def run(self, engine) -> dict[str, float]:
        """eval/<task>/<metric> for every task, the same on every rank (a collective)."""

        model = engine.eval_model
        model.eval()
        metrics = {}
        for task in self.tasks:
            mine = batches(task.units[self.rank :: self.world_size], self.batch_size)
            # The rank with the most units sets the number of passes; the others repeat a pass and drop it.
            passes = math.ceil(math.ceil(len(task.units) / self.world_size) / self.batch_size)
            results = []
            for p in range(passes):
                chunk = mine[p] if p < len(mine) else task.units[:1]
                with engine.autocast():
                    scored = task.task.score(model, chunk, engine.device)
                if p < len(mine):
                    results += scored
            sums = torch.tensor(task.task.totals(results), dtype=torch.float64, device=engine.device)
            all_reduce_sum(sums)
            values = task.task.metrics(sums.cpu().numpy())
            metrics.update({f"eval/{task.label}/{k}": float(v) for k, v in values.items()})
        engine.eval_model.train()
        if self.harness is not None:
            metrics.update(self.harness.run(engine))  # a collective too
        return metrics


HEADLINES = ("acc_norm", "acc", "ppl", "word_perplexity", "exact_match")  # a task's measure on the progress line


def progress_parts(metrics: dict[str, float]) -> list[str]:
    """The progress line's evaluations: each task's headline measure (the first of HEADLINES it has, else its
    first), and the seconds harness tasks held the workers."""
    measures: dict[str, dict[str, float]] = {}
    for key, value in metrics.items():
        if key.startswith("eval/"):
            task, _, measure = key.removeprefix("eval/").rpartition("/")
            if task and not measure.endswith("_stderr") and measure != "examples":
                measures.setdefault(task, {})[measure] = value
    parts = []
    for task, values in measures.items():
        measure = next((m for m in HEADLINES if m in values), next(iter(values)))
        parts.append(f"{task} {measure} {values[measure]:.4f}")
    if BLOCKED_METRIC in metrics:
        parts.append(f"lm_eval {metrics[BLOCKED_METRIC]:.1f} s")
    return parts
