"""Model FLOPs per token and device peaks, for model FLOPs utilization (MFU)."""

from __future__ import annotations

import torch

from gptray.config import ModelConfig

# Dense (no sparsity) tensor-core peaks per device in TFLOP/s from the vendors' datasheets:
# bf16/fp16, and TF32 for fp32 training. Matched against torch.cuda.get_device_name().
PEAK_TFLOPS: list[tuple[str, float, float]] = [
    # (name substring, bf16/fp16, tf32)
    ("H200", 989.4, 494.7),
    ("H100 PCIe", 756.0, 378.0),
    ("H100", 989.4, 494.7),  # SXM
    ("A100", 312.0, 156.0),
    ("L40S", 362.1, 183.0),
    ("L4", 121.0, 60.0),
    ("A10G", 70.0, 35.0),
    ("V100", 125.0, 15.7),  # no bf16 or TF32: fp16 and fp32 peaks
]


def flops_per_token(model: ModelConfig, num_parameters: int, seq_len: int) -> float:
    """Training FLOPs per token, 6N + 12·L·H·Q·T (PaLM appendix B; nanoGPT's estimate).

    N counts the parameters that take part in matrix multiplies: all of them except learned
    position embeddings (the tied token embedding is the output head's matmul). Q is the head
    width, which is not n_embd / n_head for every preset (gpt3-xl, gpt3-13b).
    """
    position_parameters = model.block_size * model.n_embd if model.position == "learned" else 0
    return 6 * (num_parameters - position_parameters) + 12 * model.n_layer * model.n_head * model.head_dim * seq_len


def device_peak_flops(device: torch.device, precision: str, override_tflops: float | None = None) -> float | None:
    """Peak FLOP/s of one device for the precision in use; None where unknown (CPUs, unlisted GPUs)."""
    if override_tflops is not None:
        return override_tflops * 1e12
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key, low_precision, tf32 in PEAK_TFLOPS:
        if key in name:
            return (tf32 if precision == "fp32" else low_precision) * 1e12
    return None
