"""The tokenize job's units of work: read pieces (one contiguous part of a source) grouped into read tasks.

A read task is what one Ray task does: read its pieces in order, tokenize them and write its own
shard files. Piece kinds:
- "range": bytes [start, end) of an uncompressed line-oriented file (lines, paragraphs, JSON
  lines). Neighbouring ranges agree on the piece boundary near their shared cut point, so a
  single large file is read by many tasks at once;
- "file": a whole file (compressed files, JSON arrays, files that are one document);
- "parquet": row groups [start, end) of a Parquet file;
- "table": rows [start, end) of a prepared Hugging Face dataset (an Arrow table);
- "stream": shard `start` of a streamed Hugging Face dataset;
- "tokens": ids [start, end) of a token file (fmt "nanogpt" or "llmc"; token_files.py), cut, like
  ranges, where neighbouring pieces agree on the document boundary;
- "problem": a file that could not even be planned (it is reported as unreadable).

This module imports nothing heavy: every Ray task of the job imports it.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field


@dataclass
class ReadPiece:
    source: int
    kind: str
    name: str = ""  # what locations in bad-input reports start with
    path: str = ""  # inside the source's filesystem
    fmt: str = ""  # "text" or "json" (range and file pieces), "nanogpt" or "llmc" (tokens pieces)
    unit: str = "file"  # "file", "line" or "paragraph"
    start: int = 0
    end: int = 0
    first_row: int = 0  # parquet: the file row its first row group starts at; table: unused
    error: str = ""  # problem pieces


@dataclass
class ReadTask:
    """Consecutive pieces of one source, planned to hold about `data.shard_tokens` tokens."""

    index: int  # position in corpus order; names the task's shard files
    source: int
    pieces: list[ReadPiece] = field(default_factory=list)
    estimated_tokens: int = 0  # from byte sizes at plan time, after the source's weight
    split: str = ""  # "train" or "val" for every document of a tail-split source's task; "": by content hash

    def to_row(self) -> dict:
        row = asdict(self)
        if not self.split:  # so that plans made before the tail split keep their digests
            del row["split"]
        return row

    @property
    def digest(self) -> str:
        """Identity of the task's input: a saved task record counts only for exactly this task."""
        return hashlib.sha256(json.dumps(self.to_row(), sort_keys=True).encode()).hexdigest()

    @property
    def description(self) -> str:
        first, last = self.pieces[0].name if self.pieces else "", self.pieces[-1].name if self.pieces else ""
        return first if first == last else f"{first} … {last}"
