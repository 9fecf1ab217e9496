"""Steps that are not applied: the spike detector, the step guard, train.skip_steps, and the engine under them."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from gptray.config import load_config
from gptray.core.errors import ConfigError, TrainingError
from gptray.data.train_windows import WholeSplitWindows
from gptray.train.engine import TrainingEngine
from gptray.train.loop import progress_line
from gptray.train.numerics import (
    CONFIGURED,
    NONFINITE,
    SPIKE,
    SpikeDetector,
    StepGuard,
    describe_skip,
    global_batch_windows,
    normalize_ranges,
)


def config(*overrides: str):
    return load_config(None, ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=16",
                              "model.vocab_size=256", "model.eot_token=255", "train.batch_size=4",
                              "train.micro_batch_size=2", "schedule.warmup_steps=1", "train.eval_windows=2",
                              "optimizer.lr=1e-2", "ray.num_workers=1", *overrides])


TOKENS = np.random.default_rng(0).integers(0, 256, 4_000).astype(np.uint16)


def engine(*overrides: str) -> TrainingEngine:
    return TrainingEngine(config(*overrides), torch.device("cpu"), rank=0, world_size=1, train_data=TOKENS,
                          val_tokens=TOKENS)


def weights(e: TrainingEngine) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in e.module.state_dict().items()}


def same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_the_detector_skips_a_loss_six_sigmas_over_the_window_once_it_has_enough_history():
    noise = np.random.default_rng(0).normal(3.0, 0.01, 200)
    detector = SpikeDetector(window=128, sigmas=6.0, min_history=64)
    assert not detector.is_spike(100.0)  # no history yet: nothing is a spike
    detector = SpikeDetector(window=128, sigmas=6.0, min_history=64)
    assert not any(detector.is_spike(float(x)) for x in noise[:63])
    assert not detector.is_spike(3.5)  # 63 losses known: still below min_history
    assert not any(detector.is_spike(float(x)) for x in noise[63:200])
    assert len(detector.losses) == 128  # only the window is kept
    window = list(detector.losses)
    mean, std = float(np.mean(window)), float(np.std(window, ddof=1))
    assert not detector.is_spike(mean + 5.9 * std)
    assert detector.is_spike(mean + 6.5 * std + 0.01)
    assert not detector.is_spike(math.nan) and len(detector.losses) == 128  # not finite: not its case, not kept


def test_a_lasting_change_of_level_is_accepted_after_a_while_as_in_olmo_core():
    detector = SpikeDetector(window=8, sigmas=3.0, min_history=4, history=[1.0, 1.01, 0.99, 1.0])
    verdicts = [detector.is_spike(2.0) for _ in range(6)]
    assert verdicts[0] and not verdicts[-1]


def test_the_guard_skips_non_finite_steps_and_stops_after_max_skipped_steps_in_a_row():
    guard = StepGuard(config("train.max_skipped_steps=3").train)
    assert guard.judge(1, 3.0, nonfinite=False).apply
    assert guard.judge(2, math.nan, nonfinite=True).reason == NONFINITE
    assert guard.judge(3, 3.0, nonfinite=False).apply  # an applied step ends the run of skips
    assert not guard.judge(4, math.inf, nonfinite=True).apply
    assert not guard.judge(5, 3.0, nonfinite=True).apply  # a finite loss with a non-finite gradient norm
    with pytest.raises(TrainingError, match=r"3 consecutive optimizer steps skipped \(the last, step 6.*"
                                            r"train.max_skipped_steps=3.*latest checkpoint is good"):
        guard.judge(6, math.nan, nonfinite=True)
    assert guard.metrics() == {"train/skipped_steps": 4, "train/nonfinite_steps": 4, "train/spike_steps": 0,
                               "train/rewinds": 0}


def test_the_guard_skips_spikes_when_train_spike_is_on_and_its_record_resumes_it_exactly():
    train = config("train.spike.enabled=true", "train.spike.window=16", "train.spike.min_history=8",
                   "train.skip_steps=[[20, 21], 40]").train
    guard = StepGuard(train)
    losses = 3 + 0.01 * np.sin(np.arange(30))
    verdicts = [guard.judge(s + 1, float(loss), nonfinite=False) for s, loss in enumerate(losses[:10])]
    assert all(v.apply for v in verdicts)
    resumed = StepGuard(train, guard.record())  # what state.json keeps
    assert resumed.judge(11, 9.0, nonfinite=False).reason == SPIKE
    assert guard.judge(11, 9.0, nonfinite=False).reason == SPIKE  # the uninterrupted one agrees
    assert resumed.record() == guard.record()
    assert resumed.skip_steps == [[20, 21], [40, 40]]
    assert [s for s in range(1, 50) if resumed.configured(s)] == [20, 21, 40]
    assert not StepGuard(config().train).detector  # off by default


def test_a_rewind_skips_from_the_checkpoint_through_the_spike_keeps_earlier_rewinds_and_is_bounded():
    train = config("train.spike.enabled=true", "train.spike.rewind=true", "train.spike.rewind_after=2",
                   "train.spike.max_rewinds=2", "train.spike.window=8", "train.spike.min_history=3",
                   "train.skip_steps=[3]").train
    guard = StepGuard(train)
    for step in range(1, 6):
        assert guard.judge(step, 3.0 + 0.01 * (step % 2), nonfinite=False).apply
    at_checkpoint = guard.record()  # say the run checkpoints at step 5
    verdict = guard.judge(6, 50.0, nonfinite=False)
    assert (verdict.apply, verdict.reason, verdict.rewind) == (False, SPIKE, True)
    rewound, skipped = guard.after_rewind(at_checkpoint, 6, first=6)
    assert skipped == [6, 8] and rewound.skip_steps == [[3, 3], [6, 8]] and rewound.rewinds == [[6, 6, 8]]
    assert list(rewound.detector.losses) == at_checkpoint["loss_history"]  # as a run that skipped 6…8 from the start
    assert rewound.metrics()["train/spike_steps"] == 1 and rewound.metrics()["train/rewinds"] == 1
    again, _ = rewound.after_rewind(at_checkpoint, 10, first=6)  # no checkpoint since: the earlier range stays
    assert again.skip_steps == [[3, 3], [6, 12]] and len(again.rewinds) == 2
    with pytest.raises(TrainingError, match=r"train.spike.max_rewinds=2"):
        again.after_rewind(at_checkpoint, 14, first=6)


def test_skip_ranges_merge_and_config_checks_them():
    assert normalize_ranges([[5, 7], 3, [6, 9], [11, 12]]) == [[3, 3], [5, 9], [11, 12]]
    assert normalize_ranges([[1, 2], [3, 4]]) == [[1, 4]]
    for bad, key in (("train.skip_steps=[[5, 3]]", r"train.skip_steps\[0\]"),
                     ("train.skip_steps=[[0, 1]]", r"train.skip_steps\[0\]"),
                     ("train.max_skipped_steps=0", "train.max_skipped_steps"),
                     ("train.spike.rewind=true", "train.spike.rewind"),
                     ("train.spike.sigmas=0", "train.spike.sigmas"),
                     ("train.test_scale_loss=[1, 0]", "train.test_scale_loss")):
        with pytest.raises(ConfigError, match=key):
            config(bad)
    assert global_batch_windows(3, 8) == (16, 23)
    assert "global batch windows 16…23" in describe_skip(3, guard_verdict(CONFIGURED), math.nan, (16, 23))


def guard_verdict(reason):
    from gptray.train.numerics import Verdict

    return Verdict(False, reason)


def test_a_nan_step_is_not_applied_and_equals_skipping_it_by_configuration():
    """A NaN at step 3 (train.test_scale_loss, the test-only hook): the weights and AdamW's state stay as
    step 2 left them, training goes on, and the run equals one that skips step 3 in train.skip_steps."""
    poisoned = engine("train.test_scale_loss=[3, 0, .nan]")
    skipping = engine("train.skip_steps=[[3, 3]]")
    guards = StepGuard(poisoned.train_config), StepGuard(skipping.train_config)
    for step in range(2):
        poisoned.train_step(step, guards[0])
        skipping.train_step(step, guards[1])
    before = weights(poisoned)
    result = poisoned.train_step(2, guards[0])
    assert result.verdict.reason == NONFINITE and math.isnan(result.global_loss)
    assert same(weights(poisoned), before)
    assert skipping.train_step(2, guards[1]).verdict.reason == CONFIGURED
    assert same(weights(skipping), before)
    for step in range(3, 5):
        a, b = poisoned.train_step(step, guards[0]), skipping.train_step(step, guards[1])
        assert a.verdict.apply and a.global_loss == b.global_loss
    assert not same(weights(poisoned), before)
    assert same(weights(poisoned), weights(skipping))
    assert all(torch.isfinite(v).all() for v in weights(poisoned).values())


def test_a_scaled_loss_is_a_spike_the_guard_skips():
    spiking = engine("train.test_scale_loss=[12, 0, 100]", "train.spike.enabled=true", "train.spike.window=10",
                     "train.spike.min_history=5")
    guard = StepGuard(spiking.train_config)
    verdicts = [spiking.train_step(step, guard).verdict for step in range(13)]
    assert [s + 1 for s, v in enumerate(verdicts) if not v.apply] == [12]
    assert verdicts[11].reason == SPIKE


def test_under_fp16_an_overflow_is_the_grad_scalers_to_skip_and_counted():
    fp16 = engine("train.precision=fp16")
    guard = StepGuard(fp16.train_config)
    fp16.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 120)  # scaled gradients overflow fp32
    before = weights(fp16)
    result = fp16.train_step(0, guard)
    assert result.overflowed and result.verdict.apply and math.isfinite(result.global_loss)
    assert same(weights(fp16), before) and fp16.scaler.get_scale() < 2.0 ** 120
    assert guard.metrics()["train/skipped_steps"] == 0  # not the guard's skip: no run of them stops training


class RecordingWindows(WholeSplitWindows):
    """The global order's training windows, noting the starts of the windows each gather reads."""

    def __init__(self, *args):
        super().__init__(*args)
        self.read: list[int] = []

    def gather(self, batch):
        self.read.extend(int(start) for start in batch)
        return super().gather(batch)


