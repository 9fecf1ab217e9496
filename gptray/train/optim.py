"""AdamW with GPT-style weight-decay groups, and the warmup + cosine learning-rate schedule."""

from __future__ import annotations

import inspect
import math

import torch

from gptray.config import TrainConfig


def build_optimizer(model: torch.nn.Module, train: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    """Decay matrices and embeddings; never biases or norm gains (as GPT-2/3 and nanoGPT)."""
    params = [p for p in model.parameters() if p.requires_grad]
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


def learning_rate(step: int, train: TrainConfig) -> float:
    """LR for optimizer step `step` (0-based): linear warmup, then cosine decay to min_lr."""
    min_lr = train.effective_min_lr()
    decay_steps = train.lr_decay_steps or train.max_steps
    if step < train.warmup_steps:
        return train.lr * (step + 1) / train.warmup_steps
    if step >= decay_steps:
        return min_lr
    progress = (step - train.warmup_steps) / max(decay_steps - train.warmup_steps, 1)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (train.lr - min_lr)
