"""What a rank trains and validates on: windows of a token dataset under the global or the block order.

The global order (windows.py) draws windows from the whole train split, which each node decodes
into one cached file before the first step. The block order (block_order.py) reads only the blocks
in use and the next, through a bounded node cache (node_cache.py) that a background thread fills
ahead of the step. Which one a run uses is decided once, on the driver (`DataOrder.for_run`), handed
to every rank, and recorded in its checkpoints.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gptray.config import ExperimentConfig
from gptray.core.errors import ConfigError, DataError
from gptray.core.storage import Storage
from gptray.data.block_order import BlockOrder
from gptray.data.cache_seal import file_digest, is_intact, seal_path, write_seal
from gptray.data.global_order import (
    IGNORE_INDEX,
    WindowSampler,
    default_cache_dir,
    eval_starts,
    gather_windows,
    open_split_loss_mask,
    open_split_tokens,
)
from gptray.data.manifest import Manifest
from gptray.data.node_cache import ShardCache
from gptray.data.rank_shares import batch_digest
from gptray.data.shards import shard_loss_mask

log = logging.getLogger(__name__)


def decoded_bytes(manifest: Manifest, split: str = "train") -> int:
    """What a split takes decoded in a node's cache: its tokens, plus one byte each for a loss mask."""
    tokens = manifest.split_info(split).tokens
    return tokens * np.dtype(manifest.tokenizer["dtype"]).itemsize + (tokens if manifest.prompt_masked else 0)


def check_dataset_fits(config: ExperimentConfig, manifest: Manifest) -> None:
    """The model and sequence length must fit the token dataset: refused before any worker starts."""
    vocab = manifest.tokenizer["vocab_size"]
    if config.model.vocab_size < vocab:
        raise DataError(f"model.vocab_size {config.model.vocab_size} is smaller than the dataset's tokenizer "
                        f"vocabulary ({vocab}, {manifest.tokenizer['name']})")
    seq_len = config.train.effective_seq_len(config.model)
    train_tokens = manifest.split_info("train").tokens
    if train_tokens < seq_len + 1:
        raise DataError(f"the train split of {config.data.dataset_dir} has {train_tokens} tokens; "
                        f"one training window needs {seq_len + 1}")
    if manifest.split_info("val").tokens < seq_len + 1 and config.train.eval_windows > 0:
        log.warning("the val split has %d tokens, fewer than one window of %d: validation loss is skipped",
                    manifest.split_info("val").tokens, seq_len + 1)


def _order_kind(config: ExperimentConfig, manifest: Manifest) -> Literal["global", "block"]:
    """The order a run uses: data.shuffle, with auto resolved (global while the decoded train split
    fits data.cache_limit, block above it). Refuses a global order the cache limit cannot hold."""
    data = config.data
    limit, needed = data.cache_limit_bytes(), decoded_bytes(manifest)
    if data.shuffle == "auto":
        return "global" if needed <= limit else "block"
    if data.shuffle == "global" and needed > limit:
        raise ConfigError("data.shuffle", f"global decodes the whole train split on every node: {needed:,} bytes, "
                                          f"more than data.cache_limit ({data.cache_limit} = {limit:,} bytes). "
                                          "Use data.shuffle=block (or auto), or raise data.cache_limit")
    return data.shuffle


@dataclass(frozen=True)
class DataOrder:
    """A run's order of training windows, decided once on the driver for every rank: the global order, or
    the block order with the settings that decide it besides the dataset, model and seed. A checkpoint
    records it (`record`) and resumes only into the same order."""

    kind: Literal["global", "block"]
    block_shards: int | None = None  # the block order's shards per block (data.shuffle_block_shards)
    global_batch: int | None = None  # the block order's windows per step (train.batch_size)

    @classmethod
    def of(cls, kind: str, config: ExperimentConfig) -> DataOrder:
        """The order of `kind` ("global" or "block") under this config's settings."""
        if kind == "global":
            return cls("global")
        if kind != "block":
            raise ValueError(f"no order of training windows is called {kind!r}")
        return cls("block", config.data.shuffle_block_shards, config.train.batch_size)

    @classmethod
    def for_run(cls, config: ExperimentConfig, manifest: Manifest) -> DataOrder:
        """The order a run of `config` trains in (data.shuffle, auto resolved); a block order the node cache
        cannot hold is refused now, before any worker starts."""
        order = cls.of(_order_kind(config, manifest), config)
        if order.kind == "block":
            needed = check_cache_limit(config, manifest, block_order(config, manifest))
            log.info("block order: blocks of %d shard(s); a node's cache holds at most %s of %s "
                     "(data.cache_limit %s)", order.block_shards, f"{needed:,}",
                     f"{decoded_bytes(manifest):,} bytes decoded", config.data.cache_limit)
        return order

    def windows_per_epoch(self, config: ExperimentConfig, manifest: Manifest) -> int:
        """Training windows in one pass over the train split, as this order counts them (an epoch)."""
        if self.kind == "block":
            return block_order(config, manifest).num_windows
        seq_len = config.train.effective_seq_len(config.model)
        return WindowSampler(manifest.split_info("train").tokens, seq_len, config.train.seed).num_windows

    def record(self) -> dict:
        """The order as checkpoints record it (state.json's data_order)."""
        if self.kind == "global":
            return {"shuffle": "global"}
        return {"shuffle": "block", "block_shards": self.block_shards, "global_batch": self.global_batch}


