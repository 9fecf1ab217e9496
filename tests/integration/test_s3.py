"""Object storage end to end against a real S3-compatible server (moto in server mode on loopback)."""

from __future__ import annotations

import gzip
import io
import json

import boto3
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_data_pipeline import SPEECHES, one_line
from test_tokenize import expected_stream

from gptray.core.errors import DataError
from gptray.core.storage import Storage
from gptray.data.global_order import eval_starts, open_split_tokens
from gptray.data.manifest import Manifest
from gptray.data.shards import read_shard, shard_tokens
from gptray.data.tokenize_job import tokenize_corpus
from gptray.data.train_windows import DataOrder, open_train_windows, open_val_windows
from helpers import make_config


def s3(endpoint: str):
    return boto3.client("s3", endpoint_url=endpoint)


def test_tokenize_s3_sources_into_s3_shards_and_train_from_them(ray_session, s3_endpoint, s3_bucket, tmp_path,
                                                                 capsys):
    docs, lines = SPEECHES[:300], one_line(SPEECHES[300:400])
    client = s3(s3_endpoint)
    client.put_object(Bucket=s3_bucket, Key="corpus/a.jsonl",
                      Body="".join(json.dumps({"text": d}) + "\n" for d in docs[:200]).encode())
    client.put_object(Bucket=s3_bucket, Key="corpus/b.jsonl.gz",
                      Body=gzip.compress("".join(json.dumps({"text": d}) + "\n" for d in docs[200:]).encode()))
    sink = io.BytesIO()
    pq.write_table(pa.table({"text": lines}), sink, row_group_size=16)
    client.put_object(Bucket=s3_bucket, Key="corpus/c.parquet", Body=sink.getvalue())
    client.put_object(Bucket=s3_bucket, Key="corpus/notes.csv", Body=b"skipped,and,reported\n")
    client.put_object(Bucket=s3_bucket, Key="lines/part-0.txt", Body="\n".join(lines[:50]).encode())
    client.put_object(Bucket=s3_bucket, Key="lines/part-1.txt", Body="\n".join(lines[50:]).encode())
    dataset = f"s3://{s3_bucket}/datasets/mixed"
    overrides = [f"data.sources=[{{path: 's3://{s3_bucket}/corpus'}}, "
                 f"{{path: 's3://{s3_bucket}/lines/part-*.txt', text_unit: line}}]",
                 "data.read_chunk_bytes=8192", "data.shard_tokens=20000"]

    result = tokenize_corpus(make_config(tmp_path, f"data.dataset_dir={dataset}", *overrides))
    assert result.dataset_dir == dataset
    manifest = Manifest.load(dataset)
    assert manifest.fingerprint == result.manifest.fingerprint
    assert manifest.sources[0].files == [f"s3://{s3_bucket}/corpus/{n}" for n in ("a.jsonl", "b.jsonl.gz", "c.parquet")]
    assert manifest.sources[0].skipped_files == [f"s3://{s3_bucket}/corpus/notes.csv"]
    rows = sorted((doc, tokens) for split in ("train", "val") for shard in manifest.split_info(split).shards
                  for doc, tokens in zip(*read_shard(dataset, shard).to_pydict().values()))
    assert [t for _, tokens in rows for t in tokens] == expected_stream(docs + lines + lines)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=s3_bucket, Prefix="datasets/mixed/")["Contents"]}
    records = [f"progress/task-{i:05d}.json" for i in range(result.tasks)]
    shards = [s.path for split in ("train", "val") for s in manifest.split_info(split).shards]
    expected_keys = ["manifest.json", "progress.json", *records, *shards]
    assert {f"datasets/mixed/{name}" for name in expected_keys} == keys  # the tasks wrote their shards to S3

    # the same corpus tokenized to local disk gives byte-identical shards
    local = tokenize_corpus(make_config(tmp_path / "local", *overrides))
    assert local.manifest.fingerprint == manifest.fingerprint

    # the trainer's node-local cache is built from the S3 shards, checksums verified
    tokens = open_split_tokens(dataset, manifest, "train", str(tmp_path / "cache"))
    expected = np.concatenate([shard_tokens(read_shard(local.dataset_dir, s))
                               for s in local.manifest.split_info("train").shards])
    assert np.array_equal(tokens, expected)

    # the block order decodes S3 shards into the node cache with parallel range reads, and reads only the
    # row groups of the validation windows: the same tokens as the local copy
    store = Storage(dataset)
    first = manifest.split_info("train").shards[0]
    assert store.read_ranges(first.path, first.bytes, part_bytes=4096) == store.read_bytes(first.path)
    block = make_config(tmp_path, f"data.dataset_dir={dataset}", f"data.cache_dir={tmp_path}/block-cache",
                        "data.shuffle=block", "data.shuffle_block_shards=1", "train.batch_size=4",
                        "train.micro_batch_size=4", "ray.num_workers=1", "train.eval_windows=5")
    windows = open_train_windows(block, store, manifest, DataOrder.of("block", block))
    try:
        windows.begin_step(0)
        batch = windows.rank_micro_batches(0, 0, 1, 4)[0]
        x, y = windows.gather(batch)
        local_shards = local.manifest.split_info("train").shards
        seq = block.train.effective_seq_len(block.model)
        for row, (shard, start) in enumerate(windows.locations(batch)):
            stream = shard_tokens(read_shard(local.dataset_dir, local_shards[shard]))
            assert np.array_equal(x[row], stream[start:start + seq])
            assert np.array_equal(y[row], stream[start + 1:start + seq + 1])
    finally:
        windows.close()
    val_tokens, _, val_starts = open_val_windows(block, store, manifest, DataOrder.of("block", block))
    local_val = open_split_tokens(local.dataset_dir, local.manifest, "val", str(tmp_path / "cache"))
    for start, expected_start in zip(val_starts, eval_starts(len(local_val), seq, 5)):
        assert np.array_equal(val_tokens[start:start + seq + 1], local_val[expected_start:expected_start + seq + 1])

    # rerunning verifies the S3 shards and reuses them; inspect reads them too
    assert tokenize_corpus(make_config(tmp_path, f"data.dataset_dir={dataset}", *overrides)).reused
    from gptray.cli.main import main

    assert main(["data", "inspect", dataset, "--samples", "1"]) == 0
    out = capsys.readouterr().out
    assert f"{manifest.documents:,} documents" in out and "lengths" in out and "sample" in out

    # a shard changed in the bucket fails its checksum when a node builds its cache
    shard = manifest.split_info("train").shards[0]
    body = client.get_object(Bucket=s3_bucket, Key=f"datasets/mixed/{shard.path}")["Body"].read()
    client.put_object(Bucket=s3_bucket, Key=f"datasets/mixed/{shard.path}", Body=body[:-4] + b"XXXX")
    with pytest.raises(DataError, match="checksum"):
        open_split_tokens(dataset, manifest, "train", str(tmp_path / "cache2"))


