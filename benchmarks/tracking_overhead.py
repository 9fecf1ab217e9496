"""Tracking overhead: training tokens/s while every step's metrics go to a slow `mlflow server`, against none.

    python benchmarks/tracking_overhead.py [--rounds N] [--steps N] [--latency S] [--no-sync] [--smoke] [key=value ...]

The plain TrainingEngine trains in this process (no Ray, random tokens, as benchmarks/train_throughput.py
builds it). A real `mlflow server` runs beside it on a loopback port, behind a loopback relay that holds
every request `--latency` s (200 ms). Each round trains `--steps` steps in each mode, the order turning
from round to round:

- off:   no tracking (the metrics are still computed, as the training loop computes them);
- async: MlflowTracker.log_metrics at every step, as rank 0 logs in training (the sender thread sends);
- sync:  the same points sent with MlflowClient.log_batch at every step, as log_metrics did before.

Many short rounds (each still longer than the tracker's send interval: a round's first step always
sends at once), so that a mode is never compared with a run far away in time on a host whose speed
drifts. Prints each mode's median tokens/s with its quartiles over the rounds, its median ratio to the
same round's tracking-off run (with quartiles), the metric points still queued when a round's last step
ended (flushed before the next round, untimed), and the CPU seconds the server spent in a round (it
shares this machine's cores with training). Target: async ≥ 0.98 × off. --smoke checks that it runs: one
round of 2 steps of a one-layer model, 10 ms per request, no wait for the server to settle.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the tests' real `mlflow server` and loopback relay

from gptray.config import load_config  # noqa: E402
from gptray.tracking.mlflow_tracker import SEND_SECONDS, MlflowTracker  # noqa: E402
from gptray.train.engine import TrainingEngine  # noqa: E402
from helpers import MlflowServer, Relay  # noqa: E402

# A small model, so that a step is short (~0.1 s on 2 CPU cores) and a 200 ms request at every step would
# show. The tokens are random, so the vocabulary only sets the step's cost: GPT-2's 50,257 would make the
# output layer most of it (~1 s a step here).
CPU_DEFAULTS = ["model.n_layer=2", "model.n_head=4", "model.n_embd=128", "model.block_size=128",
                "model.vocab_size=8192", "train.batch_size=8", "train.micro_batch_size=8", "ray.num_workers=1",
                "schedule.warmup_steps=1"]
MODES = ("off", "async", "sync")
SMOKE = ["model.n_layer=1", "model.n_embd=32", "model.block_size=32", "model.vocab_size=256", "train.batch_size=2",
         "train.micro_batch_size=2"]


def build_engine(config_dict: dict, threads: int) -> TrainingEngine:
    from gptray.config import ExperimentConfig

    torch.set_num_threads(threads)
    config = ExperimentConfig.from_dict(config_dict)
    tokens = np.random.default_rng(0).integers(0, config.model.vocab_size, 2_000_000, dtype=np.int64)
    tokens = tokens.astype(np.uint16 if config.model.vocab_size <= 2**16 else np.uint32)
    return TrainingEngine(config, torch.device("cpu"), rank=0, world_size=1, train_data=tokens,
                          val_tokens=tokens[:0])


def train_round(engine: TrainingEngine, first_step: int, steps: int, log) -> float:
    """Train `steps` steps, handing each step's metrics to `log` (None: tracking off); tokens/s."""
    start = time.perf_counter()
    last = start
    for step in range(first_step, first_step + steps):
        result = engine.train_step(step)
        now = time.perf_counter()
        # What the training loop logs at every step with train.log_interval=1.
        metrics = {"train/loss": float(result.loss), "train/lr": result.lr, "train/grad_norm": float(result.grad_norm),
                   "train/tokens_per_s": engine.tokens_per_step / (now - last), "train/step_seconds": now - last,
                   "train/data_wait_fraction": result.data_seconds / (now - last),
                   "train/epoch": engine.train_data.epoch_of(step + 1)}
        last = now
        if log is not None:
            log(metrics, step + 1)
    return steps * engine.tokens_per_step / (time.perf_counter() - start)


