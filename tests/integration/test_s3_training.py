"""Training with out_dir and the token dataset on an object store: a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import json
import os
from pathlib import Path

import boto3
import pytest
import yaml

from gptray.checkpoint.files import latest_checkpoint, read_state
from gptray.cli.main import main as cli
from gptray.core.errors import CheckpointError, ConfigError, StorageError
from gptray.train.pretrain import pretrain
from helpers import metric_history, small_run_config

pytestmark = pytest.mark.slow

RUN = "ons3"


def upload_dataset(client, bucket: str, dataset_dir: str, prefix: str) -> str:
    """A local token dataset copied into the bucket; its URI."""
    for path in sorted(Path(dataset_dir).rglob("*")):
        if path.is_file():
            client.put_object(Bucket=bucket, Key=f"{prefix}/{path.relative_to(dataset_dir)}", Body=path.read_bytes())
    return f"s3://{bucket}/{prefix}"


def keys(client, bucket: str, prefix: str) -> set[str]:
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
    return {o["Key"][len(prefix):] for page in pages for o in page.get("Contents", [])}


def test_a_run_on_s3_checkpoints_there_and_resumes_from_it(ray_session, reference_run, shakespeare_dataset,
                                                           s3_endpoint, s3_bucket, tmp_path, capsys):
    import ray

    # Ray's workers were started without AWS_ENDPOINT_URL: the endpoint reaches them only inside
    # the filesystems the driver resolved (Ray's storage_filesystem, the dataset and run dir).
    assert ray.get(ray.remote(lambda: os.environ.get("AWS_ENDPOINT_URL")).options(num_cpus=0).remote()) is None
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    dataset = upload_dataset(client, s3_bucket, shakespeare_dataset.dataset_dir, "data/shakespeare")
    cache = tmp_path / "token-cache"  # a fresh cache: the workers must decode the shards from the bucket

    def config(max_steps: int, checkpoint_format: str = "auto"):
        return small_run_config(tmp_path, shakespeare_dataset, f"out_dir=s3://{s3_bucket}/runs", f"name={RUN}",
                                f"data.dataset_dir={dataset}", f"data.cache_dir={cache}",
                                f"tracking.uri=sqlite:///{tmp_path}/mlflow.db", f"train.max_steps={max_steps}",
                                f"checkpoint.format={checkpoint_format}")

    # the first launch writes sharded checkpoints (each rank its own DCP file); the second resumes from
    # one in the bucket, each rank reading its pieces by range requests, and writes whole ones
    first = pretrain(config(12, "sharded"))
    run_dir = f"s3://{s3_bucket}/runs/{RUN}"
    assert (first.start_step, first.final_step, first.run_dir) == (0, 12, run_dir)
    assert first.checkpoint == f"{run_dir}/checkpoint_00000012"
    stored = keys(client, s3_bucket, f"runs/{RUN}/")
    assert {"config.yaml", "mlflow_run.json", "checkpoint_00000012/.metadata", "checkpoint_00000012/__0_0.distcp",
            "checkpoint_00000012/__1_0.distcp", "checkpoint_00000012/state.json", "checkpoint_00000012/config.yaml",
            "plots/metrics.csv"} <= stored
    assert any(key.startswith("checkpoint_manager_snapshot") for key in stored)  # Ray's record of its checkpoints
    record = json.loads(client.get_object(Bucket=s3_bucket, Key=f"runs/{RUN}/mlflow_run.json")["Body"].read())
    assert record["run_id"] == first.mlflow_run_id and record["closed"]
    assert yaml.safe_load(client.get_object(Bucket=s3_bucket, Key=f"runs/{RUN}/config.yaml")["Body"].read()) \
        == config(12, "sharded").to_dict()
    assert list(cache.glob("*/train.bin"))  # decoded from the S3 shards
    assert not (tmp_path / "runs").exists()  # nothing of the run on local disk
    assert first.sample  # the final model, loaded from the bucket, generated text

    # relaunched with more steps: it resumes from the checkpoint in the bucket, exactly
    second = pretrain(config(24))
    assert (second.start_step, second.final_step) == (12, 24)
    assert second.mlflow_run_id == first.mlflow_run_id  # the run record in the bucket names the same MLflow run
    assert read_state(latest_checkpoint(run_dir)).step == 24
    assert "checkpoint_00000024/model.pt" in keys(client, s3_bucket, f"runs/{RUN}/")
    _, full = reference_run
    resumed, uninterrupted = metric_history(second, "train/loss"), metric_history(full, "train/loss")
    assert sorted(resumed) == list(range(1, 25))
    assert [resumed[s] for s in range(1, 25)] == [uninterrupted[s] for s in range(1, 25)]  # 13… after resuming
    assert metric_history(second, "val/loss")[24] == metric_history(full, "val/loss")[24]

    # fine-tuning can start from the checkpoint in the bucket, but not write into the base's run
    from gptray.train.finetune import find_base

    assert find_base(run_dir).checkpoint == f"{run_dir}/checkpoint_00000024"
    tuned = small_run_config(tmp_path, shakespeare_dataset, f"train.init_from={run_dir}", "name=tuned",
                             "train.recipe=finetune")
    assert tuned.model.n_layer == 2 and tuned.train.init_from == run_dir
    with pytest.raises(ConfigError) as info:
        small_run_config(tmp_path, shakespeare_dataset, f"out_dir=s3://{s3_bucket}/runs", f"name={RUN}",
                         f"train.init_from={run_dir}", "tracking.enabled=false")
    assert info.value.key == "name"

    # a finished run relaunched trains nothing and reads what it reports from the bucket
    again = pretrain(config(24), sample=False)
    assert (again.start_step, again.final_step, again.checkpoint) == (24, 24, second.checkpoint)
    assert again.mlflow_run_id == first.mlflow_run_id and again.metrics == second.metrics

    # generate reads the run's latest checkpoint from the bucket (a cached local copy)
    args = ["generate", "--checkpoint", run_dir, "--prompt", "ROMEO:", "generate.temperature=0",
            "generate.max_new_tokens=12"]
    capsys.readouterr()
    assert cli(args) == 0
    from_bucket = capsys.readouterr().out
    assert from_bucket.startswith("ROMEO:") and len(from_bucket) > len("ROMEO:\n")
    assert cli(args) == 0
    assert capsys.readouterr().out == from_bucket
    assert cli(["generate", "--checkpoint", f"{run_dir}/checkpoint_00000012", "--prompt", "ROMEO:"]) == 0
    assert cli(["generate", "--checkpoint", f"s3://{s3_bucket}/runs/nothing-here"]) == 4
    # and so does eval, on the run's token dataset in the bucket; it logs to the training run the run
    # record in the bucket names, at the checkpoint's step
    assert cli(["eval", "--checkpoint", run_dir, "--task", "perplexity", "--limit", "2", "--local"]) == 0
    assert f"checkpoint {run_dir}/checkpoint_00000024 (step 24)" in capsys.readouterr().out
    evaluated = metric_history(second, "eval/perplexity/loss")
    assert list(evaluated) == [24]
    # plot finds the MLflow run through the run record in the bucket
    assert cli(["plot", run_dir, "--out", str(tmp_path / "plots"), "--no-log"]) == 0
    import csv

    with open(tmp_path / "plots" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    # every training step once (system metrics count their own samples as steps: a slow host has more)
    assert sorted(int(row["step"]) for row in rows if row["train/loss"]) == list(range(1, 25))


def test_metrics_the_server_never_got_wait_in_the_bucket(s3_endpoint, s3_bucket):
    from gptray.core.storage import Storage
    from gptray.tracking.mlflow_tracker import MlflowTracker, tracking_settled

    run_dir = f"s3://{s3_bucket}/runs/offline"
    tracker = MlflowTracker("http://127.0.0.1:9", "run-1", retry_seconds=0)  # nothing listens on port 9
    tracker.log_metrics({"train/loss": 3.0}, step=1)
    assert tracker.save_outbox(Storage(run_dir)) == 1  # as a worker saves it: through the driver's Storage
    tracker.log_metrics({"train/loss": 2.0}, step=2)
    assert tracker.save_outbox(run_dir) == 1
    body = boto3.client("s3", endpoint_url=s3_endpoint).get_object(
        Bucket=s3_bucket, Key="runs/offline/mlflow_outbox.jsonl")["Body"].read()
    assert [json.loads(line)["value"] for line in body.splitlines()] == [3.0, 2.0]
    assert not tracking_settled(run_dir)
    tracker.send_outbox(run_dir)  # still unreachable: the points stay
    assert not tracking_settled(run_dir)


def test_incomplete_checkpoints_on_s3_are_passed_over(s3_endpoint, s3_bucket, monkeypatch):
    client = boto3.client("s3", endpoint_url=s3_endpoint)
    state = {"step": 5, "files": {"model.pt": 10}}
    for step, size in ((5, 10), (7, 4)):  # step 7's upload was cut short
        client.put_object(Bucket=s3_bucket, Key=f"run/checkpoint_{step:08d}/state.json",
                          Body=json.dumps({**state, "step": step}).encode())
        client.put_object(Bucket=s3_bucket, Key=f"run/checkpoint_{step:08d}/model.pt", Body=b"x" * size)
    run_dir = f"s3://{s3_bucket}/run"
    assert latest_checkpoint(run_dir) == f"{run_dir}/checkpoint_00000005"
    from gptray.checkpoint.files import resolve_checkpoint

    with pytest.raises(CheckpointError, match=r"model.pt \(4 of 10 bytes\)"):
        resolve_checkpoint(f"{run_dir}/checkpoint_00000007")

    # the endpoint given in the URI instead of the environment stays with what is found there
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    query = f"?endpoint_override={s3_endpoint}"
    assert latest_checkpoint(run_dir + query) == f"{run_dir}/checkpoint_00000005{query}"
    assert read_state(latest_checkpoint(run_dir + query)).step == 5


def test_bad_or_unreachable_object_stores_are_named(shakespeare_dataset, s3_endpoint, s3_bucket, tmp_path):
    with pytest.raises(ConfigError) as info:  # SQLite cannot live in a bucket
        small_run_config(tmp_path, shakespeare_dataset, f"out_dir=s3://{s3_bucket}/runs")
    assert info.value.key == "tracking.uri"
    with pytest.raises(ConfigError) as info:
        small_run_config(tmp_path, shakespeare_dataset, "out_dir=s3://", "tracking.enabled=false")
    assert info.value.key == "out_dir"

    config = small_run_config(tmp_path, shakespeare_dataset, "out_dir=s3://no-such-bucket/runs",
                              "tracking.enabled=false")
    with pytest.raises(StorageError, match="no-such-bucket"):
        pretrain(config)  # stops before Ray starts
    from test_sweep import write_sweep

    from gptray.tune.runner import run_sweep
    from gptray.tune.spec import load_sweep

    sweep = write_sweep(tmp_path / "grid.yaml", f"s3://{s3_bucket}/data", {"axes": {"optimizer.lr": [1e-3]}},
                        out_dir=f"s3://{s3_bucket}/runs", tracking={"uri": f"sqlite:///{tmp_path}/mlflow.db"})
    with pytest.raises(ConfigError) as info:  # sweeps keep Tune's state on a local path
        run_sweep(load_sweep(sweep))
    assert info.value.key == "out_dir"
    unreachable = "s3://bucket/runs/x?endpoint_override=http://127.0.0.1:9"  # nothing listens on port 9
    with pytest.raises(StorageError, match="cannot look up s3://bucket/runs/x/state.json"):
        from gptray.generation import load_model

        load_model(unreachable)


def test_a_hugging_face_base_is_imported_once_into_the_bucket(reference_run, s3_bucket, tmp_path):
    from gptray.interop.huggingface import export_checkpoint
    from gptray.train.finetune import base_checkpoint, find_base

    _, base = reference_run
    export_checkpoint(base.checkpoint, tmp_path / "hf")
    out_dir = f"s3://{s3_bucket}/runs"
    imported = base_checkpoint(find_base(str(tmp_path / "hf")), out_dir)
    assert imported.startswith(f"{out_dir}/bases/")
    assert read_state(imported).model["n_layer"] == 2
    assert list((tmp_path / "hf").glob("*.safetensors"))
    for weights in (tmp_path / "hf").glob("*.safetensors"):
        weights.unlink()  # an import now would fail: a second call must reuse the one in the bucket
    assert base_checkpoint(find_base(str(tmp_path / "hf")), out_dir) == imported
