"""Parquet token shards: one row per document (`doc`, `tokens`), written in corpus order.

A split's token stream is its shards' `tokens` concatenated in manifest order; documents
never straddle shards, and each already ends with <|endoftext|>.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gptray.data.manifest import ShardInfo
from gptray.errors import DataError

ROW_GROUP_DOCUMENTS = 8192


def shard_schema(dtype: np.dtype) -> pa.Schema:
    return pa.schema([("doc", pa.int64()), ("tokens", pa.list_(pa.from_numpy_dtype(dtype)))])


class TokenShardWriter:
    """Collects whole documents of one split and writes a shard once it holds `shard_tokens` tokens."""

    def __init__(self, dataset_dir: str | Path, split: str, dtype: np.dtype, shard_tokens: int):
        self.dataset_dir = Path(dataset_dir)
        self.split = split
        self.schema = shard_schema(dtype)
        self.shard_tokens = shard_tokens
        self.shards: list[ShardInfo] = []
        self._pending: list[pa.Table] = []
        self._pending_tokens = 0
        (self.dataset_dir / split).mkdir(parents=True, exist_ok=True)

    def add(self, doc_ids: np.ndarray, tokens: pa.ListArray) -> None:
        """Append documents (global ids, one token list each) in corpus order."""
        table = pa.table({"doc": pa.array(doc_ids, pa.int64()), "tokens": tokens}).cast(self.schema)
        while table.num_rows:
            lengths = np.asarray(pc.list_value_length(table.column("tokens")))
            needed = self.shard_tokens - self._pending_tokens
            reached = np.nonzero(np.cumsum(lengths) >= needed)[0]
            # The shard closes right after the document that fills it, so shard boundaries
            # depend only on document order, never on how Ray batched the documents.
            take = int(reached[0]) + 1 if len(reached) else table.num_rows
            self._pending.append(table.slice(0, take))
            self._pending_tokens += int(lengths[:take].sum())
            table = table.slice(take)
            if self._pending_tokens >= self.shard_tokens:
                self._flush()

    def close(self) -> list[ShardInfo]:
        if self._pending:
            self._flush()
        return self.shards

    def _flush(self) -> None:
        table = pa.concat_tables(self._pending).combine_chunks()
        relative = f"{self.split}/shard-{len(self.shards):05d}.parquet"
        path = self.dataset_dir / relative
        tmp = path.with_name(path.name + ".tmp")
        pq.write_table(table, tmp, row_group_size=ROW_GROUP_DOCUMENTS, compression="zstd")
        os.replace(tmp, path)
        self.shards.append(
            ShardInfo(
                path=relative,
                documents=table.num_rows,
                tokens=self._pending_tokens,
                first_document=int(table.column("doc")[0].as_py()),
                sha256=file_sha256(path),
                bytes=path.stat().st_size,
            )
        )
        self._pending, self._pending_tokens = [], 0


def file_sha256(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def read_shard(dataset_dir: str | Path, shard: ShardInfo, verify: bool = True) -> pa.Table:
    """A shard's rows; with `verify`, its bytes must match the manifest checksum."""
    path = Path(dataset_dir) / shard.path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DataError(f"cannot read shard {path}: {exc}") from exc
    if verify and hashlib.sha256(data).hexdigest() != shard.sha256:
        raise DataError(f"shard {path} does not match its checksum in the manifest (changed or corrupt)")
    return pq.read_table(pa.BufferReader(data))


def shard_tokens(table: pa.Table) -> np.ndarray:
    """The concatenated token stream of a shard's documents."""
    return np.asarray(table.column("tokens").combine_chunks().flatten())
