"""The block order: a pure function of (shards, seed, step, rank, world size), local in shards, mixed per batch."""

from __future__ import annotations

import numpy as np
import pytest

from gptray.config import load_config
from gptray.config.schema import parse_size
from gptray.core.errors import ConfigError, DataError
from gptray.data.block_order import BlockOrder, apportion
from gptray.data.manifest import Manifest, ShardInfo, SplitInfo
from gptray.data.train_windows import DataOrder, block_order, check_cache_limit

SEQ = 16
# two sources of unequal shards: 12 of ~640 tokens (source 0), 5 of ~320 (source 1)
TOKENS = [640 + 17 * i for i in range(12)] + [320 + 5 * i for i in range(5)]
SOURCES = [0] * 12 + [1] * 5


def order(seed: int = 7, block_shards: int = 3, global_batch: int = 12) -> BlockOrder:
    return BlockOrder(TOKENS, SOURCES, SEQ, seed, block_shards, global_batch)


def step_locations(o: BlockOrder, step: int, world_size: int, micro: int) -> list[tuple[int, int]]:
    out = []
    for rank in range(world_size):
        for batch in o.rank_samples(step, rank, world_size, micro):
            shards, offsets = o.locate(batch)
            out += list(zip(shards.tolist(), offsets.tolist()))
    return out


def test_the_global_batch_at_a_step_is_the_same_at_any_world_size():
    o = order()
    for step in (0, 5, 40, 123):  # 40 and 123 are in later epochs
        one = step_locations(o, step, 1, 12)
        assert step_locations(o, step, 2, 3) == one
        assert step_locations(o, step, 4, 1) == one
        assert step_locations(order(), step, 3, 2) == one  # a fresh instance (a resumed run) agrees


def test_each_source_reads_every_window_once_per_epoch_and_epochs_differ():
    o = order()
    for stream in o.streams:
        shards, windows = stream.locate(np.arange(2 * stream.total))
        first = list(zip(shards[:stream.total].tolist(), windows[:stream.total].tolist()))
        second = list(zip(shards[stream.total:].tolist(), windows[stream.total:].tolist()))
        expected = {(int(i), j) for i, w in zip(stream.shard_ids, stream.windows) for j in range(w)}
        assert set(first) == expected and len(first) == len(expected)
        assert set(second) == expected and first != second
    # windows lie inside their shard: seq_len + 1 tokens from a multiple of seq_len
    shards, offsets = o.locate(np.arange(500))
    assert all(offset % SEQ == 0 and offset + SEQ + 1 <= TOKENS[shard] for shard, offset in zip(shards, offsets))


def test_every_step_reads_only_the_blocks_in_use_and_the_prefetch_names_the_next():
    o = order()
    for step in range(60):
        used = o.blocks_in_use(step, step)
        shards = set(o.locate(np.arange(step * 12, step * 12 + 12))[0].tolist())
        assert shards <= set(o.shards_of(used))
        for s in range(len(o.streams)):
            assert len([b for b in used if b[0] == s]) <= o.blocks_a_step_spans(s)
        # the next step reads from blocks in use now or the ones fetched ahead
        ahead = set(o.shards_of(o.blocks_in_use(step, step))) | set(o.shards_of(o.next_blocks(step)))
        assert set(o.locate(np.arange((step + 1) * 12, (step + 2) * 12))[0].tolist()) <= ahead


def test_a_mixture_is_mixed_in_every_batch_in_proportion_to_its_windows():
    o = order(global_batch=12)
    windows = [s.total for s in o.streams]
    assert o.quotas == apportion(12, windows) and sum(o.quotas) == 12
    for q, w in zip(o.quotas, windows):
        assert abs(q - 12 * w / sum(windows)) < 1
    source_of = {shard: source for shard, source in enumerate(SOURCES)}
    for step in range(50):
        shards = o.locate(np.arange(step * 12, step * 12 + 12))[0]
        counts = np.bincount([source_of[s] for s in shards.tolist()], minlength=2)
        assert counts.tolist() == o.quotas


def test_the_order_depends_on_the_seed_and_the_block_size():
    base = step_locations(order(), 3, 1, 12)
    assert step_locations(order(seed=8), 3, 1, 12) != base
    assert step_locations(order(block_shards=4), 3, 1, 12) != base


def test_a_source_too_small_for_one_sequence_per_batch_is_refused():
    with pytest.raises(DataError, match="less than one sequence of a global batch of 2"):
        BlockOrder([10_000, 10_000, 100], [0, 0, 1], SEQ, 0, 1, 2)


def test_apportion_is_exact_and_prefers_larger_remainders():
    assert apportion(10, [1, 1, 1]) == [4, 3, 3]
    assert apportion(7, [5, 2]) == [5, 2]
    assert apportion(3, [10, 80, 10]) == [0, 3, 0]
    assert sum(apportion(512, [123, 4567, 89, 10])) == 512


def manifest(shard_tokens: list[int]) -> Manifest:
    shards = [ShardInfo(f"train/shard-{i:05d}-000.parquet", 1, n, 0, "", 0, source=0)
              for i, n in enumerate(shard_tokens)]
    return Manifest(tokenizer={"name": "gpt2", "dtype": "uint16", "vocab_size": 50257}, split={}, sources=[],
                    splits={"train": SplitInfo(1, sum(shard_tokens), shards)}, fingerprint="f" * 64)


def test_auto_is_global_while_the_split_fits_the_cache_and_block_above():
    m = manifest([1000] * 10)  # 20,000 bytes decoded
    assert DataOrder.for_run(load_config(None, ["data.cache_limit=20000"]), m).kind == "global"
    assert DataOrder.for_run(load_config(None, ["data.cache_limit=19999", "data.shuffle_block_shards=1"]), m).kind \
        == "block"
    with pytest.raises(ConfigError, match=r"data.shuffle.*20,000 bytes, more than data.cache_limit \(19kB"):
        DataOrder.for_run(load_config(None, ["data.cache_limit=19kB", "data.shuffle=global"]), m)


def test_a_cache_limit_too_small_for_the_blocks_in_use_and_the_next_is_refused_with_the_numbers():
    m = manifest([1000] * 10)
    config = load_config(None, ["data.shuffle_block_shards=2", "train.batch_size=8", "model.block_size=64"])
    # a step of 8 windows spans at most 2 blocks of 2 × 15 windows; one more is fetched ahead: 6 shards
    config.data.cache_limit = "11999"
    with pytest.raises(ConfigError, match=r"needs 12,000 bytes \(source 0: 3 block\(s\) of up to 2 shard"):
        check_cache_limit(config, m, block_order(config, m))
    config.data.cache_limit = "12000"
    assert check_cache_limit(config, m, block_order(config, m)) == 12_000
    config.data.prefetch = False  # without prefetch the blocks in use suffice
    assert check_cache_limit(config, m, block_order(config, m)) == 8_000


@pytest.mark.parametrize("text, expected", [("20GB", 20 * 10**9), ("500 MB", 500 * 10**6), ("2GiB", 2 << 30),
                                            ("1.5TB", 15 * 10**11), ("123", 123), ("64kb", 64_000)])
def test_sizes_read_as_people_write_them(text, expected):
    assert parse_size(text, "data.cache_limit") == expected


@pytest.mark.parametrize("text", ["lots", "20 GBs", "-5GB", ""])
def test_a_size_that_is_not_one_names_the_key(text):
    with pytest.raises(ConfigError, match="data.cache_limit"):
        parse_size(text, "data.cache_limit")
