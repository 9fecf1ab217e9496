"""The tokenize job's MLflow run: request, counts, bad input, throughput, the manifest, the dataset by fingerprint."""

from __future__ import annotations

import json

from gptray.config import load_config
from gptray.data.manifest import Manifest, ProblemCounts, ShardInfo, SourceInfo, SplitInfo
from gptray.tracking.tokenize_run import log_tokenize_run


def _manifest() -> Manifest:
    problems = ProblemCounts()
    problems.add("malformed_json", "b.jsonl:3")
    problems.add("malformed_json", "b.jsonl:9")
    problems.add("empty", "b.jsonl:4")
    shard = ShardInfo("train/shard-00000-000.parquet", 10, 1000, 0, "ab" * 32, 4000)
    manifest = Manifest(tokenizer={"kind": "tiktoken", "name": "gpt2", "vocab_size": 50257}, split={},
                        sources=[SourceInfo("b.jsonl", "files", "line"),
                                 SourceInfo("hf:owner/name", "files", "row", revision="ab12" * 10)],
                        splits={"train": SplitInfo(10, 1000, [shard]), "val": SplitInfo()}, documents=10,
                        tokens=1000, problems=problems)
    manifest.fingerprint = manifest.compute_fingerprint()
    return manifest


def test_a_run_per_dataset_with_counts_bad_input_and_the_manifest(tmp_path):
    config = load_config(None, [f"out_dir={tmp_path}", f"tracking.uri=sqlite:///{tmp_path}/mlflow.db"])
    manifest = _manifest()
    request = {"sources": [{"path": "b.jsonl"}], "shard_tokens": 5000}
    run_id = log_tokenize_run(config, request, manifest, f"{tmp_path}/data", seconds=2.0, tasks=3, kept_tasks=1)

    from mlflow.tracking import MlflowClient

    client = MlflowClient(config.tracking_uri())
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.tags["gptray.job"] == "tokenize"
    assert run.data.params["request.shard_tokens"] == "5000"
    assert json.loads(run.data.params["request.sources"]) == [{"path": "b.jsonl"}]
    # the Hub commit each Hugging Face source was read at, a param of its own; files have none
    assert run.data.params["source.1.revision"] == "ab12" * 10 and "source.0.revision" not in run.data.params
    metrics = run.data.metrics
    assert (metrics["tokens"], metrics["train_tokens"], metrics["tokens_per_second"]) == (1000, 1000, 500)
    assert (metrics["bad_input"], metrics["bad_input.malformed_json"], metrics["bad_input.empty"]) == (3, 2, 1)
    assert (metrics["read_tasks"], metrics["kept_read_tasks"]) == (3, 1)
    [dataset] = run.inputs.dataset_inputs
    assert dataset.dataset.digest == manifest.fingerprint[:36] and dataset.dataset.name == "data"
    logged = client.download_artifacts(run_id, "manifest.json", str(tmp_path))
    assert json.loads(open(logged).read())["fingerprint"] == manifest.fingerprint


def test_tracking_unreachable_is_a_warning_not_an_error(tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    config = load_config(None, [f"out_dir={tmp_path}", "tracking.uri=http://127.0.0.1:9"])
    assert log_tokenize_run(config, {}, _manifest(), str(tmp_path), 1.0, 1, 0) is None
