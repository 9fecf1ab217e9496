"""How work divides over ranks: each rank's contiguous share, and the batches every rank runs in lockstep.

One rule for all of gptray's sharing (a global batch's windows in training, the validation windows,
evaluation units and harness requests during training): rank r of W takes a contiguous share, the first
`total mod W` ranks one item more. Where ranks must run the same number of passes (FSDP's all-gathers and
DDP's buffer syncs pair up), each runs as many batches as the largest share needs, and a rank with a smaller
share runs and drops the rest.
"""

from __future__ import annotations

from collections.abc import Sequence


def share_bounds(total: int, world_size: int, rank: int) -> tuple[int, int]:
    """(first, count): rank `rank` of `world_size` takes items first … first + count − 1 of `total`."""
    base, extra = divmod(total, world_size)
    return rank * base + min(rank, extra), base + (1 if rank < extra else 0)


def share(items: Sequence, rank: int, world_size: int) -> Sequence:
    """Rank `rank`'s contiguous share of `items` (share_bounds)."""
    first, count = share_bounds(len(items), world_size, rank)
    return items[first:first + count]


def lockstep_batches(total: int, world_size: int, batch: int) -> int:
    """Batches of up to `batch` items every rank runs when `total` items are shared over `world_size` ranks:
    those of the largest share."""
    largest = -(-total // world_size)
    return -(-largest // batch)
