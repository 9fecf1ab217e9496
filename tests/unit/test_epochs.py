"""train.epochs: one of it and train.max_steps, resolved to steps from the manifest in the run's data order."""

from __future__ import annotations

import pytest

from gptray.config import load_config
from gptray.core.errors import ConfigError
from gptray.data.manifest import Manifest, ShardInfo, SplitInfo
from gptray.data.train_windows import DataOrder
from gptray.train.epochs import resolve_epochs, steps_for_epochs
from gptray.train.optim import LrSchedule

SEQ = 64
NANO = ["model.preset=nano", "data.tokenizer=gpt2", f"train.seq_len={SEQ}", "train.batch_size=8"]


def manifest(shard_tokens: list[int]) -> Manifest:
    shards = [ShardInfo(f"train/s{i}.parquet", 1, n, i, "", 0, source=0) for i, n in enumerate(shard_tokens)]
    return Manifest(tokenizer={"name": "gpt2", "dtype": "uint16"}, split={}, sources=[],
                    splits={"train": SplitInfo(len(shards), sum(shard_tokens), shards), "val": SplitInfo()})


def test_set_one_of_max_steps_and_epochs():
    assert load_config(None, NANO).train.max_steps == 1800  # neither: the default steps
    config = load_config(None, [*NANO, "train.epochs=2"])
    assert (config.train.max_steps, config.train.epochs) == (None, 2)
    assert config.schedule.warmup_steps is None  # nano's warmup is a tenth of the steps, not known yet
    with pytest.raises(ConfigError, match="train.epochs: set train.max_steps or train.epochs, not both"):
        load_config(None, [*NANO, "train.epochs=2", "train.max_steps=100"])
    with pytest.raises(ConfigError, match="train.epochs"):
        load_config(None, [*NANO, "train.epochs=0"])


def test_epochs_resolve_to_steps_of_the_orders_windows_and_the_schedule_follows():
    assert steps_for_epochs(2, 100, 8) == 25
    assert steps_for_epochs(0.01, 100, 8) == 1  # at least one step
    data = manifest([SEQ * 60 + 1, SEQ * 40 + 1])  # 100 windows in either order
    config = load_config(None, [*NANO, "train.epochs=2"])
    resolved = resolve_epochs(config, data, DataOrder.of("global", config))
    assert (resolved.train.max_steps, resolved.train.epochs) == (25, None)
    assert resolved.schedule.warmup_steps == 3  # nano's tenth of the resolved steps, rounded up
    assert LrSchedule.of(resolved).decay_steps == 25
    assert config.train.epochs == 2  # the config it was given is left as it was
    # The block order counts windows per shard: a shard's last partial window is not one.
    blocks = manifest([SEQ * 60 + 30, SEQ * 40 + 30, SEQ // 2])
    block = load_config(None, [*NANO, "train.epochs=1.5", "data.shuffle=block", "data.shuffle_block_shards=1"])
    assert resolve_epochs(block, blocks, DataOrder.of("block", block)).train.max_steps == 19  # ceil(150 / 8)
    stepped = load_config(None, [*NANO, "train.max_steps=7"])
    assert resolve_epochs(stepped, data) is stepped


def test_a_sweeps_budget_sets_steps_in_place_of_the_bases_epochs(tmp_path):
    from gptray.tune.spec import load_sweep
    from helpers import write_sweep

    train = {"max_steps": None, "epochs": 3, "batch_size": 4, "micro_batch_size": 4}
    budget = write_sweep(tmp_path / "budget.yaml", str(tmp_path / "data"),
                         {"axes": {"train.seq_len": [32, 64]}, "seeds": [0], "budget_tokens": 2048}, train=train)
    steps = {t.config.train.seq_len: (t.config.train.max_steps, t.config.train.epochs)
             for t in load_sweep(budget).trials}
    assert steps == {32: (16, None), 64: (8, None)}
    plain = write_sweep(tmp_path / "plain.yaml", str(tmp_path / "data"),
                        {"axes": {"train.seq_len": [32, 64]}, "seeds": [0]}, train=train)
    assert {t.config.train.epochs for t in load_sweep(plain).trials} == {3}  # resolved when each trial launches
