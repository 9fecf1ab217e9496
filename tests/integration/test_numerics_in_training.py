"""Steps that are never applied, on real Ray Train workers: a NaN on one rank, rewinding past it with
train.skip_steps, and a run that stops after too many skips."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from gptray.checkpoint.files import latest_checkpoint, load_tensors, read_state
from gptray.core.errors import TrainingError
from gptray.train.pretrain import pretrain
from helpers import metric_history, small_run_config

pytestmark = pytest.mark.slow


def test_a_nan_on_one_rank_is_applied_by_no_rank_and_a_rewind_that_skips_its_batch_is_the_same_run(
        shakespeare_dataset, tmp_path):
    """Rank 1's loss is NaN at step 5 (train.test_scale_loss): neither rank applies step 5 (DDP's replicas stay
    equal, so the checkpoint rank 0 writes is every rank's), training goes on to step 8. A rewind by hand,
    from the checkpoint at step 4 with step 5 in train.skip_steps, gives the same losses and weights."""
    poisoned = small_run_config(tmp_path, shakespeare_dataset, "name=poisoned", "train.max_steps=8",
                                "checkpoint.interval=4", "train.test_scale_loss=[5, 1, .nan]")
    first = pretrain(poisoned, sample=False)
    assert first.final_step == 8
    assert metric_history(first, "train/skip_nonfinite") == {5: 1.0}
    losses = metric_history(first, "train/loss")
    assert sorted(losses) == [1, 2, 3, 4, 6, 7, 8] and all(math.isfinite(v) for v in losses.values())
    assert metric_history(first, "train/nonfinite_steps")[8] == 1
    assert 8 in metric_history(first, "train/grad_norm_max")
    state = read_state(first.checkpoint)
    assert state.skips["counts"]["skipped"] == [[5, "nonfinite"]]

    rewound = small_run_config(tmp_path, shakespeare_dataset, "name=rewound", "train.max_steps=8",
                               "checkpoint.interval=4", "train.skip_steps=[[5, 5]]",
                               f"checkpoint.resume_from={Path(first.run_dir) / 'checkpoint_00000004'}")
    second = pretrain(rewound, sample=False)
    assert second.start_step == 4
    again = metric_history(second, "train/loss")
    assert [again[s] for s in (6, 7, 8)] == [losses[s] for s in (6, 7, 8)]
    assert 5 not in again and metric_history(second, "train/skip_configured") == {5: 1.0}
    ours, theirs = load_tensors(second.checkpoint, "model.pt"), load_tensors(first.checkpoint, "model.pt")
    assert all(torch.equal(ours[k], theirs[k]) for k in theirs)
    assert read_state(second.checkpoint).skips["skip_steps"] == [[5, 5]]

    from mlflow.tracking import MlflowClient

    params = MlflowClient(second.tracking_uri).get_run(second.mlflow_run_id).data.params
    assert params["train.skip_steps"] == "[[5, 5]]"


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


def test_a_spike_rewinds_to_the_checkpoint_before_it_and_trains_as_a_run_that_skipped_those_steps(
        shakespeare_dataset, tmp_path):
    """train.spike.rewind: rank 0's loss × 1000 at step 7 is a spike; the run reloads its checkpoint at step 4,
    skips steps 5…7, and trains to step 10 exactly as a run configured with train.skip_steps=[[5, 7]] (local
    mode: the verdict is the same on every rank by construction, tested above on two)."""
    spike = ["train.max_steps=10", "ray.num_workers=0", "checkpoint.interval=4", "checkpoint.keep=3",
             "train.spike.enabled=true", "train.spike.window=8", "train.spike.min_history=3"]
    rewinding = small_run_config(tmp_path, shakespeare_dataset, "name=rewinding", *spike,
                                 "train.spike.rewind=true", "train.test_scale_loss=[7, 0, 1000]")
    first = pretrain(rewinding, sample=False)
    configured = small_run_config(tmp_path, shakespeare_dataset, "name=configured", *spike,
                                  "train.skip_steps=[[5, 7]]")
    second = pretrain(configured, sample=False)
    assert first.final_step == second.final_step == 10
    assert metric_history(first, "train/skip_spike") == {7: 1.0}
    assert metric_history(first, "train/rewinds")[10] == 1
    ours, theirs = metric_history(first, "train/loss"), metric_history(second, "train/loss")
    assert [ours[s] for s in (8, 9, 10)] == [theirs[s] for s in (8, 9, 10)]
    a, b = load_tensors(first.checkpoint, "model.pt"), load_tensors(second.checkpoint, "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in b)
    skips = read_state(first.checkpoint).skips
    assert skips["skip_steps"] == [[5, 7]] and skips["rewinds"] == [[7, 5, 7]]
    assert [p.name for p in sorted(Path(first.run_dir).glob("checkpoint_*"))] == \
        ["checkpoint_00000004", "checkpoint_00000008", "checkpoint_00000010"]
