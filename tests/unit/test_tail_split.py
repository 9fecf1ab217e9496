"""data.split: tail holds out the last val_fraction of each source, in order, whatever the shard sizes; and the
bytes tokenizer's shards are the input's bytes. Both through the tokenize job's read tasks, run in process."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gptray.config import ExperimentConfig
from gptray.config.schema import DataConfig, SourceConfig
from gptray.core.errors import ConfigError
from gptray.core.storage import Storage
from gptray.data.blocks import BlockSettings
from gptray.data.bytes_tokenizer import EOT, BytesTokenizer
from gptray.data.plan import plan_tasks
from gptray.data.plan_datasource import read_task_blocks, tokenize_batch
from gptray.data.shard_sink import write_task_blocks
from gptray.data.shard_task import TaskInputs
from gptray.data.shards import read_shard
from gptray.data.sources import resolve_sources
from gptray.data.tokenize_job import source_readers, tokenize_request
from gptray.data.tokenizer_loading import dataset_tokenizer, load_tokenizer


def _paragraphs(count: int, seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    words = ["thou", "art", "my", "lord", "ROMEO:", "é", "to", "be", "or", "not"]
    return b"".join((" ".join(rng.choice(words, rng.integers(3, 40))) + "\n\n").encode() for _ in range(count))


def _tokenize_in_process(tmp_path, name: str, sources: list[SourceConfig], shard_tokens: int, chunk: int,
                         split: str = "tail", val_fraction: float = 0.1) -> dict[str, list[bytes]]:
    """The tokenize job without Ray: each read task's blocks, tokenized and written in order (what the Ray Data
    job's read, tokenize and write operators do); each split's documents, as text bytes."""
    resolved = resolve_sources(sources)
    tokenizer = BytesTokenizer()
    tasks = plan_tasks(resolved, chunk, shard_tokens, split, val_fraction)
    store = Storage(str(tmp_path / name))
    settings = BlockSettings(tokenizer, val_fraction, 0, 1 << 20, 64)
    inputs = TaskInputs(source_readers(resolved, tokenizer), settings, store, shard_tokens, "test", False)
    documents: dict[str, list[bytes]] = {"train": [], "val": []}
    for task in tasks:
        blocks = (tokenize_batch(block, settings) for block in read_task_blocks(task, inputs, []))
        [record] = write_task_blocks(blocks, tasks, inputs)
        for split, shards in record.shards.items():
            for shard in shards:
                for ids in read_shard(store, shard).column("tokens").to_pylist():
                    assert ids[-1] == EOT and EOT not in ids[:-1]
                    documents[split].append(bytes(ids[:-1]))
    return documents


def test_tail_holds_out_exactly_the_documents_from_the_boundary_on(tmp_path):
    text = _paragraphs(400, seed=1)
    (tmp_path / "play.txt").write_bytes(text)
    source = SourceConfig(path=str(tmp_path / "play.txt"), text_unit="paragraph")
    docs = _tokenize_in_process(tmp_path, "one", [source], shard_tokens=2_000, chunk=4096)
    boundary = math.floor(len(text) * 0.9)
    first_val = text.index(b"\n\n", boundary) + 2  # the first paragraph break that ends at or after it
    assert b"".join(d + b"\n\n" for d in docs["val"]) == text[first_val:]  # the tail, in order
    assert b"".join(d + b"\n\n" for d in docs["train"]) == text[:first_val]
    assert len(text) - first_val <= 0.1 * len(text)  # the straddling document trains
    assert len(text) - first_val > 0.1 * len(text) - 200  # … and is all that the val split lacks


@pytest.mark.parametrize("shard_tokens, chunk", [(1_000, 4096), (50_000, 4096), (10**9, 1 << 20), (700, 5000)])
def test_tail_is_stable_under_resharding(tmp_path, shard_tokens, chunk):
    """Two files as one source: its tail is the last 10% of both together, whatever the tasks' sizes."""
    for i in range(2):
        (tmp_path / f"act{i}.txt").write_bytes(_paragraphs(300, seed=10 + i))
    source = SourceConfig(path=str(tmp_path / "act*.txt"), text_unit="paragraph")
    reference = _tokenize_in_process(tmp_path, "ref", [source], shard_tokens=2_000, chunk=4096)
    docs = _tokenize_in_process(tmp_path, "other", [source], shard_tokens=shard_tokens, chunk=chunk)
    assert docs == reference
    assert reference["val"] and reference["train"]


