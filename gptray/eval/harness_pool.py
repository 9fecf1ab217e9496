"""Harness requests over the Ray Data actor pool `gptray eval` scores its own tasks with: each actor loads the
checkpoint once (one per GPU, else one per CPU slot) and scores the units Ray Data streams to it."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from gptray.config import EvalConfig
from gptray.core.cluster import live_cluster
from gptray.eval.harness_scoring import generate_units, score_loglikelihoods
from gptray.eval.runner import _plain, actor_pool
from gptray.generation.loading import checkpoint_tokenizer, load_model, resolve_device

log = logging.getLogger(__name__)


class HarnessActor:
    """Ray Data callable class: the checkpoint's model and tokenizer, loaded once per actor."""

    def __init__(self, checkpoint: str, kind: str, device: str, precision: str, threads: int, seed: int):
        torch.set_num_threads(threads)  # no more threads than the CPUs Ray gave this actor
        self.device = resolve_device(device)
        self.model, directory = load_model(checkpoint, self.device)
        self.tokenizer = checkpoint_tokenizer(directory, "gpt2")
        self.kind, self.precision, self.seed = kind, precision, seed

    def __call__(self, batch):
        import pandas as pd

        units = [_plain(row) for row in batch.to_dict("records")]
        if self.kind == "loglikelihood":
            results = score_loglikelihoods(self.model, units, self.device, self.precision)
        else:
            results = generate_units(self.model, self.tokenizer, units, self.device, self.precision, self.seed)
        return pd.DataFrame(results)


@dataclass
class RayScorer:
    """The scorer interface of `harness_model.LocalScorer`, over a Ray Data actor pool (Ray initialized)."""

    checkpoint: Path
    settings: EvalConfig
    autoscaling: bool | None = None
    seed: int = 0
    workers: str = ""  # where the last requests ran, for the report

    def loglikelihoods(self, units: list[dict]) -> list[dict]:
        # longest first, so that each batch pads little
        return self._run("loglikelihood", sorted(units, key=lambda u: -len(u["tokens"])))

    def generations(self, units: list[dict]) -> list[dict]:
        return self._run("generate", units)

    def _run(self, kind: str, units: list[dict]) -> list[dict]:
        import ray
        from ray.data import ActorPoolStrategy

        if not units:
            return []
        size = self.settings.batch_size
        num_batches = -(-len(units) // size)
        actors, cpus, gpus = actor_pool(self.settings, num_batches, live_cluster(self.autoscaling))
        device = "cuda" if gpus else ("cpu" if self.settings.device == "auto" else self.settings.device)
        self.workers = f"{actors} Ray Data actor(s) ({'1 GPU' if gpus else f'{cpus:g} CPU'} each)"
        log.info("harness %s: %d requests in %d batches over %s", kind, len(units), num_batches, self.workers)
        scored = ray.data.from_items(units, override_num_blocks=min(num_batches, 4 * actors)).map_batches(
            HarnessActor,
            fn_constructor_kwargs=dict(checkpoint=str(self.checkpoint), kind=kind, device=device,
                                       precision=self.settings.precision, threads=max(1, int(cpus)), seed=self.seed),
            batch_size=size, batch_format="pandas", compute=ActorPoolStrategy(size=actors), num_cpus=cpus,
            num_gpus=gpus)
        results = sorted((_plain(row) for row in scored.take_all()), key=lambda r: r["index"])
        if [r["index"] for r in results] != sorted(u["index"] for u in units):  # each exactly once
            raise RuntimeError(f"harness {kind}: {len(results)} results for {len(units)} requests")
        return results
