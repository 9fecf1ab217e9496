"""Local mode (ray.num_workers=0) against one Ray Train worker: the seconds of a short pretrain, end to end.

    python benchmarks/local_mode.py [--rounds 3] [--steps 12] [--smoke] [key=value ...]

Both train the same small run (the tests' SMALL_RUN model: 2 layers of 64, GPT-2's vocabulary, a global batch
of 8 × 64 tokens) on tinyshakespeare, tokenized once, tracking off, no final sample; the order turns from
round to round so that neither mode always runs on a warmer host. The 1-worker run pays what every Ray
Train run pays (the controller, a worker process, its imports); local mode trains in this process. Prints
each mode's median seconds with min and max, and their ratio: what choosing local mode saves a test that
does not depend on workers. --smoke checks that it runs: one round of 2 steps.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the tests' small run, which this measures

from helpers import make_config, small_run_config  # noqa: E402

MODES = {"1 Ray Train worker": "ray.num_workers=1", "local mode": "ray.num_workers=0"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--smoke", action="store_true", help="check that it runs: one round of 2 steps")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.steps = 1, 2

    import ray

    from gptray.core.runtime import local_ray_options
    from gptray.data.tokenize_job import tokenize_corpus
    from gptray.train.pretrain import pretrain

    root = Path(tempfile.mkdtemp(prefix="gptray-local-mode-"))
    if not ray.is_initialized():  # a Ray started by the caller (a test session) is used as it is
        ray.init(**local_ray_options(4))
    dataset = tokenize_corpus(make_config(root))
    seconds: dict[str, list[float]] = {mode: [] for mode in MODES}
    for round_ in range(args.rounds):
        order = list(MODES) if round_ % 2 == 0 else list(reversed(MODES))
        for mode in order:
            config = small_run_config(root / f"{round_}", dataset, f"name={MODES[mode].split('=')[1]}-{round_}",
                                      f"train.max_steps={args.steps}", MODES[mode], "tracking.enabled=false",
                                      *args.overrides)
            start = time.perf_counter()
            pretrain(config, sample=False)
            seconds[mode].append(time.perf_counter() - start)
    print(f"{args.steps}-step run, {args.rounds} round(s):")
    for mode, times in seconds.items():
        print(f"  {mode:20s} median {statistics.median(times):6.1f} s (min {min(times):.1f}, max {max(times):.1f})")
    ratio = statistics.median(seconds["local mode"]) / statistics.median(seconds["1 Ray Train worker"])
    print(f"local mode / 1 worker: {ratio:.2f}")


if __name__ == "__main__":
    main()
