"""Readers without Ray: byte-range tasks cut files exactly like one whole-file read, bounded memory, globs, weights."""

from __future__ import annotations

import hashlib
import random
import tracemalloc

import pyarrow as pa
import pytest

from gptray.core.storage import glob_regex
from gptray.data import readers
from gptray.data.readers import PARAGRAPH_BREAK, aligned_offset, iter_pieces, range_documents
from gptray.data.split import copies, is_validation

ALPHABET = [b"a", b"b", b" ", b"\n", b"\n\n", b"\t", b" \n \n", b"\r\n", b"xyz", b"\xc3\xa9"]


def whole_file_pieces(data: bytes, unit: str) -> list[bytes]:
    """The reference: what splitting the whole file at once gives (blank pieces dropped)."""
    if unit == "line":
        return [p.rstrip(b"\r") for p in data.split(b"\n") if p.strip()]
    return [p for p in PARAGRAPH_BREAK.split(data) if p.strip()]


def ranged_pieces(data: bytes, cuts: list[int], unit: str, max_bytes: int = 10**9) -> list:
    out = []
    for start, end in zip(cuts, cuts[1:]):
        file = pa.BufferReader(data)
        first, last = aligned_offset(file, start, len(data), unit), aligned_offset(file, end, len(data), unit)
        if first < last:
            file.seek(first)
            out += list(iter_pieces(file.read, first, last - first, unit, max_bytes))
    return out


@pytest.mark.parametrize("unit", ["line", "paragraph"])
def test_byte_ranges_partition_a_file_exactly(unit, monkeypatch):
    rng = random.Random(7)
    for _ in range(1500):
        monkeypatch.setattr(readers, "BLOCK_BYTES", rng.choice([1, 2, 3, 7, 64]))  # pieces straddle blocks
        data = b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 90)))
        cuts = sorted({0, len(data), *(rng.randint(0, len(data)) for _ in range(rng.randint(0, 6)))})
        pieces = ranged_pieces(data, cuts, unit)
        assert [p for _, p, _ in pieces] == whole_file_pieces(data, unit), (data, cuts)
        for offset, piece, length in pieces:  # offsets point at the piece in the file
            assert data[offset:offset + length].rstrip(b"\r") == piece.rstrip(b"\r")


@pytest.mark.parametrize("unit", ["line", "paragraph"])
def test_oversized_pieces_are_reported_once_with_their_offset(unit, monkeypatch):
    rng = random.Random(11)
    for _ in range(1500):
        monkeypatch.setattr(readers, "BLOCK_BYTES", rng.choice([1, 2, 5, 64]))
        data = b"".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 90)))
        limit = rng.randint(1, 12)
        cuts = sorted({0, len(data), *(rng.randint(0, len(data)) for _ in range(rng.randint(0, 4)))})
        pieces = ranged_pieces(data, cuts, unit, limit)
        raw = [p for p in (data.split(b"\n") if unit == "line" else PARAGRAPH_BREAK.split(data)) if p.strip()]
        kept = [p.rstrip(b"\r") if unit == "line" else p for p in raw if len(p) <= limit]
        assert [p for _, p, _ in pieces if p is not None] == kept
        oversized = [(offset, length) for offset, p, length in pieces if p is None]
        assert len(oversized) == sum(len(p) > limit for p in raw)
        for offset, length in oversized:
            assert length > limit and data[offset:offset + length].strip()


def test_an_enormous_line_is_skipped_without_holding_it(tmp_path):
    import pyarrow.fs as pafs

    line = b"x" * (24 << 20)  # 24 MB with no newline, between two normal JSON lines
    path = tmp_path / "big.jsonl"
    path.write_bytes(b'{"text": "before"}\n' + line + b'\n{"text": "after"}\n')
    tracemalloc.start()
    docs = list(range_documents(pafs.LocalFileSystem(), str(path), "big.jsonl", "json", "line", 0,
                                path.stat().st_size, max_bytes=1 << 20, text_field="text"))
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [(d.status, d.text) for d in docs] == [("ok", "before"), ("oversized", ""), ("ok", "after")]
    assert docs[1].loc == "big.jsonl:byte 19" and docs[1].nbytes == len(line)
    assert peak < 12 << 20, f"peak {peak / 2**20:.1f} MiB: the line was held in memory"


def test_glob_patterns_follow_shell_rules():
    assert glob_regex("/d/*.txt").fullmatch("/d/a.txt")
    assert not glob_regex("/d/*.txt").fullmatch("/d/sub/a.txt")
    assert glob_regex("/d/**/*.txt").fullmatch("/d/a.txt")
    assert glob_regex("/d/**/*.txt").fullmatch("/d/x/y/a.txt")
    assert glob_regex("b/part-[0-9]?.json[!l]").fullmatch("b/part-12.jsonx")
    assert not glob_regex("b/part-[0-9]?.json[!l]").fullmatch("b/part-12.jsonl")


