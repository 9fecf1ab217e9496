"""Token shard writer: shards compressed row group by row group equal a one-shot write, whatever the batching."""

from __future__ import annotations

import hashlib

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from gptray.data.shards import PARQUET_OPTIONS, ROW_GROUP_DOCUMENTS, TokenShardWriter, read_shard, shard_schema

DTYPE = np.dtype(np.uint16)


def documents(count: int, seed: int = 0) -> tuple[np.ndarray, pa.ListArray]:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(1, 12, count)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    values = pa.array(rng.integers(0, 50257, int(offsets[-1])).astype(np.uint16))
    return np.arange(count, dtype=np.int64), pa.ListArray.from_arrays(pa.array(offsets), values)


def write(tmp_path, name: str, batch_sizes: list[int], doc_ids, tokens, shard_tokens: int):
    """Feed the documents in batches of the given sizes."""
    writer = TokenShardWriter(tmp_path / name, "train", DTYPE, shard_tokens, task=7)
    start = 0
    for size in batch_sizes:
        writer.add(doc_ids[start:start + size], tokens.slice(start, size))
        start += size
    assert start == len(doc_ids)
    return writer.close()


def test_row_group_encoding_gives_the_bytes_of_a_one_shot_write(tmp_path):
    count = 3 * ROW_GROUP_DOCUMENTS + 1234  # several row groups per shard
    doc_ids, tokens = documents(count)
    shard_tokens = 150_000  # ~27K documents: the first shard has 3 full row groups and a partial one
    rng = np.random.default_rng(1)
    odd = []
    while sum(odd) < count:
        odd.append(int(min(rng.integers(1, 5000), count - sum(odd))))

    whole = write(tmp_path, "whole", [count], doc_ids, tokens, shard_tokens)
    batched = write(tmp_path, "batched", odd, doc_ids, tokens, shard_tokens)
    assert len(whole) == 2 and [s.path for s in whole] == ["train/shard-00007-000.parquet",
                                                           "train/shard-00007-001.parquet"]
    assert [s.sha256 for s in batched] == [s.sha256 for s in whole]

    for shard in whole:  # and each shard is exactly what pq.write_table makes of its rows
        table = read_shard(tmp_path / "whole", shard)
        assert pq.ParquetFile(tmp_path / "whole" / shard.path).metadata.num_row_groups == -(-table.num_rows //
                                                                                               ROW_GROUP_DOCUMENTS)
        sink = pa.BufferOutputStream()
        pq.write_table(table.cast(shard_schema(DTYPE)), sink, row_group_size=ROW_GROUP_DOCUMENTS, **PARQUET_OPTIONS)
        assert hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest() == shard.sha256
    stream = np.concatenate([read_shard(tmp_path / "batched", s).column("tokens").combine_chunks().flatten()
                             for s in batched])
    assert np.array_equal(stream, tokens.flatten().to_numpy())
