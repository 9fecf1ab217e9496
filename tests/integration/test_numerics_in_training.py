"""Steps that are never applied, on real Ray Train workers: a NaN on one rank, spikes that rewind every rank
to the newest checkpoint, and a run that stops after too many skips."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gptray.checkpoint.files import latest_checkpoint, load_tensors, read_state
from gptray.checkpoint.sharded import load_sharded_model
from gptray.config import ModelConfig
from gptray.core.errors import TrainingError
from gptray.model import GPT
from gptray.train.pretrain import pretrain
from helpers import metric_history, small_run_config

pytestmark = pytest.mark.slow


def model_weights(checkpoint) -> dict[str, torch.Tensor]:
    """A checkpoint's whole model, from model.pt or from every rank's DCP shard."""
    state = read_state(checkpoint)
    if state.format != "sharded":
        return load_tensors(checkpoint, "model.pt")
    template = GPT(ModelConfig.from_saved(state.model)).state_dict()
    return load_sharded_model(checkpoint, template)


def test_a_nan_on_one_rank_is_applied_by_no_rank_and_spikes_rewind_every_rank_as_a_run_that_skipped_them(
        shakespeare_dataset, tmp_path):
    """Two FSDP workers (sharded checkpoints, written and uploaded in the background), train.spike.rewind.
    Rank 1's loss is NaN at step 2 (train.test_scale_loss): no rank applies it. Rank 0's loss × 1000 at step 5,
    just after the checkpoint at step 4 was reported (its upload still in flight, most likely), is a spike:
    every rank rewinds to that checkpoint, not an older one, and skips step 5. Rank 1's at step 11 rewinds every
    rank to the checkpoint at step 8, each loading its own shard, and skips steps 9…11, the abandoned steps 9
    and 10 included. The losses and every rank's final weights equal a run configured to skip steps 2, 5 and
    9…11 from the start, which records its ranges in MLflow's params."""
    run = ["train.max_steps=12", "train.parallelism=fsdp", "checkpoint.interval=4", "checkpoint.keep=3",
           "train.spike.enabled=true", "train.spike.window=8", "train.spike.min_history=3"]
    rewinding = small_run_config(tmp_path, shakespeare_dataset, "name=rewinding", *run, "train.spike.rewind=true",
                                 "train.test_scale_loss=[[2, 1, .nan], [5, 0, 1000], [11, 1, 1000]]")
    first = pretrain(rewinding, sample=False)
    assert first.final_step == 12
    assert metric_history(first, "train/skip_nonfinite") == {2: 1.0}
    assert metric_history(first, "train/skip_spike") == {5: 1.0, 11: 1.0}
    assert metric_history(first, "train/rewinds")[12] == 2 and 12 in metric_history(first, "train/grad_norm_max")
    skips = read_state(first.checkpoint).skips
    assert skips["skip_steps"] == [[5, 5], [9, 11]] and skips["rewinds"] == [[5, 5, 5], [11, 9, 11]]
    assert skips["counts"]["skipped"][:2] == [[2, "nonfinite"], [5, "spike"]]
    assert [p.name for p in sorted(Path(first.run_dir).glob("checkpoint_0*"))] == \
        ["checkpoint_00000004", "checkpoint_00000008", "checkpoint_00000012"]

    configured = small_run_config(tmp_path, shakespeare_dataset, "name=configured", *run,
                                  "train.skip_steps=[2, 5, [9, 11]]")
    second = pretrain(configured, sample=False)
    ours, theirs = metric_history(first, "train/loss"), metric_history(second, "train/loss")
    assert sorted(theirs) == [1, 3, 4, 6, 7, 8, 12] and all(math.isfinite(v) for v in theirs.values())
    assert {s: ours[s] for s in theirs} == theirs
    assert sorted(ours) == [1, 3, 4, 6, 7, 8, 9, 10, 12]  # MLflow keeps what the abandoned steps logged
    a, b = model_weights(first.checkpoint), model_weights(second.checkpoint)
    assert all(torch.equal(a[k], b[k]) for k in b)
    assert metric_history(second, "train/skip_configured") == {2: 1.0, 5: 1.0, 9: 1.0, 10: 1.0, 11: 1.0}

    from mlflow.tracking import MlflowClient

    client = MlflowClient(first.tracking_uri)
    assert client.get_run(second.mlflow_run_id).data.params["train.skip_steps"] == "[2, 5, [9, 11]]"
    tags = client.get_run(first.mlflow_run_id).data.tags  # a rewind's ranges: the params cannot change
    assert (tags["gptray.skip_steps"], tags["gptray.rewinds"]) == ("[[5, 5], [9, 11]]", "[[5, 5, 5], [11, 9, 11]]")


def test_too_many_skips_in_a_row_stop_the_run_with_the_last_good_checkpoint_as_its_latest(
        shakespeare_dataset, tmp_path):
    """train.max_skipped_steps=1: the first NaN stops the run (local mode: nothing here is about ranks)."""
    config = small_run_config(tmp_path, shakespeare_dataset, "name=stopped", "train.max_steps=8",
                              "ray.num_workers=0", "checkpoint.interval=2", "train.max_skipped_steps=1",
                              "train.test_scale_loss=[3, 0, .inf]")
    with pytest.raises(TrainingError, match=r"step 3: a non-finite loss.*train.max_skipped_steps=1") as info:
        pretrain(config, sample=False)
    assert info.value.exit_code == 5
    latest = latest_checkpoint(config.run_dir)
    assert read_state(latest).step == 2
    assert all(torch.isfinite(v).all() for v in load_tensors(latest, "model.pt").values())
