"""A run given train.epochs trains the steps they resolve to, saves them, and a relaunch resolves them again;
its log shows train.precision and train.compile as auto resolved them."""

from __future__ import annotations

import logging
import math

import yaml

from gptray.train.pretrain import pretrain
from helpers import small_run_config


class Messages(logging.Handler):
    def __init__(self):
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(record.getMessage())


LOCAL = ["ray.num_workers=0", "tracking.enabled=false", "train.max_steps=null"]


def test_epochs_resolve_to_steps_that_a_resumed_run_keeps(shakespeare_dataset, tmp_path):
    def config(epochs: float):
        return small_run_config(tmp_path, shakespeare_dataset, *LOCAL, "name=epochs", f"train.epochs={epochs}")

    first = config(0.01)
    train_tokens = shakespeare_dataset.manifest.split_info("train").tokens
    windows = (train_tokens - 1) // first.train.effective_seq_len(first.model)
    steps = [math.ceil(epochs * windows / first.train.batch_size) for epochs in (0.01, 0.02)]
    assert 0 < steps[0] < steps[1]
    messages = Messages()
    logger = logging.getLogger("gptray.train")  # the loop sets gptray's logger not to propagate: listen on it
    logger.addHandler(messages)
    level, logger.level = logger.level, logging.INFO
    try:
        result = pretrain(first, sample=False)
    finally:
        logger.removeHandler(messages)
        logger.setLevel(level)
    assert (result.start_step, result.final_step) == (0, steps[0])
    assert any(line.startswith(f"train.epochs=0.01: train.max_steps={steps[0]} ") for line in messages.lines)
    # train.precision and train.compile are auto by default: the log shows them resolved for the CPU
    start = next(line for line in messages.lines if line.startswith("training "))
    assert ", fp32, ddp, global order" in start and "auto" not in start

    resumed = pretrain(config(0.02), sample=False)  # more epochs: the run goes on from its checkpoint
    assert (resumed.start_step, resumed.final_step) == (steps[0], steps[1])
    saved = yaml.safe_load((tmp_path / "runs" / "epochs" / "config.yaml").read_text())
    assert (saved["train"]["max_steps"], saved["train"]["epochs"]) == (steps[1], None)
    again = pretrain(config(0.02), sample=False)  # the same epochs resolve to the same steps: nothing to train
    assert (again.start_step, again.final_step) == (steps[1], steps[1])
