"""The tokenize job on real corpora: every source kind, bad input, mixtures, split stability, reruns, resume."""

from __future__ import annotations

import bz2
import gzip
import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tokenizers
import zstandard
from test_tokenize import ENC, check_manifest_counts, corpus_stream, expected_stream, write_jsonl

from gptray.core.errors import DataError
from gptray.data.bpe_training import train_tokenizer
from gptray.data.manifest import Manifest
from gptray.data.shards import read_shard
from gptray.data.tokenize_job import tokenize_corpus
from helpers import GPT2_TOKENIZER, REPO, SHAKESPEARE, make_config

SPEECHES = [p for p in re.split(r"\n\s*\n", SHAKESPEARE.read_text(encoding="utf-8")) if p.strip()]
EXTRA = [
    "Unicode: naïve café, 日本語のテキスト, emoji 🦊 and math ∑ x².",
    "A literal <|endoftext|> inside a document is ordinary text, not a separator.",
    "tabs\tand  double  spaces  stay",
]


def one_line(texts: list[str]) -> list[str]:
    return [t.replace("\n", " ") for t in texts]


def sources_override(*sources: str) -> str:
    return f"data.sources=[{', '.join(sources)}]"


def mixture_unit(text: str, seed: int = 0) -> float:
    """The documented mixture hash: blake2b-64(document, key=split_seed, person='gptray-mixture') / 2^64."""
    digest = hashlib.blake2b(text.encode(), digest_size=8, key=seed.to_bytes(8, "little"), person=b"gptray-mixture")
    return int.from_bytes(digest.digest(), "little") / 2**64


# --- every source kind ---------------------------------------------------------------------------

def make_hf_stand_ins(root: Path, wiki_rows: list[str], fineweb_docs: list[str]) -> None:
    """Local copies laid out like the Hub repositories of two registry corpora (README configs + parquet)."""
    wiki = root / "Salesforce" / "wikitext"
    (wiki / "wikitext-2-raw-v1").mkdir(parents=True)
    (wiki / "README.md").write_text(textwrap.dedent("""\
        ---
        configs:
        - config_name: wikitext-2-raw-v1
          data_files:
          - split: train
            path: wikitext-2-raw-v1/train-*
        ---
        """))
    pq.write_table(pa.table({"text": wiki_rows}), wiki / "wikitext-2-raw-v1" / "train-00000-of-00001.parquet")
    fineweb = root / "HuggingFaceFW" / "fineweb-edu"
    (fineweb / "sample" / "10BT").mkdir(parents=True)
    (fineweb / "README.md").write_text(textwrap.dedent("""\
        ---
        configs:
        - config_name: sample-10BT
          data_files:
          - split: train
            path: sample/10BT/*
        ---
        """))
    for i, part in enumerate(np.array_split(np.arange(len(fineweb_docs)), 3)):
        rows = [fineweb_docs[j] for j in part]
        pq.write_table(pa.table({"text": rows, "id": [int(j) for j in part]}),
                       fineweb / "sample" / "10BT" / f"{i:03d}_00000.parquet", row_group_size=5)


