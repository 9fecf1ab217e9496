"""The quickstart's first five minutes with GPT-2's tokenizer against byte-level BPEs learned from its corpus.

    python benchmarks/first_five_minutes.py [--vocab 4096,8192] [--out DIR] [--smoke]

1. The quickstart as it shipped before its own BPE (configs/quickstart.yaml pinned to GPT-2's 50,257
   tokens and 300 steps on 2 CPU workers): its training seconds T, val loss, val bits per byte, sample.
2. For each --vocab size: `gptray tokenizer train` on the same corpus (tinyshakespeare), tokenized into its
   own dataset, then a 40-step calibration run for its steps per second, then the quickstart again with
   that tokenizer and max_steps set so that training takes about T (warmup and decay scaled with it).
   Its val bpb, val loss per token, training seconds and sample.
Every run is a real `pretrain` (Ray Train, 2 workers, DDP on gloo), one after another in this process.
Bits per byte compare across tokenizers; losses per token do not. Prints a Markdown table.
--smoke checks that it runs: every run 4 steps of a one-layer model, one BPE of 512 tokens, and an already
started Ray (a test's) used as it is.
"""

from __future__ import annotations

import argparse
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gptray.data.bpe_training import train_tokenizer  # noqa: E402
from gptray.data.tokenize_job import tokenize_corpus  # noqa: E402
from gptray.train.finetune import load_run_config  # noqa: E402
from gptray.train.pretrain import pretrain  # noqa: E402

QUICKSTART = str(REPO / "configs" / "quickstart.yaml")


SMOKE = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "train.eval_windows=2",
         "generate.max_new_tokens=4"]
SMOKE_STEPS = 4


def run(out: Path, name: str, overrides: list[str], smoke: bool = False) -> dict:
    if smoke:  # every run as short as its schedule allows, whatever its overrides asked
        overrides = [*overrides, *SMOKE, f"train.max_steps={SMOKE_STEPS}", "schedule.warmup_steps=1",
                     f"train.eval_interval={SMOKE_STEPS}", f"checkpoint.interval={SMOKE_STEPS}"]
    config = load_run_config(QUICKSTART, [f"out_dir={out}/runs", f"name={name}", "tracking.enabled=false",
                                               *overrides])
    tokenize_corpus(config)
    started = time.monotonic()
    result = pretrain(config, sample=True)
    seconds = time.monotonic() - started
    metrics = result.metrics
    return {"name": name, "steps": result.final_step, "seconds": seconds, "val_loss": metrics.get("val_loss"),
            "val_bpb": metrics.get("val_bpb"), "step_seconds": metrics["train_step_seconds"], "sample": result.sample}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", default="4096,8192", help="BPE vocabulary sizes to learn")
    parser.add_argument("--out", help="where datasets, tokenizers and runs go (default: a temp dir)")
    parser.add_argument("--smoke", action="store_true", help="check that it runs: 4-step runs, one small BPE")
    args = parser.parse_args(argv)
    if args.smoke:
        args.vocab = "512"
    out = Path(args.out or tempfile.mkdtemp(prefix="gptray-five-minutes-"))
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}; out {out}",
          flush=True)

    # The baseline is the GPT-2 quickstart of before issue 22, pinned so the comparison stays the same
    # whatever the shipped defaults become.
    gpt2 = ["data.tokenizer=gpt2", f"data.dataset_dir={out}/data/gpt2", "train.max_steps=300",
            "schedule.warmup_steps=30", "train.eval_interval=50", "checkpoint.interval=100"]
    rows = [run(out, "gpt2", gpt2, args.smoke)]
    budget = rows[0]["seconds"]
    for vocab in [int(v) for v in args.vocab.split(",")]:
        base = load_run_config(QUICKSTART, [f"tokenizer.vocab_size={vocab}"])
        tokenizer = out / "tokenizers" / f"bpe-{vocab}"
        trained = train_tokenizer(base, tokenizer, overwrite=True)
        data = [f"data.tokenizer={tokenizer}", f"data.dataset_dir={out}/data/bpe-{vocab}"]
        calibration = run(out, f"calibrate-{vocab}", [*data, "train.max_steps=40", "schedule.warmup_steps=4",
                                                      "train.eval_interval=40", "checkpoint.interval=40"],
                          args.smoke)
        # the same wall time as the quickstart's, start-up included: its fixed seconds, then steps at the
        # calibration's pace (seconds per step of its last logged interval)
        fixed = rows[0]["seconds"] - rows[0]["steps"] * rows[0]["step_seconds"]
        steps = max(40, int((budget - fixed) / calibration["step_seconds"]))
        warmup = max(1, round(30 * steps / 300))
        row = run(out, f"bpe-{vocab}", [*data, f"train.max_steps={steps}", f"schedule.warmup_steps={warmup}",
                                        f"checkpoint.interval={steps}",
                                        f"train.eval_interval={math.ceil(steps / 6)}"], args.smoke)
        row["learned"] = trained.vocab_size
        rows.append(row)

    print("\n| tokenizer | steps | train s | val loss/token | val bpb |")
    print("|---|---|---|---|---|")
    for row in rows:
        bpb = f"{row['val_bpb']:.3f}" if row["val_bpb"] is not None else "n/a"
        print(f"| {row['name']} | {row['steps']} | {row['seconds']:.0f} | {row['val_loss']:.3f} | {bpb} |")
    for row in rows:
        print(f"\n--- sample, {row['name']} ---\n{row['sample']}")


if __name__ == "__main__":
    main()
