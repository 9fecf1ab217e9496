"""Read plan: files cut into equal ranges, small inputs grouped, each task sized to about one shard."""

from __future__ import annotations

import pytest

from gptray.config.schema import SourceConfig
from gptray.data.plan import BYTES_PER_TOKEN, plan_tasks
from gptray.data.sources import resolve_sources

ONE_TASK = 10**9  # shard_tokens that put a whole small source in one task


@pytest.mark.parametrize("size, chunk, count", [(10_000, 4096, 3), (8192, 4096, 2), (8193, 4096, 3),
                                                (100, 4096, 1), (0, 4096, 1)])
def test_file_is_cut_into_equal_ranges_that_cover_it(tmp_path, size, chunk, count):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"x" * size)
    [task] = plan_tasks(resolve_sources([SourceConfig(path=str(path))]), chunk, ONE_TASK)
    pieces = task.pieces
    assert [p.kind for p in pieces] == ["range"] * count
    assert pieces[0].start == 0 and pieces[-1].end == size
    assert all(a.end == b.start for a, b in zip(pieces, pieces[1:]))
    lengths = [p.end - p.start for p in pieces]
    # No short last range for one task to hold alone: lengths differ by at most a byte.
    assert max(lengths) <= chunk and max(lengths) - min(lengths) <= 1


def test_tasks_hold_about_shard_tokens_and_group_small_files(tmp_path):
    (tmp_path / "big.txt").write_bytes(b"line\n" * 200_000)  # 1 MB
    small = tmp_path / "small"
    small.mkdir()
    for i in range(40):
        (small / f"{i:02d}.txt").write_bytes(b"a small file\n" * 100)  # 1.3 KB each
    shard_tokens = 30_000  # 90 KB of input a task
    tasks = plan_tasks(resolve_sources([SourceConfig(path=str(tmp_path / "big.txt"), text_unit="line"),
                                        SourceConfig(path=str(small), weight=2)]), 8 << 20, shard_tokens)
    big = [t for t in tasks if t.source == 0]
    grouped = [t for t in tasks if t.source == 1]
    assert [t.index for t in tasks] == list(range(len(tasks)))
    assert len(big) == 12 and all(len(t.pieces) == 1 for t in big)  # 1 MB in equal ranges of at most 90 KB
    assert all(0.9 * shard_tokens < t.estimated_tokens <= shard_tokens for t in big)
    # 40 files of 1.3 KB, written twice (weight 2): 45 KB of input make a shard, so about 34 files a task
    assert [len(t.pieces) for t in grouped] == [34, 6]
    assert all(t.estimated_tokens <= shard_tokens for t in grouped)
    assert grouped[0].estimated_tokens == round(34 * 1300 / BYTES_PER_TOKEN * 2)