@pytest.mark.parametrize("tokenizer", ["gpt2", "bpe"])
def test_every_source_kind_is_exactly_the_tokenizers_own_encoding(tokenizer, ray_session, tmp_path, monkeypatch):
    """Every source kind's shards equal the tokenizer library's own encoding of each document plus
    end-of-text: tiktoken's gpt2, and a byte-level BPE that `gptray tokenizer train` learns from these
    same sources (so its training reads every source kind too)."""
    docs = SPEECHES[:240] + EXTRA
    lines = one_line(docs)
    files = tmp_path / "files"
    files.mkdir()
    (files / "speeches.txt").write_text("\n\n".join(docs[:60]), encoding="utf-8")  # paragraphs
    (files / "lines.txt").write_text("\n".join(lines[60:90]) + "\n", encoding="utf-8")
    write_jsonl(files / "a.jsonl", [{"text": d} for d in docs[90:120]])
    (files / "b.json").write_text(json.dumps([{"text": d} for d in docs[120:130]]), encoding="utf-8")
    (files / "c.jsonl.gz").write_bytes(gzip.compress("".join(json.dumps({"text": d}) + "\n"
                                                             for d in docs[130:150]).encode()))
    (files / "d.jsonl.zst").write_bytes(zstandard.ZstdCompressor().compress(
        "".join(json.dumps({"text": d}) + "\n" for d in docs[150:170]).encode()))
    (files / "e.txt.bz2").write_bytes(bz2.compress("\n".join(lines[170:180]).encode()))
    pq.write_table(pa.table({"text": docs[180:200]}), files / "f.parquet", row_group_size=3)
    # wikitext rows are lines; an article starts at its " = Title = " row
    articles = [[f" = Article {i} = \n", "", f" {docs[200 + i]} \n", " = = Section = = \n", " more text \n"]
                for i in range(6)]
    wiki_rows = [row for article in articles for row in article]
    make_hf_stand_ins(tmp_path / "mirror", wiki_rows, docs[206:226])
    monkeypatch.setenv("GPTRAY_CORPORA", f"{tmp_path / 'mirror'}{os.pathsep}{os.environ['GPTRAY_CORPORA']}")
    write_jsonl(tmp_path / "hf.jsonl", [{"text": d} for d in docs[226:]])

    config = make_config(
        tmp_path,
        sources_override(f"{{path: {files / 'speeches.txt'}, text_unit: paragraph}}",
                         f"{{path: {files / 'lines.txt'}, text_unit: line}}",
                         f"{{path: '{files}/*.json*'}}",  # a.jsonl, b.json, c.jsonl.gz, d.jsonl.zst
                         f"{{path: {files / 'e.txt.bz2'}, text_unit: line}}",
                         f"{{path: {files / 'f.parquet'}}}",
                         "{corpus: wikitext-2}",
                         "{corpus: fineweb-edu-10bt}",
                         f"{{hf: json, data_files: [{tmp_path / 'hf.jsonl'}], streaming: true}}"),
        "data.read_chunk_bytes=4096", "data.val_fraction=0.2",
    )
    encode = expected_stream
    if tokenizer == "bpe":
        trained = train_tokenizer(make_config(tmp_path, *_overrides(config), "tokenizer.vocab_size=600"),
                                  tmp_path / "bpe")
        assert trained.problems.total() == 0 and trained.vocab_size == 600
        config = make_config(tmp_path, *_overrides(config), "data.read_chunk_bytes=4096",
                             f"data.tokenizer={tmp_path / 'bpe'}")
        library = tokenizers.Tokenizer.from_file(str(trained.path))
        library.encode_special_tokens = True  # a literal <|endoftext|> in a document is text (EXTRA[1])
        eot = library.token_to_id("<|endoftext|>")

        def encode(documents):
            return [t for d in documents for t in [*library.encode(d, add_special_tokens=False).ids, eot]]
    result = tokenize_corpus(config)
    expected = (docs[:60] + lines[60:90] + docs[90:170] + lines[170:180] + docs[180:200]
                + ["".join(article) for article in articles] + docs[206:])
    stream, manifest = corpus_stream(tmp_path / "data")
    assert stream == encode(expected)
    if tokenizer == "bpe":  # the document's special-token text is not the separator
        assert manifest.tokenizer["kind"] == "huggingface" and manifest.tokenizer["eot_token"] == eot
        assert stream.count(eot) == len(expected)
    assert [s.documents for s in manifest.sources] == [60, 30, 80, 10, 20, 6, 20, len(docs) - 226]
    assert [s.kind for s in manifest.sources[-3:]] == ["hf_table", "hf_stream", "hf_stream"]
    assert manifest.problems.total() == 0
    check_manifest_counts(tmp_path / "data", result.manifest)
    # Files are read in 4096-byte ranges, but a source this small is one task and one shard per split.
    train_shards = manifest.split_info("train").shards
    assert (files / "speeches.txt").stat().st_size > 2 * 4096
    assert len({shard.path.split("-")[1] for shard in train_shards}) == len(train_shards) <= result.tasks

    # cutting the input differently changes nothing in the output
    again = tokenize_corpus(make_config(tmp_path / "again", *[o for o in _overrides(config)],
                                        "data.read_chunk_bytes=1000000", f"data.tokenizer={config.data.tokenizer}"))
    assert again.manifest.fingerprint == result.manifest.fingerprint


