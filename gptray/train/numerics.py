"""Which optimizer steps a run applies: configured skips, non-finite and spiking steps, and their counts.

Steps are numbered as the progress line and MLflow number them: step n is the n-th optimizer step and
trains on global batch n − 1 (the engine's 0-based step). A skipped step still advances the step counter,
so the data order and the learning rate of every other step are those of a run without the skip; it only
takes no optimizer update (a run with skips makes fewer updates than train.max_steps).
"""

from __future__ import annotations

import json
import logging
import math
import statistics
from collections import deque
from dataclasses import dataclass, field

from gptray.config.training import SpikeConfig, TrainConfig
from gptray.core.errors import TrainingError

log = logging.getLogger(__name__)

CONFIGURED, NONFINITE, SPIKE = "configured", "nonfinite", "spike"


def normalize_ranges(ranges) -> list[list[int]]:
    """[[first, last], …] sorted, overlapping and touching ranges merged (a bare n means [n, n])."""
    pairs = sorted([r, r] if isinstance(r, int) else [int(r[0]), int(r[-1])] for r in ranges)
    merged: list[list[int]] = []
    for first, last in pairs:
        if merged and first <= merged[-1][1] + 1:
            merged[-1][1] = max(merged[-1][1], last)
        else:
            merged.append([first, last])
    return merged


class SpikeDetector:
    """OLMo-core's rule: a loss more than `sigmas` standard deviations above the mean of the last `window`
    losses is a spike, once `min_history` losses are known. Every finite loss joins the history, spikes too
    (as in OLMo-core), so a lasting change of level is accepted after a while instead of skipped forever."""

    def __init__(self, window: int, sigmas: float, min_history: int, history=()):
        self.sigmas, self.min_history = sigmas, max(min_history, 2)
        self.losses: deque[float] = deque(history, maxlen=window)

    @classmethod
    def of(cls, spike: SpikeConfig, history=()) -> SpikeDetector:
        return cls(spike.window, spike.sigmas, spike.effective_min_history(), history)

    def is_spike(self, loss: float) -> bool:
        """Whether `loss` spikes over the history; it joins the history either way (a finite one)."""
        if not math.isfinite(loss):
            return False  # non-finite steps are the guard's own case, and would poison the mean
        spike = False
        if len(self.losses) >= self.min_history:
            mean, std = statistics.fmean(self.losses), statistics.stdev(self.losses)
            spike = loss - mean > self.sigmas * std
        self.losses.append(loss)
        return spike


@dataclass
class Verdict:
    """Whether a step's update is applied, and if not, why (CONFIGURED, NONFINITE or SPIKE)."""

    apply: bool
    reason: str | None = None
    rewind: bool = False  # a spike under train.spike.rewind: the loop reloads the latest checkpoint


@dataclass
class SkipCounts:
    """Steps not applied, by reason, since the run began (recorded in state.json)."""

    configured: int = 0
    nonfinite: int = 0
    spike: int = 0
    skipped: list[list] = field(default_factory=list)  # [step, reason] of each non-finite or spiking step