def block_order(config: ExperimentConfig, manifest: Manifest) -> BlockOrder:
    shards = manifest.split_info("train").shards
    return BlockOrder([s.tokens for s in shards], [s.source for s in shards],
                      config.train.effective_seq_len(config.model), config.train.seed,
                      config.data.shuffle_block_shards, config.train.batch_size)


def check_cache_limit(config: ExperimentConfig, manifest: Manifest, order: BlockOrder) -> int:
    """The bytes a node's cache needs under the block order (the blocks one step reads at most, per
    source, plus the next one to prefetch); refuses a data.cache_limit below it, with the numbers."""
    itemsize = np.dtype(manifest.tokenizer["dtype"]).itemsize + (1 if manifest.prompt_masked else 0)
    shards = manifest.split_info("train").shards
    needed, parts = 0, []
    for s, stream in enumerate(order.streams):
        blocks = order.blocks_a_step_spans(s) + (1 if config.data.prefetch else 0)
        sizes = sorted((shards[i].tokens * itemsize for i in stream.shard_ids), reverse=True)
        most = sum(sizes[: blocks * stream.block_shards])
        needed += most
        parts.append(f"source {stream.source}: {blocks} block(s) of up to {stream.block_shards} shard(s), "
                     f"{most:,} bytes")
    limit = config.data.cache_limit_bytes()
    if needed > limit:
        raise ConfigError("data.cache_limit", f"{config.data.cache_limit} ({limit:,} bytes) is too small for the "
                                              f"block order: a node needs {needed:,} bytes ({'; '.join(parts)}). "
                                              "Raise data.cache_limit or lower data.shuffle_block_shards")
    return needed