def test_wikipedia_dump_of_a_chosen_language_and_date(ray_session, tmp_path, monkeypatch):
    """The registry's Wikipedia streams the dump that hf_config names (<date>.<language>), from a local copy
    laid out as the wikimedia/wikipedia Hub repository."""
    repo = tmp_path / "mirror" / "wikimedia" / "wikipedia"
    articles = {"20231101.en": SPEECHES[:12], "20231101.de": SPEECHES[12:30]}
    configs = []
    for name, texts in articles.items():
        (repo / name).mkdir(parents=True)
        ids = [str(i) for i in range(len(texts))]
        pq.write_table(pa.table({"id": ids, "title": [f"T{i}" for i in ids], "text": texts}),
                       repo / name / "train-00000-of-00001.parquet", row_group_size=4)
        configs.append(f"- config_name: {name}\n  data_files:\n  - split: train\n    path: {name}/train-*\n")
    (repo / "README.md").write_text("---\nconfigs:\n" + "".join(configs) + "---\n")
    monkeypatch.setenv("GPTRAY_CORPORA", f"{tmp_path / 'mirror'}{os.pathsep}{os.environ['GPTRAY_CORPORA']}")

    result = tokenize_corpus(make_config(tmp_path, sources_override("{corpus: wikipedia, hf_config: 20231101.de}")))
    stream, manifest = corpus_stream(tmp_path / "data")
    assert stream == expected_stream(articles["20231101.de"])
    assert manifest.sources[0].kind == "hf_stream" and "20231101.de" in manifest.sources[0].description
    assert result.manifest.documents == len(articles["20231101.de"])


def _overrides(config) -> list[str]:
    sources = json.dumps([{k: v for k, v in vars(s).items() if v is not None} for s in config.data.sources])
    return [f"data.sources={sources}", "data.val_fraction=0.2"]


# --- bad input -----------------------------------------------------------------------------------

def make_bad_corpus(root: Path) -> tuple[Path, Path, list[str]]:
    """A directory and a text file holding every kind of bad input; returns them and the good documents."""
    bad = root / "bad"
    bad.mkdir()
    (bad / "broken.jsonl.gz").write_bytes(b"this is not gzip data at all")
    pq.write_table(pa.table({"text": ["parquet ok", None, "   "]}), bad / "data.parquet")
    big = json.dumps({"text": "y" * 100_000})
    (bad / "docs.jsonl").write_bytes(b"\n".join([
        b'{"text": "first good document"}',
        b'{"text": broken',
        b'{"text": ""}',
        b'{"body": "no text field"}',
        b'{"text": 5}',
        b'{"text": "lone \\ud800 surrogate"}',
        b'{"text": "bad \xff byte"}',
        big.encode(),
        b'{"text": "last good document"}',
    ]) + b"\n")
    (bad / "empty.txt").write_bytes(b"")
    (bad / "notes.csv").write_text("not,a,corpus\n")
    lines = root / "lines.txt"
    lines.write_bytes(b"plain line\n" + "café".encode("latin-1") + b"\n   \n" + b"z" * 200_000 + b"\nfinal line\n")
    good = ["parquet ok", "first good document", "lone \ufffd surrogate", "bad \ufffd byte", "last good document",
            "plain line", "caf\ufffd", "final line"]
    return bad, lines, good


