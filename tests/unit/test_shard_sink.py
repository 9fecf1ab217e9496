"""The Ray Data stages of the tokenize job, without Ray: shards depend on the plan, never on how blocks are cut."""

from __future__ import annotations

import json

import pyarrow as pa
import pytest

from gptray.config.schema import SourceConfig
from gptray.core.errors import DataError
from gptray.core.storage import Storage
from gptray.data.blocks import BlockSettings
from gptray.data.plan import plan_tasks
from gptray.data.plan_datasource import read_task_blocks, tokenize_batch
from gptray.data.shard_sink import write_task_blocks
from gptray.data.shard_task import TaskInputs
from gptray.data.sources import resolve_sources
from gptray.data.tokenize_job import source_readers
from gptray.data.tokenizer_loading import load_tokenizer


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    """A two-source corpus (text and JSON lines with bad lines) planned into several read tasks."""
    root = tmp_path_factory.mktemp("corpus")
    (root / "a.txt").write_text("\n\n".join(f"paragraph {i} " + "word " * (i % 50) for i in range(400)))
    lines = [json.dumps({"text": f"record {i} " * (1 + i % 7)}) for i in range(300)] + ["{broken", '{"other": 1}']
    (root / "b.jsonl").write_text("\n".join(lines) + "\n")
    tokenizer = load_tokenizer("gpt2")
    sources = resolve_sources([SourceConfig(path=str(root / "a.txt"), text_unit="paragraph"),
                               SourceConfig(path=str(root / "b.jsonl"), weight=1.5)], tokenizer.vocab_size)
    tasks = plan_tasks(sources, 4096, 1500)
    assert len(tasks) >= 4
    settings = BlockSettings(tokenizer, 0.1, 0, 1 << 20, batch_documents=64)
    return tasks, sources, settings


def _inputs(job, out) -> TaskInputs:
    tasks, sources, settings = job
    return TaskInputs(source_readers(sources, settings.tokenizer), settings, Storage.of(str(out)), 700, "req", False)


def _tokenized(job, inputs) -> list[pa.Table]:
    tasks, _, settings = job
    return [tokenize_batch(block, settings) for task in tasks for block in read_task_blocks(task, inputs, [])]


def _files(out) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.parquet"))}


def test_shards_are_the_same_however_ray_data_cuts_and_merges_blocks(job, tmp_path):
    tasks = job[0]
    as_read = _inputs(job, tmp_path / "a")
    records = write_task_blocks(_tokenized(job, as_read), tasks, as_read)
    assert [r.task for r in records] == [t.index for t in tasks]
    problems = sum(r.stats.problems.total() for r in records)
    assert problems == 2  # the broken line and the record without "text", counted once each

    recut = _inputs(job, tmp_path / "b")
    merged = pa.concat_tables(_tokenized(job, recut))  # every task in one block, then cut every 5 rows
    blocks = [merged.slice(start, 5) for start in range(0, merged.num_rows, 5)]
    again = write_task_blocks(blocks, tasks, recut)
    assert _files(tmp_path / "a") and _files(tmp_path / "a") == _files(tmp_path / "b")
    assert [r.shards for r in again] == [r.shards for r in records]
    assert [r.stats for r in again] == [r.stats for r in records]


def test_a_task_split_between_writes_is_refused_not_written(job, tmp_path):
    inputs = _inputs(job, tmp_path)
    blocks = pa.concat_tables(_tokenized(job, inputs))
    first_end = blocks.column("mark").to_pylist().index(2)
    with pytest.raises(DataError, match="split between Ray tasks"):
        write_task_blocks([blocks.slice(0, first_end)], job[0], inputs)  # its end marker went to another write
    with pytest.raises(DataError, match="split between Ray tasks"):
        write_task_blocks([blocks.slice(1)], job[0], inputs)  # its start marker went to another write
    assert not list(tmp_path.glob("progress/task-*.json"))


def test_a_rerun_keeps_a_finished_task_as_its_record(job, tmp_path):
    inputs = _inputs(job, tmp_path)
    first = write_task_blocks(_tokenized(job, inputs), job[0], inputs)
    kept_blocks = _tokenized(job, inputs)
    assert all(b.num_rows == 1 for b in kept_blocks)  # each task: a start and an end marker, nothing read
    kept = write_task_blocks(kept_blocks, job[0], inputs)
    assert [r.shards for r in kept] == [r.shards for r in first] and all(r.kept for r in kept)


def test_blocks_merged_across_sources_tokenize_as_each_alone():
    """Ray Data may put several read tasks' rows in one block: token-file ids, prompt/completion pairs and plain
    text then share it, and each row must come out as its own source's block would give it."""
    import numpy as np

    from gptray.data.blocks import BlockBuilder, tokenize_documents
    from gptray.data.readers import Doc, problem

    settings = BlockSettings(load_tokenizer("gpt2"), 0.2, 0, 1 << 20, 64, prompt_column=True)

    def collected() -> tuple[pa.Table, pa.Table, pa.Table]:
        ids, pairs, text = (BlockBuilder(1.0, settings), BlockBuilder(1.0, settings, reads_prompts=True),
                            BlockBuilder(2.0, settings))
        for n in (3, 0, 5):
            ids.add(Doc("", None, "ok", "", "", 4 * n, tokens=np.arange(100, 100 + n, dtype=np.uint16)))
        pairs.add(Doc(" an answer", None, "ok", "", "", 10, prompt="A question?"))
        pairs.add(problem("p.jsonl:2", "malformed_json", "bad"))
        text.add(Doc("plain text here", None, "ok", "", "", 15))
        return ids.collect(), pairs.collect(), text.collect()

    ids, pairs, text = (tokenize_documents(block, settings) for block in collected())
    ids_docs, pairs_docs, text_docs = collected()
    merged = tokenize_documents(pa.concat_tables([text_docs, ids_docs, pairs_docs]), settings)
    assert merged.equals(pa.concat_tables([text, ids, pairs]))
    eot = settings.tokenizer.eot_token
    assert merged.column("tokens").to_pylist()[1:4] == [[100, 101, 102, eot], [eot], [100, 101, 102, 103, 104, eot]]
    assert merged.column("prompt_tokens").to_pylist()[4] == len(settings.tokenizer.encode("A question?"))
