"""The optimizers (AdamW with GPT-style weight-decay groups; Muon for the hidden matrices) and the
learning-rate schedules (warmup, then cosine, linear or warmup-stable-decay)."""

from __future__ import annotations

import inspect
import math

import torch

from gptray.base.errors import ConfigError
from gptray.config import TrainConfig
from gptray.train.muon import GatheredMuon


def hidden_matrices(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    """The 2-D weights inside the transformer blocks (attention and MLP projections): what Muon
    optimizes. Embeddings and the head (tied or not) are not hidden, as modded-nanogpt has it: their
    rows are looked up or scored one token at a time, and an orthogonalized update suits neither."""
    return [p for p in model.transformer.h.parameters() if p.requires_grad and p.dim() == 2]


def build_optimizers(model: torch.nn.Module, train: TrainConfig, device: torch.device) -> list[torch.optim.Optimizer]:
    """AdamW for every parameter (train.optimizer=adamw), or AdamW for the rest and Muon for the hidden
    matrices (muon). AdamW comes first either way; the engine steps them all, and checkpoints hold them all."""
    muon_params = hidden_matrices(model) if train.optimizer == "muon" else []
    optimizers = [_adamw(model, train, device, exclude={id(p) for p in muon_params})]
    if muon_params:
        optimizers.append(_muon(muon_params, train))
    return optimizers


def _adamw(model: torch.nn.Module, train: TrainConfig, device: torch.device, exclude: set[int]) -> torch.optim.AdamW:
    """Decay matrices and embeddings; never biases or norm gains (as GPT-2/3 and nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad and id(p) not in exclude]
    decay = [p for p in params if p.dim() >= 2]
    no_decay = [p for p in params if p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    extra = {}
    if device.type == "cuda" and "fused" in inspect.signature(torch.optim.AdamW).parameters:
        extra["fused"] = True  # one kernel for all parameters
    return torch.optim.AdamW(groups, lr=train.lr, betas=(train.beta1, train.beta2), eps=train.eps, **extra)


def _muon(params: list[torch.nn.Parameter], train: TrainConfig) -> torch.optim.Optimizer:
    if not hasattr(torch.optim, "Muon"):  # torch.optim.Muon is new in torch 2.9
        raise ConfigError("train.optimizer", f"muon needs torch >= 2.9 (torch.optim.Muon); this is torch "
                                             f"{torch.__version__}")
    # nesterov, ns_steps=5, the Newton–Schulz coefficients and the √max(1, rows/cols) lr scaling
    # ("original") are torch's defaults, and modded-nanogpt's.
    return GatheredMuon(params, lr=train.muon_lr, momentum=train.muon_momentum,
                        weight_decay=train.muon_weight_decay, nesterov=True, ns_steps=5, adjust_lr_fn="original")


def is_muon(optimizer: torch.optim.Optimizer) -> bool:
    return hasattr(torch.optim, "Muon") and isinstance(optimizer, torch.optim.Muon)


def set_learning_rates(optimizers: list[torch.optim.Optimizer], step: int, train: TrainConfig) -> float:
    """Set every group's lr for optimizer step `step`: AdamW's is learning_rate(step), Muon's the same
    schedule scaled to train.muon_lr. Returns AdamW's (train/lr)."""
    lr = learning_rate(step, train)
    for optimizer in optimizers:
        scaled = lr * train.muon_lr / train.lr if is_muon(optimizer) else lr
        for group in optimizer.param_groups:
            group["lr"] = scaled
    return lr


def learning_rate(step: int, train: TrainConfig) -> float:
    """LR for optimizer step `step` (0-based): linear warmup to train.lr, then train.schedule down to
    min_lr at lr_decay_steps (default max_steps); min_lr after that."""
    min_lr = train.effective_min_lr()
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if train.schedule == "wsd" and train.wsd_decay_fraction == 0:
        return train.lr  # a stable phase only: the decay comes later, from a continuation
    decay_steps = train.lr_decay_steps or train.max_steps
    if step >= decay_steps:
        return min_lr
    start = decay_start(train)
    if step < start:  # wsd's stable phase (cosine and linear start decaying when the warmup ends)
        return train.lr
    progress = (step - start) / max(decay_steps - start, 1)
    shape = train.wsd_decay_shape if train.schedule == "wsd" else train.schedule
    if shape == "cosine":
        remaining = 0.5 * (1.0 + math.cos(math.pi * progress))
    elif shape == "linear":
        remaining = 1.0 - progress
    else:  # 1-sqrt
        remaining = 1.0 - math.sqrt(progress)
    return min_lr + remaining * (train.lr - min_lr)


def decay_start(train: TrainConfig) -> float:
    """The step the decay starts from (the last at the peak lr): the warmup's end for cosine and linear;
    for wsd, where the last
    wsd_decay_fraction of lr_decay_steps begins (never before the warmup ends).

    A WSD run's checkpoint at step s <= decay_start continues exactly into any WSD schedule with the same
    warmup and peak whose decay_start is >= s: until then both held the same lr (train.resume_from).
    """
    decay_steps = train.lr_decay_steps or train.max_steps
    if train.schedule != "wsd":
        return train.warmup_steps
    if train.wsd_decay_fraction == 0:
        return math.inf
    return max(train.warmup_steps, decay_steps - round(train.wsd_decay_fraction * decay_steps))


def first_schedule_difference(trained: TrainConfig, now: TrainConfig, steps: int) -> tuple[int, float, float] | None:
    """The first of the steps before `steps` whose learning rate (AdamW's, or Muon's under train.optimizer=muon)
    differs between two train configs, with both rates; None if they agree on all of them."""
    fields = ("lr", "min_lr", "warmup_steps", "lr_decay_steps", "max_steps", "schedule", "wsd_decay_fraction",
              "wsd_decay_shape", "muon_lr", "optimizer")
    if all(getattr(trained, f) == getattr(now, f) for f in fields):
        return None
    for step in range(steps):
        before, after = learning_rate(step, trained), learning_rate(step, now)
        pairs = [(before, after)]
        if now.optimizer == "muon":
            pairs.append((before * trained.muon_lr / trained.lr, after * now.muon_lr / now.lr))
        for old, new in pairs:
            if not math.isclose(old, new, rel_tol=1e-9, abs_tol=0.0):
                return step, old, new
    return None