def sync_logger(uri: str, run_id: str):
    """Each step's points sent from the training thread, waiting for the answer (the old log_metrics)."""
    from mlflow.entities import Metric
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)

    def log(metrics: dict, step: int) -> None:
        now = int(time.time() * 1000)
        client.log_batch(run_id, metrics=[Metric(k, float(v), now, step) for k, v in metrics.items()])

    return log


def process_group_cpu_seconds(pgid: int) -> float:
    """User + system CPU seconds of every live process in a process group (the server and its workers)."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if int(fields[2]) == pgid:  # fields after the name: state, ppid, pgrp, ..., utime (11), stime (12)
            total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def wait_until_idle(pgid: int, limit_seconds: float = 90.0) -> float:
    """Wait (at most `limit_seconds`) until a freshly started server stops starting its helper processes:
    `mlflow server` answers /health ~15 s before its job consumers have settled, burning CPU meanwhile."""
    started = time.monotonic()
    while time.monotonic() - started < limit_seconds:
        before = process_group_cpu_seconds(pgid)
        time.sleep(2.0)
        if process_group_cpu_seconds(pgid) - before < 0.1:
            break
    return time.monotonic() - started


def machine() -> str:
    cpuinfo = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    model = next((line.split(":", 1)[1].strip() for line in cpuinfo.splitlines() if line.startswith("model name")),
                 platform.machine())
    return f"{os.cpu_count()} CPU cores ({model}), no GPU used, Python {platform.python_version()}, " \
           f"torch {torch.__version__}, load average at start {os.getloadavg()[0]:.2f}"


def run(args, config) -> dict:
    from mlflow.tracking import MlflowClient

    root = Path(tempfile.mkdtemp(prefix="gptray-bench-mlflow-"))
    server = MlflowServer(root)
    server.start()
    relay = Relay(server.port, delay=args.latency)
    try:
        settle = 0.0 if args.smoke else 90.0
        print(f"server idle after {wait_until_idle(server.process.pid, settle):.0f} s", flush=True)
        client = MlflowClient(server.uri)
        experiment_id = client.create_experiment("tracking-overhead")
        runs = {mode: client.create_run(experiment_id, run_name=mode).info.run_id for mode in MODES[1:]}
        tracker = MlflowTracker(relay.uri, runs["async"], send_seconds=args.send_seconds)
        loggers = {"off": None, "async": tracker.log_metrics, "sync": sync_logger(relay.uri, runs["sync"])}
        modes = [m for m in MODES if m != "sync" or args.sync]
        engine = build_engine(config.to_dict(), args.threads)
        train_round(engine, 0, args.warmup, None)  # allocator and caches warm
        step = args.warmup
        results: dict[str, list[dict]] = {mode: [] for mode in modes}
        for round_index in range(args.rounds):
            order = modes[round_index % len(modes):] + modes[:round_index % len(modes)]
            for mode in order:
                cpu_before = process_group_cpu_seconds(server.process.pid)
                tokens_per_s = train_round(engine, step, args.steps, loggers[mode])
                step += args.steps
                queued = tracker.unsent
                flush_started = time.perf_counter()
                flushed = tracker.flush() if mode == "async" else True  # between rounds: not training time
                results[mode].append({
                    "tokens_per_s": tokens_per_s, "queued_at_end": queued if mode == "async" else 0,
                    "flush_seconds": time.perf_counter() - flush_started, "flushed": flushed,
                    "server_cpu_seconds": process_group_cpu_seconds(server.process.pid) - cpu_before})
            print(f"round {round_index + 1:2}: " + ", ".join(
                f"{mode} {results[mode][-1]['tokens_per_s']:,.0f}" for mode in modes) + " tokens/s", flush=True)
        delivered = len(client.get_metric_history(runs["async"], "train/loss"))
        tracker.finish()
        return {"results": results, "async_points_delivered": delivered,
                "async_points_logged": args.rounds * args.steps}
    finally:
        relay.down()
        server.kill()


def quartiles(values: list[float]) -> tuple[float, float]:
    """The 25th and 75th percentiles (both the value itself when there is one)."""
    if len(values) < 2:
        return values[0], values[0]
    low, _, high = statistics.quantiles(values, n=4, method="inclusive")
    return low, high


def summarize(results: dict[str, list[dict]]) -> list[tuple]:
    """Per mode: (mode, median tokens/s, its quartiles, median ratio to the same round's off run, its quartiles,
    most points queued at a round's end, median server CPU seconds a round)."""
    off = [r["tokens_per_s"] for r in results["off"]]
    rows = []
    for mode, rounds in results.items():
        speeds = [r["tokens_per_s"] for r in rounds]
        ratios = [s / o for s, o in zip(speeds, off)]
        rows.append((mode, statistics.median(speeds), quartiles(speeds), statistics.median(ratios), quartiles(ratios),
                     max(r["queued_at_end"] for r in rounds),
                     statistics.median(r["server_cpu_seconds"] for r in rounds)))
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="rounds; each trains once in every mode (default 10)")
    parser.add_argument("--steps", type=int, default=30,
                        help="timed steps per mode and round (default 30: a round is several send intervals long)")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first (default 3)")
    parser.add_argument("--latency", type=float, default=0.2, help="seconds the relay holds each request (0.2)")
    parser.add_argument("--send-seconds", type=float, default=SEND_SECONDS,
                        help=f"async: at most one request this often (default {SEND_SECONDS:g}, the tracker's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU threads for torch (default: all)")
    parser.add_argument("--no-sync", dest="sync", action="store_false", help="skip the synchronous mode")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    parser.add_argument("--smoke", action="store_true", help="check that it runs: one round of 2 steps, seconds")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    args = parser.parse_args(argv)
    if args.smoke:
        args.rounds, args.steps, args.warmup, args.latency = 1, 2, 1, 0.01
        args.overrides = SMOKE + args.overrides
    if not 1 <= args.rounds <= 50 or not 1 <= args.steps <= 10_000:  # bounded: requests go to a local server
        parser.error("--rounds must be 1-50 and --steps 1-10000")

    config = load_config(None, CPU_DEFAULTS + args.overrides)
    arguments = sys.argv if argv is None else [__file__, *argv]
    command, where = shlex.join([Path(sys.executable).name, *arguments]), machine()
    print(f"command: {command}")
    print(f"machine: {where}")
    print(f"model: {config.model.n_layer} layers, {config.model.n_embd} wide, seq {config.model.block_size}, "
          f"batch {config.train.batch_size}; {args.rounds} rounds x {args.steps} steps per mode; "
          f"{args.latency * 1000:.0f} ms per request; async sends at most every {args.send_seconds:g} s", flush=True)
    measured = run(args, config)
    rows = summarize(measured["results"])

    print(f"\n{'mode':7}{'tokens/s median':>17}{'quartiles':>17}{'ratio to off':>14}{'quartiles':>15}"
          f"{'queued at end':>15}{'server CPU s':>14}")
    for mode, median, (low, high), ratio, (ratio_low, ratio_high), queued, server_cpu in rows:
        print(f"{mode:7}{median:>17,.0f}{f'{low:,.0f}-{high:,.0f}':>17}{ratio:>14.3f}"
              f"{f'{ratio_low:.3f}-{ratio_high:.3f}':>15}{queued:>15}{server_cpu:>14.2f}")
    print(f"async: {measured['async_points_delivered']} of {measured['async_points_logged']} train/loss points "
          "on the server after the last flush")
    if args.json:
        Path(args.json).write_text(json.dumps({"command": command, "machine": where, **measured}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
