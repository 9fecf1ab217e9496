"""The first five minutes: the quickstart against nanoGPT's CPU recipe, in matched wall time, on the same held-out text.

    python benchmarks/first_five_minutes.py [--seeds 1337,1338,1339] [--out DIR] [--smoke]

Both train inside gptray, through Ray Train, on tinyshakespeare split as nanoGPT's shakespeare_char
splits it (data.split: tail: the first 90% trains, the last 10% is held out):
1. configs/quickstart.yaml as shipped (its 8K BPE learned from the training text first): its wall time T.
2. configs/nanogpt-shakespeare-char.yaml (nanoGPT's README CPU recipe on bytes) as shipped, once: its pace.
3. For each seed, interleaved: the quickstart, then the nanoGPT recipe with max_steps (= lr_decay_iters, as
   its README sets them) scaled in proportion so that its pretrain takes the quickstart's wall time (at the
   pace of the recipe's latest run: the as-shipped one, then the previous seed's).
Each run's final checkpoint is then scored over the whole held-out tail (both read the same documents,
each in its own tokens) with sliding windows of the model's context at a stride of half of it, in this
process: bits per byte compare across tokenizers. Prints per-seed rows and each arm's median bpb with its
spread (min–max). The machine is whatever runs it: run it with nothing else on the cores, or say so.
--smoke checks that it runs: the nanoGPT recipe as shipped but for 4 steps (1 Ray Train worker), then one seed of
the quickstart at 4 steps of a one-layer model with a 512-token BPE and the matched recipe (at most 8 steps), both
in local mode (ray.num_workers=0: a Ray Train start-up each is most of a smoke run's time); an already started Ray
(a test's) is used as it is; every run evaluates 4 windows in training and is scored over 32.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gptray.data.bpe_training import train_tokenizer  # noqa: E402
from gptray.data.tokenize_job import tokenize_corpus  # noqa: E402
from gptray.eval.evaluate import evaluate_checkpoint  # noqa: E402
from gptray.train.finetune import load_run_config  # noqa: E402
from gptray.train.pretrain import pretrain  # noqa: E402

QUICKSTART = REPO / "configs" / "quickstart.yaml"
NANOGPT = REPO / "configs" / "nanogpt-shakespeare-char.yaml"
# what scores a checkpoint: the whole val split (the tail), windows of the context, stride half of it
HELD_OUT = ["eval.tasks=[perplexity]", "eval.split=val", "eval.distributed=false", "eval.batch_size=64",
            "eval.max_length=null", "eval.stride=null", "eval.limit=null"]
SMOKE_STEPS = 4
SMOKE_QUICKSTART = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "tokenizer.vocab_size=512"]


def budget(steps: int, warmup: int | None = None) -> list[str]:
    """A run of `steps` steps: its checkpoint and evaluation at the end (and the decay's end there too)."""
    values = [f"train.max_steps={steps}", f"checkpoint.interval={steps}", f"train.eval_interval={steps}"]
    return values + ([f"schedule.warmup_steps={warmup}"] if warmup is not None else [])


def run(path: Path, out: Path, name: str, overrides: list[str], smoke: bool) -> dict:
    """One pretrain of the config at `path` with `overrides`, then its score over the held-out tail (a smoke
    run's: over its first windows, and 4 evaluation windows during training)."""
    smoke_budget = ["train.eval_windows=4", "eval.limit=32", "generate.max_new_tokens=8"] if smoke else []
    config = load_run_config(path, [f"out_dir={out}/runs", f"name={name}", "tracking.enabled=false",
                                    "generate.max_new_tokens=64", *overrides, *HELD_OUT, *smoke_budget])
    tokenize_corpus(config)
    started = time.monotonic()
    result = pretrain(config, sample=True)
    seconds = time.monotonic() - started
    held_out = evaluate_checkpoint(result.run_dir, config).tasks[0].metrics
    row = {"name": name, "steps": result.final_step, "seconds": seconds, "bpb": held_out["bpb"],
           "windows": int(held_out["windows"]), "bytes": int(held_out["bytes"]),
           "step_seconds": result.metrics["train_step_seconds"], "sample": result.sample}
    print(f"{name}: {row['steps']} steps in {seconds:.0f} s, held-out tail {row['bpb']:.3f} bits per byte "
          f"({row['windows']:,} windows, {row['bytes']:,} bytes)", flush=True)
    return row


def matched_steps(nanogpt: dict, seconds: float, smoke: bool) -> int:
    """The nanoGPT recipe's steps that fill `seconds` of pretrain, in proportion to a run of it (whose
    evaluations, every 250 steps, grow with its steps: a fixed start-up plus the pace of its training steps
    alone gave it a single step once)."""
    steps = max(1, round(nanogpt["steps"] * seconds / nanogpt["seconds"]))
    return min(steps, 2 * SMOKE_STEPS) if smoke else steps


def summary(rows: list[dict]) -> str:
    values = [r["bpb"] for r in rows]
    return (f"{statistics.median(values):.3f} ({min(values):.3f}–{max(values):.3f})",
            f"{statistics.median(r['seconds'] for r in rows):.0f}",
            f"{statistics.median(r['steps'] for r in rows):.0f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", default="1337,1338,1339", help="train.seed of each matched pair, in order")
    parser.add_argument("--out", help="where datasets, the tokenizer and runs go (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="check that it runs: 4-step runs, one seed")
    args = parser.parse_args(argv)
    seeds = [int(s) for s in args.seeds.split(",")][:1 if args.smoke else None]
    out = Path(args.out or tempfile.mkdtemp(prefix="gptray-five-minutes-"))
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}; out {out}",
          flush=True)

    tokenizer = out / "tokenizers" / "tinyshakespeare-8k"
    quick = [f"data.tokenizer={tokenizer}", f"data.dataset_dir={out}/data/bpe"]
    nano = [f"data.dataset_dir={out}/data/bytes"]
    if args.smoke:
        quick += [*SMOKE_QUICKSTART, *budget(SMOKE_STEPS, 1), "ray.num_workers=0"]
        nano_shipped = budget(SMOKE_STEPS, 1)
    else:
        nano_shipped = []
    nano_matched = ["ray.num_workers=0"] if args.smoke else []
    train_tokenizer(load_run_config(QUICKSTART, quick), tokenizer, overwrite=True)  # from the 90% alone

    # the recipe's pace as shipped: what its matched runs' steps are computed from
    calibration = run(NANOGPT, out, "nanogpt-shipped", [*nano, *nano_shipped, f"train.seed={seeds[0]}"], args.smoke)
    quickstart_rows, nanogpt_rows = [], []
    for seed in seeds:  # interleaved, so that a change of the machine's load reaches both arms alike
        quickstart_rows.append(run(QUICKSTART, out, f"quickstart-{seed}", [*quick, f"train.seed={seed}"],
                                   args.smoke))
        # the pace of the recipe's latest run: the as-shipped one for the first seed, then the previous
        # seed's matched run (closer in time, so a drift of the machine's load mismatches less)
        steps = matched_steps(nanogpt_rows[-1] if nanogpt_rows else calibration, quickstart_rows[-1]["seconds"],
                              args.smoke)
        matched = [*budget(steps, min(100, steps // 2)), f"schedule.decay_steps={steps}", f"train.seed={seed}"]
        nanogpt_rows.append(run(NANOGPT, out, f"nanogpt-{seed}", [*nano, *matched, *nano_matched], args.smoke))

    print("\n| run | seed | steps | pretrain s | held-out tail bits per byte |")
    print("|---|---|---|---|---|")
    print(f"| nanoGPT recipe as shipped | {seeds[0]} | {calibration['steps']:,} | {calibration['seconds']:.0f} | "
          f"{calibration['bpb']:.3f} |")
    for seed, quickstart, nanogpt in zip(seeds, quickstart_rows, nanogpt_rows):
        for label, row in (("quickstart", quickstart), ("nanoGPT recipe, matched time", nanogpt)):
            print(f"| {label} | {seed} | {row['steps']:,} | {row['seconds']:.0f} | {row['bpb']:.3f} |")
    print(f"\n| arm ({len(seeds)} seeds) | held-out bpb, median (min–max) | pretrain s, median | steps, median |")
    print("|---|---|---|---|")
    for label, rows in (("quickstart", quickstart_rows), ("nanoGPT recipe, matched time", nanogpt_rows)):
        print(f"| {label} | " + " | ".join(summary(rows)) + " |")
    gap = [n["bpb"] - q["bpb"] for q, n in zip(quickstart_rows, nanogpt_rows)]
    print(f"\nnanoGPT recipe minus quickstart, per seed: {', '.join(f'{g:+.3f}' for g in gap)} bits per byte "
          f"(median {statistics.median(gap):+.3f})")
    for row in (quickstart_rows[0], nanogpt_rows[0]):
        print(f"\n--- sample, {row['name']} ---\n{row['sample']}")


if __name__ == "__main__":
    main()
