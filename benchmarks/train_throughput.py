"""Training throughput: the same model and step loop in a plain process and inside a Ray Train worker.

    python benchmarks/train_throughput.py [--steps N] [--warmup N] [--threads N] [--smoke] [key=value ...]

Prints tokens/s and MFU of each, and the Ray overhead (1 − Ray tokens/s ÷ plain tokens/s). The
defaults measure the `tiny` preset in fp32 on CPU; on a GPU pass e.g. `model.preset=gpt2
train.precision=bf16 train.compile=true train.micro_batch_size=16 train.batch_size=16`. Tokens are
random (throughput does not depend on them), so no dataset is needed: the vocabulary, which a real run
takes from its dataset, is GPT-2's (50,257, padded) unless model.vocab_size says otherwise. --smoke checks
that the benchmark runs, in seconds: a one-layer model of 256 tokens, at most 2 timed steps, 1 thread, and
an already started Ray (a test's) is used as it is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gptray.config import load_config  # noqa: E402
from gptray.core.runtime import local_ray_options, ray_train_environment  # noqa: E402
from gptray.train.engine import TrainingEngine  # noqa: E402

CPU_DEFAULTS = ["model.preset=tiny", "train.batch_size=8", "train.micro_batch_size=8", "ray.num_workers=1",
                "schedule.warmup_steps=1"]
# The vocabulary a benchmark without a dataset trains: GPT-2's, which BENCHMARKS.md's numbers were measured with.
VOCAB, EOT = 50257, 50256
SMOKE = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "model.vocab_size=256",
         "train.batch_size=2", "train.micro_batch_size=2"]


def measure(config_dict: dict, steps: int, warmup: int, threads: int) -> dict:
    """Run warmup + timed steps of the training engine in this process (world size 1)."""
    from gptray.config import ExperimentConfig

    torch.set_num_threads(threads)
    config = ExperimentConfig.from_dict(config_dict)
    device = torch.device("cuda" if torch.cuda.is_available() and config.ray.use_gpu else "cpu")
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, 2_000_000, dtype=np.int64)
    tokens = tokens.astype(np.uint16 if config.model.vocab_size <= 2**16 else np.uint32)
    engine = TrainingEngine(config, device, rank=0, world_size=1, train_data=tokens, val_tokens=tokens[:0])
    for step in range(warmup):  # compile, allocator and cache warm-up
        engine.train_step(step).loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for step in range(warmup, warmup + steps):
        result = engine.train_step(step)
    result.loss.item()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - start
    tokens_per_second = steps * engine.tokens_per_step / seconds
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({threads} threads)",
        "parameters": engine.num_parameters,
        "tokens_per_step": engine.tokens_per_step,
        "step_seconds": seconds / steps,
        "tokens_per_s": tokens_per_second,
        "mfu": engine.mfu(tokens_per_second),
        "final_loss": result.loss.item(),
    }


def measure_in_ray(config_dict: dict, steps: int, warmup: int, threads: int) -> dict:
    """The same measurement inside one Ray Train worker (TorchTrainer, same resources)."""
    import ray
    from ray.train import RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    # Train V2 keeps reported metrics only with checkpoints: the worker (on this machine) writes a file.
    out = Path(tempfile.mkdtemp(prefix="gptray-bench-")) / "ray.json"

    def worker(loop_config: dict) -> None:
        result = measure(loop_config["config"], loop_config["steps"], loop_config["warmup"], loop_config["threads"])
        Path(loop_config["out"]).write_text(json.dumps(result))

    use_gpu = config_dict["ray"]["use_gpu"] and torch.cuda.is_available()
    resources = {"CPU": threads, **({"GPU": 1} if use_gpu else {})}
    for name, value in ray_train_environment().items():  # as gptray runs Ray Train (no preemption watcher)
        os.environ.setdefault(name, value)
    started_here = not ray.is_initialized()
    if started_here:
        ray.init(**local_ray_options(max(threads, os.cpu_count() or 1),
                                     _temp_dir=tempfile.mkdtemp(prefix="gptray-bench-", dir="/tmp")))
    try:
        trainer = TorchTrainer(
            worker,
            train_loop_config={"config": config_dict, "steps": steps, "warmup": warmup, "threads": threads,
                               "out": str(out)},
            scaling_config=ScalingConfig(num_workers=1, use_gpu=use_gpu, resources_per_worker=resources),
            run_config=RunConfig(storage_path=tempfile.mkdtemp(prefix="gptray-bench-runs-")),
        )
        trainer.fit()
        return json.loads(out.read_text())
    finally:
        if started_here:
            ray.shutdown()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10, help="timed optimizer steps (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (default 2; more with compile)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch (default: all)")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="check that it runs: tiny sizes, seconds")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    if args.smoke:
        args.steps, args.warmup, args.threads = min(args.steps, 2), min(args.warmup, 1), 1

    on_gpu = torch.cuda.is_available()
    overrides = (["ray.use_gpu=true", "ray.num_workers=1"] if on_gpu else CPU_DEFAULTS) + \
        (SMOKE if args.smoke else []) + args.overrides
    config = load_config(None, overrides)
    config = dataclasses.replace(config, model=config.model.for_dataset(VOCAB, EOT))
    print(f"model {config.model.preset or 'custom'}: seq {config.train.effective_seq_len(config.model)}, "
          f"batch {config.train.batch_size} (micro {config.train.micro_batch_size}), {config.train.precision}, "
          f"compile {config.train.compile}; {args.warmup} warm-up + {args.steps} timed steps", flush=True)
    plain = measure(config.to_dict(), args.steps, args.warmup, args.threads)
    print(f"plain process: {plain['tokens_per_s']:,.0f} tokens/s", flush=True)
    in_ray = measure_in_ray(config.to_dict(), args.steps, args.warmup, args.threads)
    overhead = 1 - in_ray["tokens_per_s"] / plain["tokens_per_s"]

    print(f"\n{'':14}{'tokens/s':>12}{'step s':>9}{'MFU':>8}   device")
    for name, r in (("plain process", plain), ("Ray Train", in_ray)):
        mfu = f"{r['mfu']:.1%}" if r["mfu"] is not None else "n/a"
        print(f"{name:14}{r['tokens_per_s']:>12,.0f}{r['step_seconds']:>9.3f}{mfu:>8}   {r['device']}")
    print(f"Ray overhead: {overhead:+.1%} of plain-process throughput "
          f"({plain['parameters']:,} parameters, {plain['tokens_per_step']:,} tokens/step)")
    if args.json:
        Path(args.json).write_text(json.dumps({"plain": plain, "ray": in_ray, "ray_overhead": overhead}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
