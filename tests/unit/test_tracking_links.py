"""Where gptray points people in MLflow: UI addresses in the model-training view, and the run's dataset input."""

from __future__ import annotations

from gptray.config import load_config
from gptray.data.manifest import Manifest, ShardInfo, SplitInfo
from gptray.tracking import MlflowTracker
from gptray.tracking.links import run_ui_url, ui_command, ui_url


def test_addresses_open_the_model_training_view_of_an_experiment_or_a_run():
    assert ui_url("sqlite:////tmp/runs/mlflow.db", "3") == \
        "http://127.0.0.1:5000/#/experiments/3/runs?workflowType=machine_learning"
    assert ui_url("http://mlflow.internal:5000/", "3", "abc123") == \
        "http://mlflow.internal:5000/#/experiments/3/runs/abc123?workflowType=machine_learning"
    assert ui_command("sqlite:////tmp/runs/mlflow.db") == "mlflow ui --backend-store-uri sqlite:////tmp/runs/mlflow.db"
    assert ui_command("https://mlflow.example.com") is None


def _manifest(tmp_path) -> Manifest:
    shard = ShardInfo(path="train/shard-0.parquet", documents=2, tokens=100, first_document=0, sha256="ab" * 32,
                      bytes=400)
    manifest = Manifest(tokenizer={"name": "gpt2", "vocab_size": 50257}, split={"val_fraction": 0.1}, sources=[],
                        splits={"train": SplitInfo(2, 100, [shard]), "val": SplitInfo(0, 0, [])}, documents=2,
                        tokens=100)
    manifest.fingerprint = manifest.compute_fingerprint()
    manifest.save(tmp_path / "data")
    return manifest


def test_a_new_run_logs_its_token_dataset_as_its_training_input_and_links_to_itself(tmp_path):
    """A real SQLite store: the run's Dataset column is the dataset directory, digested by its fingerprint."""
    from mlflow.tracking import MlflowClient

    manifest = _manifest(tmp_path)
    config = load_config(None, [f"out_dir={tmp_path}/runs", f"data.dataset_dir={tmp_path}/data",
                                "data.tokenizer=gpt2"])
    tracker = MlflowTracker.start(config)
    tracker.finish("FINISHED")
    run = MlflowClient(tracker.tracking_uri).get_run(tracker.run_id)
    [logged] = run.inputs.dataset_inputs
    assert logged.dataset.name == "data"
    assert logged.dataset.digest == manifest.fingerprint[:36]
    assert {t.key: t.value for t in logged.tags} == {"mlflow.data.context": "training"}
    assert run_ui_url(tracker.tracking_uri, tracker.run_id) == \
        f"http://127.0.0.1:5000/#/experiments/{run.info.experiment_id}/runs/{tracker.run_id}" \
        "?workflowType=machine_learning"
    assert run_ui_url(tracker.tracking_uri, "no-such-run") is None


def test_a_run_whose_dataset_does_not_exist_yet_starts_without_an_input(tmp_path):
    from mlflow.tracking import MlflowClient

    config = load_config(None, [f"out_dir={tmp_path}/runs", f"data.dataset_dir={tmp_path}/none",
                                "data.tokenizer=gpt2"])
    tracker = MlflowTracker.start(config)
    tracker.finish("FINISHED")
    assert not tracker.lost
    assert MlflowClient(tracker.tracking_uri).get_run(tracker.run_id).inputs.dataset_inputs == []
