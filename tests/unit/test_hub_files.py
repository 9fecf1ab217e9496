"""A Hugging Face dataset laid out as the Hub lays it out is planned from its Parquet files' metadata, read by the
read tasks themselves: no `datasets` preparation, no table on the driver."""

from __future__ import annotations

import textwrap

import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest
import tiktoken

from gptray.config.schema import SourceConfig
from gptray.core.errors import ConfigError
from gptray.data.blocks import BlockSettings
from gptray.data.hub_files import hub_parquet_files
from gptray.data.plan import plan_tasks
from gptray.data.plan_datasource import read_task_blocks, tokenize_batch
from gptray.data.shard_task import TaskInputs
from gptray.data.sources import resolve_sources
from gptray.data.tokenize_job import source_readers
from gptray.data.tokenizer_loading import load_tokenizer

DOCS = [f"document {i}: " + "lorem ipsum " * (i % 13) for i in range(90)]


def hub_repo(root, with_readme: bool):
    """<repo>/data/train-0000k-of-00003.parquet (+ a test split), optionally named by README configs."""
    (root / "data").mkdir(parents=True)
    for k in range(3):
        pq.write_table(pa.table({"text": DOCS[30 * k:30 * (k + 1)], "id": list(range(30 * k, 30 * (k + 1)))}),
                       root / "data" / f"train-{k:05d}-of-00003.parquet", row_group_size=7)
    pq.write_table(pa.table({"text": ["held out"]}), root / "data" / "test-00000-of-00001.parquet")
    if with_readme:
        (root / "README.md").write_text(textwrap.dedent("""\
            ---
            configs:
            - config_name: default
              data_files:
              - split: train
                path: data/train-*
              - split: test
                path: data/test-*
            ---
            # a dataset card
            """))
    return root


@pytest.mark.parametrize("with_readme", [True, False])
def test_the_splits_files_are_found_by_the_hubs_layout(tmp_path, with_readme):
    repo = hub_repo(tmp_path / "owner" / "name", with_readme)
    fs = pafs.LocalFileSystem()
    train = hub_parquet_files(fs, str(repo), None, "train")
    assert [f.path.rsplit("/", 1)[1] for f in train] == [f"train-{k:05d}-of-00003.parquet" for k in range(3)]
    assert [f.path.rsplit("/", 1)[1] for f in hub_parquet_files(fs, str(repo), None, "test")] == [
        "test-00000-of-00001.parquet"]
    assert hub_parquet_files(fs, str(repo), "other-config", "train") == ([] if with_readme else train)


def test_read_tasks_read_the_files_and_give_tiktokens_tokens(tmp_path):
    repo = hub_repo(tmp_path / "owner" / "name", True)
    tokenizer = load_tokenizer("gpt2")
    [source] = resolve_sources([SourceConfig(hf=str(repo))], tokenizer.vocab_size)
    assert source.kind == "files" and source.table is None  # nothing loaded on the driver: files and footers
    assert source.identity["hf"] == str(repo) and len(source.identity["parquet_files"]) == 3
    tasks = plan_tasks([source], 4096, 200)
    assert len(tasks) > 1 and all(p.kind == "parquet" for t in tasks for p in t.pieces)
    settings = BlockSettings(tokenizer, 0.0, 0, 1 << 20, 64)
    inputs = TaskInputs(source_readers([source], tokenizer), settings, None, 10**6, "req", False)
    tokens = [t for task in tasks for block in read_task_blocks(task, inputs, [])
              for row in tokenize_batch(block, settings).column("tokens").to_pylist() for t in row]
    encoding = tiktoken.get_encoding("gpt2")
    assert tokens == [t for doc in DOCS for t in encoding.encode_ordinary(doc) + [encoding.eot_token]]


def test_a_missing_text_column_is_a_config_error(tmp_path):
    repo = hub_repo(tmp_path / "owner" / "name", True)
    with pytest.raises(ConfigError, match="no column 'body'"):
        resolve_sources([SourceConfig(hf=str(repo), text_field="body")], 50257)
