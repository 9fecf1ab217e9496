"""Training windows: which tokens each rank reads at each step, as a pure function.

The train split's token stream is cut into fixed windows of `seq_len + 1` tokens starting
at multiples of `seq_len`. Epoch e visits them in a permutation seeded by (seed, e). Step s
of a global batch of G sequences takes global samples s·G … s·G+G−1, and rank r of W takes
the r-th contiguous share of them (rank_shares.py: shares differ by at most one where W does not
divide G). So the global batch at a step is the same for any world size, and a resumed run reads
exactly the windows the uninterrupted run would have.
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path

import numpy as np

from gptray.core.errors import DataError
from gptray.core.paths import cache_home
from gptray.core.storage import Storage
from gptray.data.cache_seal import Digest, is_intact, seal_path, write_seal
from gptray.data.manifest import Manifest
from gptray.data.rank_shares import rank_sample_batches
from gptray.data.shards import read_shard, shard_loss_mask, shard_tokens

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return cache_home("tokens")


def open_split_tokens(dataset_dir: str | Storage, manifest: Manifest, split: str, cache_dir: str | None = None,
                      ) -> np.ndarray:
    """A split's whole token stream as a read-only memory map.

    The Parquet shards are decoded (and their checksums verified) once per node into a flat
    file keyed by the dataset fingerprint, sealed with its size and digest (cache_seal.py); every
    worker on the node checks the seal, then shares the file through the page cache, and random
    window reads cost nothing.
    """
    dtype = np.dtype(manifest.tokenizer["dtype"])
    return _cached_stream(dataset_dir, manifest, split, cache_dir, f"{split}.bin", dtype, shard_tokens)


def open_split_loss_mask(dataset_dir: str | Storage, manifest: Manifest, split: str,
                         cache_dir: str | None = None) -> np.ndarray | None:
    """Per token of a split's stream, 1 where its prediction counts in the loss and 0 inside prompts
    (a memory map like the tokens'); None for datasets without prompts, where every token counts."""
    if not manifest.prompt_masked:
        return None
    return _cached_stream(dataset_dir, manifest, split, cache_dir, f"{split}.loss_mask.bin", np.dtype(np.uint8),
                          shard_loss_mask)


def _cached_stream(dataset_dir: str | Storage, manifest: Manifest, split: str, cache_dir: str | None, name: str,
                   dtype: np.dtype, per_shard) -> np.ndarray:
    info = manifest.split_info(split)
    if info.tokens == 0:
        return np.empty(0, dtype=dtype)
    cache = Path(cache_dir) if cache_dir else default_cache_dir()
    path = cache / manifest.fingerprint / name
    expected_bytes = info.tokens * dtype.itemsize
    if not is_intact(path, expected_bytes):  # missing, cut short, or not what its decoder sealed
        path.parent.mkdir(parents=True, exist_ok=True)
        # Workers on one node race to build the same file; one builds, the others wait.
        with open(path.with_suffix(".lock"), "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            if not is_intact(path, expected_bytes):
                _build_cache(dataset_dir, manifest, split, path, dtype, per_shard)
    return np.memmap(path, dtype=dtype, mode="r")


def _build_cache(dataset_dir: str | Storage, manifest: Manifest, split: str, path: Path, dtype: np.dtype,
                 per_shard) -> None:
    info = manifest.split_info(split)
    log.info("decoding %d %s shard(s) (%s tokens) into %s", len(info.shards), split, f"{info.tokens:,}", path)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    digest = Digest()
    with open(tmp, "wb") as out:
        for shard in info.shards:
            values = per_shard(read_shard(dataset_dir, shard, verify=True))
            if len(values) != shard.tokens:
                raise DataError(f"shard {shard.path} holds {len(values)} tokens, manifest says {shard.tokens}")
            data = values.astype(dtype, copy=False).tobytes()
            digest.update(data)
            out.write(data)
    seal_path(path).unlink(missing_ok=True)  # the old file's seal never vouches for the new one
    os.replace(tmp, path)
    write_seal(path, digest)


class WindowSampler:
    """Maps (step, rank, world size) to window start offsets in the token stream."""

    def __init__(self, num_tokens: int, seq_len: int, seed: int):
        self.seq_len = seq_len
        self.seed = seed
        self._orders: dict[int, np.ndarray] = {}  # the epochs in use (at most two at a time)
        self.num_windows = max((num_tokens - 1) // seq_len, 0)
        if self.num_windows < 1:
            raise DataError(f"the train split has {num_tokens} tokens: too few for one window of {seq_len + 1}")

    def _order(self, epoch: int) -> np.ndarray:
        if epoch not in self._orders:
            if len(self._orders) >= 2:
                self._orders.pop(min(self._orders))
            self._orders[epoch] = np.random.default_rng([self.seed, epoch]).permutation(self.num_windows)
        return self._orders[epoch]

    def starts(self, samples: np.ndarray) -> np.ndarray:
        """Token offsets of global sample indices (sample i is the i-th window the run reads)."""
        epochs, positions = np.divmod(samples, self.num_windows)
        out = np.empty(len(samples), dtype=np.int64)
        for epoch in np.unique(epochs):
            mask = epochs == epoch
            out[mask] = self._order(int(epoch))[positions[mask]]
        return out * self.seq_len

    def rank_micro_batches(
        self, step: int, rank: int, world_size: int, global_batch: int, micro_batch: int
    ) -> list[np.ndarray]:
        """Window starts for each micro-batch this rank runs at optimizer step `step` (rank_shares.py)."""
        return [self.starts(samples)
                for samples in rank_sample_batches(step, rank, world_size, global_batch, micro_batch)]

    def epoch_of(self, step: int, global_batch: int) -> float:
        return step * global_batch / self.num_windows


def eval_starts(num_tokens: int, seq_len: int, count: int) -> np.ndarray:
    """`count` fixed validation windows spread evenly over the split (the same at every evaluation)."""
    windows = max((num_tokens - 1) // seq_len, 0)
    if windows == 0 or count == 0:
        return np.empty(0, dtype=np.int64)
    picks = np.unique(np.linspace(0, windows - 1, num=min(count, windows)).round().astype(np.int64))
    return picks * seq_len


IGNORE_INDEX = -100  # a target F.cross_entropy skips


def gather_windows(tokens: np.ndarray, starts: np.ndarray, seq_len: int,
                   loss_mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Inputs (B, T) and next-token targets (B, T) as int64 arrays; targets inside prompts (where
    `loss_mask` is 0) become IGNORE_INDEX."""
    rows = np.stack([tokens[s : s + seq_len + 1] for s in starts]).astype(np.int64)
    targets = rows[:, 1:].copy()  # a copy even where the slice is contiguous (one row): masking must not touch rows
    if loss_mask is not None:
        keep = np.stack([loss_mask[s + 1 : s + seq_len + 1] for s in starts]).astype(bool)
        targets[~keep] = IGNORE_INDEX
    return np.ascontiguousarray(rows[:, :-1]), targets
