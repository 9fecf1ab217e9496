"""The tokenize job: corpora → Ray Data (read, tokenize, split) → Parquet token shards + manifest.json.

Reading and tokenizing run in parallel Ray tasks; the driver receives documents in corpus
order and writes them into shards, so the concatenated shards equal tiktoken's encoding of
the documents exactly, whatever the cluster size.
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from gptray.config import ExperimentConfig
from gptray.data.manifest import MANIFEST_NAME, SPLITS, Manifest, ProblemCounts, SourceInfo, SplitInfo
from gptray.data.readers import KEPT_STATUSES
from gptray.data.shards import TokenShardWriter
from gptray.data.sources import ResolvedSource, resolve_sources, source_dataset
from gptray.data.tokenizer import Tokenizer
from gptray.errors import DataError

log = logging.getLogger(__name__)

PROGRESS_SECONDS = 5.0


def is_validation(text: str, val_fraction: float, seed: int) -> bool:
    """Stable split by content: the same document lands in the same split in every run and corpus."""
    if val_fraction <= 0:
        return False
    digest = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=8, key=seed.to_bytes(8, "little"))
    return int.from_bytes(digest.digest(), "little") / 2**64 < val_fraction


def tokenize_records(batch: pa.Table, tokenizer: Tokenizer, val_fraction: float, split_seed: int) -> pa.Table:
    """Ray Data batch fn: document records → token lists (with <|endoftext|>) and a split flag."""
    texts = batch.column("text").to_pylist()
    statuses = batch.column("status").to_pylist()
    keep = [status in KEPT_STATUSES for status in statuses]
    encoded = iter(tokenizer.encode_documents([t for t, k in zip(texts, keep) if k]))
    empty = np.empty(0, dtype=tokenizer.dtype)
    documents = [next(encoded) if k else empty for k in keep]
    lengths = np.fromiter((len(d) for d in documents), dtype=np.int64, count=len(documents))
    offsets = np.zeros(len(documents) + 1, dtype=np.int32)
    np.cumsum(lengths, out=offsets[1:])
    values = np.concatenate(documents) if documents else empty
    tokens = pa.ListArray.from_arrays(pa.array(offsets), pa.array(values))
    return pa.table({
        "loc": batch.column("loc"),
        "status": batch.column("status"),
        "error": batch.column("error"),
        "is_val": pa.array([k and is_validation(t, val_fraction, split_seed) for t, k in zip(texts, keep)]),
        "bytes": pa.array([len(t.encode("utf-8", "surrogatepass")) for t in texts], pa.int64()),
        "tokens": tokens,
    })


@dataclass
class TokenizeResult:
    manifest: Manifest
    dataset_dir: str
    reused: bool  # an identical earlier job's output was kept
    seconds: float


def tokenize_request(config: ExperimentConfig, sources: list[ResolvedSource], tokenizer: Tokenizer) -> dict:
    """Everything that decides a dataset's content; an equal request reuses the existing shards."""
    data = config.data
    files = [
        [f, os.path.getsize(f), int(os.path.getmtime(f))] for s in sources for f in s.files
    ]
    return {
        "sources": [dict(dataclasses.asdict(s.config), text_unit=s.text_unit) for s in sources],
        "files": files,
        "tokenizer": tokenizer.describe(),
        "val_fraction": data.val_fraction,
        "split_seed": data.split_seed,
        "shard_tokens": data.shard_tokens,
    }