class StepGuard:
    """Decides, identically on every rank, whether each optimizer step is applied: the engine hands it the
    loss averaged over ranks and whether any rank saw a non-finite loss or gradient norm (one all-reduce).
    Raises TrainingError after train.max_skipped_steps consecutive non-finite or spiking steps."""

    def __init__(self, train: TrainConfig, recorded: dict | None = None):
        recorded = recorded or {}
        self.train = train
        self.max_consecutive = train.max_skipped_steps
        self.rewinds: list[list[int]] = list(recorded.get("rewinds", []))  # [spike step, first, last skipped]
        # The ranges in force: the config's and those a checkpoint recorded (exact across resume).
        self.skip_steps = normalize_ranges([*train.skip_steps, *recorded.get("skip_steps", [])])
        self.detector = SpikeDetector.of(train.spike, recorded.get("loss_history", ())) \
            if train.spike.enabled else None
        counts = recorded.get("counts", {})
        self.counts = SkipCounts(**{k: counts[k] for k in ("configured", "nonfinite", "spike") if k in counts},
                                 skipped=list(counts.get("skipped", [])))
        self.consecutive = 0

    def configured(self, step: int) -> bool:
        """Whether step `step` (1-based) is in train.skip_steps: its batch is not even read."""
        return any(first <= step <= last for first, last in self.skip_steps)

    def judge(self, step: int, loss: float, nonfinite: bool) -> Verdict:
        """The verdict on step `step` (1-based) from the loss averaged over ranks."""
        if nonfinite:
            verdict = Verdict(False, NONFINITE)
        elif self.detector is not None and self.detector.is_spike(loss):
            verdict = Verdict(False, SPIKE, rewind=self.train.spike.rewind)
        else:
            self.consecutive = 0
            return Verdict(True)
        self.consecutive += 1
        setattr(self.counts, verdict.reason, getattr(self.counts, verdict.reason) + 1)
        self.counts.skipped.append([step, verdict.reason])
        if self.consecutive >= self.max_consecutive and not verdict.rewind:
            raise TrainingError(
                f"{self.consecutive} consecutive optimizer steps skipped (the last, step {step}: {_why(verdict, loss)};"
                f" train.max_skipped_steps={self.max_consecutive}): training diverged and stopped. No skipped step "
                "was applied, so the latest checkpoint is good: lower optimizer.lr, raise schedule.warmup_steps, or "
                "skip the offending batches with train.skip_steps and relaunch")
        return verdict

    def skipped_configured(self) -> Verdict:
        self.counts.configured += 1
        return Verdict(False, CONFIGURED)

    def after_rewind(self, recorded: dict, spike: int, first: int) -> tuple[StepGuard, list[int]]:
        """The guard of a run rewound to a checkpoint (`recorded`: its state.json's skips, `first`: the step
        after it) for a spike at step `spike`: the checkpoint's spike history, with steps first … spike +
        train.spike.rewind_after added to the ranges this run skips. Returns it and the range."""
        skipped = [first, spike + self.train.spike.rewind_after]
        rewinds = [*self.rewinds, [spike, *skipped]]
        if len(rewinds) > self.train.spike.max_rewinds:
            raise TrainingError(f"a loss spike at step {spike} after {len(self.rewinds)} rewind(s) "
                                f"(train.spike.max_rewinds={self.train.spike.max_rewinds}): training stopped. "
                                f"The rewinds so far: {self.rewinds} ([spike step, first and last step skipped])")
        guard = StepGuard(self.train, {**recorded, "rewinds": rewinds,
                                       "skip_steps": [*self.skip_steps, *recorded.get("skip_steps", []), skipped]})
        guard.counts = self.counts  # what this run skipped, the abandoned steps' spikes included
        return guard, skipped

    def record(self) -> dict:
        """What state.json keeps so that a resumed run judges its steps as an uninterrupted one would."""
        return {"skip_steps": self.skip_steps, "rewinds": self.rewinds,
                "loss_history": list(self.detector.losses) if self.detector is not None else [],
                "counts": {"configured": self.counts.configured, "nonfinite": self.counts.nonfinite,
                           "spike": self.counts.spike, "skipped": self.counts.skipped}}

    def tags(self) -> dict[str, str]:
        """The ranges in force and the rewinds, as the MLflow run's tags gptray.skip_steps and gptray.rewinds
        (set at each rewind: the run's params hold the config's train.skip_steps, and params cannot change)."""
        return {"gptray.skip_steps": json.dumps(self.skip_steps), "gptray.rewinds": json.dumps(self.rewinds)}

    def metrics(self) -> dict[str, float]:
        """The counts as MLflow metrics."""
        return {"train/skipped_steps": self.counts.configured + self.counts.nonfinite + self.counts.spike,
                "train/nonfinite_steps": self.counts.nonfinite, "train/spike_steps": self.counts.spike,
                "train/rewinds": len(self.rewinds)}


def _why(verdict: Verdict, loss: float) -> str:
    return f"loss {loss:.4f} spiked" if verdict.reason == SPIKE else "a non-finite loss or gradient norm"


def describe_skip(step: int, verdict: Verdict, loss: float, windows: tuple[int, int]) -> str:
    """The line a skipped step logs: which step, why, and which global-batch windows it did not train on."""
    return (f"step {step} skipped ({_why(verdict, loss) if verdict.reason != CONFIGURED else 'train.skip_steps'}): "
            f"global batch windows {windows[0]}…{windows[1]} not trained on")


def global_batch_windows(step: int, batch_size: int) -> tuple[int, int]:
    """The first and last global sample index (window id) of step `step`'s global batch (1-based step)."""
    return (step - 1) * batch_size, step * batch_size - 1
