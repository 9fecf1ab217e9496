"""One read task of the tokenize job: a part of one source that a Ray task reads on its own.

Kinds:
- "range": bytes [start, end) of an uncompressed line-oriented file (lines, paragraphs, JSON
  lines). Neighbouring ranges agree on the piece boundary near their shared cut point, so a
  single large file is read by many tasks at once;
- "file": a whole file (compressed files, JSON arrays, files that are one document);
- "parquet": row groups [start, end) of a Parquet file;
- "table": rows [start, end) of a prepared Hugging Face dataset (an Arrow table);
- "stream": shard `start` of a streamed Hugging Face dataset;
- "problem": a file that could not even be planned (it is reported as unreadable).

This module imports nothing heavy: every Ray task of the job imports it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class ReadTask:
    source: int
    kind: str
    name: str = ""  # what locations in bad-input reports start with
    path: str = ""  # inside the source's filesystem
    fmt: str = ""  # "text" or "json" (range and file tasks)
    unit: str = "file"  # "file", "line" or "paragraph"
    start: int = 0
    end: int = 0
    first_row: int = 0  # parquet: the file row its first row group starts at; table: unused
    error: str = ""  # problem tasks

    def to_row(self) -> dict:
        return asdict(self)
