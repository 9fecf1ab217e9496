"""Turn one corpus file into document records, counting bad input instead of crashing on it.

Every record is `{"text", "loc", "status"}`. Status "ok" and "undecodable" (invalid UTF-8
replaced by U+FFFD) are tokenized; "empty", "malformed_json", "missing_field" and
"unreadable" are skipped and counted in the manifest with their locations.
"""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pyarrow.parquet as pq

TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".jsonl", ".json", ".ndjson")
PARQUET_SUFFIXES = (".parquet",)
SUPPORTED_SUFFIXES = TEXT_SUFFIXES + JSON_SUFFIXES + PARQUET_SUFFIXES

KEPT_STATUSES = ("ok", "undecodable")
PROBLEM_STATUSES = ("undecodable", "empty", "malformed_json", "missing_field", "unreadable")

# A blank line (only ASCII whitespace on it) ends a paragraph.
PARAGRAPH_BREAK = re.compile(rb"\n\s*\n")


def file_format(path: str) -> str | None:
    """'text', 'json' or 'parquet' by suffix (a trailing .gz is looked through), else None."""
    name = path.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    if name.endswith(TEXT_SUFFIXES):
        return "text"
    if name.endswith(JSON_SUFFIXES):
        return "json"
    if name.endswith(PARQUET_SUFFIXES) and not path.lower().endswith(".gz"):
        return "parquet"
    return None


def _record(text: str, loc: str, status: str = "ok") -> dict:
    if status == "ok" and not text.strip():
        status = "empty"
    return {"text": text, "loc": loc, "status": status, "error": ""}


def _problem(loc: str, status: str, error: str) -> dict:
    return {"text": "", "loc": loc, "status": status, "error": error}


def _decode(data: bytes) -> tuple[str, str]:
    try:
        return data.decode("utf-8"), "ok"
    except UnicodeDecodeError:
        return data.decode("utf-8", errors="replace"), "undecodable"


def _read_bytes(path: str) -> bytes:
    if path.lower().endswith(".gz"):
        with gzip.open(path, "rb") as f:
            return f.read()
    return Path(path).read_bytes()


def read_documents(path: str, text_unit: str = "file", text_field: str = "text") -> Iterator[dict]:
    """All document records of one file, in file order."""
    kind = file_format(path)
    try:
        if kind == "parquet":
            yield from _parquet_documents(path, text_field)
            return
        data = _read_bytes(path)
    except OSError as exc:
        yield _problem(path, "unreadable", str(exc))
        return
    if kind == "json":
        yield from _json_documents(data, path, text_field)
    elif text_unit == "file":
        text, status = _decode(data)
        yield _record(text, path, status)
    else:
        yield from _text_pieces(data, path, text_unit)


def _text_pieces(data: bytes, path: str, text_unit: str) -> Iterator[dict]:
    # Blank separators between paragraphs (or blank lines in line mode) are layout, not
    # empty documents, so they are skipped without being counted.
    if text_unit == "paragraph":
        pieces = PARAGRAPH_BREAK.split(data)
        label = "paragraph"
    else:
        pieces = [line.rstrip(b"\r") for line in data.split(b"\n")]
        label = "line"
    for number, piece in enumerate(pieces, start=1):
        if not piece.strip():
            continue
        text, status = _decode(piece)
        yield _record(text, f"{path}:{label} {number}", status)


def _json_documents(data: bytes, path: str, text_field: str) -> Iterator[dict]:
    stripped = data.lstrip()
    if stripped.startswith(b"["):  # one JSON array of objects
        text, _ = _decode(data)
        try:
            rows = json.loads(text)
        except json.JSONDecodeError as exc:
            yield _problem(path, "malformed_json", str(exc))
            return
        for number, row in enumerate(rows if isinstance(rows, list) else [rows], start=1):
            yield _json_row(row, f"{path}:item {number}", text_field, "ok")
        return
    for number, line in enumerate(data.split(b"\n"), start=1):
        if not line.strip():
            continue  # blank lines between JSON lines carry nothing
        text, status = _decode(line)
        try:
            row = json.loads(text)
        except json.JSONDecodeError as exc:
            yield _problem(f"{path}:line {number}", "malformed_json", str(exc))
            continue
        yield _json_row(row, f"{path}:line {number}", text_field, status)


def _json_row(row, loc: str, text_field: str, status: str) -> dict:
    value = row.get(text_field) if isinstance(row, dict) else None
    if not isinstance(value, str):
        return _problem(loc, "missing_field", f"no string field {text_field!r}")
    return _record(value, loc, status)


def _parquet_documents(path: str, text_field: str) -> Iterator[dict]:
    parquet = pq.ParquetFile(path)
    if text_field not in parquet.schema_arrow.names:
        columns = ", ".join(parquet.schema_arrow.names)
        yield _problem(path, "missing_field", f"no column {text_field!r} (columns: {columns})")
        return
    row = 0
    for batch in parquet.iter_batches(columns=[text_field], batch_size=4096):
        for value in batch.column(0).to_pylist():
            row += 1
            if not isinstance(value, str):
                error = f"{text_field!r} is {type(value).__name__}, not a string"
                yield _problem(f"{path}:row {row}", "missing_field", error)
            else:
                yield _record(value, f"{path}:row {row}")
