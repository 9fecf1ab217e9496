"""GPU check (issue 21): gptray's correctness, throughput and memory on one CUDA GPU, in one command.

    python benchmarks/gpu_check.py --out $OUT/gpu_check.json      # one H100/H200: at most ~8 minutes
    python benchmarks/gpu_check.py --cpu-smoke --out /tmp/gc.json  # the same code on CPU, nano model, seconds
                                                                   # (--smoke, as every benchmark has, is the same)

Sections, in the order they run. Each has its own try/except and time budget, prints as it goes, and the
JSON is rewritten after every one, so a run cut short keeps what it had measured:

  environment     torch, CUDA, the GPU, which optional packages are installed (Ray, PyYAML, pyarrow), and what
                  train.precision=auto and train.compile=auto resolve to on this device
  matmul_peak     bf16 matmul TFLOP/s measured here: the MFU denominator beside the 989 TF datasheet figure
  precision       one forward + backward in bf16 and in fp16 autocast against fp32, of the default GPT-2 and of
                  each variant (rmsnorm, swiglu, rope, sliding_window, alternating, document_mask): logits,
                  loss, all gradients and the worst single parameter's gradient within the tolerances below
  flash           [CUDA] causal attention runs with SDPA restricted to FLASH_ATTENTION (the profile shows the
                  flash op) and matches fp32; a document-masked model is refused there, so the restriction is real
  fused_adamw     five fused AdamW steps equal the unfused (for-loop) ones; on CUDA the engine's is fused
  checkpoint      TrainingEngine.full_state → save_checkpoint → load_tensors → load_full_state, as the training
                  loop does: the next two steps' losses equal the uninterrupted run's (bf16; fp16 with its GradScaler)
  fsdp            train.parallelism=fsdp (FSDP2, fully_shard) on a one-process group (NCCL; gloo on CPU)
                  trains like the plain engine (equal losses and parameters after three steps), and its
                  sharded checkpoint (DCP, the loop's format under FSDP) resumes to the same next two losses
  compile         torch.compile equals eager (bf16 forward + backward, the throughput's first micro-batch)
  throughput      GPT-2 124M, T=1024, bf16, torch.compile, fused AdamW, through TrainingEngine in this process
                  (benchmarks/train_throughput.py's measure), micro-batch 16/32/64, the best kept: tokens/s and
                  MFU against the measured matmul peak and against 989 TF
  ray_throughput  the same in a one-worker Ray Train TorchTrainer (train_throughput.py's measure_in_ray) where
                  Ray imports, and its overhead: 1 − Ray tokens/s ÷ plain tokens/s
  memory          [CUDA] peak CUDA memory of gpt2-medium and gpt2-large training steps (bf16, eager,
                  micro-batch 8) without and with activation checkpointing
  mask_cost       tokens/s of document masking and of a 256-token sliding window ÷ causal, at T=1024: compiled
                  at the best micro-batch where the time left allows two more compiles, else all three eager
                  at micro-batch 16
  mask_flex       [CUDA] a document-masked training step of the `tiny` preset at T=1024 and 2048, dense (SDPA
                  with a T × T mask) vs FlexAttention block masks (model.attention_impl=flex): median step
                  time with min/max and peak CUDA memory (benchmarks/attention_masks.py's measure), and the
                  relative error of flex's fp32 loss and gradients against dense's at T=1024

Status: a check section is "passed", "failed" or "partial" (its time budget ran out before some checks,
and none failed); a measurement is "ok" or "partial" (a micro-batch skipped or out of memory); "error"
means the section raised (its traceback is in the JSON); "skipped: <why>" never counts as passed.
--cpu-smoke runs everything on CPU with the `nano` preset at T=64 and records the CUDA-only sections as
"skipped: needs CUDA"; there the compile check uses the aot_eager backend (Inductor's C++ build takes
20-30 s on two cores), the throughput runs are eager, and Ray is left out unless --ray on.

Exit status: 0 when every check that ran passed and no section raised; 1 when a correctness check failed
or raised, a section raised, no CUDA device was found (without --cpu-smoke), or the watchdog stopped a
run that outlived --minutes by 60 s; 2 for bad arguments.

The JSON: {"meta": {settings, tolerances, exit_status, ...}, "sections": {name: {"status",
"seconds", "summary", ...}}}; a check section holds "checks": [{"name", "passed", "comparisons":
{what: {"error", "tolerance", "passed"}}, ...}]. Errors are relative: |x − ref| / |ref| over all elements.

Needs torch, numpy, PyYAML and pyarrow besides the repo (the GPU image has all four; device/KINDS.md);
Ray and MLflow are optional: without Ray the ray_throughput section says so and is skipped.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import gc
import hashlib
import importlib
import importlib.metadata
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS = Path(__file__).resolve().parent
for _path in (REPO, BENCHMARKS):  # gptray from this checkout, and train_throughput beside this file
    if str(_path) not in sys.path:
        sys.path.insert(0, str(_path))

DATASHEET_TFLOPS = 989.0  # H100 SXM / H200 dense bf16: the yardstick for MFU
FP16_LOSS_SCALE = 2.0**16  # GradScaler's initial scale: fp16 gradients of a mean over B·T tokens underflow without it
PRECISIONS = ("bf16", "fp16")
WATCHDOG_GRACE_S = 60
MIN_SECTION_S = 5  # a section starts only with at least this much of the run's time left

# Relative errors against fp32 at initialization. On CPU gpt2 (T=1024) gives logits 7e-3 (bf16) and
# 8e-4 (fp16), gradients 9e-3 and 1.1e-3, the worst parameter's gradient 1.1e-2 and 1.3e-3; the
# tolerances leave 3-4× for GPU kernels (reduced-precision reductions, other SDPA kernels).
TOLERANCES: dict[str, dict[str, float]] = {
    "bf16": {"logits": 3e-2, "loss": 1e-3, "grads": 3e-2, "worst_param": 6e-2},
    "fp16": {"logits": 5e-3, "loss": 1e-3, "grads": 5e-3, "worst_param": 1.5e-2},
    # Compiled against eager, both bf16: two roundings of the same sums, each as far from fp32 as above.
    "compile": {"logits": 3e-2, "loss": 1e-3, "grads": 3e-2, "worst_param": 6e-2},
    # Parameters after five steps, relative to the update ‖p − p0‖ (fused vs for-loop: 2e-8 on CPU).
    "fused_adamw": {"params": 1e-4},
    # A resumed step sees the same weights and windows: only nondeterministic CUDA atomics may differ.
    "checkpoint": {"loss": 1e-5, "weights": 0.0},
    # FSDP2 over one rank computes what the plain engine does; parameters relative to their update.
    "fsdp": {"loss": 1e-3, "params": 1e-2},
}


def variants(window: int) -> dict[str, dict]:
    """The model variants every precision check covers: ModelConfig overrides of the default GPT-2."""
    return {
        "default": {},
        "rmsnorm": {"norm": "rmsnorm"},
        "swiglu": {"mlp": "swiglu"},
        "rope": {"position": "rope"},
        "sliding_window": {"attention": "sliding_window", "attention_window": window},
        "alternating": {"attention": "alternating", "attention_window": window},
        "document_mask": {"document_mask": True},
    }


@dataclass(frozen=True)
class Settings:
    """What differs between the GPU run and the CPU smoke run."""

    device: torch.device
    smoke: bool
    preset: str  # the model of the correctness checks
    seq_len: int
    batch: int  # sequences per correctness forward/backward
    window: int  # attention_window of the banded variants and of mask_cost's sliding window
    compile_backend: str
    compile_batch: int
    throughput_preset: str
    micro_batches: tuple[int, ...]
    steps: int  # timed steps per throughput run
    warmup: int
    throughput_compile: bool
    memory_presets: tuple[str, ...]
    memory_micro_batch: int
    matmul_sizes: tuple[int, ...]
    ray: bool
    threads: int
    model: dict = dataclasses.field(default_factory=dict)  # ModelConfig overrides of every model built
    no_device: str | None = None  # why nothing but the environment can run


def gpu_settings(args: argparse.Namespace) -> Settings:
    cuda = torch.cuda.is_available()
    micro_batches = tuple(args.micro_batches or (16, 32, 64))
    return Settings(
        # With its index: torch.cuda.set_device (the FSDP section's) refuses a bare "cuda".
        device=torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu"),
        smoke=False, preset="gpt2", seq_len=1024, batch=2, window=256,
        compile_backend=args.compile_backend or "inductor", compile_batch=micro_batches[0],
        throughput_preset="gpt2", micro_batches=micro_batches, steps=_given(args.steps, 10),
        warmup=_given(args.warmup, 3), throughput_compile=True,
        memory_presets=("gpt2-medium", "gpt2-large"), memory_micro_batch=8,
        matmul_sizes=(4096, 8192, 16384), ray=args.ray != "off", threads=os.cpu_count() or 1,
        no_device=None if cuda else "no CUDA device here (torch.cuda.is_available() is False); "
                                    "--cpu-smoke runs the CPU check")


def _given(value: int | None, default: int) -> int:
    return default if value is None else value


def smoke_settings(args: argparse.Namespace) -> Settings:
    return Settings(
        device=torch.device("cpu"), smoke=True, preset="nano", seq_len=64, batch=2, window=16,
        compile_backend=args.compile_backend or "aot_eager", compile_batch=2, throughput_preset="nano",
        micro_batches=tuple(args.micro_batches or (4, 8)), steps=_given(args.steps, 2), warmup=_given(args.warmup, 1),
        throughput_compile=False, memory_presets=("nano",), memory_micro_batch=2, matmul_sizes=(256, 512),
        # One thread: a nano model's small ops gain nothing from a second, and run 50× slower with two
        # when other work keeps the cores busy (OpenMP threads wait for each other).
        ray=args.ray == "on", threads=1,
        # GPT-2's 50,257-token embedding would be 90% of nano's parameters and most of its time on a CPU.
        model={"vocab_size": 2048, "eot_token": 2047},
    )


# --- comparisons -------------------------------------------------------------------------------------

def _as_tensors(value) -> dict:
    return value if isinstance(value, dict) else {"": value}


def _squared_sums(reference, value) -> dict[str, tuple[float, float]]:
    """Per key: (‖value − reference‖², ‖reference‖²); inf where `value` lacks a tensor the reference has."""
    if isinstance(reference, (int, float)):
        reference, value = torch.tensor(float(reference)), torch.tensor(float(value))
    values = _as_tensors(value)
    sums = {}
    for key, ref in _as_tensors(reference).items():
        got = values.get(key)
        if ref is None:
            continue
        if got is None or got.shape != ref.shape:
            sums[key] = (math.inf, 1.0)
            continue
        ref32 = ref.detach().float()
        diff = torch.linalg.vector_norm(got.detach().to(ref.device).float() - ref32)
        sums[key] = (float(diff) ** 2, float(torch.linalg.vector_norm(ref32)) ** 2)
    return sums


def _ratio(diff: float, norm: float) -> float:
    if not math.isfinite(diff):
        return math.inf
    if norm == 0:
        return 0.0 if diff == 0 else math.inf
    return math.sqrt(diff / norm)


def relative_error(reference, value) -> float:
    """‖value − reference‖ / ‖reference‖ over a tensor, a number or a dict of them; a key missing from
    `value`, a None where the reference has a tensor, a shape mismatch or a non-finite result is inf."""
    sums = _squared_sums(reference, value).values()
    return _ratio(sum(d for d, _ in sums), sum(n for _, n in sums))


def update_error(reference: dict, value: dict, initial: dict) -> float:
    """‖value − reference‖ / ‖reference − initial‖: how much of the update two optimizers disagree on."""
    steps = {k: reference[k].detach().float().cpu() - initial[k].float().cpu() for k in reference}
    errors = {k: value[k].detach().float().cpu() - initial[k].float().cpu() for k in reference if k in value}
    return relative_error(steps, errors)


def gradient_errors(reference: dict, value: dict) -> tuple[float, str, float]:
    """All gradients' relative error together, and the parameter whose gradient is furthest off, with its own."""
    sums = _squared_sums(reference, value)
    worst = max(sums, key=lambda k: _ratio(*sums[k]))
    total = _ratio(sum(d for d, _ in sums.values()), sum(n for _, n in sums.values()))
    return total, worst, _ratio(*sums[worst])


