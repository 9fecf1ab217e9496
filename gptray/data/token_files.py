"""Token files as a source: nanoGPT's raw `train.bin` and llm.c's headed shards, read as documents of token ids.

Neither format is decoded or re-encoded: a file's ids are split into documents at the tokenizer's
<|endoftext|> id and written as they are (the shards' tokens equal the file's tokens). Layouts:
- "nanogpt": raw little-endian ids, uint16 when the tokenizer's vocabulary fits in 16 bits, else
  uint32 (nanoGPT's prepare.py: `np.uint16`, each document followed by <|endoftext|>);
- "llmc": llm.c / modded-nanogpt shards, a 256 × int32 header (magic 20240520, version 1, token
  count) and then the count's uint16 ids (each document preceded by <|endoftext|>).
A header that does not match its file, or a size that is not a whole number of ids, is refused
naming the file; so is an id the declared tokenizer cannot produce, with its file and offset.

This module imports nothing heavy: every read task of the job imports it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from gptray.core.errors import DataError

TOKEN_FORMATS = ("nanogpt", "llmc")
LLMC_MAGIC = 20240520
LLMC_VERSION_UINT16 = 1
LLMC_HEADER_INTS = 256
LLMC_HEADER_BYTES = LLMC_HEADER_INTS * 4
SCAN_TOKENS = 1 << 20  # ids read at a time while looking for a document boundary


@dataclass(frozen=True)
class TokenLayout:
    """Where a token file's ids are: the byte they start at, how many, and their dtype."""

    offset: int
    count: int
    dtype: str  # "<u2" or "<u4"

    @property
    def itemsize(self) -> int:
        return np.dtype(self.dtype).itemsize


def nanogpt_dtype(vocab_size: int) -> str:
    """nanoGPT's rule: uint16 ids when the vocabulary fits, else uint32."""
    return "<u2" if vocab_size <= 2**16 else "<u4"


def read_layout(fs: pafs.FileSystem, path: str, name: str, fmt: str, vocab_size: int) -> TokenLayout:
    """The layout of one token file; a header or size that does not match the file is a DataError naming it."""
    size = fs.get_file_info(path).size
    if fmt == "nanogpt":
        dtype = nanogpt_dtype(vocab_size)
        itemsize = np.dtype(dtype).itemsize
        if size % itemsize:
            raise DataError(f"{name}: {size:,} bytes is not a whole number of {itemsize}-byte token ids "
                            f"(format nanogpt, {dtype[1:]} for a vocabulary of {vocab_size:,})")
        return TokenLayout(0, size // itemsize, dtype)
    if fmt != "llmc":
        raise DataError(f"{name}: unknown token file format {fmt!r} (use one of {', '.join(TOKEN_FORMATS)})")
    if size < LLMC_HEADER_BYTES:
        raise DataError(f"{name}: {size:,} bytes, shorter than an llm.c header ({LLMC_HEADER_BYTES} bytes)")
    with fs.open_input_file(path) as file:
        header = np.frombuffer(file.read(LLMC_HEADER_BYTES), dtype="<i4")
    magic, version, count = (int(v) for v in header[:3])
    if magic != LLMC_MAGIC:
        raise DataError(f"{name}: not an llm.c token shard (header magic {magic}, expected {LLMC_MAGIC})")
    if version != LLMC_VERSION_UINT16:
        raise DataError(f"{name}: llm.c header version {version}; only version {LLMC_VERSION_UINT16} "
                        "(uint16 ids) is read")
    expected = LLMC_HEADER_BYTES + 2 * count
    if count < 0 or size != expected:
        raise DataError(f"{name}: the llm.c header counts {count:,} tokens ({expected:,} bytes with the header), "
                        f"but the file holds {size:,} bytes")
    return TokenLayout(LLMC_HEADER_BYTES, count, "<u2")


def _read_ids(file: pafs.NativeFile, layout: TokenLayout, start: int, stop: int) -> np.ndarray:
    """Ids [start, stop) of the file."""
    file.seek(layout.offset + start * layout.itemsize)
    return np.frombuffer(file.read((stop - start) * layout.itemsize), dtype=layout.dtype)


def aligned_start(file: pafs.NativeFile, layout: TokenLayout, position: int, eot: int) -> int:
    """The first document start at or after `position`: just after the first <|endoftext|> at or after
    position-1. Neighbouring read pieces both compute it for their shared cut, so each document is read once."""
    if position <= 0 or position >= layout.count:
        return min(max(position, 0), layout.count)
    at = position - 1
    while at < layout.count:
        ids = _read_ids(file, layout, at, min(at + SCAN_TOKENS, layout.count))
        hits = np.flatnonzero(ids == eot)
        if len(hits):
            return at + int(hits[0]) + 1
        at += len(ids)
    return layout.count


def token_documents(fs: pafs.FileSystem, path: str, name: str, layout: TokenLayout, start: int, end: int,
                    eot: int, vocab_size: int) -> Iterator[np.ndarray]:
    """The documents (ids without their <|endoftext|>) that begin in ids [start, end) of a token file."""
    with fs.open_input_file(path) as file:
        first, last = aligned_start(file, layout, start, eot), aligned_start(file, layout, end, eot)
        if first >= last:
            return
        ids = _read_ids(file, layout, first, last)
    outside = np.flatnonzero(ids >= vocab_size)
    if len(outside):
        at = first + int(outside[0])
        raise DataError(f"{name}: token id {int(ids[outside[0]])} at token {at:,} (byte "
                        f"{layout.offset + at * layout.itemsize:,}) is outside the vocabulary of data.tokenizer "
                        f"({vocab_size:,} ids); was the file made with another tokenizer?")
    bounds = np.concatenate([[-1], np.flatnonzero(ids == eot), [len(ids)]])
    for a, b in zip(bounds[:-1] + 1, bounds[1:]):
        if b > a:  # consecutive <|endoftext|> ids (llm.c's leading one, nanoGPT's trailing one) hold no document
            yield ids[a:b]
