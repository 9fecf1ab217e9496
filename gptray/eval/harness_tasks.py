"""lm-evaluation-harness tasks in `gptray eval`: which names in eval.tasks are harness tasks, running them on a
gptray model, and their results as gptray's task results (a metric per task and measure)."""

from __future__ import annotations

import functools
import logging
import math
import time
from pathlib import Path

from lm_eval import evaluator
from lm_eval.tasks import TaskManager

from gptray.config import EvalConfig
from gptray.config.schema import EVAL_TASKS, HARNESS_PREFIX
from gptray.core.errors import ConfigError
from gptray.eval.runner import TaskResult

log = logging.getLogger(__name__)


def harness_task_name(name: str) -> str | None:
    """The harness's name for an eval.tasks entry, or None for one of gptray's own tasks: `lm_eval/NAME` is
    always the harness's (lm_eval/hellaswag: its HellaSwag), a bare name the harness's unless gptray has it."""
    if name.startswith(HARNESS_PREFIX):
        return name.removeprefix(HARNESS_PREFIX)
    return None if name in EVAL_TASKS else name


def task_manager(settings: EvalConfig, names: list[str] | None = None):
    """The harness's task index: the task YAMLs under eval.harness_include, and the harness's own unless
    every one of `names` is a local task (indexing the harness's ~15,000 YAMLs takes seconds)."""
    include = tuple(str(Path(p).absolute()) for p in settings.harness_include)
    if include and names is not None:
        local = _index(include, defaults=False)
        if all(name in set(local.all_tasks) for name in names):
            return local
    return _index(include, defaults=True)


@functools.lru_cache(maxsize=8)
def _index(include: tuple[str, ...], defaults: bool):
    """One index per set of directories in a process (a task YAML edited meanwhile is not seen again)."""
    return TaskManager(include_path=list(include) or None, include_defaults=defaults)


def check_tasks(names: list[str], manager, key: str = "eval.tasks") -> None:
    """Every name is a harness task, group or tag: refused before any model is loaded (ConfigError naming `key`)."""
    known = set(manager.all_tasks)
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(key, f"no lm-evaluation-harness task named {', '.join(map(repr, unknown))} "
                                        f"(`lm-eval ls tasks` lists them; local task YAMLs go in eval.harness_include)")


def run_tasks(lm, names: list[str], settings: EvalConfig, manager=None) -> dict:
    """The harness's results (its JSON-able dict, without per-sample logs) of `names` on the model `lm`."""
    manager = manager or task_manager(settings, names)
    check_tasks(names, manager)
    results = evaluator.simple_evaluate(model=lm, tasks=list(names), num_fewshot=settings.num_fewshot,
                                        limit=settings.limit, bootstrap_iters=settings.bootstrap_iters,
                                        task_manager=manager, log_samples=False, random_seed=settings.seed,
                                        numpy_random_seed=settings.seed, torch_random_seed=settings.seed,
                                        fewshot_random_seed=settings.seed)
    return results


def task_results(results: dict, seconds: float, workers: str) -> list[TaskResult]:
    """One TaskResult per task (and group) the harness reports: label lm_eval/<task>, metrics by measure."""
    out = []
    for task, values in results["results"].items():
        metrics = {}
        for key, value in values.items():
            measure, _, filter_name = key.partition(",")
            if not filter_name or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # "alias", "samples" and the like; "N/A" stderrs
            if isinstance(value, float) and not math.isfinite(value):
                continue
            metrics[measure if filter_name == "none" else f"{measure}-{filter_name}"] = float(value)
        n = results.get("n-samples", {}).get(task, {}).get("effective")
        if n is not None:
            metrics["examples"] = float(n)
        shots = results.get("n-shot", {}).get(task)
        description = f"lm-evaluation-harness {task}" + (f", {shots}-shot" if shots is not None else "") + \
                      (f", {n:,} examples" if n is not None else "")
        out.append(TaskResult(f"{HARNESS_PREFIX}{task}", description, metrics, [], seconds, workers))
    return out


def shown_measures(result: TaskResult) -> str:
    """A harness task's measures for a log line, their standard errors left out."""
    return ", ".join(f"{k} {v:.4f}" for k, v in result.metrics.items() if not k.endswith("_stderr"))


def evaluate_harness(lm, names: list[str], settings: EvalConfig, workers: str,
                     manager=None) -> tuple[list[TaskResult], dict]:
    """Run harness tasks on `lm`; gptray's results and the harness's own."""
    started = time.monotonic()
    results = run_tasks(lm, names, settings, manager)
    return task_results(results, time.monotonic() - started, getattr(lm.scorer, "workers", "") or workers), results