def compare(error: float, tolerance: float) -> dict:
    return {"error": error, "tolerance": tolerance, "passed": bool(math.isfinite(error) and error <= tolerance)}


def expect(value, expected) -> dict:
    return {"value": value, "expected": expected, "passed": value == expected}


def check(name: str, comparisons: dict, **info) -> dict:
    """One correctness check: passed when every comparison passed."""
    passed = bool(comparisons) and all(c["passed"] for c in comparisons.values())
    return {"name": name, "passed": passed, "comparisons": comparisons, **info}


def errored_check(name: str, exc: BaseException) -> dict:
    return {"name": name, "passed": False, **error_info(exc)}


def skipped_check(name: str, reason: str = "section time budget spent") -> dict:
    return {"name": name, "skipped": reason}


def run_check(name: str, fn: Callable[[], dict]) -> dict:
    """fn's check, or a failed one holding the error: one check that raises leaves the others running."""
    try:
        result = fn()
    except Exception as exc:  # recorded in the JSON, never swallowed
        result = errored_check(name, exc)
    log("   " + describe_check(result))
    return result


def describe_check(result: dict) -> str:
    if "skipped" in result:
        return f"{result['name']}: skipped ({result['skipped']})"
    if "error" in result:
        return f"{result['name']}: ERROR {result['error']}"
    parts = [f"{what} {c['error']:.1e} ≤ {c['tolerance']:.0e}" if "error" in c else f"{what} {c['value']}"
             for what, c in result["comparisons"].items()]
    return f"{result['name']}: {'passed' if result['passed'] else 'FAILED'} ({', '.join(parts)})"


def error_info(exc: BaseException) -> dict:
    return {"error": f"{type(exc).__name__}: {exc}"[:2000],
            "traceback": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))[-8000:]}


# --- models, passes and engines ----------------------------------------------------------------------

class Pass(NamedTuple):
    """One forward and backward pass: fp32 logits, the loss and fp32 parameter gradients."""

    logits: torch.Tensor
    loss: torch.Tensor
    grads: dict


def build_model(s: Settings, variant: str, seed: int = 0) -> torch.nn.Module:
    from gptray.config import ModelConfig
    from gptray.model import GPT

    torch.manual_seed(seed)
    with torch.device(s.device):  # initialized where it runs: a GPT-2 built on the CPU takes seconds
        return GPT(ModelConfig(preset=s.preset, **{**s.model, **variants(s.window)[variant]}).resolved())


