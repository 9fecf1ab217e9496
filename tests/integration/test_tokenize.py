"""The tokenize job: shards decode to exactly tiktoken's encoding of the documents, with EOT after each."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken

from gptray.core.errors import ConfigError, DataError
from gptray.data.manifest import Manifest
from gptray.data.shards import file_sha256, read_shard, shard_tokens
from gptray.data.tokenize_job import tokenize_corpus
from helpers import SHAKESPEARE, make_config

ENC = tiktoken.get_encoding("gpt2")
EOT = ENC.eot_token


def expected_stream(documents: list[str]) -> list[int]:
    """The reference: tiktoken's own encoding of each document, followed by <|endoftext|>."""
    out: list[int] = []
    for doc in documents:
        out += ENC.encode_ordinary(doc) + [EOT]
    return out


def corpus_stream(dataset_dir) -> tuple[list[int], Manifest]:
    """All shards of both splits, documents put back in corpus order, concatenated."""
    manifest = Manifest.load(dataset_dir)
    rows = []
    for split in ("train", "val"):
        for shard in manifest.split_info(split).shards:
            table = read_shard(dataset_dir, shard)
            rows += zip(table.column("doc").to_pylist(), table.column("tokens").to_pylist())
    rows.sort(key=lambda r: r[0])  # ids grow in corpus order across both splits
    assert len({doc for doc, _ in rows}) == len(rows), "document ids must be unique"
    return [t for _, tokens in rows for t in tokens], manifest


def split_stream(dataset_dir, manifest: Manifest, split: str) -> np.ndarray:
    shards = manifest.split_info(split).shards
    return np.concatenate([shard_tokens(read_shard(dataset_dir, s)) for s in shards]) if shards else np.empty(0)


def check_manifest_counts(dataset_dir, manifest: Manifest) -> None:
    total_docs = total_tokens = 0
    for split in ("train", "val"):
        info = manifest.split_info(split)
        assert info.tokens == sum(s.tokens for s in info.shards)
        assert info.documents == sum(s.documents for s in info.shards)
        for shard in info.shards:
            path = dataset_dir / shard.path
            assert file_sha256(path) == shard.sha256
            table = pq.read_table(path)
            assert table.num_rows == shard.documents
            assert len(shard_tokens(table)) == shard.tokens
        total_docs += info.documents
        total_tokens += info.tokens
    assert (manifest.documents, manifest.tokens) == (total_docs, total_tokens)
    assert sum(s.documents for s in manifest.sources) == total_docs
    assert sum(s.tokens for s in manifest.sources) == total_tokens
    assert manifest.fingerprint == manifest.compute_fingerprint()


def test_tinyshakespeare_as_one_document_is_exactly_tiktoken(ray_session, tmp_path):
    config = make_config(tmp_path, f"data.sources=[{{path: {SHAKESPEARE}}}]", "data.val_fraction=0")
    result = tokenize_corpus(config)
    text = SHAKESPEARE.read_text(encoding="utf-8")
    train = split_stream(tmp_path / "data", result.manifest, "train")
    assert train.dtype == np.uint16
    assert train.tolist() == expected_stream([text])
    assert result.manifest.documents == 1
    check_manifest_counts(tmp_path / "data", result.manifest)


def test_tinyshakespeare_paragraphs_split_train_val(shakespeare_dataset):
    text = SHAKESPEARE.read_bytes()
    paragraphs = [p.decode() for p in re.split(rb"\n\s*\n", text) if p.strip()]
    dataset_dir = Path(shakespeare_dataset.dataset_dir)
    stream, manifest = corpus_stream(dataset_dir)
    assert stream == expected_stream(paragraphs)
    assert manifest.documents == len(paragraphs)
    train, val = manifest.split_info("train"), manifest.split_info("val")
    assert 0.05 < val.documents / manifest.documents < 0.15  # val_fraction 0.1
    assert train.tokens + val.tokens == len(stream)
    check_manifest_counts(dataset_dir, manifest)


def write_jsonl(path, rows: list) -> None:
    lines = [r if isinstance(r, str) else json.dumps(r, ensure_ascii=False) for r in rows]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


