"""An elastic run (ray.num_workers: [1, 2]) on a local multi-node Ray cluster, grown, then shrunk by a spot reclaim.

    python benchmarks/elastic_resize.py [--rounds 3] [--steps 12] [--notice both|yes|no] [--smoke] [key=value ...]

In a fresh process (its own `ray.cluster_utils.Cluster`: a 1-CPU head, 1-CPU worker nodes), the tests'
SMALL_RUN model trains on tinyshakespeare with ray.num_workers=[1, 2], ray.cpus_per_worker=1,
ray.resize_interval_s=1, checkpoint.interval=4 and checkpoint.preemption_check_interval=1. It starts on one
worker and is held after its checkpoint at step 4 (train.test_hold_file, so that what happens does not depend
on this host's speed) while a node joins and the group grows to two. Then the node goes at step 7:
- with notice (a spot reclaim as Ray sees it): the node is drained with reason PREEMPTION and a deadline
  (GCS DrainNode, what `ray drain-node --reason DRAIN_NODE_REASON_PREEMPTION` sends), Ray Train's preemption
  watcher tells the workers, and the 2-worker group, released to step 7, checkpoints at each check step from
  the notice on; the node is killed once the checkpoint at step 7 is stored;
- without notice: the node is killed once the group waits at step 7, whose latest checkpoint is step 4's.
The group shrinks back to one, which trains to the end; then a fixed 2-worker group resumes the final
checkpoint for 2 more steps. Measured, per round and variant: seconds from the node's arrival to the 2-worker
group's first step and from the kill to the 1-worker group's first step (both include starting the group and
loading the checkpoint), and the steps trained twice (from rank 0's progress lines): those the 2-worker group
trained after the checkpoint the 1-worker group resumes from. Every step's global-batch digest is checked
against the data order's own (a pure function of dataset, seed and step).
--smoke checks that it runs: one round of 12 steps, with notice.

tests/integration/test_elastic.py runs it (--smoke) and compares the run with the fixed 2-worker reference run.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(1, str(REPO / "tests"))  # the tests' small run, which this trains

ELASTIC = ["ray.num_workers=[1, 2]", "ray.cpus_per_worker=1", "ray.autoscaling=false", "ray.resize_interval_s=1",
           "ray.max_failures=3", "checkpoint.interval=4", "checkpoint.preemption_check_interval=1",
           "tracking.enabled=false"]
GROWN, GONE = 4, 7  # the steps at which the node joins and goes
DEADLINE_S = 120  # the drain's deadline (AWS gives a spot instance two minutes); the node is killed before it
PROGRESS = re.compile(r"step (\d+)/(\d+) \|")


def run_scenario(dataset_dir: str, root: str, steps: int, overrides: list[str], notice: bool = True,
                 timeout: float = 600) -> dict:
    """The grow-and-shrink run in a fresh process (a Ray cluster of its own); its record as a dict."""
    out = Path(root) / "scenario.json"
    command = [sys.executable, str(Path(__file__).resolve()), "--child", dataset_dir, root, "--steps", str(steps),
               "--notice", "yes" if notice else "no", *overrides]
    env = {"RAY_raylet_start_wait_time_s": "120",  # a busy host starts a node's raylet slowly
           **os.environ, "PYTHONUNBUFFERED": "1", "RAY_DEDUP_LOGS": "0",
           # the test session turns Ray Train's preemption watcher off for its own runs; this run needs it
           "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout, env=env, cwd=REPO)
    (Path(root) / "scenario.log").write_text(done.stdout + done.stderr)  # the cluster's and workers' lines
    if done.returncode != 0 or not out.exists():
        raise RuntimeError(f"the elastic scenario failed ({done.returncode}):\n{done.stdout[-4000:]}\n"
                           f"{done.stderr[-6000:]}")
    record = json.loads(out.read_text())
    record["trained_steps"] = [int(m.group(1)) for m in PROGRESS.finditer(done.stdout + done.stderr)]
    out.write_text(json.dumps(record))
    return record


def _child(dataset_dir: str, root: str, steps: int, overrides: list[str], notice: bool) -> None:
    """The scenario itself: a local cluster, the elastic run in a thread, a node added and taken away under it.

    The run is held (train.test_hold_file) while the cluster changes, so that the scenario's steps do not
    depend on how fast this host trains: it waits at step 4 on one worker until a new 2-worker group is up,
    at step 7 on two until the node is gone and a new 1-worker group is up, then trains to the end."""
    import ray
    from ray.cluster_utils import Cluster

    from gptray.core.runtime import free_port
    from gptray.core.storage import Storage
    from gptray.data.manifest import Manifest
    from gptray.data.train_windows import DataOrder, open_train_windows
    from gptray.tracking.history import read_history
    from helpers import PretrainInThread, make_config, small_run_config

    os.environ["GPTRAY_ELASTIC_SCENARIO"] = root  # marks this cluster's processes (each node inherits it)
    # After a node dies, Ray's autoscaling coordinator counts its CPUs until its next tick (20 s), so the
    # controller first tries the old size and waits this long for workers that cannot start (Ray's default:
    # 60 s); a bare local cluster starts a worker group well within 20 s.
    os.environ.setdefault("RAY_TRAIN_WORKER_GROUP_START_TIMEOUT_S", "20")
    os.environ.setdefault("RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S", "1")  # Ray's watcher polls drains (default 5 s)
    # Ray Train's PlacementGroupCleaner asks the state API whether the run's controller lives, and removes the
    # run's placement group (its workers with it) when told it does not. Without an address, the state API
    # asks the cluster /tmp/ray/ray_current_cluster names: on a machine where someone else's `ray start` head
    # runs, that one, which knows nothing of this run. So the cluster gets a dashboard on a port of its own, and
    # every process of every node is told its address (as core.runtime.local_ray_options does).
    port = free_port()
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    temp = tempfile.mkdtemp(prefix="gptray-el-", dir="/tmp")  # short: Ray's socket paths are limited
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "temp_dir": temp,
                                                            "include_dashboard": True, "dashboard_port": port})
    ray.init(address=cluster.address)
    if dataset_dir == "-":  # tokenize tinyshakespeare here, once
        from gptray.data.tokenize_job import tokenize_corpus

        dataset_dir = tokenize_corpus(make_config(Path(root))).dataset_dir
    dataset = type("Dataset", (), {"dataset_dir": dataset_dir})
    hold = Path(root) / "hold"
    config = small_run_config(Path(root), dataset, "name=elastic", *ELASTIC, f"train.max_steps={steps}",
                              f"train.test_hold_file={hold}", *overrides)
    run_dir = Path(config.run_dir)

    def hold_at(step: int) -> None:
        (Path(root) / "hold.tmp").write_text(str(step))
        (Path(root) / "hold.tmp").replace(hold)

    def held_at() -> int | None:
        try:
            return int(Path(f"{hold}.at").read_text())
        except (OSError, ValueError):
            return None

    def rows() -> dict[int, dict]:
        history = read_history(Storage(str(run_dir))) if (run_dir / "metrics").exists() else {}
        by_step: dict[int, dict] = {}
        for key, values in history.items():
            for step, value in values.items():
                by_step.setdefault(step, {})[key] = value
        return by_step

    def latest_checkpoint() -> int:
        from gptray.checkpoint.files import latest_stored_checkpoint, read_state

        latest = latest_stored_checkpoint(Storage(str(run_dir)))
        return read_state(latest).step if latest is not None else 0

    def wait_for(what: str, ok, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while not ok():
            assert run.is_alive(), f"the run ended before {what}: {run.error!r}"
            assert time.monotonic() < deadline, f"not {what} within {timeout:g} s"
            time.sleep(0.2)

    events = {}
    hold_at(GROWN)
    run = PretrainInThread(config, sample=False)
    wait_for(f"step {GROWN} on 1 worker", lambda: GROWN in rows())
    before = set(_workers(root))
    events["node_added"] = time.time()
    node = cluster.add_node(num_cpus=1)
    wait_for("a 2-worker group", lambda: len(set(_workers(root)) - before) == 2)
    if notice:  # a spot reclaim, as the cloud's hooks tell Ray: a drain with reason PREEMPTION and a deadline
        events["drained"] = time.time()
        _drain_as_preempted(cluster.address, node.node_id, DEADLINE_S)
        time.sleep(4 * float(os.environ["RAY_TRAIN_PREEMPTION_POLL_INTERVAL_S"]))  # for Ray's watcher to see it
    hold_at(GONE)
    wait_for(f"step {GONE} on 2 workers", lambda: held_at() == GONE)
    if notice:
        wait_for(f"the preemption checkpoint at step {GONE}", lambda: latest_checkpoint() == GONE, timeout=60)
    before = set(_workers(root))
    events["node_killed"] = time.time()
    cluster.remove_node(node, allow_graceful=False)
    wait_for("a 1-worker group", lambda: len(set(_workers(root)) - before) == 1 and len(_workers(root)) == 1)
    hold_at(10**9)
    result = run.join(timeout=600)
    final = rows()
    # the final checkpoint, resumed by a fixed 2-worker group (a node joins again for it)
    cluster.add_node(num_cpus=1)
    resumed = small_run_config(Path(root), dataset, "name=elastic", *ELASTIC, "ray.num_workers=2",
                               f"train.max_steps={steps + 2}", *overrides)
    after = PretrainInThread(resumed, sample=False).join(timeout=600)
    manifest = Manifest.load(dataset_dir)
    windows = open_train_windows(config, Storage(dataset_dir), manifest, DataOrder.for_run(config, manifest))
    expected = {step: windows.batch_digest(step - 1) for step in range(1, steps + 3)}
    record = {"notice": notice, "events": events, "rows": {str(s): v for s, v in sorted(rows().items())},
              "first_run_rows": {str(s): v for s, v in sorted(final.items())},
              "expected_digests": {str(s): d for s, d in expected.items()},
              "first_run_final_step": result.final_step,
              "resumed": {"start_step": after.start_step, "final_step": after.final_step}}
    (Path(root) / "scenario.json").write_text(json.dumps(record))
    ray.shutdown()
    cluster.shutdown()


def _drain_as_preempted(address: str, node_id: str, deadline_s: float) -> None:
    """Tell the GCS that a node is being preempted, deadline_s from now: what `ray drain-node --reason
    DRAIN_NODE_REASON_PREEMPTION --deadline-remaining-seconds N` and Ray's autoscaler send (Ray Train's
    preemption watcher reads the GCS's draining nodes). Nothing kills the node at the deadline: the caller does."""
    import ray
    from ray.core.generated import autoscaler_pb2

    deadline_ms = time.time_ns() // 1_000_000 + int(deadline_s * 1000)
    accepted, why = ray._raylet.GcsClient(address=address).drain_node(
        node_id, autoscaler_pb2.DrainNodeReason.Value("DRAIN_NODE_REASON_PREEMPTION"),
        "spot reclaim (benchmarks/elastic_resize.py)", deadline_ms)
    if not accepted:
        raise RuntimeError(f"the GCS refused to drain node {node_id}: {why}")


