"""How one global batch divides over any number of ranks: each rank's share, its micro-batches, and a digest.

The global batch at a step is the same windows whatever the world size (global_order.py, block_order.py);
this module says which of them rank r of W reads: its contiguous share (gptray/core/shares.py), so shares
differ by at most one window where W does not divide the batch, and any world size from 1 to the batch size
trains the same run: the engine weights each rank's loss by its share of the batch's counted targets.
"""

from __future__ import annotations

import hashlib

import numpy as np

from gptray.core.shares import share_bounds


def micro_batch_sizes(share: int, micro_batch: int) -> list[int]:
    """A share cut into micro-batches of `micro_batch` windows, the last one shorter where it does not divide."""
    full, rest = divmod(share, micro_batch)
    return [micro_batch] * full + ([rest] if rest else [])


def rank_sample_batches(step: int, rank: int, world_size: int, global_batch: int, micro_batch: int,
                        ) -> list[np.ndarray]:
    """Global sample indices (step·B … step·B + B − 1) of each micro-batch rank `rank` runs at `step`."""
    first, count = share_bounds(global_batch, world_size, rank)
    samples = np.arange(step * global_batch + first, step * global_batch + first + count, dtype=np.int64)
    cuts = np.cumsum(micro_batch_sizes(count, micro_batch))[:-1]
    return np.split(samples, cuts)


def check_world_size(global_batch: int, world_size: int) -> str | None:
    """Why `world_size` ranks cannot share a global batch of `global_batch` windows, or None where they can."""
    if world_size > global_batch:
        return (f"{world_size} workers cannot share a global batch of {global_batch} windows "
                f"(train.batch_size): every rank needs at least one window a step")
    return None


def batch_digest(window_ids: np.ndarray) -> str:
    """A short digest of a global batch's window ids, in batch order: equal digests, the same windows."""
    ids = np.ascontiguousarray(np.asarray(window_ids, dtype="<i8"))
    return hashlib.blake2b(ids.tobytes(), digest_size=8).hexdigest()
