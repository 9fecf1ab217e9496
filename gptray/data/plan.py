"""The read plan: every source cut into ordered read pieces, grouped into read tasks of about `shard_tokens` tokens.

Task order is corpus order, so the concatenated output of tasks 0, 1, 2, … is the corpus. How
many tokens a task holds is estimated from byte sizes here, before anything is read; each task
writes its own shard files (shard_task.py), so the plan alone decides the dataset's layout.
"""

from __future__ import annotations

import hashlib
import json
import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from gptray.core.storage import FileEntry, compression_of
from gptray.data.read_tasks import ReadPiece, ReadTask
from gptray.data.readers import UTF8_BOM, file_format, is_splittable
from gptray.data.sources import ResolvedSource, document_start_rows
from gptray.data.tail_split import splits_at_tail, tail_pieces

PLANNING_THREADS = 16  # Parquet footers and JSON heads are read concurrently: object stores have latency
# GPT-2's BPE takes 3.3 (tinyshakespeare) to 4.5 (web text) bytes of English a token. The low end, so
# that a task rarely outgrows one shard and leaves a small second one behind.
BYTES_PER_TOKEN = 3.0
COMPRESSED_EXPANSION = 4.0  # text compresses about 4× with gzip or zstd


def plan_tasks(sources: list[ResolvedSource], read_chunk_bytes: int, shard_tokens: int, split: str = "hash",
               val_fraction: float = 0.0) -> list[ReadTask]:
    """All read tasks of all sources, in corpus order. A task never mixes sources (each has its weight), nor
    the two sides of a tail-split source (`split`, `val_fraction`: data's; tail_split.py)."""
    tasks: list[ReadTask] = []
    for source in sources:
        weight = source.weight if source.weight > 0 else 1.0
        target = max(1, int(shard_tokens * BYTES_PER_TOKEN / weight))  # input bytes that make one shard
        chunk = min(read_chunk_bytes, target)
        if splits_at_tail(source, split):
            pieces = tail_pieces(source, chunk, val_fraction)
            for side in ("train", "val"):
                side_tasks = _group(source, [(p, n) for p, n, s in pieces if s == side], target, len(tasks), weight)
                for task in side_tasks:
                    task.split = side
                tasks += side_tasks
            continue
        if source.kind == "hf_stream":  # shard sizes are unknown: a task per shard keeps the stream's order
            tasks += [ReadTask(len(tasks) + i, source.index, [ReadPiece(source.index, "stream", source.description,
                                                                       start=shard)])
                      for i, shard in enumerate(range(source.stream.num_shards))]
            continue
        if source.token_format:
            sized = _token_pieces(source, chunk)
        elif source.kind == "files":
            with ThreadPoolExecutor(PLANNING_THREADS) as pool:
                sized = [p for file_pieces in pool.map(_file_pieces, [source] * len(source.files), source.files,
                                                       [chunk] * len(source.files)) for p in file_pieces]
        else:
            sized = _table_pieces(source, chunk)
        tasks += _group(source, sized, target, len(tasks), weight)
    return tasks


def plan_digest(tasks: list[ReadTask]) -> str:
    """Identity of a plan: a resumed job must cut the corpus into exactly the same tasks."""
    return hashlib.sha256(json.dumps([t.to_row() for t in tasks], sort_keys=True).encode()).hexdigest()


def _group(source: ResolvedSource, sized: list[tuple[ReadPiece, float]], target: int, first_index: int,
           weight: float) -> list[ReadTask]:
    """Consecutive pieces while they fit in `target` bytes; a piece larger than that is a task of its own."""
    tasks: list[ReadTask] = []
    pieces: list[ReadPiece] = []
    size = 0.0

    def close() -> None:
        tokens = round(size / BYTES_PER_TOKEN * weight)
        tasks.append(ReadTask(first_index + len(tasks), source.index, list(pieces), tokens))

    for piece, nbytes in sized:
        if pieces and size + nbytes > target:
            close()
            pieces, size = [], 0.0
        pieces.append(piece)
        size += nbytes
    if pieces:
        close()
    return tasks