def test_each_source_keeps_its_own_tail(tmp_path):
    for name, seed in (("a.txt", 3), ("b.txt", 4)):
        (tmp_path / name).write_bytes(_paragraphs(200, seed))
    sources = [SourceConfig(path=str(tmp_path / n), text_unit="paragraph") for n in ("a.txt", "b.txt")]
    docs = _tokenize_in_process(tmp_path, "two", sources, shard_tokens=2_000, chunk=4096, val_fraction=0.2)
    alone = [_tokenize_in_process(tmp_path, f"alone{i}", [s], shard_tokens=2_000, chunk=4096, val_fraction=0.2)
             for i, s in enumerate(sources)]
    assert docs["val"] == alone[0]["val"] + alone[1]["val"]


def test_tail_refuses_what_cannot_be_cut_and_auto_means_tinyshakespeare_alone(tmp_path):
    (tmp_path / "one.txt").write_bytes(b"a whole file")
    with pytest.raises(ConfigError, match="data.split.*one document"):
        plan_tasks(resolve_sources([SourceConfig(path=str(tmp_path / "one.txt"))]), 4096, 1000, "tail", 0.1)
    plain = plan_tasks(resolve_sources([SourceConfig(path=str(tmp_path / "one.txt"))]), 4096, 1000, "auto", 0.1)
    assert [t.split for t in plain] == [""]  # a file of the user's: hashed unless they ask for tail
    with pytest.raises(ConfigError, match="data.split"):
        DataConfig(split="tail", val_sources=[SourceConfig(path="x.txt")]).validate()


def test_tokenize_request_names_the_tail_only_where_it_cuts(tmp_path):
    (tmp_path / "a.txt").write_bytes(_paragraphs(10, 0))
    config = ExperimentConfig()
    config.data.sources = [SourceConfig(path=str(tmp_path / "a.txt"), text_unit="paragraph")]
    sources = resolve_sources(config.data.sources)
    hashed = tokenize_request(config, sources, BytesTokenizer())
    assert "split" not in hashed["sources"][0]  # datasets made before data.split keep their request
    config.data.split = "tail"
    assert tokenize_request(config, sources, BytesTokenizer())["sources"][0]["split"] == "tail"


def test_bytes_tokenizer_round_trips_every_byte_and_text():
    tokenizer = load_tokenizer("bytes")
    assert (tokenizer.vocab_size, tokenizer.eot_token) == (257, 256)
    every = bytes(range(256))
    assert tokenizer.decode_bytes(list(every)) == every
    text = "To be, or not to be — ça, 東京 🎭\n\x00"
    assert tokenizer.encode(text) == list(text.encode("utf-8"))
    assert tokenizer.decode(tokenizer.encode(text)) == text
    values, offsets = tokenizer.encode_concatenated(["ab", "", "é"])
    assert values.tolist() == [97, 98, EOT, EOT, 0xC3, 0xA9, EOT] and offsets.tolist() == [0, 3, 4, 7]
    lengths = tokenizer.token_byte_lengths()
    assert lengths[:256].tolist() == [1] * 256 and lengths[EOT] == 0
    assert dataset_tokenizer(None, type("M", (), {"tokenizer": tokenizer.describe()})()).digest == tokenizer.digest


def test_bytes_shards_equal_the_input_bytes(tmp_path):
    text = _paragraphs(120, seed=5)
    (tmp_path / "in.txt").write_bytes(text)
    source = SourceConfig(path=str(tmp_path / "in.txt"), text_unit="paragraph")
    docs = _tokenize_in_process(tmp_path, "bytes", [source], 1_000, 4096, split="hash", val_fraction=0.0)
    assert docs["val"] == [] and b"".join(d + b"\n\n" for d in docs["train"]) == text


def test_the_quickstarts_tinyshakespeare_holds_out_its_last_tenth_as_nanogpt_does():
    """Under the defaults (data.split: auto) the corpus is cut at nanoGPT's character 1,003,854 of 1,115,394."""
    config = ExperimentConfig()
    sources = resolve_sources(config.data.sources)
    tasks = plan_tasks(sources, config.data.read_chunk_bytes, config.data.shard_tokens, config.data.split,
                       config.data.val_fraction)
    assert [(t.split, t.pieces[0].start, t.pieces[-1].end) for t in tasks] == [
        ("train", 0, 1_003_854), ("val", 1_003_854, 1_115_394)]
