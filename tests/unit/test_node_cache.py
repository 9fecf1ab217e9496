"""The node cache: real files and processes sharing them, a hard byte limit, no eviction of a shard in use,
no deadlock (the two failures MosaicML Streaming users met: mosaicml/streaming #417, #988)."""

from __future__ import annotations

import multiprocessing
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from gptray.core.errors import DataError
from gptray.core.storage import Storage
from gptray.data.block_order import BlockOrder
from gptray.data.node_cache import ShardCache
from gptray.data.shards import TokenShardWriter
from gptray.data.train_windows import BlockWindows

SEQ = 16
SHARD_TOKENS = 400  # 800 bytes decoded


def write_shards(root: Path, count: int) -> tuple[list, list[np.ndarray]]:
    """`count` one-document shards of SHARD_TOKENS tokens each (task i writes shard i), and their tokens."""
    infos, streams = [], []
    for i in range(count):
        tokens = ((np.arange(SHARD_TOKENS) * 7 + i * 1000) % 50000).astype(np.uint16)
        writer = TokenShardWriter(root, "train", np.dtype(np.uint16), SHARD_TOKENS, task=i)
        writer.add(np.array([i]), _as_list([tokens]))
        infos += writer.close()
        streams.append(tokens)
    return infos, streams


def _as_list(arrays):
    import pyarrow as pa

    return pa.array([a.tolist() for a in arrays], type=pa.list_(pa.uint16()))


def cache(root: Path, infos, limit: int) -> ShardCache:
    return ShardCache(Storage(str(root / "data")), infos, root / "cache", limit, np.dtype(np.uint16), False)


def train_rank(root: Path, infos, streams, limit: int, rank: int, steps: int, failures) -> None:
    """One rank of two on a node: every step's windows read through the cache must equal the shards' tokens."""
    try:
        order = BlockOrder([SHARD_TOKENS] * len(infos), [0] * len(infos), SEQ, 3, 1, 8)
        windows = BlockWindows(order, cache(root, infos, limit), rank)
        for step in range(steps):
            windows.begin_step(step)
            for batch in windows.rank_micro_batches(step, rank, 2, 2):
                x, y = windows.gather(batch)
                for row, (shard, start) in enumerate(windows.locations(batch)):
                    assert np.array_equal(x[row], streams[shard][start:start + SEQ])
                    assert np.array_equal(y[row], streams[shard][start + 1:start + SEQ + 1])
            time.sleep(0.002)  # a step of compute, during which the next block is fetched
        windows.close()
    except BaseException as exc:  # reported by the parent
        failures.put(f"rank {rank}: {exc!r}")
        raise


def test_two_ranks_train_through_a_cache_a_tenth_of_the_data_and_it_never_exceeds_its_limit(tmp_path):
    infos, streams = write_shards(tmp_path / "data", 30)  # 24,000 bytes decoded
    limit = 2400  # blocks of one shard: the one in use, the next, and a batch may span one more
    context = multiprocessing.get_context("fork")
    failures = context.Queue()
    ranks = [context.Process(target=train_rank, args=(tmp_path, infos, streams, limit, r, 120, failures))
             for r in range(2)]  # 120 steps of 8 windows: an epoch (720 windows) and a third of the next
    for p in ranks:
        p.start()
    watcher = cache(tmp_path, infos, limit)
    most = 0
    deadline = time.monotonic() + 120
    while any(p.is_alive() for p in ranks):
        most = max(most, watcher.used_bytes())  # checked while they train, not after
        assert time.monotonic() < deadline, "the ranks did not finish: a deadlock?"
    assert [p.exitcode for p in ranks] == [0, 0], failures.get() if not failures.empty() else ""
    assert 0 < most <= limit


def test_a_shard_in_use_is_never_evicted_a_full_cache_waits_for_it(tmp_path):
    infos, streams = write_shards(tmp_path / "data", 3)
    reader, other = cache(tmp_path, infos, 1600), cache(tmp_path, infos, 1600)  # room for two shards
    held, _ = reader.arrays(0, {0})  # another rank reads shard 0
    other.arrays(1, {1})
    got = {}
    wants_third = threading.Thread(target=lambda: got.update(tokens=np.array(other.arrays(2, {2})[0])))
    wants_third.start()
    time.sleep(0.5)
    assert wants_third.is_alive()  # shard 0 is pinned by its reader and shard 1 by itself: it waits
    assert np.array_equal(np.array(held), streams[0]) and (tmp_path / "cache" / "000000.tokens").is_file()
    reader.release_except(set())  # the reader moves on
    wants_third.join(timeout=10)
    assert not wants_third.is_alive() and np.array_equal(got["tokens"], streams[2])
    assert not (tmp_path / "cache" / "000000.tokens").exists()  # evicted once released, not before
    assert other.used_bytes() == 1600


def test_prefetch_never_evicts_a_protected_shard_and_gives_way_instead(tmp_path):
    infos, _ = write_shards(tmp_path / "data", 3)
    c = cache(tmp_path, infos, 1600)
    assert c.prefetch(0, {0, 1}) and c.prefetch(1, {0, 1})
    assert not c.prefetch(2, {0, 1})  # no room without evicting what the blocks in use need
    assert sorted(p.name for p in (tmp_path / "cache").glob("*.tokens")) == ["000000.tokens", "000001.tokens"]
    assert c.prefetch(2, {1, 2})  # shard 0 is done with: it goes
    assert not (tmp_path / "cache" / "000000.tokens").exists()


def test_a_shard_larger_than_the_limit_or_not_matching_its_checksum_is_an_error(tmp_path):
    infos, _ = write_shards(tmp_path / "data", 2)
    with pytest.raises(DataError, match="decodes to 800 bytes, more than data.cache_limit"):
        cache(tmp_path, infos, 799).arrays(0, set())
    path = tmp_path / "data" / infos[1].path
    path.write_bytes(path.read_bytes()[:-1] + b"\0")
    with pytest.raises(DataError, match="does not match its checksum"):
        cache(tmp_path, infos, 10_000).arrays(1, set())
    assert not list((tmp_path / "cache").glob("000001.*tokens*"))  # nothing half-written stays


def test_the_half_decoded_files_of_a_killed_rank_are_reclaimed(tmp_path, monkeypatch):
    from gptray.data import node_cache

    monkeypatch.setattr(node_cache, "SPACE_WAIT_SECONDS", 2.0)  # fail in seconds, not minutes
    infos, streams = write_shards(tmp_path / "data", 2)
    c = cache(tmp_path, infos, 1600)
    dead = tmp_path / "cache" / "000000.tokens.99999999.tmp"  # a rank killed while decoding shard 0
    with open(dead, "wb") as f:
        f.truncate(800)
    assert c.used_bytes() == 800
    tokens, _ = c.arrays(1, {1})  # the space it held is free again: both shards fit
    assert np.array_equal(np.array(tokens), streams[1]) and not dead.exists()
    assert np.array_equal(np.array(c.arrays(0, {0, 1})[0]), streams[0]) and c.used_bytes() == 1600
