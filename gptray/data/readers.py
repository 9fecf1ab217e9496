"""Read corpus files, byte ranges of them, Parquet row groups and Arrow tables into document records.

Bad input is counted, never fatal. Every record is a `Doc` with a status:
- "ok" and "undecodable" are tokenized (invalid UTF-8 is replaced by U+FFFD);
- "empty", "malformed_json", "missing_field", "oversized" and "unreadable" are skipped, and the
  manifest counts them with their first locations.

Memory stays bounded whatever the input: text is read in blocks, and a piece (line, paragraph,
JSON line, file) longer than `max_bytes` is skipped as "oversized" without ever being held whole.
"""

from __future__ import annotations

import codecs
import json
import re
from collections.abc import Callable, Iterator
from typing import NamedTuple

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from gptray.core.storage import compression_of, open_stream, strip_compression

STATUSES = ("ok", "undecodable", "empty", "malformed_json", "missing_field", "oversized", "unreadable")
KEPT_STATUSES = ("ok", "undecodable")
PROBLEM_STATUSES = STATUSES[1:]

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)

BLOCK_BYTES = 4 << 20  # bytes read at a time
PARQUET_BATCH_ROWS = 4096

# A blank line (only ASCII whitespace on it) ends a paragraph.
PARAGRAPH_BREAK = re.compile(rb"\n\s*\n")
NON_SPACE = re.compile(rb"\S")
UTF8_BOM = b"\xef\xbb\xbf"
TOO_DEEP = "nested too deeply to parse"
SURROGATE = re.compile("[\ud800-\udfff]")


class Doc(NamedTuple):
    """One document record. `raw` is the text's UTF-8 bytes when the reader has them already."""

    text: str
    raw: bytes | None
    status: str
    loc: str
    error: str
    nbytes: int  # size of the input it came from, for throughput
    prompt: str | None = None  # prompt/completion records: the prompt (`text` is the completion)
    tokens: np.ndarray | None = None  # token files: the document's ids, written as they are (no text)


def problem(loc: str, status: str, error: str, nbytes: int = 0) -> Doc:
    return Doc("", None, status, loc, error, nbytes)


def file_format(path: str) -> str | None:
    """'text', 'json' or 'parquet' by suffix (a compression suffix is looked through), else None."""
    name = path.lower()
    inner = strip_compression(name)
    if inner.endswith(TEXT_SUFFIXES):
        return "text"
    if inner.endswith(JSON_SUFFIXES):
        return "json"
    if name.endswith(PARQUET_SUFFIXES):  # Parquet compresses inside; a .parquet.gz is not read
        return "parquet"
    return None


def is_splittable(path: str) -> bool:
    """Whether byte ranges of the file can be read independently (not compressed)."""
    return compression_of(path) is None


# --- pieces: lines and paragraphs of a byte stream ---------------------------------------------

class _Separator:
    """Where the pieces of a text unit end: at newlines (lines) or at blank lines (paragraphs)."""

    def __init__(self, unit: str):
        self.unit = unit

    def complete_end(self, data: bytes) -> int:
        """The end of the last separator in `data` that more data cannot extend (0 if none)."""
        if self.unit == "line":
            return data.rfind(b"\n") + 1
        # A run of whitespace that reaches the end of `data` might gain newlines from the next block,
        # so a paragraph break counts only once something that is not whitespace follows it.
        last_text = len(data.rstrip())
        end = 0
        for match in PARAGRAPH_BREAK.finditer(data):
            if match.end() > last_text:
                break
            end = match.end()
        return end

    def first_end(self, data: bytes, final: bool) -> int:
        """The end of the first separator in `data` that more data cannot extend (-1 if none)."""
        if self.unit == "line":
            i = data.find(b"\n")
            return i + 1 if i >= 0 else -1
        last_text = len(data.rstrip())
        for match in PARAGRAPH_BREAK.finditer(data):
            if final or match.end() < last_text:
                return match.end()
        return -1

    def pieces(self, region: bytes, base: int) -> Iterator[tuple[int, bytes]]:
        """(offset, piece) of every piece of a region that ends at a separator (or at the end of input)."""
        if self.unit == "line":
            offset = base
            for line in region.split(b"\n"):
                yield offset, line
                offset += len(line) + 1
            return
        start = 0
        for match in PARAGRAPH_BREAK.finditer(region):
            yield base + start, region[start:match.start()]
            start = match.end()
        yield base + start, region[start:]

    def tail_to_keep(self, data: bytes) -> bytes:
        """What an oversized piece's bytes must keep to find the separator that ends it."""
        return b"" if self.unit == "line" else data[len(data.rstrip()):]


