"""Pretraining on local Ray with 2 CPU workers under DDP: learning, checkpoints, MLflow, resume."""

from __future__ import annotations

import json
import signal
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

from gptray.checkpoint.files import STATE_FILE, latest_checkpoint, read_state
from gptray.cli.main import main as cli
from gptray.core.errors import CheckpointError
from gptray.core.storage import Storage
from gptray.tracking.history import read_history
from gptray.train.finetune import load_run_config
from gptray.train.pretrain import pretrain
from helpers import REPO, SMALL_RUN, interruptible_command, make_config, metric_history, small_run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("pretrain")


def test_loss_goes_down(reference_run):
    _, result = reference_run
    losses = metric_history(result, "train/loss")
    assert sorted(losses) == list(range(1, 37))
    assert losses[1] == pytest.approx(10.82, abs=0.2)  # ln(50257) for an untrained model
    assert sum(losses[s] for s in (34, 35, 36)) / 3 < losses[1] - 2.0
    val = metric_history(result, "val/loss")
    assert sorted(val) == [12, 24, 36] and val[36] < val[12]


def test_validation_logs_bits_per_byte_over_the_same_targets(reference_run, capsys):
    """val/bpb at val/loss's steps, from the same nats: bpb / loss = targets / (ln 2 × their bytes) at every
    step, with the bytes counted here from the decoded text of the validation windows (2 ranks' shares)."""
    import math

    from gptray.cli.run_commands import _print_run
    from gptray.data.global_order import eval_starts, open_split_tokens
    from gptray.data.manifest import Manifest
    from gptray.data.tokenizer_loading import load_tokenizer

    config, result = reference_run
    loss, bpb = metric_history(result, "val/loss"), metric_history(result, "val/bpb")
    assert sorted(bpb) == sorted(loss) == [12, 24, 36]
    tokenizer = load_tokenizer(config.data.tokenizer)
    tokens = open_split_tokens(config.data.dataset_dir, Manifest.load(config.data.dataset_dir), "val",
                               config.data.cache_dir)
    seq_len = config.train.effective_seq_len(config.model)
    starts = eval_starts(len(tokens), seq_len, config.train.eval_windows)
    targets = [int(t) for s in starts for t in tokens[s + 1 : s + seq_len + 1]]
    assert len(starts) == 15 and tokenizer.eot_token in targets  # document ends count, with 0 bytes
    text = tokenizer.decode([t for t in targets if t != tokenizer.eot_token])
    assert text.isascii()  # so no character is split across windows: the text's bytes are the tokens'
    text_bytes = len(text.encode("utf-8"))
    for step in loss:
        assert bpb[step] / loss[step] == pytest.approx(len(targets) / (math.log(2) * text_bytes), rel=1e-9)
    assert result.metrics["val_bpb"] == bpb[36]  # reported with the last checkpoint, to the run summary
    state = read_state(result.checkpoint)
    assert state.best_val_bpb == min(bpb.values()) and state.best_val_loss == min(loss.values())
    _print_run(config, result)
    assert f", val {loss[36]:.4f} ({bpb[36]:.4f} bits per byte)" in capsys.readouterr().out


def test_checkpoints_are_complete_and_safe_to_load(reference_run):
    config, result = reference_run
    run_dir = Path(result.run_dir)
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == ["checkpoint_00000024", "checkpoint_00000036"]
    checkpoint = latest_checkpoint(run_dir)
    assert str(checkpoint) == result.checkpoint
    state = read_state(checkpoint)
    assert (state.step, state.tokens_seen, state.world_size) == (36, 36 * 8 * 64, 2)
    assert state.model["n_layer"] == 2
    for name in ("model.pt", "optimizer.pt"):
        torch.load(checkpoint / name, weights_only=True)  # tensors and plain data only
    assert (checkpoint / STATE_FILE).is_file()
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert saved == config.to_dict()  # the resolved config is saved with the run


