"""The data commands: list, inspect, preview (the trainer's own batches), and their errors."""

from __future__ import annotations

import textwrap

import numpy as np
import pytest
from test_tokenize import ENC

from gptray.cli.main import main
from gptray.data.corpora import REGISTRY
from gptray.data.global_order import WindowSampler, gather_windows, open_split_tokens
from gptray.data.inspection import length_histogram, preview_batches
from gptray.data.manifest import Manifest
from gptray.data.shards import read_shard, shard_tokens
from helpers import GPT2_TOKENIZER, make_config


def test_data_list_names_every_corpus_with_size_and_source(capsys):
    assert main(["data", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("openwebtext", "openwebtext-10k", "wikipedia", "wikitext-2", "wikitext-103", "tinystories",
                 "fineweb-edu-10bt", "c4-en", "pile-uncopyrighted", "redpajama-sample", "tinyshakespeare"):
        assert name in REGISTRY
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert REGISTRY[name].size in line and REGISTRY[name].source in line
    assert "s3://" in out and "local" in out


def test_inspect_prints_summary_histogram_and_samples(shakespeare_dataset, capsys):
    assert main(["data", "inspect", shakespeare_dataset.dataset_dir, "--samples", "2"]) == 0
    out = capsys.readouterr().out
    manifest = shakespeare_dataset.manifest
    assert f"{manifest.documents:,} documents, {manifest.tokens:,} tokens" in out
    histogram = length_histogram(shakespeare_dataset.dataset_dir, manifest)
    assert sum(histogram.counts) == histogram.documents == manifest.documents
    assert f"max {histogram.max:,}" in out and "bad input  none" in out
    assert out.count("sample     ") == 4  # 2 per split
    assert "First Citizen:" in out  # the corpus's first document


def test_inspect_of_a_missing_dataset_exits_3(tmp_path, capsys):
    assert main(["data", "inspect", str(tmp_path / "nothing")]) == 3
    assert "no token dataset" in capsys.readouterr().err


def test_preview_shows_exactly_the_trainers_windows(shakespeare_dataset, tmp_path, capsys):
    overrides = [f"data.dataset_dir={shakespeare_dataset.dataset_dir}", f"data.cache_dir={tmp_path}/cache",
                 "train.batch_size=8", "train.micro_batch_size=2", "ray.num_workers=2", GPT2_TOKENIZER]
    config = make_config(tmp_path, *overrides)
    rows = preview_batches(config, steps=2)
    # what train_loop_per_worker does for each rank
    manifest = Manifest.load(config.data.dataset_dir)
    tokens = open_split_tokens(config.data.dataset_dir, manifest, "train", config.data.cache_dir)
    seq_len = config.train.effective_seq_len(config.model)
    sampler = WindowSampler(len(tokens), seq_len, config.train.seed)
    expected = []
    for step in range(2):
        for rank in range(2):
            for starts in sampler.rank_micro_batches(step, rank, 2, 8, 2):
                x, _ = gather_windows(tokens, starts, seq_len)
                expected += [(int(s), ENC.decode(row.tolist())) for s, row in zip(starts, x)]
    assert [(r.start, r.text) for r in rows] == expected
    assert len(rows) == 2 * 8 and all(np.array_equal(r.inputs, tokens[r.start:r.start + seq_len]) for r in rows)

    assert main(["data", "preview", *overrides, f"out_dir={tmp_path}/runs", "--steps", "1", "--rank", "1",
                 "--max-chars", "0"]) == 0
    out = capsys.readouterr().out
    assert "step 0 rank 1 micro-batch 1 row 1" in out and "rank 0" not in out
    assert textwrap.indent(rows[7].text, "    | ", lambda _: True) in out  # step 0's last window: rank 1's


def test_preview_shows_the_block_order_with_each_windows_shard(shakespeare_dataset, tmp_path, capsys):
    overrides = [f"data.dataset_dir={shakespeare_dataset.dataset_dir}", GPT2_TOKENIZER,
                 f"data.cache_dir={tmp_path}/cache", "data.shuffle=block", "train.batch_size=8",
                 "train.micro_batch_size=2", "ray.num_workers=2"]
    rows = preview_batches(make_config(tmp_path, *overrides), steps=2)
    shards = {s.path: shard_tokens(read_shard(shakespeare_dataset.dataset_dir, s))
              for s in Manifest.load(shakespeare_dataset.dataset_dir).split_info("train").shards}
    assert len(rows) == 2 * 8 and all(r.shard in shards for r in rows)
    assert all(np.array_equal(r.inputs, shards[r.shard][r.start:r.start + len(r.inputs)]) for r in rows)
    assert [r.start for r in rows] != sorted(r.start for r in rows)  # shuffled within the block
    assert main(["data", "preview", *overrides, f"out_dir={tmp_path}/runs", "--max-chars", "20"]) == 0
    out = capsys.readouterr().out
    assert "block order (data.shuffle block)" in out and f"({rows[0].shard} tokens {rows[0].start:,}–" in out


@pytest.mark.parametrize("args, key", [(["--steps", "0"], "--steps"), (["--rank", "5"], "--rank")])
def test_preview_rejects_bad_arguments(args, key, capsys):
    assert main(["data", "preview", *args]) == 2
    assert key in capsys.readouterr().err


@pytest.mark.parametrize("command", [["data"], ["data", "list"], ["data", "inspect"], ["data", "preview"],
                                     ["tokenize"]])
def test_data_commands_have_help(command, capsys):
    with pytest.raises(SystemExit) as exited:
        main([*command, "--help"])
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert "usage: gptray" in out and "exit codes:" in out
    if command == ["data"]:
        assert all(name in out for name in ("list", "inspect", "preview"))
    if command == ["tokenize"]:
        assert "--strict" in out and "--overwrite" in out
