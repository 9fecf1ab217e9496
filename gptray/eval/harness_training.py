"""lm-evaluation-harness tasks during training, on the training model: rank 0 runs the harness, and every batch of
requests it asks for is cut into contiguous shares, one per rank, each scored where it lands and gathered back.

Rank 0 alone builds requests and computes metrics (the harness's own work, cheap beside scoring); the others only
score. Rank 0 drives the rest with one broadcast per batch of requests and a last one that releases them with the
metrics, so every rank runs `TrainingHarness.run` to its end together, as the loop's other collectives do.
"""

from __future__ import annotations

import contextlib
import logging
import random
import time
from dataclasses import dataclass

import numpy as np
import torch

from gptray.config import EvalConfig, ExperimentConfig
from gptray.core.devices import broadcast_object, gather_objects
from gptray.core.errors import ConfigError, TrainingError
from gptray.core.shares import lockstep_batches, share
from gptray.eval.harness_model import GptrayLM, LocalScorer
from gptray.eval.harness_tasks import (
    check_tasks,
    evaluate_harness,
    harness_task_name,
    shown_measures,
    task_manager,
)
from gptray.eval.runner import flat_metrics
from gptray.eval.training import BLOCKED_METRIC

log = logging.getLogger(__name__)

KEY = "eval.train_tasks"
DONE, FAILED = "done", "failed"  # what rank 0 broadcasts besides a batch of requests


def merge(shares: list[list[dict]]) -> list[dict]:
    """The ranks' results (in rank order) as one list in request order."""
    return sorted((result for part in shares for result in part), key=lambda r: r["index"])


def harness_names(config: ExperimentConfig) -> list[str]:
    """The harness's names of the harness tasks in eval.train_tasks, each once, in the order given."""
    names = (harness_task_name(n) for n in dict.fromkeys(config.eval.train_tasks))
    return [n for n in names if n is not None]


def training_harness(config: ExperimentConfig, tokenizer) -> TrainingHarness | None:
    """The harness tasks of eval.train_tasks, checked now (on the driver, before any worker starts), to run in
    the training loop; None without any, or where eval.train_async runs them on checkpoints instead (also checked
    here: harness_validation.py)."""
    names = harness_names(config)
    if not names:
        return None
    settings = config.eval.in_training()
    check_training_tasks(names, settings)
    where = "on its checkpoints, beside it (eval.train_async)" if settings.train_async else "in the loop"
    log.info("evaluating lm-evaluation-harness task(s) %s during training, %s", ", ".join(names), where)
    return None if settings.train_async else TrainingHarness(names, settings, tokenizer)


def check_training_tasks(names: list[str], settings: EvalConfig) -> None:
    """Harness tasks of eval.train_tasks exist and load (their documents read here, on the driver), before any
    worker starts: a task that cannot be read would otherwise stop the run at its first evaluation."""
    manager = task_manager(settings, names)
    check_tasks(names, manager, KEY)
    try:
        manager.load(list(names))
    except Exception as exc:  # the harness and `datasets` raise anything from a task they cannot read
        raise ConfigError(KEY, f"cannot load lm-evaluation-harness task(s) {', '.join(names)}: "
                               f"{type(exc).__name__}: {exc}") from exc