def _workers(root: str) -> list[int]:
    """PIDs of the scenario's live Ray Train workers (other Ray users on the machine are left alone)."""
    marker = f"GPTRAY_ELASTIC_SCENARIO={root}".encode()
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and (entry / "cmdline").read_bytes().startswith(b"ray::RayTrainWorker") \
                    and marker in (entry / "environ").read_bytes().split(b"\0"):
                pids.append(int(entry.name))
        except OSError:
            continue  # the process ended while we looked
    return pids


def summarize(record: dict) -> dict[str, float | None]:
    """Seconds from the node's arrival to the 2-worker group's first step (None where the history no longer
    holds it: without notice the 1-worker group trained those steps again) and from the kill to the 1-worker
    group's first step, the step the 1-worker group resumed from, and the steps trained twice (from the
    progress lines)."""
    rows = {int(s): v for s, v in record["first_run_rows"].items()}
    events = record["events"]
    sizes = [rows[s]["train/world_size"] for s in sorted(rows)]
    resumed_at = resume_step(record)
    expected = [1] * GROWN + [2] * (resumed_at - GROWN) + [1] * (len(sizes) - resumed_at)
    assert sizes == expected, f"world sizes by step: {sizes}"
    trained = [s for s in record["trained_steps"] if s <= len(sizes)]  # not the fixed group's resumed steps
    grown = rows[GROWN + 1]
    return {"grow_s": grown["train/time"] - events["node_added"] if grown["train/world_size"] == 2 else None,
            "shrink_s": rows[resumed_at + 1]["train/time"] - events["node_killed"],
            "resumed_at": resumed_at, "steps_redone": len(trained) - len(set(trained))}


