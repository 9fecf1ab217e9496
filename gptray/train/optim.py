"""The optimizers (AdamW with GPT-style weight-decay groups; Muon for the hidden matrices) and the
learning-rate schedules (warmup, then cosine, linear or warmup-stable-decay)."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import torch

from gptray.config import ExperimentConfig, OptimizerConfig
from gptray.core.errors import ConfigError
from gptray.train.muon import GatheredMuon


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights inside the transformer blocks (attention and MLP projections): what Muon
    optimizes. Embeddings and the head (tied or not) are not hidden, as modded-nanogpt has it: their
    rows are looked up or scored one token at a time, and an orthogonalized update suits neither."""
    return [p for p in model.transformer.h.parameters() if p.requires_grad and p.dim() == 2]


def build_optimizers(model: torch.nn.Module, settings: OptimizerConfig, device: torch.device,
                     ) -> list[torch.optim.Optimizer]:
    """AdamW for every parameter (optimizer.name=adamw), or AdamW for the rest and Muon for the hidden
    matrices (muon). AdamW comes first either way; the engine steps them all, and checkpoints hold them all."""
    muon_params = hidden_matrices(model) if settings.name == "muon" else []
    optimizers = [_adamw(model, settings, device, exclude={id(p) for p in muon_params})]
    if muon_params:
        optimizers.append(_muon(muon_params, settings))
    return optimizers


def _adamw(model: torch.nn.Module, settings: OptimizerConfig, device: torch.device,
           exclude: set[int]) -> torch.optim.AdamW:
    """Decay matrices and embeddings; never biases or norm gains (as GPT-2/3 and nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in exclude]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": settings.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = {}
    if device.type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        extra["fused"] = True  # one kernel for all parameters
    return torch.optim.AdamW(groups, lr=settings.lr, betas=(settings.beta1, settings.beta2), eps=settings.eps,
                             **extra)


def _muon(params: list[torch.nn.Parameter], settings: OptimizerConfig) -> torch.optim.Optimizer:
    if not hasattr(torch.optim, "Muon"):  # torch.optim.Muon is new in torch 2.9
        raise ConfigError("optimizer.name", f"muon needs torch >= 2.9 (torch.optim.Muon); this is torch "
                                             f"{torch.__version__}")
    # nesterov, ns_steps=5, the Newton–Schulz coefficients and the √max(1, rows/cols) lr scaling
    # ("original") are torch's defaults, and modded-nanogpt's.
    return GatheredMuon(params, lr=settings.muon_lr, momentum=settings.muon_momentum,
                        weight_decay=settings.muon_weight_decay, nesterov=True, ns_steps=5, adjust_lr_fn="original")


def is_muon(optimizer: torch.optim.Optimizer) -> bool:
    return hasattr(torch.optim, "Muon") and isinstance(optimizer, torch.optim.Muon)


@dataclass(frozen=True)
class LrSchedule:
    """Everything the learning rate of a step depends on, from a config's optimizer, schedule and train
    sections: two runs with equal LrSchedules give every step the same rates."""

    lr: float  # the peak (AdamW's)
    min_lr: float
    warmup_steps: int
    decay_steps: int  # where the decay reaches min_lr (schedule.decay_steps, default train.max_steps)
    name: str = "cosine"  # cosine, linear or wsd
    wsd_decay_fraction: float = 0.2
    wsd_decay_shape: str = "1-sqrt"
    muon_lr: float | None = None  # Muon's peak, scaled along with lr; None without Muon

    @classmethod
    def of(cls, config: ExperimentConfig) -> LrSchedule:
        optimizer, schedule = config.optimizer, config.schedule
        return cls(lr=optimizer.lr, min_lr=schedule.min_lr, warmup_steps=schedule.warmup_steps,
                   decay_steps=schedule.decay_steps or config.train.max_steps, name=schedule.name,
                   wsd_decay_fraction=schedule.wsd_decay_fraction, wsd_decay_shape=schedule.wsd_decay_shape,
                   muon_lr=optimizer.muon_lr if optimizer.name == "muon" else None)


def set_learning_rates(optimizers: list[torch.optim.Optimizer], step: int, schedule: LrSchedule) -> float:
    """Set every group's lr for optimizer step `step`: AdamW's is learning_rate(step), Muon's the same
    schedule scaled to optimizer.muon_lr. Returns AdamW's (train/lr)."""
    lr = learning_rate(step, schedule)
    for optimizer in optimizers:
        scaled = lr * schedule.muon_lr / schedule.lr if is_muon(optimizer) else lr
        for group in optimizer.param_groups:
            group["lr"] = scaled
    return lr


def learning_rate(step: int, schedule: LrSchedule) -> float:
    """LR for optimizer step `step` (0-based): linear warmup to lr, then the schedule's decay down to min_lr
    at decay_steps; min_lr after that."""
    if step < schedule.warmup_steps:
        return schedule.lr * (step + 1) / schedule.warmup_steps
    if schedule.name == "wsd" and schedule.wsd_decay_fraction == 0:
        return schedule.lr  # a stable phase only: the decay comes later, from a continuation
    if step >= schedule.decay_steps:
        return schedule.min_lr
    start = decay_start(schedule)
    if step < start:  # wsd's stable phase (cosine and linear start decaying when the warmup ends)
        return schedule.lr
    progress = (step - start) / max(schedule.decay_steps - start, 1)
    shape = schedule.wsd_decay_shape if schedule.name == "wsd" else schedule.name
    if shape == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif shape == "linear":
        remaining = 1.0 - progress
    else:  # 1-sqrt
        remaining = 1.0 - math.sqrt(progress)
    return schedule.min_lr + remaining * (schedule.lr - schedule.min_lr)


def decay_start(schedule: LrSchedule) -> float:
    """The step the decay starts from (the last at the peak lr): the warmup's end for cosine and linear;
    for wsd, where the last wsd_decay_fraction of decay_steps begins (never before the warmup ends).

    A WSD run's checkpoint at step s <= decay_start continues exactly into any WSD schedule with the same
    warmup and peak whose decay_start is >= s: until then both held the same lr (checkpoint.resume_from).
    """
    if schedule.name != "wsd":
        return schedule.warmup_steps
    if schedule.wsd_decay_fraction == 0:
        return math.inf
    return max(schedule.warmup_steps, schedule.decay_steps - round(schedule.wsd_decay_fraction * schedule.decay_steps))


def first_schedule_difference(trained: LrSchedule, now: LrSchedule, steps: int) -> tuple[int, float, float] | None:
    """The first of the steps before `steps` whose learning rate (AdamW's, or Muon's with Muon) differs
    between two schedules, with both rates; None if they agree on all of them."""
    if trained == now:
        return None
    for step in range(steps):
        before, after = learning_rate(step, trained), learning_rate(step, now)
        pairs = [(before, after)]
        if now.muon_lr is not None and trained.muon_lr is not None:
            pairs.append((before * trained.muon_lr / trained.lr, after * now.muon_lr / now.lr))
        for old, new in pairs:
            if not math.isclose(old, new, rel_tol=1e-9, abs_tol=0.0):
                return step, old, new
    return None
