"""The tail split (`data.split: tail`): the last `val_fraction` of each source's text is validation, in order.

nanoGPT's shakespeare_char split: the text's first 90% trains, its last 10% is held out. Here the
boundary is byte floor((1 - val_fraction) × size) of the source (its files concatenated, in order),
moved on to the first document boundary there (the end of a newline or of a blank-line break): the
document that straddles it trains, every one after it is validation. The
boundary is a byte offset of the input alone, and range readers move a cut to the next document
start the same way whatever the chunking, so shard sizes and task counts never move a document
between splits. Only uncompressed line or paragraph text (or JSON lines) can be cut there.
"""

from __future__ import annotations

import math

from gptray.core.errors import ConfigError
from gptray.core.storage import compression_of
from gptray.data.read_tasks import ReadPiece
from gptray.data.readers import file_format
from gptray.data.sources import ResolvedSource

TAIL_METHOD = ("tail: val is every document from the first document boundary at or after byte "
               "floor((1 - val_fraction) × size) of its source (its files concatenated in order)")


def splits_at_tail(source: ResolvedSource, split: str) -> bool:
    """Whether `data.split` (auto, hash, tail) cuts this source at its tail: auto does for a built-in corpus
    that is one continuous text (tinyshakespeare); a source whose split is fixed (val_sources) never is."""
    if source.split is not None:
        return False
    return split == "tail" or (split == "auto" and source.continuous)


def tail_pieces(source: ResolvedSource, chunk: int, val_fraction: float, key: str = "data.split"
                ) -> list[tuple[ReadPiece, float, str]]:
    """The source's pieces in order, each with its text bytes and its split ("train" before the boundary,
    "val" from it on); each side in equal byte ranges of at most `chunk`."""
    _check_cuttable(source, key)
    total = sum(entry.size for entry in source.files)
    boundary = math.floor(total * (1.0 - val_fraction))
    pieces, offset = [], 0
    for entry in source.files:
        cut = min(max(boundary - offset, 0), entry.size)  # the boundary inside this file
        name, fmt = source.name(entry), file_format(entry.path)
        unit = source.text_unit if fmt == "text" else "line"
        for split, start, end in (("train", 0, cut), ("val", cut, entry.size)):
            count = max(1, math.ceil((end - start) / chunk)) if end > start else 0
            cuts = [start + (end - start) * i // count for i in range(count + 1)] if count else []
            pieces += [(ReadPiece(source.index, "range", name, entry.path, fmt, unit, a, b), float(b - a), split)
                       for a, b in zip(cuts, cuts[1:])]
        offset += entry.size
    return pieces


def _check_cuttable(source: ResolvedSource, key: str) -> None:
    why = None
    if source.kind != "files" or source.token_format:
        why = "it is not text files"
    else:
        for entry in source.files:
            fmt = file_format(entry.path)
            if compression_of(entry.path) or fmt not in ("text", "json") or entry.path.lower().endswith(".json"):
                why = f"{source.name(entry)} is not uncompressed text or JSON lines"
            elif fmt == "text" and source.text_unit == "file":
                why = f"{source.name(entry)} is one document (text_unit: file)"
            if why:
                break
    if why:
        raise ConfigError(key, f"tail cuts a source that is one continuous text at a byte offset, but "
                               f"{source.description}: {why}; use data.split: hash")
