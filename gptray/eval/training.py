"""Evaluation during training: eval.train_tasks every eval.train_interval steps, logged to the training run.

The driver prepares the tasks' units once (tokenized, so workers need no tokenizer or download, and a
missing HellaSwag file stops the run before it starts); every rank scores its share with its own
model replica. The forward passes are padded so that each rank runs the same number (FSDP's
all-gathers must pair up), and the sums are all-reduced (a collective: every rank must call `run`).
"""

from __future__ import annotations

import logging
import math

import torch

from gptray.config import ExperimentConfig
from gptray.core.devices import all_reduce_sum
from gptray.data.tokenizer_loading import load_tokenizer
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
    tasks = []
    for name in dict.fromkeys(settings.train_tasks):
        task = prepare(name, settings, tokenizer, config.model, settings.dataset_dir or config.data.dataset_dir,
                       config.data.cache_dir, limit)
        log.info("evaluating %s during training: %s", task.label, task.description)
        tasks.append({"name": task.task.name, "label": task.label, "units": task.units})
    return {"interval": settings.train_interval or config.train.eval_interval, "batch_size": settings.batch_size,
            "tasks": tasks}


class TrainingEvaluator:
    def __init__(self, payload: dict, rank: int, world_size: int):
        self.interval = payload["interval"]
        self.batch_size = payload["batch_size"]
        self.rank, self.world_size = rank, world_size
        self.tasks = [PreparedTask(TASKS[t["name"]], t["label"], t["units"], "") for t in payload["tasks"]]

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
        return metrics