def resume_step(record: dict) -> int:
    """The step the 1-worker group resumed from: the last the 2-worker group's history kept (the grow's
    checkpoint where it kept none)."""
    rows = {int(s): v for s, v in record["first_run_rows"].items()}
    return max([GROWN] + [s for s, v in rows.items() if v["train/world_size"] == 2])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--notice", choices=("both", "yes", "no"), default="both",
                        help="whether the node goes with a preemption notice, without, or both (each round)")
    parser.add_argument("--smoke", action="store_true", help="check that it runs: one round of 12 steps, with notice")
    parser.add_argument("--dataset", default="-", help="a tokenized dataset directory (default: tokenize "
                                                       "tinyshakespeare first)")
    parser.add_argument("--root", help="where the rounds' runs go (default: a new temporary directory)")
    parser.add_argument("--child", nargs=2, metavar=("DATASET", "ROOT"), help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if args.child:
        _child(*args.child, args.steps, args.overrides, notice=args.notice != "no")
        return
    if args.smoke:
        args.rounds, args.steps, args.notice = 1, 12, "yes"
    variants = {"both": [True, False], "yes": [True], "no": [False]}[args.notice]
    results: dict[bool, list[dict]] = {notice: [] for notice in variants}
    base = Path(args.root or tempfile.mkdtemp(prefix="gptray-elastic-"))
    for round_ in range(args.rounds):
        for notice in variants:  # interleaved, so both see the same load on a shared host
            root = base / (f"round{round_}" if notice else f"round{round_}-no-notice")
            root.mkdir(parents=True, exist_ok=True)
            record = run_scenario(args.dataset, str(root), args.steps, args.overrides, notice)
            mismatched = [s for s, d in record["expected_digests"].items()
                          if s in record["rows"] and record["rows"][s]["data/batch_digest"] != d]
            assert not mismatched, f"global batches differ from the data order's at steps {mismatched}"
            results[notice].append(summarize(record))
    print(f"{args.steps}-step elastic run on a local cluster, {args.rounds} round(s), checkpoint.interval=4, "
          f"checkpoint.preemption_check_interval=1; grown at step {GROWN}, the node gone at step {GONE}:")
    for notice, rows in results.items():
        print("with a preemption notice (drained as PREEMPTION, then killed):" if notice else
              "without notice (killed):")
        for key, label in (("grow_s", "node arrival → first 2-worker step"),
                           ("shrink_s", "node killed → first 1-worker step")):
            values = [r[key] for r in rows if r[key] is not None]
            if values:
                print(f"  {label:38s} median {statistics.median(values):6.1f} s (min {min(values):.1f}, "
                      f"max {max(values):.1f})")
        print(f"  1-worker group resumed from step       {sorted({r['resumed_at'] for r in rows})}")
        redone = [r["steps_redone"] for r in rows]
        print(f"  steps trained twice (grow + shrink)    median {statistics.median(redone):.1f} {redone}")
    print("global-batch digests equal the data order's at every step: yes")
    if not args.smoke:
        asks = preemption_ask_ms()
        print(f"ray.train.get_preemption_info() on 2 workers (a collective through Ray): median {asks[1]:.2f} ms "
              f"(min {asks[0]:.2f}, max {asks[2]:.2f}) over 190 calls after 10 to warm up")
    save, load, size = checkpoint_io("nano" if args.smoke else "tiny", 1 if args.smoke else 3)
    print(f"whole checkpoint of {size / 1e6:.0f} MB (model + AdamW): save {save:.2f} s ({size / save / 1e9:.2f} GB/s), "
          f"load {load:.2f} s ({size / load / 1e9:.2f} GB/s), medians")
    print(f"GPT-2 124M (1.49 GB of state) at these rates: save {1.49e9 * save / size:.1f} s, "
          f"load {1.49e9 * load / size:.1f} s")


def preemption_ask_ms(calls: int = 200) -> tuple[float, float, float]:
    """Min, median and max milliseconds of one ray.train.get_preemption_info() on a 2-worker Ray Train group
    (a fresh local Ray in a process apart): what checkpoint.preemption_check_interval spaces out."""
    code = f"""
import json, pathlib, statistics, tempfile, time, ray, ray.train
from ray.train import RunConfig, ScalingConfig
from ray.train.torch import TorchTrainer
from gptray.core.runtime import local_ray_options
ray.init(**local_ray_options(num_cpus=2))
out = pathlib.Path(tempfile.mkdtemp()) / "ms.json"

def loop(config):
    seconds = []
    for _ in range({calls}):
        start = time.perf_counter()
        ray.train.get_preemption_info()
        seconds.append(time.perf_counter() - start)
    if ray.train.get_context().get_world_rank() == 0:
        pathlib.Path(config["out"]).write_text(json.dumps([s * 1000 for s in seconds]))

TorchTrainer(loop, train_loop_config={{"out": str(out)}},
             scaling_config=ScalingConfig(num_workers=2, resources_per_worker={{"CPU": 0.5}}),
             run_config=RunConfig(storage_path=tempfile.mkdtemp())).fit()
ms = json.loads(out.read_text())[10:]  # the first calls warm up
print("ASKS", min(ms), statistics.median(ms), max(ms))
"""
    env = {**os.environ, "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=REPO,
                          timeout=300, check=True)
    return tuple(float(x) for x in re.search(r"ASKS (\S+) (\S+) (\S+)", done.stdout).groups())


def checkpoint_io(preset: str, rounds: int) -> tuple[float, float, int]:
    """Median seconds to torch.save and torch.load a preset's model and AdamW state (one step taken, so the
    moments exist) on local disk, and its bytes: what a resize's checkpoint costs, for the projection."""
    import torch

    from gptray.config import load_config
    from gptray.model import GPT

    model = GPT(load_config(None, [f"model.preset={preset}"]).model)
    optimizer = torch.optim.AdamW(model.parameters())
    model(torch.zeros(1, 8, dtype=torch.long))[0].sum().backward()
    optimizer.step()
    state = {"model": model.state_dict(), "optimizer": optimizer.state_dict()}
    saves, loads = [], []
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "state.pt"
        for _ in range(rounds):
            start = time.perf_counter()
            with open(path, "wb") as f:
                torch.save(state, f)
                f.flush()
                os.fsync(f.fileno())  # on the disk, not only in the page cache
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            torch.load(path, weights_only=True)
            loads.append(time.perf_counter() - start)
        size = path.stat().st_size
    return statistics.median(saves), statistics.median(loads), size


if __name__ == "__main__":
    main()