def iter_pieces(read: Callable[[int], bytes], base: int, limit: int | None, unit: str,
                max_bytes: int) -> Iterator[tuple[int, bytes | None, int]]:
    """(offset, bytes, length) of each non-blank piece of a stream; bytes is None for an oversized piece.

    Reads at most `limit` bytes (None: to the end) starting at stream offset `base`.
    """
    separator = _Separator(unit)
    carry = b""
    remaining = limit
    oversized_from = None  # offset where a piece too long to keep began
    while True:
        want = BLOCK_BYTES if remaining is None else min(BLOCK_BYTES, remaining)
        block = read(want) if want > 0 else b""
        if remaining is not None:
            remaining -= len(block)
        final = not block
        data = carry + block if carry else block
        cut = len(data) if final else separator.complete_end(data)
        region, carry = data[:cut], data[cut:]
        for offset, piece in separator.pieces(region, base) if region else ():
            if oversized_from is not None:  # the first piece is the end of the oversized one
                yield oversized_from, None, offset + len(piece) - oversized_from
                oversized_from = None
            elif not NON_SPACE.search(piece):
                continue  # blank lines between pieces are layout, not empty documents: not counted
            elif len(piece) > max_bytes:
                yield offset, None, len(piece)
            else:
                yield offset, piece.rstrip(b"\r") if unit == "line" else piece, len(piece)
        base += len(region)
        if final:
            if oversized_from is not None:  # the input ended inside the oversized piece
                yield oversized_from, None, base - oversized_from
            return
        keep = separator.tail_to_keep(carry)
        if len(carry) - len(keep) > max_bytes and NON_SPACE.search(carry):
            # The piece being read is certain to exceed max_bytes: drop what we hold of it (keeping
            # only what finding its end needs); it is reported once it ends.
            if oversized_from is None:
                oversized_from = base
            base += len(carry) - len(keep)
            carry = keep


def aligned_offset(file: pafs.NativeFile, offset: int, size: int, unit: str) -> int:
    """The first piece boundary at or after `offset` that every reader computes the same way.

    Neighbouring byte-range tasks both call this for their shared cut point, so each piece is
    read by exactly one task. For lines: just after the first newline at or after offset-1.
    For paragraphs: the end of the first complete blank-line break found scanning from offset.
    """
    if offset <= 0 or offset >= size:
        return min(max(offset, 0), size)
    separator = _Separator(unit)
    start = offset - 1 if unit == "line" else offset
    file.seek(start)
    carry, base = b"", start
    while True:
        block = file.read(BLOCK_BYTES)
        final = not block
        data = carry + block if carry else block
        end = separator.first_end(data, final)
        if end >= 0:
            return base + end
        if final:
            return size
        keep = separator.tail_to_keep(data)
        base += len(data) - len(keep)
        carry = keep


# --- documents ----------------------------------------------------------------------------------

def _decode(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "ok"
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), "undecodable"


def _text_doc(piece: bytes, loc: str) -> Doc:
    text, status = _decode(piece)
    if status == "ok":
        return Doc(text, piece, "ok", "", "", len(piece))
    return Doc(text, None, status, loc, "invalid UTF-8 replaced by U+FFFD", len(piece))