def _file_pieces(source: ResolvedSource, entry: FileEntry, chunk: int) -> list[tuple[ReadPiece, float]]:
    """A file's pieces with the text bytes each is expected to hold."""
    name, fmt = source.name(entry), file_format(entry.path)
    base = ReadPiece(source.index, "file", name, entry.path, fmt, source.text_unit if fmt == "text" else "line")
    whole = [(base, entry.size * (COMPRESSED_EXPANSION if compression_of(entry.path) else 1.0))]
    try:
        if fmt == "parquet":
            return _parquet_pieces(source, entry, name, chunk)
        if not is_splittable(entry.path) or (fmt == "text" and source.text_unit == "file"):
            return whole
        if fmt == "json" and entry.path.lower().endswith(".json") and _is_json_array(source, entry):
            return whole
    except (OSError, pa.ArrowException) as exc:
        return [(ReadPiece(source.index, "problem", name, entry.path, error=f"{type(exc).__name__}: {exc}"), 0.0)]
    # Equal ranges of at most `chunk` bytes, not full ones and a short remainder: with a short last range,
    # one task would be much smaller than the others.
    count = max(1, math.ceil(entry.size / chunk))
    cuts = [entry.size * i // count for i in range(count + 1)]
    return [(ReadPiece(source.index, "range", name, entry.path, fmt, base.unit, start, end), float(end - start))
            for start, end in zip(cuts, cuts[1:])]


def _token_pieces(source: ResolvedSource, chunk: int) -> list[tuple[ReadPiece, float]]:
    """Equal id ranges of each token file, sized as the text that `chunk` bytes would be (so that a read
    task of token files holds about `data.shard_tokens` tokens, as one of text does)."""
    pieces = []
    for entry, layout in zip(source.files, source.token_layouts):
        per_piece = max(1, int(chunk / BYTES_PER_TOKEN))
        count = max(1, math.ceil(layout.count / per_piece))
        cuts = [layout.count * i // count for i in range(count + 1)]
        pieces += [(ReadPiece(source.index, "tokens", source.name(entry), entry.path, source.token_format,
                              "tokens", start, end), float(end - start) * BYTES_PER_TOKEN)
                   for start, end in zip(cuts, cuts[1:])]
    return pieces


def _is_json_array(source: ResolvedSource, entry: FileEntry) -> bool:
    with source.fs.open_input_file(entry.path) as f:
        head = f.read(1 << 16)
    return head.removeprefix(UTF8_BOM).lstrip().startswith(b"[")


def _parquet_pieces(source: ResolvedSource, entry: FileEntry, name: str, chunk: int) -> list[tuple[ReadPiece, float]]:
    """Consecutive row groups of about `chunk` uncompressed bytes of the text column per piece."""
    with source.fs.open_input_file(entry.path) as f:
        metadata = pq.ParquetFile(f).metadata
    names = [metadata.schema.column(i).name for i in range(metadata.num_columns)]
    text_column = names.index(source.text_field) if source.text_field in names else None
    pieces, first, first_row, row, size = [], 0, 0, 0, 0
    for group in range(metadata.num_row_groups):
        row_group = metadata.row_group(group)
        size += (row_group.column(text_column).total_uncompressed_size if text_column is not None
                 else row_group.total_byte_size)
        row += row_group.num_rows
        if size >= chunk or group == metadata.num_row_groups - 1:
            pieces.append((ReadPiece(source.index, "parquet", name, entry.path, start=first, end=group + 1,
                                     first_row=first_row), float(size)))
            first, first_row, size = group + 1, row, 0
    return pieces or [(ReadPiece(source.index, "parquet", name, entry.path, start=0, end=0), 0.0)]


def _table_pieces(source: ResolvedSource, chunk: int) -> list[tuple[ReadPiece, float]]:
    """Row ranges of about `chunk` text bytes, cut only where a document may begin."""
    table = source.table
    if table.num_rows == 0:
        return []
    lengths = pc.fill_null(pc.binary_length(table.column(source.text_field)), 0).to_numpy(zero_copy_only=False)
    before = np.concatenate([[0], np.cumsum(lengths)])  # text bytes before each row
    cuts = document_start_rows(table, source.text_field, source.join_rows)
    cut_bytes = before[cuts]
    pieces, start = [], 0
    while start < table.num_rows:
        # the first allowed cut at least `chunk` bytes further on, else the end of the table
        i = max(int(np.searchsorted(cut_bytes, before[start] + chunk)), int(np.searchsorted(cuts, start, "right")))
        end = int(cuts[i]) if i < len(cuts) else table.num_rows
        pieces.append((ReadPiece(source.index, "table", source.description, start=start, end=end),
                       float(before[end] - before[start])))
        start = end
    return pieces