def test_bad_input_is_counted_not_fatal_and_strict_stops(ray_session, tmp_path, capsys):
    bad, lines, good = make_bad_corpus(tmp_path)
    overrides = [sources_override(f"{{path: {bad}}}", f"{{path: {lines}, text_unit: line}}"),
                 "data.max_document_bytes=65536", "data.read_chunk_bytes=4096", "data.val_fraction=0"]
    result = tokenize_corpus(make_config(tmp_path, *overrides))
    stream, manifest = corpus_stream(tmp_path / "data")
    assert stream == expected_stream(good)
    assert manifest.problems.counts == {"unreadable": 1, "missing_field": 3, "empty": 3, "malformed_json": 1,
                                        "undecodable": 3, "oversized": 2}
    examples = manifest.problems.examples
    docs_jsonl = (bad / "docs.jsonl").read_bytes()
    assert examples["unreadable"][0].startswith(f"{bad / 'broken.jsonl.gz'}: ")
    malformed_at = docs_jsonl.index(b'{"text": broken')
    assert examples["malformed_json"][0].startswith(f"{bad / 'docs.jsonl'}:byte {malformed_at}: ")
    big_line = next(line for line in docs_jsonl.split(b"\n") if len(line) > 65536)
    assert examples["oversized"] == [
        f"{bad / 'docs.jsonl'}:byte {docs_jsonl.index(big_line)}: {len(big_line):,} bytes > "
        "data.max_document_bytes=65,536",
        f"{lines}:byte {lines.read_bytes().index(b'zzz')}: 200,000 bytes > data.max_document_bytes=65,536"]
    assert examples["missing_field"][0] == f"{bad / 'data.parquet'}:row 2: 'text' is null"
    assert examples["missing_field"][2] == (f"{bad / 'docs.jsonl'}:byte {malformed_at + 55}: "
                                            "field 'text' is not a string (int)")
    assert manifest.sources[0].skipped_files == [str(bad / "notes.csv")]
    assert [s.problems.total() for s in manifest.sources] == [11, 2]
    check_manifest_counts(tmp_path / "data", result.manifest)

    with pytest.raises(DataError, match=r"--strict.*unreadable at .*broken\.jsonl\.gz"):
        tokenize_corpus(make_config(tmp_path / "strict", *overrides), strict=True)
    from gptray.cli.main import main

    code = main(["tokenize", "--strict", f"out_dir={tmp_path}/cli", f"data.dataset_dir={tmp_path}/cli/data",
                 GPT2_TOKENIZER, *overrides])
    assert code == 3
    assert "bad input (data.strict / --strict)" in capsys.readouterr().err


# --- mixtures ------------------------------------------------------------------------------------

def test_mixture_weights_repeat_and_subsample_deterministically(ray_session, tmp_path):
    a, b, c = SPEECHES[:40], SPEECHES[40:240], SPEECHES[240:260]
    for name, docs in (("a", a), ("b", b), ("c", c)):
        write_jsonl(tmp_path / f"{name}.jsonl", [{"text": d} for d in docs])
    config = make_config(tmp_path, sources_override(f"{{path: {tmp_path / 'a.jsonl'}, weight: 2}}",
                                                    f"{{path: {tmp_path / 'b.jsonl'}, weight: 0.5}}",
                                                    f"{{path: {tmp_path / 'c.jsonl'}}}"), "data.val_fraction=0.25")
    result = tokenize_corpus(config)
    kept_b = [d for d in b if mixture_unit(d) < 0.5]
    expected = [d for d in a for _ in range(2)] + kept_b + c
    stream, manifest = corpus_stream(tmp_path / "data")
    assert stream == expected_stream(expected)
    assert 70 < len(kept_b) < 130
    sources = manifest.sources
    assert [s.weight for s in sources] == [2.0, 0.5, 1.0]
    assert [s.documents_read for s in sources] == [40, 200, 20]
    assert [s.documents for s in sources] == [80, len(kept_b), 20]
    assert sources[0].tokens == 2 * sources[0].tokens_read
    assert [s.tokens for s in sources] == [len(expected_stream(x)) for x in ([d for d in a for _ in "xy"], kept_b, c)]
    assert sum(s.share for s in sources) == pytest.approx(1.0)
    assert sources[0].share == pytest.approx(sources[0].tokens / manifest.tokens)
    # both copies of a document are in the same split: nothing of the validation set leaks into training
    train_docs = _split_texts(tmp_path / "data", manifest, "train")
    val_docs = _split_texts(tmp_path / "data", manifest, "val")
    assert not set(train_docs) & set(val_docs) and val_docs
    check_manifest_counts(tmp_path / "data", result.manifest)


def _split_texts(dataset_dir, manifest: Manifest, split: str) -> list[str]:
    tables = [read_shard(dataset_dir, s) for s in manifest.split_info(split).shards]
    return [ENC.decode(t[:-1]) for table in tables for t in table.column("tokens").to_pylist()]