def test_s3_errors_name_the_key(s3_endpoint, s3_bucket, tmp_path):
    from gptray.core.errors import ConfigError

    with pytest.raises(ConfigError) as info:
        tokenize_corpus(make_config(tmp_path, f"data.sources=[{{path: 's3://{s3_bucket}/nothing-here/*.jsonl'}}]"))
    assert info.value.key == "data.sources[0].path"
    with pytest.raises(DataError, match="no token dataset"):
        Manifest.load(f"s3://{s3_bucket}/no/dataset")


def test_a_sharded_checkpoint_on_s3_loads_in_place_by_range_reads(s3_bucket, tmp_path):
    """What a rank resuming from an object store does: DCP reads the pieces it holds straight from the bucket."""
    import torch

    from gptray.checkpoint.sharded import load_sharded, save_sharded

    torch.manual_seed(0)
    state = {"model": {"wte": torch.randn(50, 8), "h.0.w": torch.randn(8, 8)},
             "optimizer": {"step": torch.tensor(3.0), "exp_avg": torch.randn(8, 8)}}
    save_sharded(tmp_path / "ckpt", state)
    stored = Storage(f"s3://{s3_bucket}/runs/r/checkpoint_00000003")
    stored.upload(tmp_path / "ckpt")
    template = {"model": {"wte": torch.zeros(50, 8), "h.0.w": torch.zeros(8, 8)}}  # the weights alone
    load_sharded(stored, template)
    assert all(torch.equal(template["model"][k], state["model"][k]) for k in state["model"])
    whole = {k: {n: torch.zeros_like(t) for n, t in v.items()} for k, v in state.items()}
    load_sharded(stored, whole)
    assert torch.equal(whole["optimizer"]["exp_avg"], state["optimizer"]["exp_avg"])
    with pytest.raises(Exception, match="lacks DCP's .metadata"):
        load_sharded(Storage(f"s3://{s3_bucket}/runs/r/nothing"), template)
