"""Document-masked attention, dense (SDPA with a T × T mask) vs FlexAttention block masks: step time and peak memory.

    python benchmarks/attention_masks.py [--seq-lens 256 1024] [--steps 7] [--warmup 2] [--threads 2]
    python benchmarks/attention_masks.py --smoke     # nano, T=64, one step each: seconds
    python benchmarks/attention_masks.py --compile   # every model under torch.compile (Inductor)

Each (T, implementation) runs in its own subprocess, one after the other in one invocation, so their
peak memory does not mix: the `tiny` preset with model.document_mask on, batch 8, random tokens with an
end-of-text every 64 on average. A step is a training step (forward, backward, AdamW) where the
implementation can train on the device; on CPU, torch 2.13 has no FlexAttention backward, so there the
flex row times a forward pass (no grad) and the dense rows time both, the forward pass being the
like-for-like comparison. Uncompiled, flex on CPU is torch's unfused reference; --compile runs every
row's model under torch.compile, which gives flex its generated kernel (and SDPA its fused graph),
the warm-up steps paying for the compile. Times are medians over --steps with min and max; memory is
the peak above what the process held before the timed steps (CUDA: max_memory_allocated; CPU: growth of peak RSS).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptray.config import ModelConfig  # noqa: E402
from gptray.model import GPT  # noqa: E402


def document_tokens(vocab: int, eot: int, batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(batch, seq_len + 1) random tokens, an end-of-text at each position with probability 1/64."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, vocab - 1, (batch, seq_len + 1), generator=g)
    tokens[torch.rand(batch, seq_len + 1, generator=g) < 1 / 64] = eot
    return tokens


def measure(preset: str, seq_len: int, impl: str, mode: str, batch: int, steps: int, warmup: int,
            device: torch.device, vocab: int | None = None, compile: bool = False) -> dict:
    """Median, min and max seconds of `mode` ("train": forward, backward, AdamW; "forward": no grad) and
    the peak memory above the process's before the timed steps."""
    overrides = {"preset": preset, "document_mask": True, "attention_impl": impl, "block_size": max(seq_len, 64)}
    if vocab is not None:
        overrides.update(vocab_size=vocab, eot_token=vocab - 1)
    config = ModelConfig(**overrides).resolved()
    torch.manual_seed(0)
    model = GPT(config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    run = torch.compile(model) if compile else model
    tokens = document_tokens(config.vocab_size, config.eot_token, batch, seq_len).to(device)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def step() -> None:
        if mode == "train":
            _, loss = run(x, y)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
        else:
            with torch.no_grad():
                run(x)
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = current_rss()
    seconds = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        seconds.append(time.perf_counter() - start)
    peak = (torch.cuda.max_memory_allocated(device) if device.type == "cuda" else peak_rss()) - before
    return {"seq_len": seq_len, "impl": impl, "mode": mode, "compile": compile, "batch": batch, "steps": steps,
            "median_s": statistics.median(seconds), "min_s": min(seconds), "max_s": max(seconds),
            "tokens_per_s": batch * seq_len / statistics.median(seconds), "peak_mib": max(peak, 0) / 2**20}


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def plan(device: torch.device) -> list[tuple[str, str]]:
    """(impl, mode) rows: flex trains only where torch has its backward pass (CUDA)."""
    if device.type == "cuda":
        return [("sdpa", "train"), ("flex", "train")]
    return [("sdpa", "train"), ("sdpa", "forward"), ("flex", "forward")]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seq-lens", type=int, nargs="+", default=[256, 1024])
    parser.add_argument("--steps", type=int, default=7)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--compile", action="store_true", help="torch.compile every row's model")
    parser.add_argument("--modes", nargs="+", choices=["train", "forward"], help="only these rows")
    parser.add_argument("--smoke", action="store_true", help="nano, T=64, one step each (a test runs it)")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # impl,mode,T: run one row in this process
    args = parser.parse_args(argv)
    if args.smoke:
        args.seq_lens, args.steps, args.warmup, args.batch, args.preset = [64], 1, 1, 2, "nano"
    torch.set_num_threads(args.threads)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vocab = 2048 if args.smoke else None  # nano's time would be GPT-2's 50K embedding on CPU
    if args.one:
        impl, mode, seq_len = args.one.split(",")
        try:
            row = measure(args.preset, int(seq_len), impl, mode, args.batch, args.steps, args.warmup, device,
                          vocab, args.compile)
        except Exception as exc:  # this row's failure (e.g. Inductor cannot lower it): the others still run
            row = {"seq_len": int(seq_len), "impl": impl, "mode": mode, "compile": args.compile,
                   "error": f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:300]}"}
        print(json.dumps(row))
        return 0
    rows = []
    for seq_len in args.seq_lens:
        for impl, mode in [(i, m) for i, m in plan(device) if args.modes is None or m in args.modes]:
            passed = [a for a in sys.argv[1:] if a != "--smoke"] if argv is None else list(argv)
            command = [sys.executable, __file__, *passed, "--one", f"{impl},{mode},{seq_len}"]
            if args.smoke:
                command.append("--smoke")
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                print(done.stderr[-2000:], file=sys.stderr)
                return 1
            row = json.loads(done.stdout.strip().splitlines()[-1])
            rows.append(row)
            if "error" in row:
                print(f"T={seq_len:5d} {impl:4s} {mode:7s}  {row['error']}", flush=True)
                continue
            print(f"T={seq_len:5d} {impl:4s} {mode:7s}  median {row['median_s'] * 1e3:9.1f} ms "
                  f"(min {row['min_s'] * 1e3:.1f}, max {row['max_s'] * 1e3:.1f})  "
                  f"{row['tokens_per_s']:10,.0f} tok/s  peak +{row['peak_mib']:8.1f} MiB", flush=True)
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({args.threads} threads)"
    print(json.dumps({"device": device_name, "torch": torch.__version__, "preset": args.preset,
                      "compile": args.compile, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
