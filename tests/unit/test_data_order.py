"""Data order is a pure function of (dataset, seed, step, rank, world size); the LR schedule likewise."""

from __future__ import annotations

import numpy as np
import pytest

from gptray.core.errors import DataError
from gptray.data.global_order import WindowSampler, eval_starts, gather_windows
from gptray.train.optim import LrSchedule, learning_rate


def global_batch(sampler: WindowSampler, step: int, world_size: int, batch: int, micro: int) -> list[int]:
    """Every rank's windows at `step`, in rank order."""
    return [int(s) for rank in range(world_size)
            for mb in sampler.rank_micro_batches(step, rank, world_size, batch, micro) for s in mb]


def test_global_batch_is_the_same_for_any_world_size():
    sampler = WindowSampler(num_tokens=100_000, seq_len=64, seed=3)
    for step in (0, 1, 17, 500):
        one = global_batch(sampler, step, 1, batch=16, micro=4)
        assert one == global_batch(sampler, step, 2, batch=16, micro=4)
        assert one == global_batch(sampler, step, 4, batch=16, micro=2)
        assert one == global_batch(sampler, step, 8, batch=16, micro=2)


def test_order_depends_only_on_seed_and_step():
    a = WindowSampler(100_000, 64, seed=3)
    b = WindowSampler(100_000, 64, seed=3)
    later_first = [b.rank_micro_batches(s, 1, 2, 8, 4) for s in (40, 3, 0)]  # any call order
    assert [np.concatenate(x).tolist() for x in later_first] == \
           [np.concatenate(a.rank_micro_batches(s, 1, 2, 8, 4)).tolist() for s in (40, 3, 0)]
    c = WindowSampler(100_000, 64, seed=4)
    assert global_batch(a, 0, 1, 8, 8) != global_batch(c, 0, 1, 8, 8)


def test_each_epoch_visits_every_window_once():
    sampler = WindowSampler(num_tokens=64 * 50 + 1, seq_len=64, seed=0)
    assert sampler.num_windows == 50
    starts = sampler.starts(np.arange(150))
    for epoch in range(3):
        chunk = starts[epoch * 50 : (epoch + 1) * 50]
        assert sorted(chunk.tolist()) == list(range(0, 64 * 50, 64))
    assert starts[:50].tolist() != starts[50:100].tolist()  # epochs are reshuffled


def test_windows_are_next_token_pairs():
    tokens = np.arange(1000, dtype=np.uint16)
    x, y = gather_windows(tokens, np.array([0, 128]), 64)
    assert x.shape == y.shape == (2, 64) and x.dtype == np.int64
    assert (y == x + 1).all() and x[1, 0] == 128


def test_too_few_tokens_for_a_window():
    with pytest.raises(DataError, match="too few"):
        WindowSampler(num_tokens=64, seq_len=64, seed=0)


def test_eval_windows_are_fixed_and_partition_across_ranks():
    starts = eval_starts(num_tokens=10_000, seq_len=64, count=20)
    assert len(starts) == 20 and len(set(starts.tolist())) == 20
    assert (starts + 65 <= 10_000).all()
    shards = [starts[r::3] for r in range(3)]
    assert sorted(np.concatenate(shards).tolist()) == sorted(starts.tolist())
    assert len(eval_starts(num_tokens=200, seq_len=64, count=20)) == 3  # only 3 windows fit


def test_learning_rate_warmup_then_cosine():
    train = LrSchedule(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=110)
    assert learning_rate(0, train) == pytest.approx(1e-4)
    assert learning_rate(9, train) == pytest.approx(1e-3)
    assert learning_rate(60, train) == pytest.approx(5.5e-4)  # halfway down the cosine
    assert learning_rate(110, train) == pytest.approx(1e-4)
    lrs = [learning_rate(s, train) for s in range(10, 111)]
    assert all(a >= b for a, b in zip(lrs, lrs[1:]))


