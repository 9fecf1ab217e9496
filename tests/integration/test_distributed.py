"""Distributed training on local Ray: world-size invariance and FSDP. (Recovery from a killed worker is
tested under the block order, in test_streaming.py: the same mechanism, with the node cache's locks too.)"""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest

from gptray.checkpoint.files import read_state
from gptray.train.pretrain import pretrain
from helpers import metric_history, small_run_config

pytestmark = pytest.mark.slow


def close(a: dict[int, float], b: dict[int, float], steps, tolerance: float) -> None:
    """Per-step values agree within `tolerance` (fp32 sums in another order drift a little)."""
    worst = max(abs(a[s] - b[s]) for s in steps)
    assert worst <= tolerance, f"largest difference {worst:.2e} over steps {steps}"


def test_local_mode_trains_in_this_process_as_one_worker_would(reference_run, shakespeare_dataset, tmp_path):
    """ray.num_workers=0: the loop runs in this process, without Ray Train workers (a breakpoint in it stops
    there). One process, 4 micro-batches of 2, reads the same 8 windows per step as 2 workers × 2 micro-batches
    of 2; it stores its checkpoints itself, keeping checkpoint.keep of them, and a relaunch resumes from them."""
    _, reference = reference_run
    config = small_run_config(tmp_path, shakespeare_dataset, "name=local", "train.max_steps=12", "ray.num_workers=0",
                              "checkpoint.interval=6", "checkpoint.keep=1")
    first = pretrain(config, sample=False)
    run_dir = Path(first.run_dir)
    assert [p.name for p in run_dir.glob("checkpoint_*")] == ["checkpoint_00000012"]
    assert read_state(first.checkpoint).world_size == 1
    ours, theirs = metric_history(first, "train/loss"), metric_history(reference, "train/loss")
    assert ours[1] == pytest.approx(theirs[1], abs=1e-6)
    close(ours, theirs, range(1, 13), tolerance=2e-3)
    # 15 validation windows: 8 + 7 on two ranks (one padded pass), 15 in one process
    close(metric_history(first, "val/loss"), metric_history(reference, "val/loss"), [12], tolerance=2e-3)

    resumed = pretrain(dataclasses.replace(config, train=dataclasses.replace(config.train, max_steps=24)))
    assert (resumed.start_step, resumed.final_step) == (12, 24) and resumed.sample
    close(metric_history(resumed, "train/loss"), theirs, range(13, 25), tolerance=2e-3)


def test_fsdp_writes_sharded_checkpoints_that_resume_exactly_and_reshard_across_world_sizes(
        reference_run, shakespeare_dataset, tmp_path):
    """FSDP on 2 ranks writes one DCP file per rank. Copied into a new run, its step-6 checkpoint resumes
    to exactly the losses the uninterrupted run had; the copy then continues under FSDP on 4 ranks (2 → 4,
    sharded → sharded), under DDP on 1 rank (4 → 1, sharded → whole) and under FSDP on 2 again (1 → 2,
    whole → sharded), tracking the DDP reference."""
    _, reference = reference_run
    theirs = metric_history(reference, "train/loss")
    run = ["name=sharded", "checkpoint.interval=6", "checkpoint.keep=5"]
    first = pretrain(small_run_config(tmp_path, shakespeare_dataset, *run, "train.max_steps=12",
                                      "train.parallelism=fsdp", "train.sample_interval=6"), sample=False)
    close(metric_history(first, "train/loss"), theirs, range(1, 13), tolerance=2e-3)
    from mlflow.tracking import MlflowClient

    samples = {a.path for a in MlflowClient(first.tracking_uri).list_artifacts(first.mlflow_run_id, "samples")}
    assert "samples/step_00000006.txt" in samples  # every rank took part in generating it
    # what training waited for at each checkpoint, and the memory the write took, are in the run
    assert set(metric_history(first, "train/checkpoint_blocked_s")) == {6, 12}
    assert set(metric_history(first, "train/checkpoint_peak_extra_mb")) == {6, 12}
    sharded = Path(first.checkpoint)
    assert read_state(sharded).format == "sharded" and not (sharded / "model.pt").exists()
    assert {".metadata", "__0_0.distcp", "__1_0.distcp"} <= set(read_state(sharded).files)

    # A checkpoint Ray never registered (here: copied in) is found and resumed from, exactly.
    shutil.copytree(sharded.parent / "checkpoint_00000006", sharded.parent.parent / "copy" / "checkpoint_00000006")
    copy_run = ["name=copy", "checkpoint.interval=3"]
    copy = pretrain(small_run_config(tmp_path, shakespeare_dataset, *copy_run, "train.max_steps=12",
                                     "train.parallelism=fsdp"), sample=False)
    assert copy.start_step == 6
    # checkpoint.keep=2: the newest two stay, the orphan goes with the rest
    assert sorted(p.name for p in (sharded.parent.parent / "copy").glob("checkpoint_0*")) == \
        ["checkpoint_00000009", "checkpoint_00000012"]
    # and Ray, which refuses a run whose record names a deleted checkpoint, takes the run up again: here on
    # 4 FSDP ranks, from the 2 ranks' checkpoint (2 → 4, sharded → sharded)
    longer = pretrain(small_run_config(tmp_path, shakespeare_dataset, *copy_run, "train.max_steps=15",
                                       "train.parallelism=fsdp", "ray.num_workers=4"), sample=False)
    assert (longer.start_step, longer.final_step, read_state(longer.checkpoint).world_size) == (12, 15, 4)
    assert set(read_state(longer.checkpoint).files) == {"config.yaml", ".metadata",
                                                        *(f"__{rank}_0.distcp" for rank in range(4))}
    assert sorted(p.name for p in (sharded.parent.parent / "copy").glob("checkpoint_0*")) == \
        ["checkpoint_00000012", "checkpoint_00000015"]
    ours, uninterrupted = metric_history(copy, "train/loss"), metric_history(first, "train/loss")
    assert [ours[s] for s in range(7, 13)] == [uninterrupted[s] for s in range(7, 13)]

    # 4 FSDP ranks → 1 DDP rank (sharded → whole), 1 → 2 FSDP ranks (whole → sharded)
    third = pretrain(small_run_config(tmp_path, shakespeare_dataset, *copy_run, "train.max_steps=18",
                                      "train.parallelism=ddp", "ray.num_workers=1"), sample=False)
    assert (third.start_step, third.final_step) == (15, 18)
    assert read_state(third.checkpoint).format == "whole"  # auto: DDP writes whole checkpoints
    fourth = pretrain(small_run_config(tmp_path, shakespeare_dataset, *copy_run, "train.max_steps=20",
                                       "train.parallelism=fsdp"), sample=False)
    assert (fourth.start_step, fourth.final_step) == (18, 20) and read_state(fourth.checkpoint).format == "sharded"
    close(metric_history(fourth, "train/loss"), theirs, range(13, 21), tolerance=5e-3)


def train_workers() -> list[int]:
    """PIDs of this test session's Ray Train workers (other Ray users on the machine are left alone)."""
    marker = f"XDG_CACHE_HOME={os.environ['XDG_CACHE_HOME']}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (entry / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker") and \
                    marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue  # the process ended while we looked
    return pids