def test_adding_sources_and_shards_never_moves_a_document_between_splits(ray_session, tmp_path):
    first, more = SPEECHES[:300], SPEECHES[300:900]
    write_jsonl(tmp_path / "first.jsonl", [{"text": d} for d in first])
    write_jsonl(tmp_path / "more.jsonl", [{"text": d} for d in more])
    small = tokenize_corpus(make_config(tmp_path / "s", sources_override(f"{{path: {tmp_path / 'first.jsonl'}}}"),
                                        "data.val_fraction=0.2"))
    large = tokenize_corpus(make_config(tmp_path / "l", sources_override(f"{{path: {tmp_path / 'more.jsonl'}}}",
                                                                         f"{{path: {tmp_path / 'first.jsonl'}}}"),
                                        "data.val_fraction=0.2", "data.shard_tokens=3000"))
    assert len(large.manifest.split_info("train").shards) > 3
    val_small = set(_split_texts(tmp_path / "s" / "data", small.manifest, "val"))
    val_large = set(_split_texts(tmp_path / "l" / "data", large.manifest, "val"))
    assert val_small and val_small == val_large & set(first)


# --- reruns ---------------------------------------------------------------------------------------

def dataset_files(dataset_dir: Path) -> dict[str, bytes]:
    """Every file of a token dataset, the manifest without its creation time."""
    files = {str(p.relative_to(dataset_dir)): p.read_bytes() for p in sorted(dataset_dir.rglob("*")) if p.is_file()}
    manifest = json.loads(files["manifest.json"])
    manifest.pop("created_at")
    files["manifest.json"] = json.dumps(manifest).encode()
    return files


def test_rerun_verifies_and_reuses_repairs_damage_and_refuses_changes(ray_session, tmp_path):
    path = tmp_path / "docs.jsonl"
    write_jsonl(path, [{"text": d} for d in SPEECHES[:1500]])
    overrides = [sources_override(f"{{path: {path}}}"), "data.shard_tokens=5000", "data.read_chunk_bytes=8192"]
    first = tokenize_corpus(make_config(tmp_path, *overrides))
    train = first.manifest.split_info("train").shards
    assert len(train) >= 5 and not first.reused and first.resumed_from_task is None
    data = tmp_path / "data"
    mtimes = {p: p.stat().st_mtime_ns for p in data.rglob("*.parquet")}

    again = tokenize_corpus(make_config(tmp_path, *overrides))
    assert again.reused and again.manifest.fingerprint == first.manifest.fingerprint
    assert again.kept_tasks == again.tasks == first.tasks
    assert {p: p.stat().st_mtime_ns for p in data.rglob("*.parquet")} == mtimes  # nothing rewritten

    # a deleted shard and a corrupted one: only their tasks are redone, byte for byte
    (data / train[3].path).unlink()
    val_shard = data / first.manifest.split_info("val").shards[0].path
    val_shard.write_bytes(val_shard.read_bytes()[:-10] + b"0123456789")
    repaired = tokenize_corpus(make_config(tmp_path, *overrides))
    assert not repaired.reused and repaired.resumed_from_task is not None
    damaged_tasks = {train[3].path.split("-")[1], val_shard.name.split("-")[1]}
    assert repaired.kept_tasks == first.tasks - len(damaged_tasks)
    assert repaired.manifest.fingerprint == first.manifest.fingerprint
    assert (data / train[-1].path).stat().st_mtime_ns == mtimes[data / train[-1].path]  # intact ones kept
    check_manifest_counts(data, repaired.manifest)

    # a changed corpus file or tokenizer is a different dataset: refused unless overwriting
    with path.open("a") as f:
        f.write(json.dumps({"text": "one more document"}) + "\n")
    with pytest.raises(DataError, match="--overwrite"):
        tokenize_corpus(make_config(tmp_path, *overrides))
    with pytest.raises(DataError, match="--overwrite"):
        tokenize_corpus(make_config(tmp_path, *overrides, "data.tokenizer=r50k_base"))
    replaced = tokenize_corpus(make_config(tmp_path, *overrides), overwrite=True)
    assert replaced.manifest.documents == first.manifest.documents + 1


def write_multi_task_corpus(root: Path) -> list[str]:
    """A JSON-lines file of many tasks and a directory of small files (weight 2); returns the overrides."""
    write_jsonl(root / "docs.jsonl", [{"text": d} for d in SPEECHES[:1500]])
    (root / "small").mkdir()
    for i in range(12):
        (root / "small" / f"{i:02d}.txt").write_text("\n\n".join(SPEECHES[1500 + 10 * i:1510 + 10 * i]))
    return [sources_override(f"{{path: {root / 'docs.jsonl'}}}", f"{{path: {root / 'small'}, weight: 2, "
                             "text_unit: paragraph}"), "data.shard_tokens=4000", "data.read_chunk_bytes=4096"]