JSONL_DOCS = [
    "The quick brown fox jumps over the lazy dog.",
    "Unicode: naïve café, 日本語のテキスト, emoji 🦊 and math ∑ x².",
    "A literal <|endoftext|> inside a document is ordinary text, not a separator.",
    "   leading spaces and\n\nblank lines\n\n\nare kept inside a json document",
    "short",
]


def test_jsonl_documents_and_bad_lines(ray_session, tmp_path, caplog):
    path = tmp_path / "docs.jsonl"
    rows = [{"text": JSONL_DOCS[0]}, {"text": JSONL_DOCS[1], "id": 7}, "{not json", {"text": ""},
            {"content": "no text field"}, {"text": JSONL_DOCS[2]}, {"text": None}, {"text": JSONL_DOCS[3]},
            "", {"text": JSONL_DOCS[4]}]
    write_jsonl(path, rows)
    config = make_config(tmp_path, f"data.sources=[{{path: {path}}}]", "data.val_fraction=0.3")
    import ray.data  # first: importing it sets its loggers' handlers afresh

    ray_data = logging.getLogger(ray.data.__name__)  # Ray Data's console lines, whatever its handlers' streams
    ray_data.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="ray.data"):
            result = tokenize_corpus(config)
    finally:
        ray_data.removeHandler(caplog.handler)
    # Off a terminal (as here): none of Ray Data's progress blocks, which it logs every 10 s, nor its advice to turn
    # its bars back on; the job's own lines replace them (tests/unit/test_tokenize_console.py).
    assert "Running Dataset" not in caplog.text and "Progress bars" not in caplog.text
    assert "Starting execution of Dataset" in caplog.text  # Ray Data's own lines were seen
    stream, manifest = corpus_stream(tmp_path / "data")
    assert stream == expected_stream(JSONL_DOCS)
    assert manifest.documents == len(JSONL_DOCS)
    assert manifest.problems.counts == {"malformed_json": 1, "empty": 1, "missing_field": 2}
    line_3 = len(b"".join(path.read_bytes().split(b"\n", 2)[:2])) + 2  # byte offset where line 3 starts
    assert manifest.problems.examples["malformed_json"][0].startswith(f"{path}:byte {line_3}:")
    check_manifest_counts(tmp_path / "data", result.manifest)


def test_hugging_face_loader_gives_the_same_tokens_as_the_local_reader(ray_session, tmp_path):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, [{"text": d} for d in JSONL_DOCS])
    local = tokenize_corpus(make_config(tmp_path / "a", f"data.sources=[{{path: {path}}}]"))
    hf = tokenize_corpus(make_config(tmp_path / "b", f"data.sources=[{{hf: json, data_files: [{path}]}}]"))
    assert corpus_stream(tmp_path / "b" / "data")[0] == expected_stream(JSONL_DOCS)
    assert hf.manifest.fingerprint == local.manifest.fingerprint  # same shards, byte for byte
    assert hf.manifest.sources[0].description == "hf:json[train]"


def test_parquet_directory_glob_and_mixed_sources_in_order(ray_session, tmp_path):
    corpus = tmp_path / "corpus"
    (corpus / "sub").mkdir(parents=True)
    pq.write_table(pa.table({"body": JSONL_DOCS[:2], "n": [1, 2]}), corpus / "a.parquet")
    (corpus / "b.txt").write_text(JSONL_DOCS[2])
    write_jsonl(corpus / "sub" / "c.jsonl", [{"body": JSONL_DOCS[3]}])
    (corpus / "notes.csv").write_text("ignored,but,reported\n")
    extra = tmp_path / "extra.txt"
    extra.write_text("line one\nline two\n\nline three\n")
    config = make_config(
        tmp_path,
        f"data.sources=[{{path: {corpus}, text_field: body}}, {{path: '{tmp_path}/extra*.txt', text_unit: line}}]",
    )
    result = tokenize_corpus(config)
    stream, manifest = corpus_stream(tmp_path / "data")
    # directory files in sorted order (a.parquet, b.txt, sub/c.jsonl), then the glob's lines
    assert stream == expected_stream(JSONL_DOCS[:4] + ["line one", "line two", "line three"])
    assert manifest.sources[0].skipped_files == [str(corpus / "notes.csv")]
    assert [s.documents for s in manifest.sources] == [4, 3]
    check_manifest_counts(tmp_path / "data", result.manifest)