def windows_read(world: int, steps: int, *overrides: str) -> tuple[list[list[int]], set[int]]:
    """The window starts all `world` ranks' engines read at each step together, in rank order (each rank its
    share of the global batch, rank_shares.py), through train_step under a StepGuard; and how many steps each
    rank skipped by configuration."""
    read: list[list[int]] = [[] for _ in range(steps)]
    skipped = set()
    for rank in range(world):
        run = config(f"ray.num_workers={world}", "train.batch_size=7", *overrides)
        data = RecordingWindows(TOKENS, 16, run.train.seed, 7)
        e = TrainingEngine(run, torch.device("cpu"), rank=rank, world_size=world, train_data=data, val_tokens=TOKENS)
        guard = StepGuard(e.train_config)
        for step in range(steps):
            data.read.clear()
            e.train_step(step, guard)
            read[step] += data.read
        skipped.add(guard.counts.configured)
    return read, skipped


def test_skip_steps_skip_the_same_global_batches_at_world_sizes_1_2_and_3_and_leave_every_other_step_alone():
    """The elastic shares of 7 windows (4 + 3, 3 + 2 + 2): with steps 2…3 in train.skip_steps no rank reads
    their windows, and every other step reads the same global batch in the same order at every world size,
    the one a run without skips reads."""
    unskipped, _ = windows_read(1, 5)
    assert all(len(windows) == 7 for windows in unskipped)
    for world in (1, 2, 3):
        read, skipped = windows_read(world, 5, "train.skip_steps=[[2, 3]]")
        assert read[1] == read[2] == [] and skipped == {2}, world  # every rank skipped both
        assert [read[s] for s in (0, 3, 4)] == [unskipped[s] for s in (0, 3, 4)], world


