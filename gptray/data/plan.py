"""The read plan: every source cut into ordered read tasks (tasks.py) that Ray tasks run in parallel.

Task order is corpus order, so the concatenated output of tasks 0, 1, 2, … is the corpus.
"""

from __future__ import annotations

import hashlib
import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gptray.base.storage import FileEntry
from gptray.data.readers import UTF8_BOM, file_format, is_splittable
from gptray.data.sources import ResolvedSource, document_start_rows
from gptray.data.tasks import ReadTask

PLANNING_THREADS = 16  # Parquet footers and JSON heads are read concurrently: object stores have latency


def plan_tasks(sources: list[ResolvedSource], read_chunk_bytes: int) -> list[ReadTask]:
    """All read tasks of all sources, in corpus order."""
    tasks: list[ReadTask] = []
    for source in sources:
        if source.kind == "files":
            with ThreadPoolExecutor(PLANNING_THREADS) as pool:
                chunks = [read_chunk_bytes] * len(source.files)
                for file_tasks in pool.map(_file_tasks, [source] * len(source.files), source.files, chunks):
                    tasks += file_tasks
        elif source.kind == "hf_table":
            tasks += _table_tasks(source, read_chunk_bytes)
        else:
            tasks += [ReadTask(source.index, "stream", source.description, start=shard)
                      for shard in range(source.stream.num_shards)]
    return tasks


def plan_digest(tasks: list[ReadTask]) -> str:
    """Identity of a plan: a resumed job must cut the corpus into exactly the same tasks."""
    return hashlib.sha256(json.dumps([t.to_row() for t in tasks], sort_keys=True).encode()).hexdigest()


def _file_tasks(source: ResolvedSource, entry: FileEntry, chunk: int) -> list[ReadTask]:
    name, fmt = source.name(entry), file_format(entry.path)
    base = ReadTask(source.index, "file", name, entry.path, fmt, source.text_unit if fmt == "text" else "line")
    try:
        if fmt == "parquet":
            return _parquet_tasks(source, entry, name, chunk)
        if not is_splittable(entry.path) or (fmt == "text" and source.text_unit == "file"):
            return [base]
        if fmt == "json" and entry.path.lower().endswith(".json") and _is_json_array(source, entry):
            return [base]
    except (OSError, pa.ArrowException) as exc:
        return [ReadTask(source.index, "problem", name, entry.path, error=f"{type(exc).__name__}: {exc}")]
    # Equal ranges of at most `chunk` bytes, not full ones and a short remainder: with a short last range,
    # one worker would tokenize the file's final range alone while the others wait.
    count = max(1, -(-entry.size // chunk))
    cuts = [entry.size * i // count for i in range(count + 1)]
    return [ReadTask(source.index, "range", name, entry.path, fmt, base.unit, start, end)
            for start, end in zip(cuts, cuts[1:])]


def _is_json_array(source: ResolvedSource, entry: FileEntry) -> bool:
    with source.fs.open_input_file(entry.path) as f:
        head = f.read(1 << 16)
    return head.removeprefix(UTF8_BOM).lstrip().startswith(b"[")


def _parquet_tasks(source: ResolvedSource, entry: FileEntry, name: str, chunk: int) -> list[ReadTask]:
    """Consecutive row groups of about `chunk` uncompressed bytes per task."""
    with source.fs.open_input_file(entry.path) as f:
        metadata = pq.ParquetFile(f).metadata
    tasks, first, first_row, row, size = [], 0, 0, 0, 0
    for group in range(metadata.num_row_groups):
        size += metadata.row_group(group).total_byte_size
        row += metadata.row_group(group).num_rows
        if size >= chunk or group == metadata.num_row_groups - 1:
            tasks.append(ReadTask(source.index, "parquet", name, entry.path, start=first, end=group + 1,
                                  first_row=first_row))
            first, first_row, size = group + 1, row, 0
    return tasks or [ReadTask(source.index, "parquet", name, entry.path, start=0, end=0)]


def _table_tasks(source: ResolvedSource, chunk: int) -> list[ReadTask]:
    """Row ranges of about `chunk` text bytes, cut only where a document may begin."""
    table = source.table
    if table.num_rows == 0:
        return []
    lengths = pc.fill_null(pc.binary_length(table.column(source.text_field)), 0).to_numpy(zero_copy_only=False)
    before = np.concatenate([[0], np.cumsum(lengths)])  # text bytes before each row
    cuts = document_start_rows(table, source.text_field, source.join_rows)
    cut_bytes = before[cuts]
    tasks, start = [], 0
    while start < table.num_rows:
        # the first allowed cut at least `chunk` bytes further on, else the end of the table
        i = max(int(np.searchsorted(cut_bytes, before[start] + chunk)), int(np.searchsorted(cuts, start, "right")))
        end = int(cuts[i]) if i < len(cuts) else table.num_rows
        tasks.append(ReadTask(source.index, "table", source.description, start=start, end=end))
        start = end
    return tasks
