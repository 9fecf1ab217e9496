"""Torch execution helpers shared by training and evaluation: mixed precision and collectives."""

from __future__ import annotations

import contextlib

import torch
import torch.distributed as dist

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: torch.device, precision: str):
    """Autocast to `precision` (bf16, fp16) on `device`; fp32 runs as it is."""
    if precision not in AMP_DTYPES:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=AMP_DTYPES[precision])


def distributed() -> bool:
    """Whether a process group of more than one rank is up."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum `tensor` over the ranks in place (a no-op in one process); returns it."""
    if distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def broadcast_from_rank0(value):
    """Rank 0's `value` on every rank (a picklable object; a collective: every rank must call it), or the
    value itself in one process."""
    if not distributed():
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


class PeakMemory:
    """The most memory this process held above what it held at the start, while the block ran: CUDA
    memory allocated by torch on a GPU, the resident set (Linux VmHWM, reset through clear_refs) on CPU.
    `extra_bytes` is None where it cannot be measured."""

    def __init__(self, device: torch.device):
        self.device = device
        self.extra_bytes: int | None = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            self.start = torch.cuda.memory_allocated(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            self.start = _status_bytes("VmRSS")
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # the peak resident set starts again from now
            except OSError:
                self.start = None
        return self

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            self.extra_bytes = torch.cuda.max_memory_allocated(self.device) - self.start
        elif self.start is not None and (peak := _status_bytes("VmHWM")) is not None:
            self.extra_bytes = max(peak - self.start, 0)


def _status_bytes(field: str) -> int | None:
    """A `kB` field of /proc/self/status in bytes (Linux), else None."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None