def test_small_shards_keep_documents_whole_and_are_deterministic(ray_session, tmp_path):
    source = f"data.sources=[{{path: {SHAKESPEARE}, text_unit: paragraph}}]"
    config = make_config(tmp_path, source, "data.shard_tokens=20000", "data.batch_documents=97")
    first = tokenize_corpus(config)
    train = first.manifest.split_info("train")
    assert len(train.shards) > 5 and first.tasks == len(train.shards)  # the plan sized each task to one shard
    for shard in train.shards:
        table = read_shard(tmp_path / "data", shard)
        assert all(tokens[-1] == EOT for tokens in table.column("tokens").to_pylist())  # whole documents
        assert 0.5 * 20000 < shard.tokens < 20000  # about shard_tokens (less the val tenth), never over
    assert pq.read_schema(tmp_path / "data" / train.shards[0].path).field("tokens").type == pa.list_(pa.uint16())
    # a different batch size gives byte-identical shards
    again = tokenize_corpus(make_config(tmp_path / "again", source, "data.shard_tokens=20000",
                                        "data.batch_documents=500"))
    assert again.manifest.fingerprint == first.manifest.fingerprint


def test_rerun_reuses_and_a_changed_request_needs_overwrite(ray_session, tmp_path):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, [{"text": d} for d in JSONL_DOCS])
    config = make_config(tmp_path, f"data.sources=[{{path: {path}}}]")
    first = tokenize_corpus(config)
    assert not first.reused
    again = tokenize_corpus(config)
    assert again.reused and again.manifest.fingerprint == first.manifest.fingerprint
    changed = make_config(tmp_path, f"data.sources=[{{path: {path}}}]", "data.val_fraction=0.5")
    with pytest.raises(DataError, match="--overwrite"):
        tokenize_corpus(changed)
    replaced = tokenize_corpus(changed, overwrite=True)
    assert not replaced.reused and replaced.manifest.split["val_fraction"] == 0.5
    assert corpus_stream(tmp_path / "data")[0] == expected_stream(JSONL_DOCS)


def test_split_is_stable_when_documents_are_added(ray_session, tmp_path):
    docs = [f"document number {i} with some text" for i in range(200)]
    small, large = tmp_path / "small.jsonl", tmp_path / "large.jsonl"
    write_jsonl(small, [{"text": d} for d in docs[:100]])
    write_jsonl(large, [{"text": d} for d in docs])

    def val_docs(path, root):
        result = tokenize_corpus(make_config(root, f"data.sources=[{{path: {path}}}]", "data.val_fraction=0.2"))
        tables = [read_shard(root / "data", s) for s in result.manifest.split_info("val").shards]
        return {ENC.decode(t[:-1]) for table in tables for t in table.column("tokens").to_pylist()}

    val_small, val_large = val_docs(small, tmp_path / "s"), val_docs(large, tmp_path / "l")
    assert val_small == {d for d in val_large if d in set(docs[:100])}
    assert 10 < len(val_large) < 70


def test_missing_source_is_a_config_error_naming_the_key(tmp_path):
    config = make_config(tmp_path, f"data.sources=[{{path: {tmp_path}/nope.txt}}]")
    with pytest.raises(ConfigError) as info:
        tokenize_corpus(config)
    assert info.value.key == "data.sources[0].path"
    assert "no such file" in str(info.value)


def test_corpus_with_no_documents_is_a_data_error(ray_session, tmp_path):
    path = tmp_path / "empty.jsonl"
    write_jsonl(path, ["{broken", {"text": ""}])
    with pytest.raises(DataError, match="no documents"):
        tokenize_corpus(make_config(tmp_path, f"data.sources=[{{path: {path}}}]"))


def test_undecodable_bytes_are_replaced_and_counted(ray_session, tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes("café crème".encode("latin-1") + b"\nplain line\n")
    result = tokenize_corpus(make_config(tmp_path, f"data.sources=[{{path: {path}, text_unit: line}}]",
                                         "data.val_fraction=0"))
    stream, manifest = corpus_stream(tmp_path / "data")
    assert stream == expected_stream(["caf\ufffd cr\ufffdme", "plain line"])
    assert manifest.problems.counts == {"undecodable": 1}
    assert result.manifest.documents == 2
