"""train.precision and train.compile set to "auto", resolved on the device a worker trains on.

auto is what users of GPU training expect without asking: bf16 autocast where the GPU has bf16, and
torch.compile on CUDA; on a CPU (or a GPU without bf16) fp32 and no compile, gptray's defaults before.
"""

from __future__ import annotations

import dataclasses

import torch

from gptray.config import TrainConfig


def auto_precision(device: torch.device) -> str:
    return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"


def auto_compile(device: torch.device) -> bool:
    return device.type == "cuda"


def for_device(train: TrainConfig, device: torch.device) -> TrainConfig:
    """`train` with precision and compile resolved for `device` (explicit values are kept)."""
    return dataclasses.replace(
        train,
        precision=auto_precision(device) if train.precision == "auto" else train.precision,
        compile=auto_compile(device) if train.compile == "auto" else train.compile,
    )