def tokenize_corpus(config: ExperimentConfig, overwrite: bool = False) -> TokenizeResult:
    """Run the tokenize job for `config.data`; returns the manifest it wrote (or found)."""
    import ray

    from gptray.runtime import init_ray

    started = time.monotonic()
    data = config.data
    tokenizer = Tokenizer(data.tokenizer)
    sources = resolve_sources(data.sources)
    out = Path(data.dataset_dir)
    request = tokenize_request(config, sources, tokenizer)
    request_digest = hashlib.sha256(repr(request).encode()).hexdigest()

    if (out / MANIFEST_NAME).exists():
        existing = Manifest.load(out)
        if existing.split.get("request_digest") == request_digest:
            log.info("%s already holds this exact dataset (%s tokens); nothing to do", out, f"{existing.tokens:,}")
            return TokenizeResult(existing, str(out), True, time.monotonic() - started)
        if not overwrite:
            raise DataError(
                f"{out} already holds a different token dataset (other sources, files or settings). "
                "Pass --overwrite to replace it, or choose another data.dataset_dir."
            )
    _remove_old_output(out)

    init_ray(config.ray)
    context = ray.data.DataContext.get_current()
    previous_order = context.execution_options.preserve_order
    context.execution_options.preserve_order = True  # shards must follow corpus order exactly
    writers = {split: TokenShardWriter(out, split, tokenizer.dtype, data.shard_tokens) for split in SPLITS}
    progress = _Progress()
    source_infos = []
    next_doc = 0
    try:
        for source in sources:
            log.info("source %d/%d: %s (%d file(s), documents are %ss)", source.index + 1, len(sources),
                     source.description, max(len(source.files), 1), source.text_unit)
            info = SourceInfo(source.description, source.kind, source.text_unit,
                              files=source.files, skipped_files=source.skipped_files)
            dataset = source_dataset(source).map_batches(
                tokenize_records, batch_format="pyarrow", batch_size=data.batch_documents,
                fn_kwargs={"tokenizer": tokenizer, "val_fraction": data.val_fraction, "split_seed": data.split_seed},
            )
            for batch in dataset.iter_batches(batch_size=None, batch_format="pyarrow"):
                next_doc = _route_batch(batch, writers, info, next_doc)
                progress.update(batch, info)
            source_infos.append(info)
            log.info("source %s: %s documents, %s tokens, %d problem record(s)", source.description,
                     f"{info.documents:,}", f"{info.tokens:,}", info.problems.total())
    finally:
        context.execution_options.preserve_order = previous_order

    splits = {split: SplitInfo() for split in SPLITS}
    for split, writer in writers.items():
        splits[split].shards = writer.close()
        splits[split].documents = sum(s.documents for s in splits[split].shards)
        splits[split].tokens = sum(s.tokens for s in splits[split].shards)
    problems = ProblemCounts()
    for info in source_infos:
        problems.merge(info.problems)
    manifest = Manifest(
        tokenizer=tokenizer.describe(),
        split={"val_fraction": data.val_fraction, "seed": data.split_seed,
               "method": "blake2b(document utf-8, key=seed) < val_fraction", "request_digest": request_digest},
        sources=source_infos,
        splits=splits,
        documents=sum(s.documents for s in splits.values()),
        tokens=sum(s.tokens for s in splits.values()),
        problems=problems,
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
    )
    if manifest.documents == 0:
        raise DataError(f"no documents to tokenize in {', '.join(s.description for s in sources)}; "
                        f"problems found: {problems.counts or 'none'}")
    manifest.fingerprint = manifest.compute_fingerprint()
    manifest.save(out)
    log.info("wrote %s: %s documents, %s tokens (train %s, val %s) in %d shard(s)", out / MANIFEST_NAME,
             f"{manifest.documents:,}", f"{manifest.tokens:,}", f"{splits['train'].tokens:,}",
             f"{splits['val'].tokens:,}", sum(len(s.shards) for s in splits.values()))
    if problems.total():
        log.warning("skipped or repaired input: %s (first locations are in the manifest)", problems.counts)
    return TokenizeResult(manifest, str(out), False, time.monotonic() - started)


def _route_batch(batch: pa.Table, writers: dict[str, TokenShardWriter], info: SourceInfo, next_doc: int) -> int:
    """Give each kept document its global id and send it to its split's writer; count the rest."""
    statuses = batch.column("status").to_pylist()
    kept = np.array([s in KEPT_STATUSES for s in statuses], dtype=bool)
    for status, loc, error in zip(statuses, batch.column("loc").to_pylist(), batch.column("error").to_pylist()):
        if status != "ok":
            info.problems.add(status, loc, error)
    doc_ids = np.full(len(kept), -1, dtype=np.int64)
    doc_ids[kept] = np.arange(next_doc, next_doc + int(kept.sum()))
    is_val = np.asarray(batch.column("is_val"), dtype=bool)
    tokens = batch.column("tokens").combine_chunks()
    for split, mask in (("train", kept & ~is_val), ("val", kept & is_val)):
        if mask.any():
            rows = pa.array(np.nonzero(mask)[0])
            writers[split].add(doc_ids[mask], tokens.take(rows))
    info.documents += int(kept.sum())
    info.tokens += int(np.asarray(pc.list_value_length(tokens))[kept].sum())
    return next_doc + int(kept.sum())


def _remove_old_output(out: Path) -> None:
    """Clear a previous dataset's files (only ours: the manifest and shard files)."""
    (out / MANIFEST_NAME).unlink(missing_ok=True)
    for split in SPLITS:
        for shard in (out / split).glob("shard-*.parquet*"):
            shard.unlink()


class _Progress:
    """Logs documents, tokens and throughput every few seconds while the job runs."""

    def __init__(self):
        self.start = self.last = time.monotonic()
        self.documents = self.tokens = self.bytes = 0

    def update(self, batch: pa.Table, info: SourceInfo) -> None:
        self.documents += batch.num_rows
        self.tokens += len(batch.column("tokens").combine_chunks().flatten())
        self.bytes += int(np.asarray(batch.column("bytes")).sum())
        now = time.monotonic()
        if now - self.last >= PROGRESS_SECONDS:
            self.last = now
            elapsed = now - self.start
            log.info("tokenized %s documents, %s tokens | %.2f M tokens/s, %.1f MB/s | %s",
                     f"{self.documents:,}", f"{self.tokens:,}", self.tokens / elapsed / 1e6,
                     self.bytes / elapsed / 1e6, info.description)