def test_shards_are_byte_identical_on_1_and_2_cpus(ray_session, tmp_path):
    overrides = write_multi_task_corpus(tmp_path)
    runs = {cpus: subprocess.Popen([sys.executable, "-m", "gptray", "tokenize", f"ray.num_cpus={cpus}", GPT2_TOKENIZER,
                                    f"out_dir={tmp_path}/runs{cpus}", f"data.dataset_dir={tmp_path}/cpus{cpus}",
                                    "tracking.enabled=false", *overrides], cwd=REPO, stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT)
            for cpus in (1, 2)}
    here = tokenize_corpus(make_config(tmp_path, *overrides))  # meanwhile: this session's 4-CPU Ray
    outputs = {cpus: run.communicate(timeout=240)[0].decode() for cpus, run in runs.items()}
    assert all(run.returncode == 0 for run in runs.values()), outputs
    assert "read tasks" in outputs[1] and "tokens/s" in outputs[1]  # the job reports its progress
    files = dataset_files(tmp_path / "data")
    assert dataset_files(tmp_path / "cpus1") == files == dataset_files(tmp_path / "cpus2")
    # 12 small files are grouped: their source is a few tasks, not one tiny shard per file
    sources = [json.loads(p.read_text())["source"] for p in (tmp_path / "data" / "progress").glob("task-*.json")]
    assert 1 <= sources.count(1) < 12 and len(sources) == here.tasks >= 8
    stream, manifest = corpus_stream(tmp_path / "data")
    small_docs = [p for i in range(12) for p in SPEECHES[1500 + 10 * i:1510 + 10 * i] for _ in range(2)]
    assert stream == expected_stream(SPEECHES[:1500] + small_docs)
    assert [s.documents for s in manifest.sources] == [1500, 240]


RESUME_SCRIPT = """
import sys, tempfile, time
import ray
from gptray.config import load_config
from gptray.data.bpe_training import train_tokenizer
from gptray.data.tokenize_job import tokenize_corpus

def slow_storage():  # in every Ray worker: each task pauses after its shards, before its record
    from gptray.data import progress
    save = progress.TaskRecord.save
    def slow_save(self, store):
        time.sleep(0.5)
        save(self, store)
    progress.TaskRecord.save = slow_save

ray.init(address="local", num_cpus=1, include_dashboard=False, _temp_dir=tempfile.mkdtemp(prefix="gptray-kill-"),
         runtime_env={"worker_process_setup_hook": slow_storage})
tokenize_corpus(load_config(None, sys.argv[1:]))
"""


@pytest.mark.slow
def test_a_killed_job_resumes_with_the_tasks_it_finished(ray_session, tmp_path):
    overrides = write_multi_task_corpus(tmp_path)
    job = subprocess.Popen([sys.executable, "-c", RESUME_SCRIPT, f"out_dir={tmp_path}/runs", GPT2_TOKENIZER,
                            f"data.dataset_dir={tmp_path}/data", *overrides], cwd=REPO, start_new_session=True,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    records = tmp_path / "data" / "progress"
    try:
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and job.poll() is None and len(list(records.glob("task-*.json"))) < 3:
            time.sleep(0.1)
        assert job.poll() is None, f"the job ended before it could be interrupted: {job.stderr.read().decode()}"
    finally:
        os.killpg(job.pid, signal.SIGKILL)  # the driver, its local Ray and its workers: a hard crash
        job.wait()
    assert not (tmp_path / "data" / "manifest.json").exists()
    finished = sorted(records.glob("task-*.json"))
    mtimes = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*.parquet")}

    resumed = tokenize_corpus(make_config(tmp_path, *overrides))
    assert resumed.kept_tasks == len(finished) and 3 <= len(finished) < resumed.tasks
    kept = {p for p in mtimes if p.name.split("-")[1] in {f.stem.split("-")[1] for f in finished}}
    assert kept and all(p.stat().st_mtime_ns == mtimes[p] for p in kept)  # finished tasks were not redone
    uninterrupted = tokenize_corpus(make_config(tmp_path / "clean", *overrides))
    assert dataset_files(tmp_path / "data") == dataset_files(tmp_path / "clean" / "data")
    assert resumed.manifest.fingerprint == uninterrupted.manifest.fingerprint
