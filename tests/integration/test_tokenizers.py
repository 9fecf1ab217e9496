"""Tokenizers beyond tiktoken: `gptray tokenizer train`, tokenizer.json and hf:NAME datasets, uint32 ids."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import tokenizers
from test_data_pipeline import make_bad_corpus, sources_override
from test_tokenize import corpus_stream

from gptray.cli.main import main as cli
from gptray.core.errors import DataError
from gptray.data.hf_tokenizer import HuggingFaceTokenizer
from gptray.data.inspection import sample_documents
from gptray.data.manifest import Manifest
from gptray.data.tokenize_job import tokenize_corpus
from gptray.data.tokenizer_loading import load_tokenizer, tokenizer_for_run
from helpers import SHAKESPEARE, make_config


def test_tokenizer_train_reads_like_the_tokenize_job_and_never_sees_validation(ray_session, tmp_path, capsys):
    """The command counts bad input as the tokenize job does, learns only from train-split documents,
    writes a tokenizer.json whose <|endoftext|> is special, and refuses to overwrite it unasked."""
    bad, lines, _ = make_bad_corpus(tmp_path)
    speeches = tmp_path / "speeches.txt"
    speeches.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:60_000], encoding="utf-8")
    overrides = [sources_override(f"{{path: {bad}}}", f"{{path: {lines}, text_unit: line}}",
                                  f"{{path: {speeches}, text_unit: paragraph}}"),
                 "data.max_document_bytes=65536", "data.read_chunk_bytes=4096", "data.val_fraction=0.3"]
    config = make_config(tmp_path, *overrides)
    out = tmp_path / "tok"
    args = ["tokenizer", "train", *overrides, f"out_dir={tmp_path}/runs", "tokenizer.vocab_size=500", "--out", str(out)]
    assert cli(args) == 0
    printed = capsys.readouterr().out
    manifest = tokenize_corpus(config).manifest
    train_documents = manifest.split_info("train").documents
    assert f"learned    500 tokens from {train_documents:,} documents" in printed
    assert 0 < train_documents < manifest.documents  # the validation documents were left out
    assert f"skipped    {manifest.problems.counts}" in printed
    assert f"use it     data.tokenizer={out}" in printed
    library = tokenizers.Tokenizer.from_file(str(out / "tokenizer.json"))
    assert library.get_vocab_size() == 500 and library.token_to_id("<|endoftext|>") == 0
    assert cli(args) == 2  # --out holds a tokenizer already
    assert cli([*args, "--overwrite"]) == 0


def _tokenizer_with_ids_past_uint16(path: Path) -> list[str]:
    """A byte-level BPE plus 70,000 added tokens (ids past 65,535), and documents that use them."""
    tok = tokenizers.Tokenizer(tokenizers.models.BPE())
    tok.pre_tokenizer = tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = tokenizers.decoders.ByteLevel()
    trainer = tokenizers.trainers.BpeTrainer(vocab_size=300, special_tokens=["<|endoftext|>"], show_progress=False,
                                             initial_alphabet=tokenizers.pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([SHAKESPEARE.read_text(encoding="utf-8")[:20_000]], trainer)
    tok.add_tokens([f"<word{i}>" for i in range(70_000)])
    tok.save(str(path))
    return [f"Some text <word{i}> then <word{69_999 - i}> and é 日本 {i}" for i in range(40)]


def test_a_vocabulary_past_65536_ids_writes_uint32_shards_that_match_the_library(ray_session, tmp_path):
    documents = _tokenizer_with_ids_past_uint16(tmp_path / "tokenizer.json")
    corpus = tmp_path / "docs.jsonl"
    corpus.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents), encoding="utf-8")
    config = make_config(tmp_path, sources_override(f"{{path: {corpus}}}"), f"data.tokenizer={tmp_path}/tokenizer.json",
                         "data.val_fraction=0.25")
    manifest = tokenize_corpus(config).manifest
    assert manifest.tokenizer["dtype"] == "uint32" and manifest.tokenizer["vocab_size"] == 70_300
    stream, _ = corpus_stream(tmp_path / "data")
    library = tokenizers.Tokenizer.from_file(str(tmp_path / "tokenizer.json"))
    expected = [t for d in documents for t in [*library.encode(d, add_special_tokens=False).ids, 0]]
    assert stream == expected and max(stream) >= 65_536
    # the dataset carries its tokenizer: it decodes without the original file
    (tmp_path / "tokenizer.json").unlink()
    decoded = {s.text for s in sample_documents(str(tmp_path / "data"), manifest, count=40)}
    assert len(decoded) > 20 and {text.removesuffix("<|endoftext|>") for text in decoded} <= set(documents)
    assert config.model.vocab_size is None  # follows the dataset (the run sets it: test_sweep's vocab sweep)


def test_hf_names_load_from_the_hub_cache_and_a_missing_one_is_a_data_error(tmp_path):
    """hf:NAME is read through huggingface_hub (its cache here: the tests run offline)."""
    _tokenizer_with_ids_past_uint16(tmp_path / "tokenizer.json")
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = Path(os.environ["HF_HOME"]) / "hub" / "models--acme--tiny-bpe"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "snapshots" / commit).mkdir(parents=True)
    (repo / "snapshots" / commit / "tokenizer.json").write_bytes((tmp_path / "tokenizer.json").read_bytes())
    hub = load_tokenizer("hf:acme/tiny-bpe")
    local = load_tokenizer(str(tmp_path / "tokenizer.json"))
    assert isinstance(hub, HuggingFaceTokenizer) and hub.digest == local.digest and hub.eot_token == 0
    text = "ROMEO: <word5> é"
    assert hub.encode(text) == local.encode(text) and hub.decode(hub.encode(text)) == text
    with pytest.raises(DataError, match="could not fetch tokenizer.json of 'acme/nothing'"):
        load_tokenizer("hf:acme/nothing")
    with pytest.raises(DataError, match="could not read the tokenizer file"):
        load_tokenizer(str(tmp_path / "missing" / "tokenizer.json"))


def test_tokenize_learns_a_missing_tokenizer_directory_first_and_names_a_bad_path(ray_session, tmp_path, capsys):
    """`gptray tokenize` (and the quickstart) with data.tokenizer naming a directory that does not exist yet
    learns it from the corpus, then tokenizes with it; a second run reuses both; a missing file that is not
    a tokenizer.json is refused before any work."""
    corpus = tmp_path / "speeches.txt"
    corpus.write_text(SHAKESPEARE.read_text(encoding="utf-8")[:40_000], encoding="utf-8")
    tokenizer = tmp_path / "tokenizers" / "small"
    overrides = [sources_override(f"{{path: {corpus}, text_unit: paragraph}}"), f"data.tokenizer={tokenizer}",
                 f"data.dataset_dir={tmp_path}/data", f"out_dir={tmp_path}/runs", "tokenizer.vocab_size=400"]
    assert cli(["tokenize", *overrides]) == 0
    printed = capsys.readouterr().out
    assert "learned    400 tokens from" in printed and f"wrote      {tokenizer}/tokenizer.json" in printed
    library = tokenizers.Tokenizer.from_file(str(tokenizer / "tokenizer.json"))
    stream, _ = corpus_stream(tmp_path / "data")
    first = stream[:stream.index(0)]  # a paragraph, encoded as the library encodes it
    assert max(stream) < 400 and library.encode(library.decode(first), add_special_tokens=False).ids == first
    assert library.decode(first) in corpus.read_text(encoding="utf-8")
    learned = (tokenizer / "tokenizer.json").read_bytes()
    from mlflow.tracking import MlflowClient  # the job logged its MLflow run, by the dataset's fingerprint

    [run] = MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db").search_runs(
        [e.experiment_id for e in MlflowClient(f"sqlite:///{tmp_path}/runs/mlflow.db").search_experiments()])
    manifest = json.loads((tmp_path / "data" / "manifest.json").read_text())
    assert run.data.tags["gptray.job"] == "tokenize" and run.data.metrics["tokens"] == manifest["tokens"]
    assert run.inputs.dataset_inputs[0].dataset.digest == manifest["fingerprint"][:36]
    assert cli(["tokenize", *overrides]) == 0  # nothing learned again: the dataset is reused as it is
    assert "learned" not in capsys.readouterr().out and (tokenizer / "tokenizer.json").read_bytes() == learned
    assert cli(["tokenize", *overrides[:-4], f"data.tokenizer={tmp_path}/vocab.json",
                f"data.dataset_dir={tmp_path}/other"]) == 2
    assert "is named tokenizer.json" in capsys.readouterr().err
    assert not (tmp_path / "other").exists()

    # Another job's working directory (ray job submit) lacks the learned file: the dataset's copy serves
    # where the name is the same, and only there.
    manifest = Manifest.load(f"{tmp_path}/data")
    elsewhere = make_config(tmp_path, *overrides[:-1], f"data.tokenizer={tmp_path}/job/tokenizers/small")
    assert tokenizer_for_run(elsewhere, manifest).digest == load_tokenizer(str(tokenizer)).digest
    with pytest.raises(DataError, match="no such file"):
        tokenizer_for_run(make_config(tmp_path, *overrides[:-1], f"data.tokenizer={tmp_path}/job/tokenizers/other"),
                      manifest)
