"""Evaluation tasks: each turns its inputs into self-contained units, scores a batch of units in one forward
pass, and reduces per-unit results to sums (which add across workers) and then to metrics."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from gptray.config import EvalConfig, ModelConfig
from gptray.core.errors import ConfigError, DataError
from gptray.data.global_order import open_split_tokens
from gptray.data.manifest import Manifest
from gptray.data.token_bytes import byte_table, dataset_mismatch
from gptray.eval import hellaswag, perplexity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Task:
    name: str
    score: Callable  # (model, units, device) -> per-unit results, one forward pass
    totals: Callable  # per-unit results -> np.ndarray of sums
    metrics: Callable  # sums -> {metric: value}
    primary: str  # the metric a summary line shows


TASKS = {
    "hellaswag": Task("hellaswag", hellaswag.score, hellaswag.totals, hellaswag.metrics, "acc_norm"),
    "perplexity": Task("perplexity", perplexity.score, perplexity.totals, perplexity.metrics, "ppl"),
}


@dataclass
class PreparedTask:
    """A task's units, ready to score anywhere (they carry their tokens)."""

    task: Task
    label: str  # its name in results and MLflow: "hellaswag", "perplexity", "perplexity-text", …
    units: list[dict]
    description: str
    notes: list[str] = field(default_factory=list)

    def metrics(self, sums: np.ndarray) -> dict[str, float]:
        return self.task.metrics(sums)


def task_named(name: str, key: str = "eval.tasks") -> Task:
    if name not in TASKS:
        raise ConfigError(key, f"unknown task {name!r}; choose from {', '.join(TASKS)}")
    return TASKS[name]


def prepare(name: str, settings: EvalConfig, tokenizer, model: ModelConfig, dataset_dir: str | None,
            cache_dir: str | None = None, limit: int | None = None) -> PreparedTask:
    """Read and tokenize a task's inputs for a model: HellaSwag examples, or perplexity windows over the
    token dataset's split (dataset_dir) or over settings.text_files."""
    task = task_named(name)
    limit = settings.limit if limit is None else limit
    if name == "hellaswag":
        examples = hellaswag.read_examples(settings.hellaswag, limit)
        units = hellaswag.encode_examples(examples, tokenizer, model.vocab_size)
        notes = [f"skipped {examples.skipped} malformed line(s): {'; '.join(examples.problems)}"] \
            if examples.skipped else []
        return PreparedTask(task, "hellaswag", units, f"{len(units):,} examples from {examples.source}", notes)
    max_length = settings.max_length or model.block_size
    if max_length > model.block_size:
        raise ConfigError("eval.max_length", f"must be <= the model's block_size {model.block_size} (got {max_length})")
    stride = settings.stride or max(max_length // 2, 1)
    if stride > max_length:
        raise ConfigError("eval.stride", f"must be <= the window length {max_length} (got {stride})")
    notes = []
    if settings.text_files:
        units, tokens = [], 0
        token_bytes = byte_table(tokenizer)
        for source, (path, text) in enumerate(perplexity.read_text_files(settings.text_files)):
            ids = np.asarray(tokenizer.encode(text), dtype=np.int64)
            _check_vocabulary(ids, model.vocab_size, path)
            units += perplexity.stream_units(ids, max_length, stride, source, token_bytes)
            tokens += len(ids)
        label, where = "perplexity-text", f"{len(settings.text_files)} text file(s), {tokens:,} tokens"
    else:
        units, where, notes = _split_units(settings.split, dataset_dir, cache_dir, model, max_length, stride,
                                           tokenizer)
        label = "perplexity" if settings.split == "val" else f"perplexity-{settings.split}"
    if not units:
        raise DataError(f"perplexity: {where} has fewer than two tokens: nothing to predict")
    if limit is not None and len(units) > limit:
        units = units[:limit]
        where += f", its first {limit:,} windows"
    description = f"{len(units):,} windows of up to {max_length} tokens (stride {stride}) over {where}"
    return PreparedTask(task, label, units, description, notes)


def _split_units(split: str, dataset_dir: str | None, cache_dir: str | None, model: ModelConfig, max_length: int,
                 stride: int, tokenizer) -> tuple[list[dict], str, list[str]]:
    if not dataset_dir:
        raise ConfigError("eval.dataset_dir", "perplexity needs a token dataset (or eval.text_files)")
    manifest = Manifest.load(dataset_dir)
    if split not in manifest.splits:
        raise ConfigError("eval.split", f"the token dataset {dataset_dir} has no split {split!r} "
                                        f"(it has {', '.join(manifest.splits)})")
    vocab = manifest.tokenizer.get("vocab_size", 0)
    if vocab > model.vocab_size:
        raise DataError(f"the token dataset {dataset_dir} was tokenized with {manifest.tokenizer.get('name')} "
                        f"({vocab:,} tokens), more than the model's vocabulary of {model.vocab_size:,}")
    tokens = open_split_tokens(dataset_dir, manifest, split, cache_dir)
    mismatch = dataset_mismatch(tokenizer, manifest.tokenizer)
    notes = [] if mismatch is None else [f"no bpb: {mismatch}, so the bytes its tokens stand for are unknown"]
    for note in notes:
        log.warning("perplexity over %s: %s", dataset_dir, note)
    token_bytes = byte_table(tokenizer) if mismatch is None else None
    units = perplexity.stream_units(tokens, max_length, stride, token_bytes=token_bytes)
    return units, f"the {split} split of {dataset_dir} ({len(tokens):,} tokens)", notes


def _check_vocabulary(ids: np.ndarray, vocab_size: int, where: str) -> None:
    if len(ids) and int(ids.max()) >= vocab_size:
        raise DataError(f"{where} has token {int(ids.max())}, outside the model's vocabulary of {vocab_size}")


def batches(units: list[dict], size: int) -> list[list[dict]]:
    return [units[i : i + size] for i in range(0, len(units), size)]
