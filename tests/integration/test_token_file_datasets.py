"""Token files as sources: nanoGPT's and llm.c's files tokenize into the very tokens of the text they came from."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tiktoken

from gptray.core.errors import DataError
from gptray.core.storage import Storage
from gptray.data.tokenize_job import tokenize_corpus
from gptray.tracking.history import read_history
from gptray.train.pretrain import pretrain
from helpers import SHAKESPEARE, make_config

ENC = tiktoken.get_encoding("gpt2")
EOT = ENC.eot_token
# Small read pieces and shards: many tasks, so documents cross the pieces' cuts.
SMALL_TASKS = ["data.read_chunk_bytes=4096", "data.shard_tokens=3000"]


def documents(first: int, count: int) -> list[str]:
    paragraphs = [p for p in SHAKESPEARE.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    return paragraphs[first:first + count]


def write_nanogpt(path, docs: list[str]) -> None:
    """nanoGPT's prepare.py: each document's ids, then <|endoftext|>, as raw uint16."""
    ids = [t for doc in docs for t in ENC.encode_ordinary(doc) + [EOT]]
    path.write_bytes(np.asarray(ids, dtype="<u2").tobytes())


def write_llmc(path, docs: list[str]) -> None:
    """llm.c's fineweb.py: <|endoftext|> before each document, after a header (magic, version 1, count)."""
    ids = np.asarray([t for doc in docs for t in [EOT] + ENC.encode_ordinary(doc)], dtype="<u2")
    header = np.zeros(256, dtype="<i4")
    header[:3] = 20240520, 1, len(ids)
    path.write_bytes(header.tobytes() + ids.tobytes())


def write_jsonl(path, docs: list[str]) -> None:
    path.write_text("".join(json.dumps({"text": doc}) + "\n" for doc in docs), encoding="utf-8")


def split_tokens(result, split: str) -> list[int]:
    from gptray.data.shards import read_shard, shard_tokens

    shards = result.manifest.split_info(split).shards
    return [t for s in shards for t in shard_tokens(read_shard(result.dataset_dir, s)).tolist()]


def test_nanogpt_and_llmc_files_equal_the_text_built_dataset_token_for_token(ray_session, tmp_path):
    docs = documents(0, 400)
    write_jsonl(tmp_path / "docs.jsonl", docs)
    write_nanogpt(tmp_path / "train.bin", docs)
    write_llmc(tmp_path / "fineweb_train_000001.bin", docs[:150])
    write_llmc(tmp_path / "fineweb_train_000002.bin", docs[150:])
    built = {}
    for name, source in (("text", f"{{path: {tmp_path}/docs.jsonl}}"),
                         ("nanogpt", f"{{path: {tmp_path}/train.bin, format: nanogpt}}"),
                         ("llmc", f"{{path: '{tmp_path}/fineweb_train_*.bin', format: llmc}}")):
        config = make_config(tmp_path / name, f"data.sources=[{source}]", "data.val_fraction=0", *SMALL_TASKS)
        built[name] = tokenize_corpus(config)
    text = split_tokens(built["text"], "train")
    assert text == [t for doc in docs for t in ENC.encode_ordinary(doc) + [EOT]]
    for name in ("nanogpt", "llmc"):
        manifest = built[name].manifest
        assert split_tokens(built[name], "train") == text, name
        assert manifest.documents == len(docs), name
        assert len(manifest.split_info("train").shards) > 1, name  # several tasks: cuts inside the files
        assert manifest.tokenizer["name"] == "gpt2"

    # The same tokens train to the same losses (local mode: a few steps of a tiny model in this process).
    losses = {}
    for name in ("text", "nanogpt"):
        run = make_config(tmp_path / name, f"data.dataset_dir={built[name].dataset_dir}", "ray.num_workers=0",
                          "model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32",
                          "train.max_steps=3", "train.batch_size=4", "train.micro_batch_size=4",
                          "schedule.warmup_steps=1", "train.log_interval=1", "train.eval_windows=0",
                          "tracking.enabled=false")
        losses[name] = read_history(Storage(pretrain(run, sample=False).run_dir))["train/loss"]
    assert sorted(losses["text"]) == [1, 2, 3] and losses["nanogpt"] == losses["text"]

    # A damaged header is refused before any work, naming the file.
    shard = tmp_path / "fineweb_train_000002.bin"
    shard.write_bytes(shard.read_bytes()[:-2])
    config = make_config(tmp_path / "damaged", f"data.sources=[{{path: '{tmp_path}/fineweb_train_*.bin', "
                                                "format: llmc}]")
    with pytest.raises(DataError, match="fineweb_train_000002.bin: the llm.c header counts"):
        tokenize_corpus(config)


def test_a_validation_source_is_the_validation_set_and_the_train_sources_are_not_split(ray_session, tmp_path):
    train_docs, val_docs = documents(0, 200), documents(200, 40)
    write_jsonl(tmp_path / "train.jsonl", train_docs)
    write_nanogpt(tmp_path / "val.bin", val_docs)
    config = make_config(tmp_path, f"data.sources=[{{path: {tmp_path}/train.jsonl}}]",
                         f"data.val_sources=[{{path: {tmp_path}/val.bin, format: nanogpt}}]",
                         "data.val_fraction=0.5", *SMALL_TASKS)
    result = tokenize_corpus(config)
    assert split_tokens(result, "train") == [t for doc in train_docs for t in ENC.encode_ordinary(doc) + [EOT]]
    assert split_tokens(result, "val") == [t for doc in val_docs for t in ENC.encode_ordinary(doc) + [EOT]]
    assert result.manifest.split["val_sources"] == [f"{tmp_path}/val.bin"]
    assert result.manifest.split["val_fraction"] == 0.0
