"""The block shuffle: an order of training windows that is a pure function and local in shards.

Each source of the train split is its own stream of windows (`seq_len + 1` tokens at multiples of
`seq_len` within a shard; a window never crosses shards). Epoch e of source s permutes the source's
shards (seeded by seed, s, e), groups them into blocks of `block_shards`, and shuffles the windows
within each block (seeded by seed, s, e, block). So a source's k-th window lies in a block that a
node can decode ahead of time, and nothing but the block in use and the next needs to be local.

Every global batch of G sequences holds a fixed number of each source's windows: its share of the
split's windows, apportioned once over G (largest remainders), its slots spread through the batch.
A mixture is therefore mixed in every batch, not one source after another. Global sample i is slot
i mod G of step i // G; rank r of W takes the r-th contiguous 1/W of a step's slots. As with the
global order, the batch at a step is the same at any world size, and a resumed run reads exactly
the windows the uninterrupted run would have.
"""

from __future__ import annotations

from collections import OrderedDict

import numpy as np

from gptray.core.errors import DataError
from gptray.data.rank_shares import rank_sample_batches

_KEPT_PERMUTATIONS = 8  # block permutations kept per source: the blocks in use and the next, with room


class SourceStream:
    """One source's windows, epoch after epoch, in block-shuffled order."""

    def __init__(self, source: int, shard_ids: np.ndarray, windows: np.ndarray, seed: int, block_shards: int):
        self.source = source
        self.shard_ids = shard_ids  # indices into the split's shard list
        self.windows = windows  # windows of each of those shards
        self.seed = seed
        self.block_shards = block_shards
        self.total = int(windows.sum())  # windows per epoch
        self.num_blocks = -(-len(shard_ids) // block_shards)
        self._epochs: OrderedDict[int, tuple[np.ndarray, np.ndarray]] = OrderedDict()
        self._blocks: OrderedDict[tuple[int, int], tuple[np.ndarray, np.ndarray]] = OrderedDict()

    def epoch_layout(self, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """(positions into shard_ids in epoch order, the cumulative windows at each block's end)."""
        if epoch not in self._epochs:
            order = np.random.default_rng([self.seed, self.source, epoch, 0]).permutation(len(self.shard_ids))
            per_block = np.add.reduceat(self.windows[order], np.arange(0, len(order), self.block_shards))
            self._epochs[epoch] = order, np.cumsum(per_block)
            if len(self._epochs) > 2:
                self._epochs.popitem(last=False)
        return self._epochs[epoch]

    def block_members(self, epoch: int, block: int) -> np.ndarray:
        """Positions (into shard_ids) of a block's shards."""
        order, _ = self.epoch_layout(epoch)
        return order[block * self.block_shards:(block + 1) * self.block_shards]

    def _block_windows(self, epoch: int, block: int) -> tuple[np.ndarray, np.ndarray]:
        """A block's windows in shuffled order: (shard position, window index within the shard)."""
        key = (epoch, block)
        if key not in self._blocks:
            members = self.block_members(epoch, block)
            counts = self.windows[members]
            shard_of = np.repeat(members, counts)
            window_of = np.arange(int(counts.sum())) - np.repeat(np.cumsum(counts) - counts, counts)
            perm = np.random.default_rng([self.seed, self.source, epoch, 1, block]).permutation(len(shard_of))
            self._blocks[key] = shard_of[perm], window_of[perm]
            if len(self._blocks) > _KEPT_PERMUTATIONS:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(key)
        return self._blocks[key]

    def block_of(self, k: int) -> tuple[int, int]:
        """(epoch, block) holding the source's k-th window."""
        epoch, position = divmod(int(k), self.total)
        _, ends = self.epoch_layout(epoch)
        return epoch, int(np.searchsorted(ends, position, side="right"))

    def locate(self, ks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(split shard index, window index within that shard) of the source's windows number `ks`."""
        shards = np.empty(len(ks), dtype=np.int64)
        windows = np.empty(len(ks), dtype=np.int64)
        epochs, positions = np.divmod(ks, self.total)
        for epoch in np.unique(epochs):
            in_epoch = epochs == epoch
            _, ends = self.epoch_layout(int(epoch))
            blocks = np.searchsorted(ends, positions[in_epoch], side="right")
            starts = np.concatenate([[0], ends])[blocks]
            out_shards, out_windows = np.empty(len(blocks), np.int64), np.empty(len(blocks), np.int64)
            for block in np.unique(blocks):
                here = blocks == block
                shard_of, window_of = self._block_windows(int(epoch), int(block))
                offsets = positions[in_epoch][here] - starts[here]
                out_shards[here], out_windows[here] = shard_of[offsets], window_of[offsets]
            shards[in_epoch], windows[in_epoch] = self.shard_ids[out_shards], out_windows
        return shards, windows

    def blocks_between(self, first: int, last: int) -> list[tuple[int, int]]:
        """Every (epoch, block) holding one of the source's windows first … last (inclusive), in order."""
        blocks, (epoch, block) = [], self.block_of(first)
        end = self.block_of(last)
        while True:
            blocks.append((epoch, block))
            if (epoch, block) == end:
                return blocks
            epoch, block = (epoch, block + 1) if block + 1 < self.num_blocks else (epoch + 1, 0)

    def next_block(self, epoch: int, block: int) -> tuple[int, int]:
        return (epoch, block + 1) if block + 1 < self.num_blocks else (epoch + 1, 0)


def apportion(total: int, weights: list[int]) -> list[int]:
    """`total` split in proportion to `weights` by largest remainders (ties: the earlier weight), exactly."""
    whole = sum(weights)
    floors = [total * w // whole for w in weights]
    remainders = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for i in remainders[: total - sum(floors)]:
        floors[i] += 1
    return floors


class BlockOrder:
    """Maps (step, rank, world size) to (shard, window) pairs under the block shuffle."""

    def __init__(self, shard_tokens: list[int], shard_sources: list[int], seq_len: int, seed: int,
                 block_shards: int, global_batch: int):
        self.seq_len = seq_len
        self.global_batch = global_batch
        windows = np.maximum((np.asarray(shard_tokens, dtype=np.int64) - 1) // seq_len, 0)
        sources = np.asarray(shard_sources, dtype=np.int64)
        self.num_windows = int(windows.sum())
        if self.num_windows < 1:
            raise DataError(f"no shard of the train split holds one window of {seq_len + 1} tokens")
        self.streams: list[SourceStream] = []
        for source in sorted(set(sources.tolist())):
            ids = np.nonzero((sources == source) & (windows > 0))[0]
            if len(ids):
                self.streams.append(SourceStream(source, ids, windows[ids], seed, block_shards))
        self.quotas = apportion(global_batch, [s.total for s in self.streams])
        for stream, quota in zip(self.streams, self.quotas):
            if quota == 0:
                raise DataError(
                    f"source {stream.source} holds {stream.total / self.num_windows:.3%} of the train windows: less "
                    f"than one sequence of a global batch of {global_batch}, so the block order cannot put it in "
                    "every batch. Raise train.batch_size, or use data.shuffle=global")
        # Each source's slots spread evenly through a batch (Webster order of the quotas).
        keys = sorted(((2 * j + 1) / (2 * q), s, j) for s, q in enumerate(self.quotas) for j in range(q))
        self.slot_stream = np.array([s for _, s, _ in keys], dtype=np.int64)
        self.slot_index = np.array([j for _, _, j in keys], dtype=np.int64)

    def locate(self, samples: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(split shard index, token offset within the shard) of global samples."""
        steps, slots = np.divmod(np.asarray(samples, dtype=np.int64), self.global_batch)
        streams = self.slot_stream[slots]
        shards, offsets = np.empty(len(samples), np.int64), np.empty(len(samples), np.int64)
        for s in np.unique(streams):
            here = streams == s
            ks = steps[here] * self.quotas[s] + self.slot_index[slots[here]]
            shards[here], windows = self.streams[s].locate(ks)
            offsets[here] = windows * self.seq_len
        return shards, offsets

    def rank_samples(self, step: int, rank: int, world_size: int, micro_batch: int) -> list[np.ndarray]:
        """Global sample indices of each micro-batch this rank runs at optimizer step `step`."""
        return rank_sample_batches(step, rank, world_size, self.global_batch, micro_batch)

    def blocks_in_use(self, first_step: int, last_step: int) -> list[tuple[int, int, int]]:
        """(stream, epoch, block) of every block global batches first_step … last_step read from."""
        used = []
        for s, (stream, quota) in enumerate(zip(self.streams, self.quotas)):
            used += [(s, *b) for b in stream.blocks_between(first_step * quota, (last_step + 1) * quota - 1)]
        return used

    def shards_of(self, blocks: list[tuple[int, int, int]]) -> list[int]:
        """Split shard indices of blocks, in the blocks' order."""
        return [int(self.streams[s].shard_ids[p]) for s, epoch, block in blocks
                for p in self.streams[s].block_members(epoch, block)]

    def next_blocks(self, step: int) -> list[tuple[int, int, int]]:
        """Per source, the block after the last one step `step` reads from: what to fetch ahead."""
        after = []
        for s, (stream, quota) in enumerate(zip(self.streams, self.quotas)):
            after.append((s, *stream.next_block(*stream.block_of((step + 1) * quota - 1))))
        return after

    def epoch_of(self, step: int) -> float:
        return step * self.global_batch / self.num_windows

    def blocks_a_step_spans(self, stream: int) -> int:
        """The most blocks of one source a single global batch can read from."""
        s = self.streams[stream]
        last_block_shards = len(s.shard_ids) % s.block_shards or s.block_shards  # an epoch's last block may be short
        smallest = int(np.sort(s.windows)[:last_block_shards].sum())
        return min(s.num_blocks, -(-(self.quotas[stream] - 1) // max(smallest, 1)) + 1)
