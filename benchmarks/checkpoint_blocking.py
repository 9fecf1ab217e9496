"""Checkpoint blocking: how long training waits per checkpoint, whole vs sharded, sync vs async upload.

    python benchmarks/checkpoint_blocking.py [--steps N] [--interval N] [--out-dir DIR] [--smoke] [key=value ...]

Runs the real pretrain (local Ray, 2 CPU workers, the quickstart's tinyshakespeare tokens) with the
`tiny` preset once per (parallelism, checkpoint format, upload mode): DDP whole and FSDP sharded, each
with checkpoint.upload=sync (Ray copies the checkpoint to the run directory before training goes
on, as every checkpoint did before) and async (training goes on once the files are on local disk).
For each it prints the median and range of train/checkpoint_blocked_s (what the training loop logs per
checkpoint), the bytes per checkpoint, the local write rate that implies, and the blocked time as a
share of the time between checkpoints at this interval; then the memory rank 0 took above training's
own while writing a checkpoint (train/checkpoint_peak_extra_mb: its resident set on CPU) and while
loading one when the run is launched again for a few more steps (train/resume_peak_extra_mb), beside
12·N/W bytes (fp32 weights and two Adam moments, over W ranks). `--out-dir s3://…` (with AWS_ENDPOINT_URL, e.g.
a moto server) puts the run directory on an object store, where the upload is the real cost. --smoke checks
that it runs: the FSDP sharded async mode only, 2 steps of a one-layer model with a checkpoint at each, and an
already started Ray (a test's) used as it is.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from gptray.checkpoint.files import read_state  # noqa: E402
from gptray.config import load_config  # noqa: E402

MODES = [("ddp", "whole", "sync"), ("ddp", "whole", "async"), ("fsdp", "sharded", "sync"),
         ("fsdp", "sharded", "async")]


def logged(result, key: str) -> list[float]:
    from mlflow.tracking import MlflowClient

    history = MlflowClient(result.tracking_uri).get_metric_history(result.mlflow_run_id, key)
    return [m.value for m in sorted(history, key=lambda m: m.step)]


def run_mode(parallelism: str, fmt: str, upload: str, args, root: Path, dataset_dir: str) -> dict:
    from gptray.model import count_parameters
    from gptray.train.pretrain import pretrain

    name = f"{parallelism}-{fmt}-{upload}"
    settings = lambda steps: load_config(None, [  # noqa: E731
        "model.preset=tiny", f"data.dataset_dir={dataset_dir}", GPT2, f"out_dir={args.out_dir or root}", f"name={name}",
        f"train.max_steps={steps}", f"checkpoint.interval={args.interval}", "train.log_interval=1",
        f"train.eval_interval={args.steps}", "train.eval_windows=8", "train.batch_size=8", "train.micro_batch_size=4",
        "schedule.warmup_steps=2", f"train.parallelism={parallelism}", f"checkpoint.format={fmt}",
        f"checkpoint.upload={upload}", "checkpoint.keep=1", "generate.max_new_tokens=1",
        "ray.num_cpus=2", *args.overrides])
    result = pretrain(settings(args.steps), sample=False)
    blocked = logged(result, "train/checkpoint_blocked_s")
    files = read_state(result.checkpoint).files
    again = pretrain(settings(args.steps + 2), sample=False)  # resumes from the last checkpoint
    checkpoint_bytes = sum(files.values())
    between = result.metrics["train_step_seconds"] * args.interval
    return {"mode": name, "blocked_s": blocked, "median_blocked_s": statistics.median(blocked),
            "checkpoint_bytes": checkpoint_bytes, "step_seconds": result.metrics["train_step_seconds"],
            "blocked_share": statistics.median(blocked) / between,
            "save_extra_mb": statistics.median(logged(result, "train/checkpoint_peak_extra_mb")),
            "resume_extra_mb": (logged(again, "train/resume_peak_extra_mb") or [float("nan")])[-1],
            "state_mb_per_rank": 12 * count_parameters(settings(args.steps).model) / 2 / 1e6}


# The tokens BENCHMARKS.md's numbers were measured on: GPT-2's (the default tokenizer is now learned from the corpus).
GPT2 = "data.tokenizer=gpt2"
SMOKE = ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=32", "train.eval_windows=2"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24)
    parser.add_argument("--interval", type=int, default=6, help="checkpoint.interval")
    parser.add_argument("--out-dir", help="run directories here (default: a temporary local directory)")
    parser.add_argument("--json", help="also write the results here")
    parser.add_argument("--smoke", action="store_true", help="check that it runs: one mode, 2 steps, seconds")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    modes = MODES
    if args.smoke:
        args.steps, args.interval, args.overrides, modes = 2, 1, SMOKE + args.overrides, MODES[-1:]

    from gptray.data.tokenize_job import tokenize_corpus

    with tempfile.TemporaryDirectory(prefix="gptray-ckpt-bench-") as tmp:
        root = Path(tmp)
        dataset = load_config(None, [f"data.dataset_dir={root}/data", GPT2, "ray.num_cpus=2", *args.overrides])
        dataset_dir = tokenize_corpus(dataset).dataset_dir
        results = [run_mode(*mode, args, root, dataset_dir) for mode in modes]
    print(f"\n{platform.node()}: {args.steps} steps of tiny, checkpoint every {args.interval}, 2 CPU workers")
    print(f"{'mode':22} {'MB/ckpt':>8} {'blocked s (median, min–max)':>28} {'MB/s':>7} {'share of interval':>18} "
          f"{'save +MB':>9} {'resume +MB':>11} {'12N/W MB':>9}")
    for r in results:
        mb = r["checkpoint_bytes"] / 1e6
        spread = f"{r['median_blocked_s']:.2f} ({min(r['blocked_s']):.2f}–{max(r['blocked_s']):.2f})"
        print(f"{r['mode']:22} {mb:8.0f} {spread:>28} {mb / r['median_blocked_s']:7.0f} {r['blocked_share']:18.1%} "
              f"{r['save_extra_mb']:9.0f} {r['resume_extra_mb']:11.0f} {r['state_mb_per_rank']:9.0f}")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
