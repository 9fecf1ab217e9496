"""Evaluation during training: eval.train_tasks every eval.train_interval steps, logged to the training run.

gptray's own tasks: the driver prepares their units once (tokenized, so workers need no tokenizer or
download, and a missing HellaSwag file stops the run before it starts); every rank scores its contiguous share
(gptray/core/shares.py) with its own model replica. The forward passes are padded so that each rank runs the
same number (FSDP's all-gathers must pair up), and the sums are all-reduced (a collective: every rank must call `run`).
lm-evaluation-harness tasks: the driver checks that they exist and load and hands the workers a
`harness_training.TrainingHarness`; rank 0 runs the harness and every rank scores a share of its requests. This
module does not import the harness (lm-eval's import costs ~1.3 s): a worker imports it only by unpickling the
TrainingHarness of a run that has harness tasks.
"""

from __future__ import annotations

import logging

import torch

from gptray.config import ExperimentConfig
from gptray.config.schema import EVAL_TASKS
from gptray.core.devices import all_reduce_sum
from gptray.core.shares import lockstep_batches, share
from gptray.data.tokenizer_loading import load_tokenizer
from gptray.eval.runner import task_metrics
from gptray.eval.tasks import TASKS, PreparedTask, batches, prepare

log = logging.getLogger(__name__)

BLOCKED_METRIC = "train/lm_eval_blocked_s"  # seconds an in-loop harness evaluation held the training workers


def training_payload(config: ExperimentConfig, tokenizer=None, harness=None) -> dict | None:
    """What the workers need to evaluate config.eval.train_tasks (plain data), or None without any.
    `tokenizer`: the run's (its dataset's); default the one data.tokenizer names. `harness`: the run's
    harness_training.TrainingHarness, if it has harness tasks to evaluate in the loop."""
    settings = config.eval
    own = [name for name in dict.fromkeys(settings.train_tasks) if name in EVAL_TASKS]  # the rest: the harness's
    if not own and harness is None:
        return None
    tokenizer = tokenizer or load_tokenizer(config.data.tokenizer)
    limit = settings.in_training().limit
    tasks = []
    for name in own:
        task = prepare(name, settings, tokenizer, config.model, settings.dataset_dir or config.data.dataset_dir,
                       config.data.cache_dir, limit)
        log.info("evaluating %s during training: %s", task.label, task.description)
        tasks.append({"name": task.task.name, "label": task.label, "units": task.units})
    return {"interval": config.train_tasks_interval(), "batch_size": settings.batch_size,
            "tasks": tasks, "harness": harness}


class TrainingEvaluator:
    def __init__(self, payload: dict, rank: int, world_size: int):
        self.interval = payload["interval"]
        self.batch_size = payload["batch_size"]
        self.rank, self.world_size = rank, world_size
        self.tasks = [PreparedTask(TASKS[t["name"]], t["label"], t["units"], "") for t in payload["tasks"]]
        self.harness = payload.get("harness")  # a harness_training.TrainingHarness, or None

    @torch.no_grad()
    def run(self, engine) -> dict[str, float]:
        """eval/<task>/<metric> for every task, the same on every rank (a collective)."""

        model = engine.eval_model
        model.eval()
        metrics = {}
        for task in self.tasks:
            mine = batches(share(task.units, self.rank, self.world_size), self.batch_size)
            # The rank with the most units sets the number of passes; the others repeat a pass and drop it.
            passes = lockstep_batches(len(task.units), self.world_size, self.batch_size)
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
            metrics.update(task_metrics(task.label, values))
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