def test_mlflow_run_holds_params_metrics_and_sample(reference_run):
    from mlflow.tracking import MlflowClient

    config, result = reference_run
    client = MlflowClient(result.tracking_uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert run.info.run_name == "reference"
    assert client.get_experiment(run.info.experiment_id).name == "gptray"
    assert run.data.params["model.n_layer"] == "2"
    assert run.data.params["train.batch_size"] == "8"
    for key in ("train/loss", "train/lr", "train/tokens_per_s", "train/grad_norm", "val/loss"):
        assert key in run.data.metrics, key
    artifacts = {a.path for a in client.list_artifacts(result.mlflow_run_id, "samples")}
    assert "samples/step_00000036.txt" in artifacts
    assert result.sample  # the final model generated text


def test_relaunch_resumes_from_the_checkpoint_exactly(reference_run, shakespeare_dataset, root):
    _, full = reference_run
    first = pretrain(small_run_config(root, shakespeare_dataset, "name=resumed", "train.max_steps=12"))
    assert (first.start_step, first.final_step) == (0, 12)
    second = pretrain(small_run_config(root, shakespeare_dataset, "name=resumed", "train.max_steps=36"))
    assert (second.start_step, second.final_step) == (12, 36)
    assert second.mlflow_run_id == first.mlflow_run_id  # one MLflow run per training run
    resumed, uninterrupted = metric_history(second, "train/loss"), metric_history(full, "train/loss")
    assert sorted(resumed) == list(range(1, 37))
    # same data order, optimizer state and schedule: the losses after resuming are identical
    assert [resumed[s] for s in range(13, 37)] == [uninterrupted[s] for s in range(13, 37)]
    # the run's own history (what its plots are drawn from) spans both launches, as MLflow's does
    kept = read_history(Storage(second.run_dir))["train/loss"]
    assert kept == resumed

    from mlflow.tracking import MlflowClient

    tags = MlflowClient(second.tracking_uri).get_run(second.mlflow_run_id).data.tags
    assert tags["gptray.config_change.train.max_steps"] == "12 -> 36"


def test_relaunch_of_a_finished_run_trains_nothing(reference_run):
    config, result = reference_run
    again = pretrain(config)
    assert (again.start_step, again.final_step) == (36, 36)
    assert again.checkpoint == result.checkpoint and again.mlflow_run_id == result.mlflow_run_id
    assert again.metrics["train_loss"] == result.metrics["train_loss"]
    assert again.sample == result.sample  # the same final model and seed give the same text


def test_resume_refuses_a_different_model_shape(reference_run, shakespeare_dataset, root):
    reference, _ = reference_run
    config = small_run_config(root, shakespeare_dataset, f"out_dir={reference.out_dir}", "name=reference",
                        "train.max_steps=40", "model.n_layer=3")
    with pytest.raises(CheckpointError, match="n_layer: checkpoint 2 vs config 3"):
        pretrain(config)


def test_resume_refuses_a_different_dataset(reference_run, shakespeare_dataset, root):
    from gptray.data.tokenize_job import tokenize_corpus

    other = root / "other.jsonl"
    other.write_text("\n".join(json.dumps({"text": f"document {i} " * 50}) for i in range(50)))
    dataset = tokenize_corpus(make_config(root / "otherdata", f"data.sources=[{{path: {other}}}]"))
    reference, _ = reference_run
    config = small_run_config(root, dataset, f"out_dir={reference.out_dir}", "name=reference", "train.max_steps=40")
    with pytest.raises(CheckpointError, match="different token dataset"):
        pretrain(config)


def test_training_goes_on_when_the_tracking_server_is_unreachable(shakespeare_dataset, root, caplog):
    config = small_run_config(root, shakespeare_dataset, "name=offline", "train.max_steps=2",
                              "tracking.uri=http://127.0.0.1:9",  # nothing listens on port 9
                              "train.z_loss=1e-4",  # (and the run's own history has z-loss beside the loss)
                              "ray.num_workers=0")  # local mode: nothing here depends on workers, ~4× cheaper
    result = pretrain(config, sample=False)
    assert result.final_step == 2 and result.mlflow_run_id is None
    assert "MLflow tracking unavailable" in caplog.text
    history = read_history(Storage(result.run_dir))
    assert sorted(history["train/z_loss"]) == [1, 2] and 0 < history["train/z_loss"][1] < 1e-4 * 12 ** 2
    assert history["train/loss"][1] == pytest.approx(10.82, abs=0.2)  # the cross-entropy alone


def test_ctrl_c_leaves_a_resumable_run_and_exits_130(shakespeare_dataset, root):
    """SIGINT to a real `gptray pretrain`: it stops, says where, exits 130; the same command resumes."""
    overrides = [*SMALL_RUN, f"out_dir={root}/runs", f"data.dataset_dir={shakespeare_dataset.dataset_dir}",
                 "name=interrupted", "train.max_steps=2000", "schedule.decay_steps=2000", "tracking.enabled=false",
                 "data.tokenizer=gpt2", "ray.num_cpus=2"]  # its own local Ray, as a user's command would start
    run_dir, output = root / "runs" / "interrupted", root / "interrupted.log"
    with interruptible_command([sys.executable, "-m", "gptray", "pretrain", "--no-sample", *overrides], output,
                               cwd=REPO) as command:
        deadline = time.monotonic() + 300
        while latest_checkpoint(run_dir) is None:
            assert command.poll() is None and time.monotonic() < deadline, output.read_text()[-3000:]
            time.sleep(0.2)
        command.send_signal(signal.SIGINT)
        assert command.wait(timeout=120) == 130, output.read_text()[-3000:]
    assert "gptray pretrain: interrupted: run interrupted stopped at step" in output.read_text()
    stopped_at = read_state(latest_checkpoint(run_dir)).step
    assert 12 <= stopped_at < 2000
    # a launch finds the run where it stopped (resuming from there is test_relaunch_resumes_…'s subject)
    found = pretrain(load_run_config(None, [*overrides[:-1], f"train.max_steps={stopped_at}"]), sample=False)
    assert (found.start_step, found.final_step) == (stopped_at, stopped_at)


def test_generate_command_reads_the_checkpoint(reference_run, capsys):
    config, result = reference_run
    args = ["generate", "--checkpoint", result.run_dir, "--prompt", "ROMEO:", "generate.temperature=0",
            "generate.max_new_tokens=12", f"out_dir={config.out_dir}"]
    assert cli(args) == 0
    greedy = capsys.readouterr().out
    assert greedy.startswith("ROMEO:") and len(greedy) > len("ROMEO:\n")
    assert cli(args) == 0
    assert capsys.readouterr().out == greedy  # greedy decoding is deterministic
    assert cli(["generate", "--checkpoint", str(Path(result.run_dir) / "nope")]) == 4


def test_every_run_logs_its_curves_and_a_metrics_csv(reference_run, tmp_path, capsys):
    import csv

    from mlflow.tracking import MlflowClient

    _, result = reference_run
    client = MlflowClient(result.tracking_uri)
    attached = {a.path for a in client.list_artifacts(result.mlflow_run_id, "plots")}
    assert attached == {"plots/curves.png", "plots/metrics.csv"}
    with open(Path(result.run_dir) / "plots" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == list(range(1, 37))
    assert [float(r["train/loss"]) for r in rows] == [metric_history(result, "train/loss")[s] for s in range(1, 37)]
    assert {int(r["step"]): float(r["val/bpb"]) for r in rows if r["val/bpb"]} == metric_history(result, "val/bpb")

    # and on demand, from the run directory alone
    assert cli(["plot", result.run_dir, "--out", str(tmp_path / "again"), "--no-log"]) == 0
    assert {Path(p).name for p in capsys.readouterr().out.split()} == {"curves.png", "metrics.csv"}
    assert (tmp_path / "again" / "curves.png").stat().st_size > 10_000
    assert cli(["plot", str(tmp_path)]) == 3  # not a run directory: a data error, exit 3
