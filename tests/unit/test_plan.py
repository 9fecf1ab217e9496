"""Read plan: a large line-oriented file is cut into equal, contiguous byte ranges of at most read_chunk_bytes."""

from __future__ import annotations

import pytest

from gptray.config.schema import SourceConfig
from gptray.data.plan import plan_tasks
from gptray.data.sources import resolve_sources


@pytest.mark.parametrize("size, chunk, count", [(10_000, 4096, 3), (8192, 4096, 2), (8193, 4096, 3),
                                                (100, 4096, 1), (0, 4096, 1)])
def test_file_is_cut_into_equal_ranges_that_cover_it(tmp_path, size, chunk, count):
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"x" * size)
    tasks = plan_tasks(resolve_sources([SourceConfig(path=str(path))]), chunk)
    assert [t.kind for t in tasks] == ["range"] * count
    assert tasks[0].start == 0 and tasks[-1].end == size
    assert all(a.end == b.start for a, b in zip(tasks, tasks[1:]))
    lengths = [t.end - t.start for t in tasks]
    # No short last range for one worker to tokenize alone: lengths differ by at most a byte.
    assert max(lengths) <= chunk and max(lengths) - min(lengths) <= 1