def token_batch(model_config, batch: int, seq_len: int, device: torch.device, seed: int = 0):
    """(x, y) of random tokens with two end-of-text tokens in each row, at other places in each, so that
    the document mask has documents to keep apart."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, model_config.vocab_size, (batch, seq_len + 1), generator=generator)
    tokens[tokens == model_config.eot_token] = 0
    for row in range(batch):
        tokens[row, seq_len // 3 + row] = tokens[row, 2 * seq_len // 3 - row] = model_config.eot_token
    return tokens[:, :-1].to(device), tokens[:, 1:].to(device)


def forward_backward(model: torch.nn.Module, x, y, device: torch.device, precision: str,
                     forward: Callable | None = None) -> Pass:
    """`forward` (default: the model itself, e.g. a compiled wrapper) under gptray's autocast; gradients of `model`."""
    from gptray.core.devices import autocast

    scale = FP16_LOSS_SCALE if precision == "fp16" else 1.0
    model.zero_grad(set_to_none=True)
    with autocast(device, precision):
        logits, loss = (model if forward is None else forward)(x, y)
    (loss * scale).backward()
    grads = {n: None if p.grad is None else p.grad.detach().float() / scale for n, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    return Pass(logits.detach().float(), loss.detach().float(), grads)


@contextlib.contextmanager
def full_fp32():
    """True fp32 matmuls for a reference (no TF32), whatever the process had set."""
    previous = torch.get_float32_matmul_precision()
    torch.set_float32_matmul_precision("highest")
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(previous)


def reference_pass(model, x, y, device) -> Pass:
    with full_fp32():
        return forward_backward(model, x, y, device, "fp32")


def compare_passes(name: str, reference: Pass, got: Pass, tolerance: dict, extra: dict | None = None,
                   **info) -> dict:
    """`got` against `reference`: logits, loss, all gradients together and the worst parameter's alone."""
    grads, worst_name, worst = gradient_errors(reference.grads, got.grads)
    return check(name, {
        "logits": compare(relative_error(reference.logits, got.logits), tolerance["logits"]),
        "loss": compare(relative_error(reference.loss, got.loss), tolerance["loss"]),
        "grads": compare(grads, tolerance["grads"]),
        "worst_param": {**compare(worst, tolerance["worst_param"]), "param": worst_name},
        **(extra or {}),
    }, **info)


def engine_config(s: Settings, preset: str, precision: str, micro: int, batch: int, compile: bool = False,
                  extra: dict | None = None):
    """A resolved run config for TrainingEngine (given as settings, not overrides: those are parsed as YAML)."""
    from gptray.config import load_config

    settings = {
        "model.preset": preset, "train.seq_len": s.seq_len, "train.precision": precision, "train.compile": compile,
        "train.micro_batch_size": micro, "train.batch_size": batch, "schedule.warmup_steps": 1,
        "train.max_steps": 1000, "ray.num_workers": 1, "ray.use_gpu": s.device.type == "cuda",
        "tracking.enabled": False, **{f"model.{k}": v for k, v in s.model.items()}, **(extra or {}),
    }
    return load_config(None, settings=settings)


def random_tokens(vocab_size: int, count: int = 200_000, seed: int = 0) -> np.ndarray:
    tokens = np.random.default_rng(seed).integers(0, vocab_size, count, dtype=np.int64)
    return tokens.astype(np.uint16 if vocab_size <= 2**16 else np.uint32)


def make_engine(config, device: torch.device, tokens: np.ndarray):
    from gptray.train.engine import TrainingEngine

    return TrainingEngine(config, device, rank=0, world_size=1, train_data=tokens, val_tokens=tokens[:0])


def module_state(module: torch.nn.Module) -> dict:
    return {k: v.detach().clone().cpu() for k, v in module.state_dict().items()}


def free_memory(device: torch.device) -> None:
    """Drop what the last run left: compiled graphs (they hold their models, and count recompiles toward
    dynamo's limit, past which it runs eager), Python garbage, the CUDA cache."""
    if "torch._dynamo" in sys.modules:
        torch._dynamo.reset()
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Skip(Exception):
    """A section that cannot run here; its message says why."""


class Budget:
    def __init__(self, seconds: float):
        self.end = time.monotonic() + seconds

    def left(self) -> float:
        return self.end - time.monotonic()

    def spent(self) -> bool:
        return self.left() <= 0


# --- sections ----------------------------------------------------------------------------------------

def environment_section(s: Settings, budget: Budget, shared: dict) -> dict:
    from gptray.train.device_defaults import auto_compile, auto_precision

    info = {"python": sys.version.split()[0], "platform": platform.platform(), "torch": torch.__version__,
            "numpy": np.__version__, "cuda_runtime": torch.version.cuda, "cpu_count": os.cpu_count(),
            "device": str(s.device), "packages": {d: _version(d) for d in
                                                  ("ray", "PyYAML", "pyarrow", "mlflow", "triton", "tiktoken")},
            "gptray": {"source_sha256": _source_digest(), "git_commit": _git_commit()}}
    if s.device.type == "cuda":
        props = torch.cuda.get_device_properties(s.device)
        info.update(gpu=props.name, gpus=torch.cuda.device_count(), capability=f"{props.major}.{props.minor}",
                    memory_gib=round(props.total_memory / 2**30, 1), cudnn=torch.backends.cudnn.version(),
                    bf16_supported=torch.cuda.is_bf16_supported())
        with contextlib.suppress(Exception):  # a tuple in recent torch, an int in older ones
            nccl = torch.cuda.nccl.version()
            info["nccl"] = ".".join(map(str, nccl)) if isinstance(nccl, tuple) else str(nccl)
    # What train.precision=auto and train.compile=auto (the defaults) resolve to here: the throughput section's
    # bf16 + torch.compile are the defaults on a GPU with bf16.
    info["auto_defaults"] = {"train.precision": auto_precision(s.device), "train.compile": auto_compile(s.device)}
    where = f"{info['gpu']} ({info['memory_gib']} GiB)" if "gpu" in info else f"CPU ({info['cpu_count']} cores)"
    ray = info["packages"]["ray"]
    info["summary"] = f"torch {torch.__version__} on {where}; Ray {ray or 'absent'}"
    return info


def _version(distribution: str) -> str | None:
    try:
        return importlib.metadata.version(distribution)
    except importlib.metadata.PackageNotFoundError:
        return None


def _source_digest() -> str:
    """Which gptray this ran, where the upload has no .git: a hash of its sources."""
    digest = hashlib.sha256()
    for path in sorted((REPO / "gptray").rglob("*.py")):
        digest.update(str(path.relative_to(REPO)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def _git_commit() -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    if done.returncode != 0:
        return None
    return done.stdout.strip() or None


def matmul_tflops(n: int, device: torch.device, min_seconds: float = 0.2) -> float:
    """TFLOP/s of an n × n bf16 matmul, timed after a warm-up."""
    a = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    b = torch.randn(n, n, device=device, dtype=torch.bfloat16)
    out = torch.empty_like(a)
    for _ in range(3):
        torch.matmul(a, b, out=out)
    synchronize(device)
    iterations, start = 0, time.perf_counter()
    while True:
        for _ in range(5):
            torch.matmul(a, b, out=out)
        iterations += 5
        synchronize(device)
        elapsed = time.perf_counter() - start
        if elapsed >= min_seconds:
            return 2 * n**3 * iterations / elapsed / 1e12


def matmul_peak_section(s: Settings, budget: Budget, shared: dict) -> dict:
    sizes = {}
    for n in s.matmul_sizes:
        if budget.spent():
            break
        sizes[str(n)] = matmul_tflops(n, s.device)
        log(f"   bf16 matmul n={n}: {sizes[str(n)]:.1f} TFLOP/s")
    best = max(sizes, key=sizes.get)
    shared["peak_tflops"] = sizes[best]
    return {"tflops": sizes[best], "best_n": int(best), "by_size": sizes, "datasheet_tflops": DATASHEET_TFLOPS,
            "summary": f"{sizes[best]:.1f} TFLOP/s bf16 (n={best}); datasheet {DATASHEET_TFLOPS:.0f}"}


def precision_section(s: Settings, budget: Budget, shared: dict) -> dict:
    checks = []
    for variant in variants(s.window):
        if budget.spent():
            checks += [skipped_check(f"{variant} {precision}") for precision in PRECISIONS]
            continue
        checks += variant_precision_checks(s, variant)
        free_memory(s.device)
    return {"checks": checks, "tolerances": {p: TOLERANCES[p] for p in PRECISIONS}}


def variant_precision_checks(s: Settings, variant: str) -> list[dict]:
    """bf16 and fp16 autocast passes of one variant against its fp32 pass, on the same weights and batch."""
    try:
        model = build_model(s, variant)
        x, y = token_batch(model.config, s.batch, s.seq_len, s.device)
        reference = reference_pass(model, x, y, s.device)
    except Exception as exc:
        log(f"   {variant}: ERROR {exc}")
        return [errored_check(f"{variant} {precision}", exc) for precision in PRECISIONS]
    return [run_check(f"{variant} {precision}", lambda p=precision: compare_passes(
        f"{variant} {p}", reference, forward_backward(model, x, y, s.device, p), TOLERANCES[p]))
        for precision in PRECISIONS]


def attention_ops(fn: Callable[[], object]) -> list[str]:
    """The scaled-dot-product-attention ops fn ran (their names say which SDPA kernel: flash, efficient, …)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:  # op names need no CUPTI
        fn()
    return sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key and e.key.startswith("aten::_")})


def flash_section(s: Settings, budget: Budget, shared: dict) -> dict:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from gptray.core.devices import autocast

    model = build_model(s, "default")
    x, y = token_batch(model.config, s.batch, s.seq_len, s.device)
    reference = reference_pass(model, x, y, s.device)
    default_ops = attention_ops(lambda: forward_backward(model, x, y, s.device, "bf16"))

    def causal_under_flash() -> dict:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            got = forward_backward(model, x, y, s.device, "bf16")
            ops = attention_ops(lambda: forward_backward(model, x, y, s.device, "bf16"))
        return compare_passes("causal attention under FLASH_ATTENTION", reference, got, TOLERANCES["bf16"],
                              extra={"flash_op": expect(any("flash" in op for op in ops), True)}, ops=ops)

    def masked_refused() -> dict:
        masked = build_model(s, "document_mask")
        message = None
        try:
            with sdpa_kernel([SDPBackend.FLASH_ATTENTION]), autocast(s.device, "bf16"):
                masked(x, y)
        except RuntimeError as exc:  # "No available kernel": flash takes no mask
            message = str(exc)[:300]
        return check("a document-masked model is refused under FLASH_ATTENTION (the restriction is real)",
                     {"refused": expect(message is not None, True)}, message=message)

    checks = [run_check("causal attention under FLASH_ATTENTION", causal_under_flash),
              run_check("masked model refused under FLASH_ATTENTION", masked_refused)]
    return {"checks": checks, "default_attention_ops": default_ops}


def fused_adamw_section(s: Settings, budget: Budget, shared: dict) -> dict:
    from gptray.train.optim import build_optimizers

    config = engine_config(s, s.preset, "fp32", micro=s.batch, batch=s.batch)
    model = build_model(s, "default")
    x, y = token_batch(model.config, s.batch, s.seq_len, s.device)
    grads = reference_pass(model, x, y, s.device).grads
    twin = copy.deepcopy(model)
    engine_optimizer = build_optimizers(model, config.optimizer, s.device)[0]  # the engine's AdamW groups, settings
    engine_fused = bool(engine_optimizer.defaults.get("fused"))
    twin_of = dict(zip(map(id, model.parameters()), twin.parameters()))

    def adamw(params_of: Callable, **implementation) -> torch.optim.AdamW:
        groups = [{"params": [params_of(p) for p in g["params"]], "weight_decay": g["weight_decay"]}
                  for g in engine_optimizer.param_groups]
        d = engine_optimizer.defaults
        return torch.optim.AdamW(groups, lr=d["lr"], betas=d["betas"], eps=d["eps"], **implementation)

    initial = {n: p.detach().clone() for n, p in model.named_parameters()}
    fused, unfused = adamw(lambda p: p, fused=True), adamw(lambda p: twin_of[id(p)], foreach=False, fused=False)
    for step in range(5):  # the same gradients, scaled a little differently each step
        for (name, p), q in zip(model.named_parameters(), twin.parameters()):
            p.grad, q.grad = grads[name] * (1 + 0.1 * step), grads[name] * (1 + 0.1 * step)
        fused.step()
        unfused.step()
    error = update_error(dict(twin.named_parameters()), dict(model.named_parameters()), initial)
    checks = [run_check("fused AdamW = unfused after 5 steps", lambda: check(
        "fused AdamW = unfused after 5 steps", {"params": compare(error, TOLERANCES["fused_adamw"]["params"])}))]
    if s.device.type == "cuda":
        checks.append(run_check("the engine's AdamW is fused on CUDA", lambda: check(
            "the engine's AdamW is fused on CUDA", {"fused": expect(engine_fused, True)})))
    return {"checks": checks, "engine_optimizer_fused": engine_fused}


def save_like_the_loop(engine, config, directory: str, step: int) -> str:
    """The engine's whole state written as the training loop writes a checkpoint; how it was written."""
    from gptray.checkpoint.files import TrainingState, save_checkpoint

    model_state, optimizer_state, scaler_state = engine.full_state()
    state = TrainingState(step=step, tokens_seen=step * engine.tokens_per_step,
                          model=dataclasses.asdict(config.model), world_size=1)
    save_checkpoint(directory, model_state, optimizer_state, state, config, scaler_state)
    return "save_checkpoint"


def checkpoint_round_trip(s: Settings, precision: str) -> dict:
    from gptray.checkpoint.files import load_tensors, optional_tensors

    config = engine_config(s, s.preset, precision, micro=2, batch=4)
    tokens = random_tokens(config.model.vocab_size)
    first = make_engine(config, s.device, tokens)
    for step in range(2):
        first.train_step(step)
    with tempfile.TemporaryDirectory(prefix="gpu-check-ckpt-") as directory:
        saved_with = save_like_the_loop(first, config, directory, step=2)
        expected = [first.train_step(step).loss.item() for step in (2, 3)]
        del first
        resumed = make_engine(config, s.device, tokens)
        saved = load_tensors(directory, "model.pt")
        moved = relative_error(saved, module_state(resumed.module))  # > 0: loading is what makes them equal
        resumed.load_full_state(load_tensors(directory, "model.pt"), load_tensors(directory, "optimizer.pt"))
        resumed.load_scaler(optional_tensors(directory, "scaler.pt"))
        loaded = relative_error(saved, module_state(resumed.module))
        got = [resumed.train_step(step).loss.item() for step in (2, 3)]
    tolerance = TOLERANCES["checkpoint"]
    return check(f"{precision}: resumed at step 2 = uninterrupted", {
        "weights": compare(loaded, tolerance["weights"]),
        "loss_step_2": compare(relative_error(expected[0], got[0]), tolerance["loss"]),
        "loss_step_3": compare(relative_error(expected[1], got[1]), tolerance["loss"]),
        "saved_state_differs_from_init": expect(moved > 0, True),
    }, losses={"uninterrupted": expected, "resumed": got}, saved_with=saved_with)


def checkpoint_section(s: Settings, budget: Budget, shared: dict) -> dict:
    checks = []
    for precision in PRECISIONS:
        name = f"{precision}: resumed at step 2 = uninterrupted"
        if budget.spent():
            checks.append(skipped_check(name))
            continue
        checks.append(run_check(name, lambda p=precision: checkpoint_round_trip(s, p)))
        free_memory(s.device)
    return {"checks": checks}


@contextlib.contextmanager
def single_process_group(device: torch.device):
    """A torch.distributed group of this process alone: what FSDP2 needs to shard over one GPU."""
    import torch.distributed as dist

    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    with tempfile.TemporaryDirectory(prefix="gpu-check-pg-") as directory:  # a file store: no port to pick
        dist.init_process_group(backend, init_method=f"file://{directory}/store", rank=0, world_size=1)
        try:
            yield backend
        finally:
            dist.destroy_process_group()


def fsdp_section(s: Settings, budget: Budget, shared: dict) -> dict:
    with single_process_group(s.device) as backend:
        # Two micro-batches per step: the FSDP engine also skips the gradient sync of the first.
        plain_config = engine_config(s, s.preset, "bf16", micro=2, batch=4)
        fsdp_config = engine_config(s, s.preset, "bf16", micro=2, batch=4, extra={"train.parallelism": "fsdp"})
        tokens = random_tokens(plain_config.model.vocab_size)
        sharded = make_engine(fsdp_config, s.device, tokens)
        same = f"FSDP2 over one rank ({backend}) = plain engine, 3 steps"
        resume = "FSDP2 sharded checkpoint (DCP) resumed at step 3 = uninterrupted"
        checks = [run_check(same, lambda: fsdp_matches_plain(same, s, plain_config, sharded, tokens))]
        if budget.spent():
            checks.append(skipped_check(resume))
        else:
            checks.append(run_check(resume, lambda: sharded_round_trip(resume, s, fsdp_config, sharded, tokens, 3)))
    return {"checks": checks, "backend": backend}


def fsdp_matches_plain(name: str, s: Settings, plain_config, sharded, tokens: np.ndarray) -> dict:
    """Three steps of the FSDP engine against the plain one from the same initial weights and windows."""
    plain = make_engine(plain_config, s.device, tokens)
    initial = module_state(plain.module)
    losses = [(plain.train_step(step).loss.item(), sharded.train_step(step).loss.item()) for step in range(3)]
    plain_state, sharded_state = plain.full_state()[0], sharded.full_state()[0]
    tolerance = TOLERANCES["fsdp"]
    comparisons = {f"loss_step_{i}": compare(relative_error(a, b), tolerance["loss"]) for i, (a, b) in
                   enumerate(losses)}
    comparisons["params"] = compare(update_error(plain_state, sharded_state, initial), tolerance["params"])
    # DTensor parameters: fully_shard ran (a plain engine's are Parameters).
    comparisons["sharded"] = expect(type(next(sharded.module.parameters())).__name__, "DTensor")
    return check(name, comparisons, losses=losses)


def sharded_round_trip(name: str, s: Settings, config, engine, tokens: np.ndarray, step: int) -> dict:
    """The FSDP engine's state saved as the training loop saves it under FSDP (DCP, each rank its
    shard) and loaded into a fresh FSDP engine: the next two steps' losses equal the uninterrupted ones."""
    from gptray.checkpoint.sharded import save_sharded

    def weights(e) -> dict:  # whole, on CPU, copied: on CPU full_state may hand back the live tensors
        return {k: v.detach().clone() for k, v in e.full_state()[0].items()}

    with tempfile.TemporaryDirectory(prefix="gpu-check-dcp-") as directory:
        saved = weights(engine)
        save_sharded(directory, engine.sharded_state())
        expected = [engine.train_step(i).loss.item() for i in (step, step + 1)]
        resumed = make_engine(config, s.device, tokens)
        moved = relative_error(saved, weights(resumed))  # > 0: loading is what makes them equal
        resumed.load_sharded(directory)
        loaded = relative_error(saved, weights(resumed))
        got = [resumed.train_step(i).loss.item() for i in (step, step + 1)]
    tolerance = TOLERANCES["checkpoint"]
    return check(name, {
        "weights": compare(loaded, tolerance["weights"]),
        f"loss_step_{step}": compare(relative_error(expected[0], got[0]), tolerance["loss"]),
        f"loss_step_{step + 1}": compare(relative_error(expected[1], got[1]), tolerance["loss"]),
        "saved_state_differs_from_init": expect(moved > 0, True),
    }, losses={"uninterrupted": expected, "resumed": got})


def compile_section(s: Settings, budget: Budget, shared: dict) -> dict:
    model = build_model(s, "default")
    x, y = token_batch(model.config, s.compile_batch, s.seq_len, s.device)
    eager = forward_backward(model, x, y, s.device, "bf16")
    compiled = torch.compile(model, backend=s.compile_backend)
    counters = _dynamo_counters()
    start = time.perf_counter()
    got = forward_backward(model, x, y, s.device, "bf16", forward=compiled)
    synchronize(s.device)
    info = {"backend": s.compile_backend, "batch": s.compile_batch, "first_call_seconds": time.perf_counter() - start,
            **_graph_breaks(counters)}
    name = f"torch.compile ({s.compile_backend}) = eager, bf16 forward + backward"
    return {"checks": [run_check(name, lambda: compare_passes(name, eager, got, TOLERANCES["compile"], **info))]}


def _dynamo_counters():
    with contextlib.suppress(Exception):  # an internal API: its absence loses a diagnostic, not the check
        from torch._dynamo.utils import counters

        counters.clear()
        return counters
    return None


def _graph_breaks(counters) -> dict:
    if counters is None:
        return {}
    breaks = dict(counters.get("graph_break", {}))
    return {"graph_breaks": sum(breaks.values()), "graph_break_reasons": [str(r)[:200] for r in list(breaks)[:5]]}


def throughput_run(s: Settings, shared: dict, micro: int, compile: bool,
                   extra: dict | None = None) -> tuple[dict, dict]:
    """One TrainingEngine measurement (train_throughput.measure) with its MFU figures, and the run config
    it measured; out of memory is a result, not an error."""
    import train_throughput

    from gptray.train.flops import flops_per_token

    config = engine_config(s, s.throughput_preset, "bf16", micro=micro, batch=micro, compile=compile, extra=extra)
    row = {"micro_batch": micro, "compile": compile, **({"model": extra} if extra else {})}
    start = time.monotonic()
    try:
        result = train_throughput.measure(config.to_dict(), s.steps, s.warmup, s.threads)
    except torch.cuda.OutOfMemoryError as exc:
        row.update(error="out of memory", message=str(exc)[:300])
    except Exception as exc:  # a compile or kernel failure of this run: the other runs still go
        row.update(error_info(exc))
    else:
        peak = shared.get("peak_tflops")
        achieved = flops_per_token(config.model, result["parameters"], s.seq_len) * result["tokens_per_s"]
        row.update(result, mfu_engine=result["mfu"], achieved_tflops=achieved / 1e12,
                   mfu_vs_measured_peak=achieved / (peak * 1e12) if peak else None,
                   mfu_vs_989=achieved / (DATASHEET_TFLOPS * 1e12))
        del row["mfu"]  # the engine's, against its datasheet table by GPU name: kept as mfu_engine
    row["wall_seconds"] = time.monotonic() - start
    free_memory(s.device)
    log("   " + describe_run(row))
    return row, config.to_dict()


def describe_run(row: dict) -> str:
    what = f"micro-batch {row['micro_batch']}" + (f" {row['model']}" if "model" in row else "")
    if "tokens_per_s" not in row:
        return f"{what}: {row.get('error') or row.get('skipped')}"
    mfu = row["mfu_vs_measured_peak"]
    return (f"{what}: {row['tokens_per_s']:,.0f} tokens/s, {row['achieved_tflops']:.1f} TFLOP/s"
            + (f", MFU {mfu:.1%} of measured peak" if mfu else "") + f", {row['mfu_vs_989']:.1%} of 989 TF"
            + f" ({row['wall_seconds']:.0f} s)")


def runs_status(rows) -> str:
    """"error" where a run raised (its traceback is in its row), "partial" where one was skipped or ran out
    of memory, else "ok"."""
    if any("traceback" in r for r in rows):
        return "error"
    return "ok" if all("tokens_per_s" in r for r in rows) else "partial"


def throughput_section(s: Settings, budget: Budget, shared: dict) -> dict:
    runs, configs = [], {}
    for micro in s.micro_batches:
        if budget.spent():
            runs.append({"micro_batch": micro, "skipped": "section time budget spent"})
            continue
        row, configs[micro] = throughput_run(s, shared, micro, s.throughput_compile)
        runs.append(row)
    measured = [r for r in runs if "tokens_per_s" in r]
    if not measured:
        raise RuntimeError("no micro-batch ran: " + "; ".join(describe_run(r) for r in runs))
    best = max(measured, key=lambda r: r["tokens_per_s"])
    shared["throughput_best"], shared["throughput_best_config"] = best, configs[best["micro_batch"]]
    mfu = best["mfu_vs_measured_peak"]
    return {"status": runs_status(runs), "runs": runs, "best": best,
            "preset": s.throughput_preset, "seq_len": s.seq_len, "precision": "bf16",
            "summary": f"mb {best['micro_batch']}: {best['tokens_per_s']:,.0f} tok/s, MFU "
                       + (f"{mfu:.1%} (measured peak), " if mfu else "") + f"{best['mfu_vs_989']:.1%} (989 TF)"}


def ray_throughput_section(s: Settings, budget: Budget, shared: dict) -> dict:
    if not s.ray:
        # Under --cpu-smoke: a local Ray start alone takes ~30 s on 2 CPUs.
        raise Skip("not under --cpu-smoke (--ray on runs it)" if s.smoke else "--ray off")
    try:
        import ray.train.torch  # noqa: F401  (what measure_in_ray needs)
    except Exception as exc:
        raise Skip(f"Ray does not import here ({type(exc).__name__}: {exc})") from None
    plain = shared.get("throughput_best")
    if plain is None:
        raise Skip("no plain-process throughput to compare with")
    import train_throughput

    from gptray.config import ExperimentConfig
    from gptray.train.flops import flops_per_token

    config = shared["throughput_best_config"]
    result = train_throughput.measure_in_ray(config, s.steps, s.warmup, s.threads)
    model = ExperimentConfig.from_dict(config).model
    achieved = flops_per_token(model, result["parameters"], s.seq_len) * result["tokens_per_s"]
    peak = shared.get("peak_tflops")
    overhead = 1 - result["tokens_per_s"] / plain["tokens_per_s"]
    return {"micro_batch": plain["micro_batch"], "ray": result, "plain_tokens_per_s": plain["tokens_per_s"],
            "ray_overhead": overhead, "mfu_vs_989": achieved / (DATASHEET_TFLOPS * 1e12),
            "mfu_vs_measured_peak": achieved / (peak * 1e12) if peak else None,
            "summary": f"overhead {overhead:+.1%} ({result['tokens_per_s']:,.0f} vs "
                       f"{plain['tokens_per_s']:,.0f} tok/s plain)"}


def memory_run(s: Settings, preset: str, checkpointing: bool) -> dict:
    """Peak CUDA memory of training steps (one warm-up, two timed); None off CUDA."""
    import train_throughput

    config = engine_config(s, preset, "bf16", micro=s.memory_micro_batch, batch=s.memory_micro_batch,
                           extra={"train.activation_checkpointing": checkpointing})
    row = {"preset": preset, "activation_checkpointing": checkpointing, "micro_batch": s.memory_micro_batch,
           "compile": False}
    if s.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(s.device)
    try:
        result = train_throughput.measure(config.to_dict(), 2, 1, s.threads)
    except torch.cuda.OutOfMemoryError as exc:
        row.update(error="out of memory", message=str(exc)[:300])
    except Exception as exc:  # this run's failure: the other runs still go
        row.update(error_info(exc))
    else:
        row.update(parameters=result["parameters"], tokens_per_s=result["tokens_per_s"])
    if s.device.type == "cuda":
        row.update(peak_allocated_gib=torch.cuda.max_memory_allocated(s.device) / 2**30,
                   peak_reserved_gib=torch.cuda.max_memory_reserved(s.device) / 2**30)
    else:
        row.update(peak_allocated_gib=None, peak_reserved_gib=None)
    free_memory(s.device)
    peak = row["peak_allocated_gib"]
    log(f"   {preset}, activation checkpointing {'on' if checkpointing else 'off'}: "
        + (row.get("error") or (f"peak {peak:.1f} GiB, " if peak is not None else "")
           + f"{row['tokens_per_s']:,.0f} tok/s"))
    return row


def memory_section(s: Settings, budget: Budget, shared: dict) -> dict:
    runs = []
    for preset in s.memory_presets:
        for checkpointing in (False, True):
            if budget.spent():
                runs.append({"preset": preset, "activation_checkpointing": checkpointing,
                             "skipped": "section time budget spent"})
                continue
            runs.append(memory_run(s, preset, checkpointing))
    done = [r for r in runs if "tokens_per_s" in r]
    if not done:
        raise RuntimeError("no memory run finished: " + "; ".join(str(r.get("error") or r.get("skipped"))
                                                                  for r in runs))
    peaks = {(r["preset"], r["activation_checkpointing"]): r["peak_allocated_gib"] for r in done}
    parts = [f"{p} {_gib(peaks.get((p, False)))}→{_gib(peaks.get((p, True)))} GiB" for p in s.memory_presets]
    return {"status": runs_status(runs), "runs": runs, "precision": "bf16",
            "summary": ", ".join(parts) + " (activation checkpointing off→on)"}


def _gib(value: float | None) -> str:
    return "?" if value is None else f"{value:.1f}"


def mask_cost_section(s: Settings, budget: Budget, shared: dict) -> dict:
    best = shared.get("throughput_best")
    # Compiled at the best micro-batch where two more compiled runs fit the time left; else all three eager
    # (so the ratio is fair) at the smallest, which eager fits in memory (GPT-2 at 64 × 1024 may not).
    compiled = bool(best and best["compile"] and budget.left() >= 2.2 * best["wall_seconds"])
    micro = best["micro_batch"] if compiled else min(s.micro_batches)
    causal = best if compiled else throughput_run(s, shared, micro, compile=False)[0]
    if "tokens_per_s" not in causal:
        raise RuntimeError(f"the causal baseline did not run: {describe_run(causal)}")
    masks = {"document_mask": {"model.document_mask": True},
             "sliding_window": {"model.attention": "sliding_window", "model.attention_window": s.window}}
    runs, ratios = {"causal": causal}, {}
    for name, extra in masks.items():
        if budget.spent():
            runs[name] = {"micro_batch": micro, "skipped": "section time budget spent"}
            continue
        runs[name] = throughput_run(s, shared, micro, compiled, extra)[0]
        if "tokens_per_s" in runs[name]:
            ratios[name] = runs[name]["tokens_per_s"] / causal["tokens_per_s"]
    summary = ", ".join(f"{name.replace('_', ' ')} {ratio:.2f}×" for name, ratio in ratios.items())
    return {"status": runs_status(runs.values()), "micro_batch": micro, "compile": compiled,
            "window": s.window, "ratios_vs_causal": ratios, "runs": runs,
            "summary": f"{summary or 'none ran'} of causal tok/s ({'compiled' if compiled else 'eager'})"}


def flex_matches_dense(s: Settings, seq_len: int) -> dict:
    """One fp32 forward + backward of the document-masked `tiny` model, dense vs flex, from the same
    weights and tokens: the relative error of the loss and of all gradients."""
    import attention_masks

    from gptray.config import ModelConfig
    from gptray.model import GPT

    passes = {}
    for impl in ("sdpa", "flex"):
        config = ModelConfig(preset="tiny", document_mask=True, attention_impl=impl, block_size=seq_len).resolved()
        torch.manual_seed(0)
        model = GPT(config).to(s.device)
        tokens = attention_masks.document_tokens(config.vocab_size, config.eot_token, 2, seq_len).to(s.device)
        with full_fp32():
            _, loss = model(tokens[:, :-1], tokens[:, 1:])
            loss.backward()
        passes[impl] = (loss.detach(), {n: p.grad.detach().clone() for n, p in model.named_parameters()})
        del model
    total, worst, worst_error = gradient_errors(passes["sdpa"][1], passes["flex"][1])
    return {"loss": relative_error(passes["sdpa"][0], passes["flex"][0]), "gradients": total,
            "worst_parameter": worst, "worst_parameter_error": worst_error}


def mask_flex_section(s: Settings, budget: Budget, shared: dict) -> dict:
    import attention_masks

    try:
        agreement = flex_matches_dense(s, 1024)
    except Exception as exc:  # recorded; the timings still run
        agreement = error_info(exc)
    log(f"   flex vs dense at T=1024, fp32: {agreement}")
    runs = []
    for seq_len in (1024, 2048):
        for impl in ("sdpa", "flex"):
            if budget.spent():
                runs.append({"seq_len": seq_len, "impl": impl, "skipped": "section time budget spent"})
                continue
            try:
                row = attention_masks.measure("tiny", seq_len, impl, "train", batch=8, steps=5, warmup=2,
                                              device=s.device)
            except torch.cuda.OutOfMemoryError as exc:
                row = {"seq_len": seq_len, "impl": impl, "error": "out of memory", "message": str(exc)[:300]}
            except Exception as exc:  # this run's failure: the others still go
                row = {"seq_len": seq_len, "impl": impl, **error_info(exc)}
            runs.append(row)
            free_memory(s.device)
            log(f"   T={seq_len} {impl}: " + (row.get("error") or row.get("skipped") or
                                             f"median {row['median_s'] * 1e3:.1f} ms, peak {row['peak_mib']:.0f} MiB"))
    done = {(r["seq_len"], r["impl"]): r for r in runs if "median_s" in r}
    if not done:
        raise RuntimeError("no mask_flex run finished: " + "; ".join(str(r.get("error") or r.get("skipped"))
                                                                     for r in runs))
    parts = [f"T={t} flex {done[(t, 'flex')]['median_s'] / done[(t, 'sdpa')]['median_s']:.2f}× time, "
             f"{done[(t, 'flex')]['peak_mib'] / max(done[(t, 'sdpa')]['peak_mib'], 1e-9):.2f}× memory"
             for t in (1024, 2048) if (t, "flex") in done and (t, "sdpa") in done]
    agrees = f"loss error {agreement['loss']:.1e}, gradients {agreement['gradients']:.1e}" \
        if "loss" in agreement else f"agreement not measured ({agreement.get('error')})"
    return {"status": runs_status(runs), "runs": runs, "preset": "tiny", "flex_vs_dense_fp32": agreement,
            "summary": "; ".join(parts) + f" of dense; {agrees}"}


@dataclass(frozen=True)
class Section:
    name: str
    kind: str  # "check" (passes or fails), "measure" or "info"
    run: Callable[[Settings, Budget, dict], dict]
    seconds: float  # time budget on the GPU
    needs_cuda: bool = False


SECTIONS = (
    Section("environment", "info", environment_section, 30),
    Section("matmul_peak", "measure", matmul_peak_section, 30),
    Section("precision", "check", precision_section, 90),
    Section("flash", "check", flash_section, 30, needs_cuda=True),
    Section("fused_adamw", "check", fused_adamw_section, 30),
    Section("checkpoint", "check", checkpoint_section, 60),
    Section("fsdp", "check", fsdp_section, 60),
    Section("compile", "check", compile_section, 120),
    Section("throughput", "measure", throughput_section, 210),
    Section("ray_throughput", "measure", ray_throughput_section, 150),
    Section("memory", "measure", memory_section, 90, needs_cuda=True),
    Section("mask_cost", "measure", mask_cost_section, 150),
    Section("mask_flex", "measure", mask_flex_section, 120, needs_cuda=True),
)
SECTION_NAMES = tuple(section.name for section in SECTIONS)


# --- running, reporting ------------------------------------------------------------------------------

_START = time.monotonic()


def log(message: str) -> None:
    print(f"[{time.monotonic() - _START:6.1f}s] {message}", flush=True)


def _jsonable(value):
    """JSON without NaN or Infinity (which strict readers refuse): non-finite floats become strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


class Report:
    """The results so far, rewritten to `path` after every section: a run cut short keeps what it measured."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.lock = threading.RLock()
        self.data = {"meta": meta, "sections": {name: {"status": "pending"} for name in SECTION_NAMES}}
        self.write()

    def set(self, name: str, result: dict) -> None:
        with self.lock:
            self.data["sections"][name] = result
            self.write()

    def write(self) -> None:
        with self.lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_name(self.path.name + ".tmp")
            tmp.write_text(json.dumps(_jsonable(self.data), indent=2))
            os.replace(tmp, self.path)


def section_status(section: Section, result: dict) -> str:
    if section.kind != "check":
        return result.get("status", "ok")
    ran = [c for c in result["checks"] if "skipped" not in c]
    if not ran:
        return "skipped: section time budget spent"
    if not all(c["passed"] for c in ran):
        return "failed"
    return "passed" if len(ran) == len(result["checks"]) else "partial"


def check_summary(result: dict) -> str:
    checks = result.get("checks", [])
    ran = [c for c in checks if "skipped" not in c]
    failed = [c["name"] for c in ran if not c["passed"]]
    text = f"{len(ran) - len(failed)}/{len(checks)} passed"
    return text + (f"; failed: {', '.join(failed[:3])}" + (" …" if len(failed) > 3 else "") if failed else "")


def run_section(section: Section, s: Settings, report: Report, deadline: Budget, shared: dict,
                selected: set[str]) -> None:
    skip = None
    if section.name not in selected:
        skip = "not selected (--sections)"
    elif s.no_device and section.name != "environment":
        skip = s.no_device
    elif section.needs_cuda and s.device.type != "cuda":
        skip = "needs CUDA"
    elif deadline.left() < MIN_SECTION_S:
        skip = "the run's time limit (--minutes) is spent"
    if skip:
        report.set(section.name, {"status": f"skipped: {skip}"})
        log(f"{section.name}: skipped: {skip}")
        return
    with report.lock:
        report.data["meta"]["running"] = section.name
    log(f"{section.name} ...")
    budget = Budget(min(section.seconds, deadline.left()))
    start = time.monotonic()
    try:
        result = section.run(s, budget, shared)
        result["status"] = section_status(section, result)
        if section.kind == "check":
            result["summary"] = check_summary(result)
    except Skip as why:
        result = {"status": f"skipped: {why}"}
    except Exception as exc:  # recorded with its traceback; the next section still runs
        result = {"status": "error", **error_info(exc)}
        traceback.print_exc()
        sys.stderr.flush()
    try:
        free_memory(s.device)
    except Exception as exc:  # e.g. a sticky CUDA error from this section: the later ones will say so too
        result["cleanup_error"] = f"{type(exc).__name__}: {exc}"
    result["seconds"] = round(time.monotonic() - start, 1)
    with report.lock:
        report.data["meta"]["running"] = None
        report.set(section.name, result)
    log(f"{section.name}: {result['status']} in {result['seconds']:.0f} s"
        + (f": {result['summary']}" if result.get("summary") else "")
        + (f": {result['error']}" if result.get("error") else ""))


def exit_status(data: dict) -> int:
    """0 when every check that ran passed and no section raised; 1 otherwise (see --help)."""
    statuses = [r.get("status", "") for r in data["sections"].values()]
    stopped = data["meta"].get("watchdog") or data["meta"].get("no_device")
    return 1 if stopped or any(status in ("failed", "error") for status in statuses) else 0


def results_table(data: dict) -> str:
    rows = [(name, _clip(r.get("status", ""), 44), f"{r['seconds']:.0f}" if "seconds" in r else "",
             _clip(r.get("summary") or r.get("error", ""), 100)) for name, r in data["sections"].items()]
    header = ("section", "status", "s", "result")
    try:
        from gptray.core.tables import text_table

        return text_table(header, rows, align="llr")
    except Exception:  # the table must print even where gptray does not import
        return "\n".join("  ".join(map(str, row)) for row in (header, *rows))


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def finish(report: Report) -> int:
    with report.lock:
        meta = report.data["meta"]
        meta["finished_utc"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
        meta["total_seconds"] = round(time.monotonic() - _START, 1)
        meta["exit_status"] = status = exit_status(report.data)
        report.write()
        print("\n" + results_table(report.data), flush=True)
        print(f"\nresults: {report.path}; exit status {status}", flush=True)
    return status


class Watchdog:
    """Stops a run that outlives its limit (a hung kernel or NCCL start, an endless compile) or is sent
    SIGTERM: marks the running section, writes the JSON, prints the table and exits 1, so that the results
    so far come back."""

    def __init__(self, report: Report, seconds: float):
        self.report, self.seconds = report, seconds
        self.timer = threading.Timer(seconds, self.stop, args=(f"still running after {seconds:.0f} s",))
        self.timer.daemon = True
        self.timer.start()
        signal.signal(signal.SIGTERM, lambda signum, frame: self.stop(f"terminated by signal {signum}"))

    def stop(self, reason: str) -> None:
        with self.report.lock:
            meta, sections = self.report.data["meta"], self.report.data["sections"]
            meta["watchdog"] = reason
            frame = sys._current_frames().get(threading.main_thread().ident)
            running = meta.get("running")
            if running:
                sections[running] = {"status": "error", "error": f"stopped: {reason}",
                                     "traceback": "".join(traceback.format_stack(frame)) if frame else ""}
            for name, result in sections.items():
                if result.get("status") == "pending":
                    sections[name] = {"status": f"skipped: the run was stopped ({reason})"}
            finish(self.report)
        os._exit(1)

    def cancel(self) -> None:
        self.timer.cancel()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    tolerances = "\n".join(f"  {k:12}" + ", ".join(f"{w} {v:g}" for w, v in t.items()) for k, t in TOLERANCES.items())
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=f"Tolerances (relative errors; see TOLERANCES for why):\n{tolerances}")
    default_out = str(Path(os.environ["OUT"]) / "gpu_check.json") if os.environ.get("OUT") else "gpu_check.json"
    parser.add_argument("--out", default=default_out,
                        help="where the results JSON goes (default: $OUT/gpu_check.json where $OUT is set, "
                             "else ./gpu_check.json)")
    parser.add_argument("--cpu-smoke", "--smoke", dest="cpu_smoke", action="store_true",
                        help="run on CPU with the nano preset at T=64 (seconds); CUDA-only sections are skipped "
                             "(--smoke, every benchmark's check that it runs, is the same)")
    parser.add_argument("--minutes", type=float, default=8.0,
                        help="time limit of the whole run (default 8); sections left when it is spent are "
                             "skipped, and a watchdog stops a run still going 60 s after it")
    parser.add_argument("--sections", type=_section_list, default=list(SECTION_NAMES),
                        help="comma-separated sections to run (default: all): " + ", ".join(SECTION_NAMES))
    parser.add_argument("--micro-batches", type=_int_list,
                        help="throughput micro-batches (default 16,32,64; 4,8 with --cpu-smoke)")
    parser.add_argument("--steps", type=_positive,
                        help="timed steps per throughput run (default 10; 2 with --cpu-smoke)")
    parser.add_argument("--warmup", type=_positive,
                        help="untimed steps first, compile included (default 3; 1 with --cpu-smoke)")
    parser.add_argument("--ray", choices=("auto", "on", "off"), default="auto",
                        help="the one-worker Ray Train run: auto (default) runs it on CUDA where Ray imports "
                             "and leaves it out under --cpu-smoke; on; off")
    parser.add_argument("--compile-backend",
                        help="torch.compile backend of the compile check (default inductor; aot_eager with "
                             "--cpu-smoke). The throughput runs use TrainingEngine's (inductor)")
    return parser.parse_args(argv)


def _section_list(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in SECTION_NAMES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown section(s) {', '.join(unknown)}; choose from "
                                         f"{', '.join(SECTION_NAMES)}")
    return names


def _positive(text: str) -> int:
    return _int_list(text)[0]


def _int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or min(values) <= 0:
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def main(argv: list[str] | None = None) -> int:
    sys.stdout.reconfigure(line_buffering=True)
    args = parse_args(argv)
    s = smoke_settings(args) if args.cpu_smoke else gpu_settings(args)
    torch.set_num_threads(s.threads)
    meta = {"script": "benchmarks/gpu_check.py", "issue": 21, "argv": sys.argv[1:],
            "mode": "cpu-smoke" if s.smoke else "cuda", "started_utc": datetime.now(timezone.utc).isoformat(
                timespec="seconds"), "time_limit_s": args.minutes * 60,
            "settings": {k: list(v) if isinstance(v, tuple) else str(v) if isinstance(v, torch.device) else v
                         for k, v in dataclasses.asdict(s).items()},
            "tolerances": TOLERANCES, "no_device": s.no_device, "running": None}
    report = Report(Path(args.out), meta)
    log(f"gpu_check: {meta['mode']} on {s.device}, results to {args.out}")
    watchdog = Watchdog(report, args.minutes * 60 + WATCHDOG_GRACE_S)
    deadline, shared = Budget(args.minutes * 60), {}
    for section in SECTIONS:
        run_section(section, s, report, deadline, shared, set(args.sections))
    watchdog.cancel()
    return finish(report)


if __name__ == "__main__":
    sys.exit(main())