def test_the_progress_line_shows_skips_rewinds_and_the_largest_gradient_norm():
    metrics = {"train/loss": 3.25, "train/lr": 1e-3, "train/tokens_per_s": 1000.0, "train/grad_norm": 0.5,
               "train/grad_norm_max": 7.25, "train/skipped_steps": 6, "train/nonfinite_steps": 1,
               "train/spike_steps": 2, "train/rewinds": 2}
    line = progress_line(12, 20, metrics)
    assert "grad norm 0.50 | max 7.25" in line
    assert line.endswith("skipped 6 (non-finite 1, spikes 2) | rewinds 2")
    quiet = progress_line(12, 20, {**metrics, "train/skipped_steps": 0, "train/rewinds": 0})
    assert "skipped" not in quiet and "rewinds" not in quiet


def test_several_test_faults_and_the_rewinds_as_mlflow_tags():
    train = config("train.test_scale_loss=[[2, 1, .nan], [5, 0, 1000]]").train
    assert [f[:2] for f in train.test_scale_faults()] == [[2, 1], [5, 0]]
    assert config("train.test_scale_loss=[3, 0, 2]").train.test_scale_faults() == [[3, 0, 2]]
    with pytest.raises(ConfigError, match="train.test_scale_loss"):
        config("train.test_scale_loss=[[2, 1, .nan], [5, 0]]")
    with pytest.raises(ConfigError, match="train.test_scale_loss"):
        config("train.test_scale_loss=[[2, 1, .nan], 5]")
    guard = StepGuard(config("train.spike.enabled=true", "train.spike.rewind=true", "train.skip_steps=[2]").train)
    rewound, _ = guard.after_rewind({}, 9, first=5)
    assert rewound.tags() == {"gptray.skip_steps": "[[2, 2], [5, 9]]", "gptray.rewinds": "[[9, 5, 9]]"}