class WholeSplitWindows:
    """The global order over the whole train split, decoded once per node (windows.py)."""

    order_kind = "global"

    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, global_batch: int,
                 loss_mask: np.ndarray | None = None):
        self.tokens, self.loss_mask, self.seq_len = tokens, loss_mask, seq_len
        self.global_batch = global_batch
        self.sampler = WindowSampler(len(tokens), seq_len, seed)
        self.num_windows = self.sampler.num_windows
        self.num_tokens = len(tokens)

    def begin_step(self, step: int) -> None:
        pass

    def rank_micro_batches(self, step: int, rank: int, world_size: int, micro_batch: int) -> list[np.ndarray]:
        return self.sampler.rank_micro_batches(step, rank, world_size, self.global_batch, micro_batch)

    @property
    def masked(self) -> bool:
        """Whether some targets are left out of the loss (a prompt's)."""
        return self.loss_mask is not None

    def batch_digest(self, step: int) -> str:
        """Digest of step `step`'s global batch: its windows' token offsets in batch order (rank_shares.py)."""
        first = step * self.global_batch
        return batch_digest(self.sampler.starts(np.arange(first, first + self.global_batch, dtype=np.int64)))

    def gather(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return gather_windows(self.tokens, batch, self.seq_len, self.loss_mask)

    def locations(self, batch: np.ndarray) -> list[tuple[None, int]]:
        """(None, token offset in the split) of each window of a batch."""
        return [(None, int(start)) for start in batch]

    def epoch_of(self, step: int) -> float:
        return self.sampler.epoch_of(step, self.global_batch)

    def close(self) -> None:
        pass


class BlockWindows:
    """The block order, read through this node's bounded shard cache, the next block fetched ahead."""

    order_kind = "block"

    def __init__(self, order: BlockOrder, cache: ShardCache, rank: int = 0, prefetch: bool = True):
        self.order, self.cache, self.rank = order, cache, rank
        self.seq_len, self.global_batch = order.seq_len, order.global_batch
        self.num_windows = order.num_windows
        self.num_tokens = sum(s.tokens for s in cache.shards)
        self._in_use: set[int] = set()
        self._wanted: tuple[list[int], set[int]] = ([], set())
        self._changed = threading.Event()
        self._stop = threading.Event()
        self.prefetch_error: BaseException | None = None
        self._thread = None
        if prefetch:
            self._thread = threading.Thread(target=self._prefetch_loop, name="gptray-prefetch", daemon=True)
            self._thread.start()

    def begin_step(self, step: int) -> None:
        """Step `step` is next: unpin what it no longer reads, and point the prefetcher at what it reads
        and at the block after (the shards this rank decodes first are rotated by rank, so the ranks of
        a node decode different shards at once)."""
        in_use = self.order.shards_of(self.order.blocks_in_use(step, step))
        upcoming = self.order.shards_of(self.order.next_blocks(step))
        self._in_use = set(in_use)
        self.cache.release_except(self._in_use)
        turn = self.rank % len(in_use)
        self._wanted = (in_use[turn:] + in_use[:turn] + upcoming, set(in_use) | set(upcoming))
        self._changed.set()

    def rank_micro_batches(self, step: int, rank: int, world_size: int, micro_batch: int) -> list[np.ndarray]:
        return self.order.rank_samples(step, rank, world_size, micro_batch)

    @property
    def masked(self) -> bool:
        """Whether some targets are left out of the loss (a prompt's)."""
        return self.cache.with_mask

    def batch_digest(self, step: int) -> str:
        """Digest of step `step`'s global batch: its windows' (shard, offset) pairs in batch order."""
        first = step * self.global_batch
        shards, offsets = self.order.locate(np.arange(first, first + self.global_batch, dtype=np.int64))
        return batch_digest(np.stack([shards, offsets], axis=1).ravel())

    def gather(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        shards, offsets = self.order.locate(samples)
        protected = self._wanted[1] | self._in_use
        rows = np.empty((len(samples), self.seq_len + 1), dtype=np.int64)
        keep = np.ones((len(samples), self.seq_len), dtype=bool)
        masked = False
        for shard in np.unique(shards):
            tokens, mask = self.cache.arrays(int(shard), protected)
            for i in np.nonzero(shards == shard)[0]:
                start = offsets[i]
                rows[i] = tokens[start:start + self.seq_len + 1]
                if mask is not None:
                    keep[i] = mask[start + 1:start + self.seq_len + 1].astype(bool)
                    masked = True
        targets = rows[:, 1:].copy()  # a copy even where the slice is contiguous (one row): masking must not touch rows
        if masked:
            targets[~keep] = IGNORE_INDEX
        return np.ascontiguousarray(rows[:, :-1]), targets

    def locations(self, samples: np.ndarray) -> list[tuple[int, int]]:
        """(shard index, token offset in the shard) of each window of a batch."""
        shards, offsets = self.order.locate(samples)
        return list(zip(shards.tolist(), offsets.tolist()))

    def epoch_of(self, step: int) -> float:
        return self.order.epoch_of(step)

    def close(self) -> None:
        self._stop.set()
        self._changed.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.cache.close()

    def _prefetch_loop(self) -> None:
        while not self._stop.is_set():
            self._changed.clear()
            order, protected = self._wanted
            done = True
            for shard in order:
                if self._stop.is_set() or self._changed.is_set():
                    break
                try:
                    done = self.cache.prefetch(shard, protected) and done
                except Exception as exc:  # the foreground meets the same error when it needs the shard
                    if self.prefetch_error is None:
                        log.warning("prefetching shard %s failed: %s", shard, exc)
                    self.prefetch_error, done = exc, True
                    break
            self._changed.wait(timeout=None if done else 0.05)


TrainWindows = WholeSplitWindows | BlockWindows


def open_train_windows(config: ExperimentConfig, dataset: Storage, manifest: Manifest, order: DataOrder,
                       rank: int = 0) -> WholeSplitWindows | BlockWindows:
    """This rank's training windows under the run's order."""
    train, data = config.train, config.data
    seq_len = train.effective_seq_len(config.model)
    if order.kind == "global":
        tokens = open_split_tokens(dataset, manifest, "train", data.cache_dir)
        mask = open_split_loss_mask(dataset, manifest, "train", data.cache_dir)
        return WholeSplitWindows(tokens, seq_len, train.seed, train.batch_size, mask)
    order = block_order(config, manifest)
    check_cache_limit(config, manifest, order)
    directory = _cache_root(config) / manifest.fingerprint / "train-shards"
    cache = ShardCache(dataset, manifest.split_info("train").shards, directory, data.cache_limit_bytes(),
                       np.dtype(manifest.tokenizer["dtype"]), manifest.prompt_masked)
    return BlockWindows(order, cache, rank, data.prefetch)


def open_val_windows(config: ExperimentConfig, dataset: Storage, manifest: Manifest, order: DataOrder,
                     ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """(tokens, loss mask or None, window starts) of the fixed validation windows.

    Under the global order, the whole val split decoded in the node's cache. Under the block order,
    only the windows themselves: the Parquet row groups holding them are read (so a shard's checksum,
    which covers the whole file, is not checked here), and the windows laid end to end in a small
    cached file. Either way they are the same windows of the same split.
    """
    seq_len = config.train.effective_seq_len(config.model)
    count = config.train.eval_windows
    if order.kind == "global":
        tokens = open_split_tokens(dataset, manifest, "val", config.data.cache_dir)
        mask = open_split_loss_mask(dataset, manifest, "val", config.data.cache_dir)
        return tokens, mask, eval_starts(len(tokens), seq_len, count)
    starts = eval_starts(manifest.split_info("val").tokens, seq_len, count)
    width = seq_len + 1
    directory = _cache_root(config) / manifest.fingerprint
    path = directory / f"val-windows-{len(starts)}x{width}.npz"
    if not is_intact(path, None):  # missing, or not what the process that wrote it sealed
        directory.mkdir(parents=True, exist_ok=True)
        tokens, mask = _read_windows(dataset, manifest, "val", starts, width)
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_native_id()}.tmp.npz")
        np.savez(tmp, tokens=tokens, mask=mask if mask is not None else np.empty(0, np.uint8))
        digest = file_digest(tmp)
        seal_path(path).unlink(missing_ok=True)
        tmp.replace(path)
        write_seal(path, digest)
    saved = np.load(path)
    mask = saved["mask"] if manifest.prompt_masked else None
    return saved["tokens"], mask, np.arange(len(starts), dtype=np.int64) * width


def _cache_root(config: ExperimentConfig) -> Path:
    return Path(config.data.cache_dir) if config.data.cache_dir else default_cache_dir()


def _read_windows(dataset: Storage, manifest: Manifest, split: str, starts: np.ndarray, width: int,
                  ) -> tuple[np.ndarray, np.ndarray | None]:
    """Windows [start, start + width) of a split's stream, read from only the row groups that hold them."""
    dtype = np.dtype(manifest.tokenizer["dtype"])
    shards = manifest.split_info(split).shards
    shard_ends = np.cumsum([s.tokens for s in shards])
    tokens = np.empty(len(starts) * width, dtype=dtype)
    mask = np.empty(len(starts) * width, dtype=np.uint8) if manifest.prompt_masked else None
    files: dict[int, pq.ParquetFile] = {}
    for w, start in enumerate(starts):
        pieces, masks, position = [], [], int(start)
        while sum(len(p) for p in pieces) < width:
            shard = int(np.searchsorted(shard_ends, position, side="right"))
            if shard >= len(shards):
                raise DataError(f"the {split} split ends before window {w} (token {start}); the manifest is wrong")
            if shard not in files:  # reads the footer now and one row group at a time later (range reads)
                files[shard] = pq.ParquetFile(dataset.open_input(shards[shard].path))
            table, first = _row_group_at(files[shard], position - int(shard_ends[shard] - shards[shard].tokens))
            stream = np.asarray(table.column("tokens").combine_chunks().flatten())
            skip = position - int(shard_ends[shard] - shards[shard].tokens) - first
            piece = stream[skip:skip + width - sum(len(p) for p in pieces)]
            pieces.append(piece)
            if mask is not None:
                masks.append(shard_loss_mask(table)[skip:skip + len(piece)])
            position += len(piece)
        tokens[w * width:(w + 1) * width] = np.concatenate(pieces)
        if mask is not None:
            mask[w * width:(w + 1) * width] = np.concatenate(masks)
    return tokens, mask


def _row_group_at(file: pq.ParquetFile, offset: int) -> tuple[pa.Table, int]:
    """The row group holding token `offset` of a shard's stream, and the offset of its first token."""
    column = _tokens_leaf(file)
    first = 0
    for g in range(file.metadata.num_row_groups):
        count = file.metadata.row_group(g).column(column).num_values  # tokens in the group (no document is empty)
        if offset < first + count:
            return file.read_row_group(g), first
        first += count
    raise DataError(f"token {offset} is past the end of a shard")


def _tokens_leaf(file: pq.ParquetFile) -> int:
    schema = file.metadata.schema
    return next(i for i in range(len(schema)) if schema.column(i).path == "tokens.list.element")