def _json_doc(piece: bytes, loc: str, text_field: str, prompt_field: str | None = None) -> Doc:
    text, status = _decode(piece.removeprefix(UTF8_BOM))
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        return problem(loc, "malformed_json", str(exc), len(piece))
    except RecursionError:  # json recurses per level: "[[[[…" deeper than Python's stack
        return problem(loc, "malformed_json", TOO_DEEP, len(piece))
    return _json_row_doc(row, loc, text_field, prompt_field, status, len(piece))


def _json_row_doc(row, loc: str, text_field: str, prompt_field: str | None, status: str, nbytes: int) -> Doc:
    """The document of a parsed JSON row: its text field, with the prompt field before it where one is named."""
    row = row if isinstance(row, dict) else {}
    doc = _row_doc(row.get(text_field), loc, text_field, status, nbytes)
    if prompt_field is None or doc.status not in KEPT_STATUSES:
        return doc
    prompt = row.get(prompt_field)
    if not isinstance(prompt, str):
        what = "missing" if prompt is None else f"not a string ({type(prompt).__name__})"
        return problem(loc, "missing_field", f"field {prompt_field!r} is {what}", nbytes)
    try:
        prompt.encode("utf-8")
    except UnicodeEncodeError:
        prompt = SURROGATE.sub("\ufffd", prompt)
        doc = doc._replace(status="undecodable", loc=loc, error="invalid UTF-8 replaced by U+FFFD")
    return doc._replace(prompt=prompt)


def _row_doc(value, loc: str, text_field: str, status: str, nbytes: int) -> Doc:
    if not isinstance(value, str):
        what = "missing" if value is None else f"not a string ({type(value).__name__})"
        return problem(loc, "missing_field", f"field {text_field!r} is {what}", nbytes)
    if not value.strip():
        return problem(loc, "empty", "", nbytes)
    try:
        raw = value.encode("utf-8")
    except UnicodeEncodeError:  # JSON escapes can spell lone surrogates ("\ud800"), which are not text
        value, status = SURROGATE.sub("\ufffd", value), "undecodable"
        raw = value.encode("utf-8")
    if status != "ok":
        return Doc(value, raw, status, loc, "invalid UTF-8 replaced by U+FFFD", nbytes)
    return Doc(value, raw, "ok", "", "", nbytes)


def _piece_docs(pieces: Iterator[tuple[int, bytes | None, int]], name: str, fmt: str, text_field: str,
                max_bytes: int, prompt_field: str | None = None) -> Iterator[Doc]:
    for offset, piece, length in pieces:
        loc = f"{name}:byte {offset}"
        if piece is None:
            yield problem(loc, "oversized", f"{length:,} bytes > data.max_document_bytes={max_bytes:,}", length)
        elif fmt == "json":
            yield _json_doc(piece, loc, text_field, prompt_field)
        else:
            yield _text_doc(piece, loc)


def range_documents(fs: pafs.FileSystem, path: str, name: str, fmt: str, unit: str, start: int, end: int,
                    max_bytes: int, text_field: str, prompt_field: str | None = None) -> Iterator[Doc]:
    """Documents of the pieces that begin in bytes [start, end) of an uncompressed file (lines, paragraphs
    or JSON lines), cut at boundaries that the neighbouring ranges agree on."""
    loc = f"{name}:byte {start}"
    try:
        with fs.open_input_file(path) as file:
            size = file.size()
            first, last = aligned_offset(file, start, size, unit), aligned_offset(file, end, size, unit)
            if first >= last:
                return
            file.seek(first)
            yield from _piece_docs(iter_pieces(file.read, first, last - first, unit, max_bytes),
                                   name, fmt, text_field, max_bytes, prompt_field)
    except OSError as exc:
        yield problem(loc, "unreadable", str(exc))


