"""Parquet token shards: one row per document (`doc`, `tokens`), written in corpus order, locally or to object stores.

Datasets with prompt/completion sources add `prompt_tokens`: how many of a document's first
tokens are its prompt (no loss is computed on them).

A split's token stream is its shards' `tokens` concatenated in manifest order; documents
never straddle shards, and each already ends with <|endoftext|>. Each read task writes its own
shards; `doc` is read task × DOC_ID_STRIDE + the document's position among the task's written
documents (both splits), so ids grow in corpus order and no task needs another's counts.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gptray.core.errors import DataError
from gptray.core.paths import hash_file
from gptray.core.storage import Location, Storage
from gptray.data.manifest import ShardInfo, is_inside

ROW_GROUP_DOCUMENTS = 8192
DOC_ID_STRIDE = 10**9  # ids of read task t's documents start at t × this (readable: 3000000017 is task 3's)
# Dictionary-encoding 50K distinct token ids costs ~20% more time than it saves in bytes.
PARQUET_OPTIONS = {"compression": "zstd", "use_dictionary": ["doc"]}
SHARD_PREFIX = "shard-"
OLD_PREFIXES = ("pending-",)  # files of earlier versions of the job (saved pending documents)


def shard_schema(dtype: np.dtype, with_prompts: bool = False) -> pa.Schema:
    fields = [("doc", pa.int64()), ("tokens", pa.list_(pa.from_numpy_dtype(dtype)))]
    return pa.schema(fields + [("prompt_tokens", pa.int32())] if with_prompts else fields)


def shard_path(split: str, task: int, part: int) -> str:
    """Shards are named by the read task that wrote them, so a name never depends on other tasks."""
    return f"{split}/{SHARD_PREFIX}{task:05d}-{part:03d}.parquet"


class TokenShardWriter:
    """Collects whole documents of one split of one read task and writes a shard once it holds `shard_tokens`
    tokens (a task's last shard of a split holds the rest)."""

    def __init__(self, dataset_dir: Location, split: str, dtype: np.dtype, shard_tokens: int,
                 task: int = 0, with_prompts: bool = False):
        self.storage = Storage.of(dataset_dir)
        self.split = split
        self.task = task
        self.with_prompts = with_prompts
        self.schema = shard_schema(dtype, with_prompts)
        self.shard_tokens = shard_tokens
        self.shards: list[ShardInfo] = []
        self._pending: list[pa.Table] = []
        self._pending_tokens = 0
        # The open shard's full row groups are compressed as soon as their documents arrive, so closing
        # it leaves only its last partial row group to compress (the bytes equal a one-shot write).
        self._sink: pa.BufferOutputStream | None = None
        self._encoder: pq.ParquetWriter | None = None
        self._encoded_rows = 0
        self.storage.make_dirs(split)

    def add(self, doc_ids: np.ndarray, tokens: pa.ListArray | pa.ChunkedArray,
            prompt_tokens: np.ndarray | None = None) -> int:
        """Append documents (ids, one token list each, and with prompts the prompt lengths) in corpus order;
        returns shards written."""
        columns = {"doc": pa.array(doc_ids, pa.int64()), "tokens": tokens}
        if self.with_prompts:
            columns["prompt_tokens"] = pa.array(
                np.zeros(len(doc_ids), np.int32) if prompt_tokens is None else prompt_tokens, pa.int32())
        table = pa.table(columns).cast(self.schema)
        written = 0
        while table.num_rows:
            lengths = pc.list_value_length(table.column("tokens")).to_numpy(zero_copy_only=False)
            needed = self.shard_tokens - self._pending_tokens
            reached = np.nonzero(np.cumsum(lengths) >= needed)[0]
            # The shard closes right after the document that fills it, so shard boundaries
            # depend only on document order, never on how documents were batched.
            take = int(reached[0]) + 1 if len(reached) else table.num_rows
            self._pending.append(table.slice(0, take))
            self._pending_tokens += int(lengths[:take].sum())
            table = table.slice(take)
            if self._pending_tokens >= self.shard_tokens:
                self._flush()
                written += 1
            else:
                self._encode_full_row_groups()
        return written

    def close(self) -> list[ShardInfo]:
        if self._pending:
            self._flush()
        return self.shards

    def _encode_full_row_groups(self) -> None:
        pending = pa.concat_tables(self._pending)
        full = (pending.num_rows - self._encoded_rows) // ROW_GROUP_DOCUMENTS * ROW_GROUP_DOCUMENTS
        if full:
            self._encode(pending.slice(self._encoded_rows, full))

    def _encode(self, rows: pa.Table) -> None:
        if self._encoder is None:
            self._sink = pa.BufferOutputStream()
            self._encoder = pq.ParquetWriter(self._sink, self.schema, **PARQUET_OPTIONS)
        # Contiguous rows, as a one-shot write of the whole shard would hand the encoder.
        self._encoder.write_table(rows.combine_chunks(), row_group_size=ROW_GROUP_DOCUMENTS)
        self._encoded_rows += rows.num_rows

    def _flush(self) -> None:
        table = pa.concat_tables(self._pending)
        if self._encoded_rows < table.num_rows or self._encoder is None:
            self._encode(table.slice(self._encoded_rows))
        self._encoder.close()
        data = self._sink.getvalue().to_pybytes()
        self._sink, self._encoder, self._encoded_rows = None, None, 0
        relative = shard_path(self.split, self.task, len(self.shards))
        self.storage.write_bytes(relative, data)
        docs = table.column("doc")
        self.shards.append(ShardInfo(path=relative, documents=table.num_rows, tokens=self._pending_tokens,
                                     first_document=int(docs[0].as_py()), sha256=hashlib.sha256(data).hexdigest(),
                                     bytes=len(data), last_document=int(docs[table.num_rows - 1].as_py())))
        self._pending, self._pending_tokens = [], 0


def file_sha256(path: str | Path) -> str:
    return hash_file(path, hashlib.sha256()).hexdigest()


def shard_is_intact(dataset_dir: Location, shard: ShardInfo) -> bool:
    """Whether a shard exists with exactly the bytes its manifest entry (or task record) describes."""
    if not is_inside(shard.path):  # a task record is read from the dataset directory too: its paths are data
        return False
    store = Storage.of(dataset_dir)
    try:
        data = store.read_ranges(shard.path, shard.bytes)  # another size is refused before it is read
    except DataError:
        return False
    return hashlib.sha256(data).hexdigest() == shard.sha256


def read_shard(dataset_dir: Location, shard: ShardInfo, verify: bool = True) -> pa.Table:
    """A shard's rows (local, or an object store read in parallel ranges); with `verify`, its bytes must match
    the manifest checksum."""
    store = Storage.of(dataset_dir)
    data = store.read_ranges(shard.path, shard.bytes)
    if verify and hashlib.sha256(data).hexdigest() != shard.sha256:
        raise DataError(f"shard {store.uri(shard.path)} does not match its checksum in the manifest "
                        "(changed or corrupt)")
    # ParquetFile, not read_table: read_table's dataset fragment can be freed on an Arrow pool thread
    # after Python began to exit, and its Python buffer then aborts the process (exit 134).
    with pq.ParquetFile(pa.BufferReader(data)) as parquet:
        return parquet.read()


def shard_tokens(table: pa.Table) -> np.ndarray:
    """The concatenated token stream of a shard's documents."""
    return np.asarray(table.column("tokens").combine_chunks().flatten())


def shard_loss_mask(table: pa.Table) -> np.ndarray:
    """Per token of a shard's stream, 1 where training computes the loss of predicting it, 0 in prompts."""
    lengths = pc.list_value_length(table.column("tokens")).to_numpy(zero_copy_only=False).astype(np.int64)
    mask = np.ones(int(lengths.sum()), dtype=np.uint8)
    if "prompt_tokens" not in table.column_names:
        return mask
    prompts = table.column("prompt_tokens").to_numpy(zero_copy_only=False).astype(np.int64)
    starts = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    for start, length in zip(starts[prompts > 0], prompts[prompts > 0]):
        mask[start:start + length] = 0
    return mask
