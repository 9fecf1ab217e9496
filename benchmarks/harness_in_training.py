"""Harness tasks during training: how long each evaluation holds the training workers, in the loop or asynchronous.

    python benchmarks/harness_in_training.py [--rounds 3] [--steps 12] [--interval 4] [--docs 100] [--workers 2]
        [--smoke] [key=value ...]

Trains the tests' small run (SMALL_RUN: 2 layers of 64, GPT-2's vocabulary, a global batch of 8 × 64 tokens) on
tinyshakespeare, tokenized once, on `--workers` Ray Train workers (0: local mode), once per mode a round, the
modes' order turning each round so that none always runs on a warmer host: without eval.train_tasks; with a local
multiple-choice harness task of `--docs` documents of 4 choices (tests/harness_fixtures.py writes it) every
`--interval` steps in the loop; and the same task on the checkpoints by Ray Train's asynchronous validation
(eval.train_async, not in local mode). Checkpoints fall every `--interval` steps in every mode. Prints per mode the
median seconds of the whole run (min–max) and of a training step, the seconds each in-loop evaluation held the
workers (train/lm_eval_blocked_s), each asynchronous one took beside them (train/lm_eval_async_s), and a checkpoint
held them (train/checkpoint_blocked_s, which asynchronous validation needs at every evaluation). --smoke checks
that it runs: one round of 2 steps in local mode, in the loop only, 4 documents. `--dataset DIR` trains on a
token dataset already written (GPT-2's tokens) instead of tokenizing tinyshakespeare first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the tests' small run and local harness task, which this measures

from harness_fixtures import write_tasks  # noqa: E402
from helpers import make_config, metric_history, small_run_config  # noqa: E402

MODES = ("no harness", "harness in loop", "harness async")


def spread(values: list[float]) -> str:
    if not values:
        return "-"
    return f"{statistics.median(values):.2f} ({min(values):.2f}–{max(values):.2f})"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--interval", type=int, default=4, help="eval.train_interval and checkpoint.interval")
    parser.add_argument("--docs", type=int, default=100, help="documents of the multiple-choice task (4 choices)")
    parser.add_argument("--workers", type=int, default=2, help="ray.num_workers (0: local mode)")
    parser.add_argument("--dataset", help="a token dataset to train on (default: tokenize tinyshakespeare first)")
    parser.add_argument("--smoke", action="store_true", help="check that it runs: one round of 2 steps, local mode")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.steps, args.interval, args.docs, args.workers = 1, 2, 2, 4, 0

    import ray

    from gptray.core.runtime import local_ray_options
    from gptray.data.tokenize_job import tokenize_corpus
    from gptray.train.pretrain import pretrain

    root = Path(tempfile.mkdtemp(prefix="gptray-harness-bench-"))
    if not ray.is_initialized():  # a Ray started by the caller (a test session) is used as it is
        ray.init(**local_ray_options(4))
    dataset = SimpleNamespace(dataset_dir=args.dataset) if args.dataset else \
        tokenize_corpus(make_config(root, "ray.num_workers=0"))
    tasks = write_tasks(root / "harness", mc_docs=args.docs)
    harness = ["eval.train_tasks=[gptray_mc]", f"eval.harness_include=[{tasks}]", "eval.bootstrap_iters=0",
               f"eval.train_interval={args.interval}"]
    modes = MODES if args.workers else MODES[:2]  # local mode has no Ray Train controller to validate
    if args.smoke:
        modes = MODES[1:2]
    seconds = {mode: [] for mode in MODES}
    step_seconds = {mode: [] for mode in MODES}
    logged = {key: [] for key in ("train/lm_eval_blocked_s", "train/lm_eval_async_s", "train/checkpoint_blocked_s")}
    for round_ in range(args.rounds):
        for mode in modes[round_ % len(modes):] + modes[:round_ % len(modes)]:
            extra = {MODES[0]: [], MODES[1]: harness, MODES[2]: [*harness, "eval.train_async=true"]}[mode]
            config = small_run_config(root / f"{round_}", dataset, f"name={mode.replace(' ', '-')}-{round_}",
                                      f"train.max_steps={args.steps}", f"ray.num_workers={args.workers}",
                                      f"checkpoint.interval={args.interval}", f"train.eval_interval={args.interval}",
                                      *extra, *args.overrides)
            start = time.perf_counter()
            result = pretrain(config, sample=False)
            seconds[mode].append(time.perf_counter() - start)
            step_seconds[mode] += metric_history(result, "train/step_seconds").values()
            for key in logged:
                if mode != MODES[0] or key == "train/checkpoint_blocked_s":
                    logged[key] += metric_history(result, key).values()
    evaluations = len(logged["train/lm_eval_blocked_s"]) // args.rounds
    print(f"\n{args.rounds} round(s) of {args.steps} steps, {args.workers or 'local mode, no'} Ray Train worker(s), "
          f"gptray_mc ({args.docs} documents, {4 * args.docs} requests) every {args.interval} steps: "
          f"{evaluations} evaluation(s) a run")
    print(f"{'mode':18} {'run s (median, min–max)':>26} {'step s (median, min–max)':>26}")
    for mode in modes:
        print(f"{mode:18} {spread(seconds[mode]):>26} {spread(step_seconds[mode]):>26}")
    for key, what in [("train/lm_eval_blocked_s", "held per evaluation in the loop"),
                      ("train/lm_eval_async_s", "an asynchronous evaluation's own time"),
                      ("train/checkpoint_blocked_s", "held per checkpoint, every mode")]:
        print(f"{what} ({key}): {spread(logged[key])} s")
    if evaluations and seconds[MODES[0]]:
        for mode in modes[1:]:
            added = (statistics.median(seconds[mode]) - statistics.median(seconds[MODES[0]])) / evaluations
            print(f"run time added per evaluation, {mode} (median runs): {added:.2f} s")

if __name__ == "__main__":
    main()