def file_documents(fs: pafs.FileSystem, path: str, name: str, fmt: str, unit: str, max_bytes: int,
                   text_field: str, prompt_field: str | None = None) -> Iterator[Doc]:
    """Documents of a whole file read front to back (compressed files, JSON arrays, one-document files)."""
    try:
        with open_stream(fs, path) as stream:
            if fmt == "json":
                head = stream.read(BLOCK_BYTES)
                if head.removeprefix(UTF8_BOM).lstrip().startswith(b"["):
                    yield from _json_array_documents(_prefixed(head, stream.read), name, text_field, max_bytes,
                                                     prompt_field)
                    return
                pieces = iter_pieces(_prefixed(head, stream.read), 0, None, "line", max_bytes)
                yield from _piece_docs(pieces, name, fmt, text_field, max_bytes, prompt_field)
            elif unit == "file":
                data = stream.read(max_bytes + 1)
                if len(data) > max_bytes:
                    yield problem(name, "oversized", f"more than data.max_document_bytes={max_bytes:,} bytes "
                                  "(use text_unit: paragraph or line to divide the file)", len(data))
                elif not data.strip():
                    yield problem(name, "empty", "", len(data))
                else:
                    text, status = _decode(data)
                    error = "" if status == "ok" else "invalid UTF-8 replaced by U+FFFD"
                    yield Doc(text, data if status == "ok" else None, status, name if error else "", error, len(data))
            else:
                yield from _piece_docs(iter_pieces(stream.read, 0, None, unit, max_bytes),
                                       name, fmt, text_field, max_bytes)
    except OSError as exc:
        yield problem(name, "unreadable", str(exc))


def _prefixed(head: bytes, read: Callable[[int], bytes]) -> Callable[[int], bytes]:
    """A read function that first returns `head`, then continues with `read`."""
    pending = [head]

    def read_next(n: int) -> bytes:
        if pending:
            first = pending.pop()
            if first:
                return first
        return read(n)

    return read_next


def _json_array_documents(read: Callable[[int], bytes], name: str, text_field: str, max_bytes: int,
                          prompt_field: str | None = None) -> Iterator[Doc]:
    """The items of a JSON array file, parsed one at a time as the file streams in: no more than one item
    (at most data.max_document_bytes) and a block are held, however large the file or its decompressed
    stream. An item that is larger, malformed or nested too deeply is counted and ends the file (nothing
    after it can be found again)."""
    decoder = json.JSONDecoder()
    # undecodable bytes become lone surrogates, which _row_doc replaces and counts
    utf8 = codecs.getincrementaldecoder("utf-8")("surrogateescape")
    text, position, done, number = "", 0, False, 0

    def more() -> bool:
        nonlocal text, position, done
        if done:
            return False
        data = read(max(BLOCK_BYTES, len(text) - position))  # doubling: a large item is parsed a few times only
        done = not data
        text = text[position:] + utf8.decode(data, final=done)  # what was parsed is dropped
        position = 0
        return True

    while "[" not in text and more():
        pass
    position = text.find("[") + 1  # the caller saw it first, after whitespace and a byte-order mark
    while True:
        position = _skip(text, position, ", \t\r\n" if number else " \t\r\n")
        if position == len(text):
            if more():
                continue
            yield problem(name, "malformed_json", f"the array ends after item {number} without a ']'")
            return
        if text[position] == "]":
            return
        loc = f"{name}:item {number + 1}"
        try:
            row, end = decoder.raw_decode(text, position)
            error, complete = "", end < len(text) or done  # a number at the end of the buffer may go on
        except json.JSONDecodeError as exc:
            row, end, error, complete = None, position, str(exc), done
        except RecursionError:  # json recurses per level: "[[[[…" deeper than Python's stack
            yield problem(loc, "malformed_json", TOO_DEEP)
            return
        if not complete:
            if len(text) - position > max_bytes:
                yield problem(loc, "oversized", f"more than data.max_document_bytes={max_bytes:,} bytes "
                              "(the rest of the array is not read)", len(text) - position)
                return
            more()
            continue
        if row is None:
            yield problem(loc, "malformed_json", error)
            return
        number += 1
        value = row.get(text_field) if isinstance(row, dict) else None
        if end - position > max_bytes:
            yield problem(loc, "oversized", f"> data.max_document_bytes={max_bytes:,}", end - position)
        else:
            yield _json_row_doc(row, loc, text_field, prompt_field, "ok", len(value) if isinstance(value, str) else 0)
        position = end


