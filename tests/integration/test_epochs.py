"""A run given train.epochs trains the steps they resolve to, saves them, and a relaunch resolves them again."""

from __future__ import annotations

import logging
import math

import yaml

from gptray.train.pretrain import pretrain
from helpers import small_run_config

LOCAL = ["ray.num_workers=0", "tracking.enabled=false", "train.max_steps=null"]


def test_epochs_resolve_to_steps_that_a_resumed_run_keeps(shakespeare_dataset, tmp_path, caplog):
    def config(epochs: float):
        return small_run_config(tmp_path, shakespeare_dataset, *LOCAL, "name=epochs", f"train.epochs={epochs}")

    first = config(0.01)
    train_tokens = shakespeare_dataset.manifest.split_info("train").tokens
    windows = (train_tokens - 1) // first.train.effective_seq_len(first.model)
    steps = [math.ceil(epochs * windows / first.train.batch_size) for epochs in (0.01, 0.02)]
    assert 0 < steps[0] < steps[1]
    with caplog.at_level(logging.INFO, logger="gptray.train.epochs"):
        result = pretrain(first, sample=False)
    assert (result.start_step, result.final_step) == (0, steps[0])
    assert f"train.epochs=0.01: train.max_steps={steps[0]}" in caplog.text

    resumed = pretrain(config(0.02), sample=False)  # more epochs: the run goes on from its checkpoint
    assert (resumed.start_step, resumed.final_step) == (steps[0], steps[1])
    saved = yaml.safe_load((tmp_path / "runs" / "epochs" / "config.yaml").read_text())
    assert (saved["train"]["max_steps"], saved["train"]["epochs"]) == (steps[1], None)
    again = pretrain(config(0.02), sample=False)  # the same epochs resolve to the same steps: nothing to train
    assert (again.start_step, again.final_step) == (steps[1], steps[1])