def test_split_and_copies_follow_the_documented_hashes():
    docs = [f"document {i}".encode() for i in range(4000)]

    def unit(data: bytes, person: bytes = b"") -> float:
        digest = hashlib.blake2b(data, digest_size=8, key=(5).to_bytes(8, "little"), person=person).digest()
        return int.from_bytes(digest, "little") / 2**64

    assert [is_validation(d, 0.1, 5) for d in docs] == [unit(d) < 0.1 for d in docs]
    assert all(copies(d, 3.0, 5) == 3 for d in docs)
    quarter = [copies(d, 0.25, 5) for d in docs]
    assert quarter == [int(unit(d, b"gptray-mixture") < 0.25) for d in docs]
    assert 0.22 < sum(quarter) / len(docs) < 0.28
    assert {copies(d, 2.5, 5) for d in docs} == {2, 3}
    # the mixture choice is independent of the split choice
    val = [is_validation(d, 0.5, 5) for d in docs]
    assert 0.2 < sum(v and c for v, c in zip(val, quarter)) / sum(quarter) < 0.8


def documents_of(path, max_bytes: int = 1 << 20) -> list:
    import pyarrow.fs as pafs

    return list(readers.file_documents(pafs.LocalFileSystem(), str(path), path.name, "json", "line", max_bytes,
                                       "text"))


def test_a_json_array_is_read_item_by_item(tmp_path):
    import json

    path = tmp_path / "docs.json"
    path.write_text("\ufeff \n" + json.dumps([{"text": "one"}, {"text": 2}, {"other": "x"}, {"text": "caf\u00e9 [,]"},
                                              {"text": "last"}], indent=1))
    assert [(d.status, d.text) for d in documents_of(path)] == [
        ("ok", "one"), ("missing_field", ""), ("missing_field", ""), ("ok", "caf\u00e9 [,]"), ("ok", "last")]
    path.write_bytes(b'[{"text": "kept"}, {"text": "cut \xff"}, {"text": broken}, {"text": "never read"}]')
    docs = documents_of(path)
    assert [d.status for d in docs] == ["ok", "undecodable", "malformed_json"]
    assert docs[1].text == "cut \ufffd" and docs[2].loc == "docs.json:item 3"
    path.write_text('[{"text": "a"}, {"text": "b"}')
    assert [d.status for d in documents_of(path)] == ["ok", "ok", "malformed_json"]  # no closing bracket


def test_a_compressed_json_array_bomb_is_capped_without_holding_it(tmp_path):
    """64 MB of text in a 64 KB gzip file: the item is oversized, and never held whole."""
    import gzip

    path = tmp_path / "bomb.json.gz"
    with gzip.open(path, "wb", compresslevel=9) as f:
        f.write(b'[{"text": "small"}, {"text": "')
        for _ in range(64):
            f.write(b"a" * (1 << 20))
        f.write(b'"}, {"text": "after"}]')
    assert path.stat().st_size < 1 << 20
    tracemalloc.start()
    docs = documents_of(path)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert [(d.status, d.text) for d in docs] == [("ok", "small"), ("oversized", "")]
    assert docs[1].loc == "bomb.json.gz:item 2" and "the rest of the array is not read" in docs[1].error
    assert peak < 24 << 20, f"peak {peak / 2**20:.1f} MiB: the array was read whole"


def test_deeply_nested_json_is_bad_input_not_a_crash(tmp_path):
    deep = "[" * 200_000 + "]" * 200_000
    lines = tmp_path / "deep.jsonl"
    lines.write_text(f'{{"text": "before"}}\n{{"text": {deep}}}\n{{"text": "after"}}\n')
    docs = documents_of(lines)
    assert [d.status for d in docs] == ["ok", "malformed_json", "ok"] and readers.TOO_DEEP in docs[1].error
    array = tmp_path / "deep.json"
    array.write_text(f'[{{"text": "before"}}, {deep}, {{"text": "never read"}}]')
    docs = documents_of(array)
    assert [d.status for d in docs] == ["ok", "malformed_json"] and readers.TOO_DEEP in docs[1].error


def test_a_stored_file_of_another_size_is_refused_before_it_is_read(tmp_path):
    from gptray.core.errors import StorageError
    from gptray.core.storage import Storage

    (tmp_path / "shard.parquet").write_bytes(b"x" * 100)
    store = Storage(str(tmp_path))
    assert store.read_ranges("shard.parquet", 100) == b"x" * 100
    with pytest.raises(StorageError, match="is 100 bytes, not the 1,000,000,000,000 expected"):
        store.read_ranges("shard.parquet", 10**12)  # a manifest's claim: nothing that size is allocated