def _skip(text: str, position: int, characters: str) -> int:
    while position < len(text) and text[position] in characters:
        position += 1
    return position


def parquet_documents(fs: pafs.FileSystem, path: str, name: str, row_groups: range, first_row: int,
                      text_field: str, max_bytes: int) -> Iterator[Doc]:
    """Documents of some row groups of a Parquet file; `first_row` is the file row the first group starts at."""
    try:
        with fs.open_input_file(path) as file:
            parquet = pq.ParquetFile(file)
            columns = parquet.schema_arrow.names
            if text_field not in columns:
                if row_groups.start == 0:  # the file's first task reports it, once
                    yield problem(name, "missing_field", f"no column {text_field!r} (columns: {', '.join(columns)})")
                return
            row = first_row
            for batch in parquet.iter_batches(batch_size=PARQUET_BATCH_ROWS, row_groups=list(row_groups),
                                              columns=[text_field], use_threads=False):
                yield from table_documents(pa.Table.from_batches([batch]), text_field, name, row, max_bytes)
                row += batch.num_rows
    except (OSError, pa.ArrowException) as exc:
        yield problem(f"{name}:row {first_row + 1}", "unreadable", str(exc))


def table_documents(table: pa.Table, text_field: str, name: str, first_row: int, max_bytes: int) -> Iterator[Doc]:
    """Documents of an Arrow table's text column; locations count rows from `first_row` (0-based)."""
    column = table.column(text_field)
    if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
        if pa.types.is_null(column.type):
            column = pa.chunked_array([pa.nulls(len(column), pa.string())])
        else:
            for i in range(len(column)):
                yield problem(f"{name}:row {first_row + i + 1}", "missing_field",
                              f"column {text_field!r} holds {column.type}, not strings")
            return
    lengths = pc.fill_null(pc.binary_length(column), -1).to_numpy()
    for i, value in enumerate(column.to_pylist()):
        size = int(lengths[i])
        if value is None:
            yield problem(f"{name}:row {first_row + i + 1}", "missing_field", f"{text_field!r} is null")
        elif size > max_bytes:
            yield problem(f"{name}:row {first_row + i + 1}", "oversized",
                          f"{size:,} bytes > data.max_document_bytes={max_bytes:,}", size)
        elif not value.strip():
            yield problem(f"{name}:row {first_row + i + 1}", "empty", "", size)
        else:
            yield Doc(value, None, "ok", "", "", size)


# The first row of a WikiText article: " = Title = " (sections are " = = Section = = ").
WIKITEXT_ARTICLE_START = r"^ = [^=].* = \n?$"


def article_starts(column: pa.ChunkedArray | pa.Array) -> list[int]:
    """Rows of a WikiText column that open an article (row 0 always opens a document)."""
    starts = pc.fill_null(pc.match_substring_regex(column, WIKITEXT_ARTICLE_START), False)
    return sorted({0, *np.nonzero(starts.to_numpy(zero_copy_only=False))[0].tolist()}) if len(column) else []


def joined_row_documents(table: pa.Table, text_field: str, name: str, first_row: int,
                         max_bytes: int) -> Iterator[Doc]:
    """Documents made of consecutive rows (WikiText: each row is a line, an article starts at its title)."""
    column = table.column(text_field)
    rows = [value or "" for value in column.to_pylist()]
    starts = article_starts(column)
    for start, end in zip(starts, starts[1:] + [len(rows)]):
        text = "".join(rows[start:end])
        loc = f"{name}:row {first_row + start + 1}"
        raw = text.encode("utf-8")
        if len(raw) > max_bytes:
            yield problem(loc, "oversized", f"{len(raw):,} bytes > data.max_document_bytes={max_bytes:,}", len(raw))
        elif not text.strip():
            yield problem(loc, "empty", "", len(raw))
        else:
            yield Doc(text, raw, "ok", "", "", len(raw))