class RankShareScorer:
    """The scorer interface of `LocalScorer` (harness_model.py) over every rank of a training run: each rank
    scores its contiguous share of the requests with its own replica and rank 0 gathers them. Under FSDP every
    forward pass is a collective: log-likelihood shares pad to the same number of passes, and every rank
    generates every request (generation's passes depend on the text)."""

    def __init__(self, local: LocalScorer, rank: int, world_size: int, lockstep: bool):
        self.local, self.rank, self.world_size, self.lockstep = local, rank, world_size, lockstep
        self.workers = f"{world_size} training rank(s)"

    # Rank 0's side, called by the harness.
    def loglikelihoods(self, units: list[dict]) -> list[dict]:
        return self._lead("loglikelihood", units)

    def generations(self, units: list[dict]) -> list[dict]:
        return self._lead("generate", units)

    def _lead(self, kind: str, units: list[dict]) -> list[dict]:
        broadcast_object((kind, units))
        return self.score(kind, units)

    def finish(self, outcome: str, payload) -> None:
        """Rank 0: release the other ranks, with the metrics (DONE) or what went wrong (FAILED)."""
        broadcast_object((outcome, payload))

    # Every other rank's side.
    def serve(self) -> dict[str, float]:
        """Score shares until rank 0 is done; its metrics."""
        while True:
            kind, payload = broadcast_object()
            if kind == DONE:
                return payload
            if kind == FAILED:
                raise TrainingError(f"lm-evaluation-harness tasks during training failed on rank 0: {payload}")
            self.score(kind, payload)

    def score(self, kind: str, units: list[dict]) -> list[dict] | None:
        """This rank's share of `units` scored; every rank's results on rank 0 (None elsewhere)."""
        if kind == "generate" and self.lockstep:
            results = self.local.generations(units)  # the same passes on every rank; rank 0 keeps its own
            return results if self.rank == 0 else None
        mine = share(units, self.rank, self.world_size)
        if kind == "generate":
            results = self.local.generations(mine) if mine else []
        else:
            results = self.local.loglikelihoods(mine) if mine else []
            if self.lockstep:
                self._pad(len(units), len(mine), units[:1])
        shares = gather_objects(results)
        return merge(shares) if shares is not None else None

    def _pad(self, total: int, mine: int, filler: list[dict]) -> None:
        """The passes this rank is short of the largest share's, run and dropped."""
        size = self.local.batch_size
        for _ in range(lockstep_batches(total, self.world_size, size) - lockstep_batches(mine, 1, size)):
            self.local.loglikelihoods(filler)


@dataclass
class TrainingHarness:
    """eval.train_tasks's harness tasks, run on a training engine's model (every rank calls `run`)."""

    names: list[str]  # the harness's task names
    settings: EvalConfig  # eval.train_limit already in its limit
    tokenizer: object  # the run's tokenizer

    def run(self, engine) -> dict[str, float]:
        """eval/lm_eval/<task>/<measure> for every task, and the seconds it held the workers; the same on every rank."""
        started = time.monotonic()
        model = engine.module  # unwrapped (DDP: this rank's replica; FSDP: the sharded root, every rank in step)
        model.eval()
        local = LocalScorer(model, self.tokenizer, engine.device, self.settings.batch_size,
                            engine.train_config.precision, self.settings.seed)
        scorer = RankShareScorer(local, engine.rank, engine.world_size, engine.train_config.parallelism == "fsdp")
        try:
            with _random_state_kept(engine.device):  # the harness seeds Python's, numpy's and torch's generators
                if engine.rank == 0:
                    metrics = self._lead(scorer, model.config.block_size)
                else:
                    metrics = scorer.serve()
        finally:
            model.train()
        return {**metrics, BLOCKED_METRIC: time.monotonic() - started}

    def _lead(self, scorer: RankShareScorer, block_size: int) -> dict[str, float]:
        lm = GptrayLM(scorer=scorer, tokenizer=self.tokenizer, block_size=block_size)
        try:
            results, _ = evaluate_harness(lm, self.names, self.settings, scorer.workers,
                                          task_manager(self.settings, self.names))
        except BaseException as exc:
            scorer.finish(FAILED, f"{type(exc).__name__}: {exc}")  # the others wait in a broadcast otherwise
            raise
        metrics = flat_metrics(results)
        for r in results:
            log.info("%s: %s in %.1f s on %s", r.label, shown_measures(r), r.seconds, r.workers)
        scorer.finish(DONE, metrics)
        return metrics


@contextlib.contextmanager
def _random_state_kept(device: torch.device):
    """Python's, numpy's and torch's random state as they were before the block: training's own (its data order,
    dropout) never depends on whether an evaluation ran."""
    python, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python)
        np.random.set_state(numpy_state)
