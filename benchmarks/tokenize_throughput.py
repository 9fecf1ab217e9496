"""Benchmark: tokens/s of the tokenize job (Ray Data) against an earlier commit's job and plain tiktoken.

    python benchmarks/tokenize_throughput.py [--mb 60 200] [--rounds 4] [--cpus N] [--shard-tokens 2000000]
                                             [--before REV [REV ...]] [--address HOST:PORT] [--worker-niceness 0]
                                             [--no-plain] [--workdir DIR] [--smoke]

With --before REV (a git revision of this repository, e.g. the commit before the job moved to Ray
Data; several may be given), each round runs, interleaved, at each --mb size: plain tiktoken, then this
tree's job and each REV's job, in an order that turns round by round. Each job runs in a fresh process
with its own local Ray instance, which reports its tokens/s, driver CPU seconds per 1B tokens, the
driver's peak resident memory and the largest peak of any Ray worker process (VmHWM). ray.init is not
timed, and it starts one idle worker process per CPU: a job of plain Ray tasks runs in those, while Ray
Data's two cluster actors take them and its tasks wait for workers started inside the job (part of what
a Ray Data job pays once here). The summary gives medians of the rounds with their min–max spread, and
with two or more sizes each job's seconds and driver CPU split into a fixed part per job and a marginal
part per token (from the smallest and the largest size: the marginal rate is what a much larger job
runs at, the fixed part what it pays once).

With --address (and --before), every job is instead a driver of the running Ray cluster at that address
(`ray start --head` beforehand), as a `ray job submit` job is: each job's workers start inside it, Ray
Data's cluster actors stay up from one job to the next (one untimed job of this tree starts them first),
and the CPU counted is the cluster's. Its workers' niceness is the cluster's (RAY_worker_niceness at
`ray start`).

It makes (once, then reuses) a JSON-lines corpus of at least --mb MB: documents of 2–30 random
tinyshakespeare speeches each (found through $GPTRAY_CORPORA or gptray's corpus cache). Then, for
each round, it measures
  1. plain tiktoken in this process, with the documents already parsed into memory (reading is not
     timed): the faster of `encode_ordinary_batch(batch, num_threads=1)` and `encode_to_numpy` per
     document, over batches of 1,024 documents (the most favourable baseline);
  2. the gptray tokenize job on a local Ray instance with --cpus CPUs: `tokenize_corpus` from config
     to manifest (read, parse, tokenize, split, write zstd Parquet shards, checksums), Ray already
     started, shards of about --shard-tokens tokens;
(with --before, --no-plain leaves 1 out: on a large corpus its one thread takes longer than the jobs)
and prints both and the ratio  job tokens/s / (--cpus × plain tokens/s), with the median of the rounds
(without --before, of those after the first: round 1 starts the Ray instance's workers). It also prints
the CPU time spent per token (the job's counts the driver and every process of its Ray instance) and the
driver's own CPU seconds per 1B tokens and per read task: what a larger cluster's single driver would
spend. On a machine that other work also loads, wall-clock rates move from round to round, CPU time per
token much less.

Both sides tokenize with GPT-2's tiktoken (the job's data.tokenizer is pinned to gpt2, whatever gptray's
default tokenizer is), so their token counts must be equal; a round where they differ stops the benchmark.
--smoke checks that it runs, in seconds: a 1 MB corpus, one round, this tree's job only, and an already
started Ray (a test's) used as it is.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

GPT2 = "data.tokenizer=gpt2"  # the plain side's tokenizer: the job must tokenize with the same one


def make_corpus(path: Path, megabytes: int, seed: int = 0) -> None:
    from gptray.data.corpora import corpus_file

    text = corpus_file("tinyshakespeare").read_text(encoding="utf-8")
    speeches = [p for p in re.split(r"\n\s*\n", text) if p.strip()]
    rng = random.Random(seed)
    tmp = path.with_suffix(".tmp")
    size = 0
    with open(tmp, "w", encoding="utf-8") as out:
        while size < megabytes * 1_000_000:
            document = "\n\n".join(rng.choice(speeches) for _ in range(rng.randint(2, 30)))
            line = json.dumps({"text": document}) + "\n"
            out.write(line)
            size += len(line.encode())
    tmp.rename(path)


def plain_tiktoken(path: Path) -> dict[str, tuple[int, float, float]]:
    """Tokens, wall seconds and CPU seconds of encoding the parsed documents in this process with each of
    tiktoken's two plain APIs (documents already in memory, results dropped batch by batch)."""
    import tiktoken

    documents = [json.loads(line)["text"] for line in path.open(encoding="utf-8")]
    encoding = tiktoken.get_encoding("gpt2")

    def ordinary_batch(batch):  # tiktoken's own batch API, as its README shows
        return sum(len(ids) for ids in encoding.encode_ordinary_batch(batch, num_threads=1))

    def to_numpy(batch):  # what the job uses: same tokens, no Python list per document
        return sum(len(encoding.encode_to_numpy(d, allowed_special=set(), disallowed_special=())) for d in batch)

    results = {}
    for name, encode in (("encode_ordinary_batch", ordinary_batch), ("encode_to_numpy", to_numpy)):
        cpu, started = time.process_time(), time.perf_counter()
        tokens = sum(encode(documents[i:i + 1024]) for i in range(0, len(documents), 1024)) + len(documents)  # EOTs
        results[name] = (tokens, time.perf_counter() - started, time.process_time() - cpu)
    return results


def ray_job(path: Path, out: Path, ray_dir: str, shard_tokens: int) -> tuple[int, float, float, float, int]:
    """Tokens, wall seconds, CPU seconds of the driver plus every process of the Ray instance, the driver's
    own CPU seconds, and read tasks."""
    from gptray.config import load_config
    from gptray.data.tokenize_job import tokenize_corpus

    shutil.rmtree(out, ignore_errors=True)
    config = load_config(None, [f"data.sources=[{{path: {path}}}]", f"data.dataset_dir={out}", GPT2,
                                "data.val_fraction=0.001", f"data.shard_tokens={shard_tokens}"])
    driver = time.process_time()
    cpu = driver + ray_cpu_seconds(ray_dir)
    started = time.perf_counter()
    result = tokenize_corpus(config)
    seconds = time.perf_counter() - started
    driver = time.process_time() - driver
    return (result.manifest.tokens, seconds, time.process_time() + ray_cpu_seconds(ray_dir) - cpu, driver,
            result.tasks)


def ray_cpu_seconds(ray_dir: str) -> float:
    """CPU time used so far by our Ray instance: the processes whose command line names its temp dir
    (raylet, GCS, …) and all their descendants (the workers, which rename themselves `ray::…`)."""
    ticks = os.sysconf("SC_CLK_TCK")
    parents, times, roots = {}, {}, set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            parents[pid], times[pid] = fields[1], (int(fields[11]) + int(fields[12])) / ticks  # ppid, utime+stime
            if ray_dir.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                roots.add(pid)
        except OSError:
            continue  # the process ended meanwhile
    ours = set(roots)
    while True:
        more = {pid for pid, parent in parents.items() if parent in ours} - ours
        if not more:
            return sum(times[pid] for pid in ours)
        ours |= more


def worker_peak_mb(ray_dir: str) -> float:
    """The largest peak resident memory (VmHWM) of a Ray worker process of our instance (the processes under the
    ones whose command line names its temp dir), among those still alive."""
    parents, roots = {}, set()
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            parents[pid] = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1]
            if ray_dir.encode() in Path(f"/proc/{pid}/cmdline").read_bytes():
                roots.add(pid)
        except OSError:
            continue
    ours = set(roots)
    while more := {pid for pid, parent in parents.items() if parent in ours} - ours:
        ours |= more
    peak = 0
    for pid in ours:
        try:
            if Path(f"/proc/{pid}/cmdline").read_bytes().startswith(b"ray::"):
                match = re.search(r"VmHWM:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
                peak = max(peak, int(match.group(1)) if match else 0)
        except OSError:
            continue
    return peak / 1024


def job_only(corpus: str, out: str, cpus: int, shard_tokens: int, address: str | None) -> int:
    """Child process: one job on a fresh local Ray instance, or as a driver of the cluster at `address`; prints its
    measurements as one JSON line."""
    import logging

    import ray

    from gptray.core.runtime import configure_logging

    configure_logging(logging.WARNING)
    if address:  # the job's workers import the tree this process runs (PYTHONPATH), whatever the cluster's is
        ray.init(address=address, runtime_env={"env_vars": {"PYTHONPATH": os.environ["PYTHONPATH"]}},
                 log_to_driver=False)
        ray_tmp = ray._private.worker._global_node.get_temp_dir_path()
    else:
        ray_tmp = tempfile.mkdtemp(prefix="gptray-bench-ray-", dir="/tmp")
        ray.init(address="local", num_cpus=cpus, include_dashboard=False, _temp_dir=ray_tmp, log_to_driver=False)
    try:
        tokens, seconds, cpu, driver, tasks = ray_job(Path(corpus), Path(out), ray_tmp, shard_tokens)
        workers = worker_peak_mb(ray_tmp)
    finally:
        ray.shutdown()
        if not address:
            shutil.rmtree(ray_tmp, ignore_errors=True)
    driver_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print("JOB " + json.dumps({"tokens": tokens, "seconds": seconds, "cpu": cpu, "driver_cpu": driver,
                               "tasks": tasks, "driver_peak_mb": driver_peak, "worker_peak_mb": workers}))
    return 0


def run_job(tree: Path, corpus: Path, out: Path, args) -> dict:
    """One job of the gptray in `tree`, in a fresh process (its own Ray), measured by job_only."""
    env = dict(os.environ, PYTHONPATH=str(tree), RAY_worker_niceness=str(args.worker_niceness))
    address = ["--address", args.address] if args.address else []
    done = subprocess.run([sys.executable, __file__, "--job-only", str(corpus), str(out), "--cpus", str(args.cpus),
                           "--shard-tokens", str(args.shard_tokens), *address], env=env, cwd=tree,
                          capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("JOB ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"the job of {tree} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][4:])


def spread(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    """Median and min–max of a list of values, scaled."""
    v = [x / scale for x in values]
    return f"{statistics.median(v):.{digits}f} ({min(v):.{digits}f}–{max(v):.{digits}f})"


def compare(args) -> int:
    """Interleaved rounds at each size: plain tiktoken, then this tree's job and each --before revision's, their
    order turning round by round."""
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    trees = {"ray data": REPO}
    for rev in args.before:
        trees[rev] = Path(tempfile.mkdtemp(prefix="gptray-before-"))
        archive = subprocess.run(["git", "-C", str(REPO), "archive", rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(trees[rev])], input=archive.stdout, check=True)
    where = (f"jobs on the cluster at {args.address}" if args.address else
             f"jobs on {args.cpus} CPU(s), workers at nice {args.worker_niceness}")
    print(f"machine    {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f} at start; {where}; before = "
          f"{', '.join(args.before)}")
    jobs = list(trees)
    by_size: dict[int, dict[str, list[dict]]] = {}
    try:
        for mb in args.mb:
            corpus = work / f"corpus-{mb}mb.jsonl"
            if not corpus.exists():
                make_corpus(corpus, mb)
            rows: dict[str, list[dict]] = {name: [] for name in ([] if args.no_plain else ["plain"]) + jobs}
            if args.address and mb == args.mb[0]:  # Ray Data's cluster actors start with a cluster's first job
                run_job(REPO, corpus, work / "shards-0", args)
            for round_number in range(1, args.rounds + 1):
                if not args.no_plain:
                    tokens, seconds, cpu = min(plain_tiktoken(corpus).values(), key=lambda r: r[1])
                    rows["plain"].append({"tokens": tokens, "seconds": seconds, "cpu": cpu})
                turn = (round_number - 1) % len(jobs)
                for name in jobs[turn:] + jobs[:turn]:
                    rows[name].append(run_job(trees[name], corpus, work / f"shards-{jobs.index(name)}", args))
                line = ", ".join(f"{name} {r[-1]['tokens'] / r[-1]['seconds'] / 1e6:.2f} M tokens/s"
                                 for name, r in rows.items())
                print(f"{mb} MB round {round_number}: {line}; load average {os.getloadavg()[0]:.2f}", flush=True)
                if len({r[-1]["tokens"] for r in rows.values()}) != 1:
                    print(f"token counts differ: {[r[-1]['tokens'] for r in rows.values()]}", file=sys.stderr)
                    return 1
            _summary(mb, rows, args.cpus)
            by_size[mb] = rows
    finally:
        for name, tree in trees.items():
            if name != "ray data":
                shutil.rmtree(tree, ignore_errors=True)
    if len(by_size) > 1:
        _marginal(by_size, jobs)
    return 0


def _marginal(by_size: dict[int, dict[str, list[dict]]], jobs: list[str]) -> None:
    """Each job's seconds and the driver's CPU split into a fixed part and a part per token, from the smallest and
    the largest size: (median at the larger - at the smaller) / (their difference in tokens). The part per token is
    what a job many times larger (a cluster's) pays per token; the fixed part, once per job."""
    small, large = min(by_size), max(by_size)
    print(f"## job seconds, {small} MB against {large} MB: fixed per job + marginal rate (medians)")
    rates = {}
    for name in jobs:
        seconds_a, seconds_b, per_token, fixed = _fit(by_size, small, large, name, "seconds")
        rates[name] = 1 / per_token
        print(f"  job, {name:<9}      {seconds_a:.2f} s at {small} MB, {seconds_b:.2f} s at {large} MB: marginal "
              f"{rates[name] / 1e6:.2f} M tokens/s, fixed {fixed:.2f} s per job")
    for name in jobs[1:]:
        print(f"  marginal rate, ray data / {name:<9}  {rates['ray data'] / rates[name]:.2f}")
    print(f"## driver CPU, {small} MB against {large} MB: fixed per job + marginal per 1B tokens (medians)")
    for name in jobs:
        cpu_a, cpu_b, per_token, fixed = _fit(by_size, small, large, name, "driver_cpu")
        print(f"  job, {name:<9}      {cpu_a:.2f} s at {small} MB, {cpu_b:.2f} s at {large} MB: marginal "
              f"{per_token * 1e9:.1f} CPU s per 1B tokens, fixed {fixed:.2f} s per job")


def _fit(by_size: dict[int, dict[str, list[dict]]], small: int, large: int, name: str,
         key: str) -> tuple[float, float, float, float]:
    """A job's median `key` at the two sizes, and the line through them: its part per token and its fixed part."""
    (tokens_a, value_a), (tokens_b, value_b) = [
        (by_size[mb][name][0]["tokens"], statistics.median(r[key] for r in by_size[mb][name])) for mb in (small, large)]
    per_token = (value_b - value_a) / (tokens_b - tokens_a)
    return value_a, value_b, per_token, value_a - per_token * tokens_a


def _summary(mb: int, rows: dict[str, list[dict]], cpus: int) -> None:
    rate = {name: [r["tokens"] / r["seconds"] for r in runs] for name, runs in rows.items()}
    jobs = [name for name in rows if name != "plain"]
    print(f"## {mb} MB, {rows[jobs[0]][0]['tokens']:,} tokens, {len(rate[jobs[0]])} rounds: median (min–max)")
    if "plain" in rate:
        print(f"  {cpus} × plain tiktoken   {spread([cpus * r for r in rate['plain']], 1e6)} M tokens/s")
    for name in jobs:
        runs = rows[name]
        print(f"  job, {name:<9}      {spread(rate[name], 1e6)} M tokens/s; driver "
              f"{spread([r['driver_cpu'] / r['tokens'] * 1e9 for r in runs], 1, 1)} CPU s per 1B tokens, "
              f"{spread([r['driver_cpu'] for r in runs])} s per job; peak memory "
              f"driver {spread([r['driver_peak_mb'] for r in runs], 1, 0)} MB, a worker "
              f"{spread([r['worker_peak_mb'] for r in runs], 1, 0)} MB; {runs[0]['tasks']} read tasks")
    for name in jobs[1:]:
        ratios = [a / b for a, b in zip(rate["ray data"], rate[name])]
        print(f"  ray data / {name:<9}  {spread(ratios)} (per round: {', '.join(f'{r:.2f}' for r in ratios)})")
    if "plain" in rate:
        print(f"  ray data / {cpus} × plain  "
              f"{spread([a / (cpus * p) for a, p in zip(rate['ray data'], rate['plain'])])}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mb", type=int, nargs="+", default=[200], help="corpus sizes in MB (each at least 50)")
    parser.add_argument("--before", nargs="+", metavar="REV",
                        help="git revisions whose jobs to measure against, interleaved (not with --smoke)")
    parser.add_argument("--job-only", nargs=2, metavar=("CORPUS", "OUT"), help=argparse.SUPPRESS)
    parser.add_argument("--rounds", type=int, default=4, help="measure both this many times, interleaved")
    parser.add_argument("--shard-tokens", type=int, default=2_000_000,
                        help="data.shard_tokens: the plan sizes read tasks to about one shard each")
    parser.add_argument("--cpus", type=int, default=os.cpu_count(), help="CPUs of the local Ray instance")
    parser.add_argument("--address", help="run each job as a driver of the Ray cluster at this address (`ray start "
                                          "--head` beforehand), as `ray job submit` does (with --before)")
    parser.add_argument("--worker-niceness", type=int, default=0,
                        help="niceness of the Ray workers (Ray's own default is 15; this process runs at 0)")
    parser.add_argument("--no-plain", action="store_true",
                        help="with --before, compare the jobs only: plain tiktoken on one thread takes longer than "
                             "the jobs on a large corpus")
    parser.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "gptray-bench"),
                        help="where the corpus is kept and shards are written")
    parser.add_argument("--smoke", action="store_true", help="check that it runs: a 1 MB corpus, one round, seconds")
    args = parser.parse_args(argv)
    if args.job_only:
        return job_only(*args.job_only, args.cpus, args.shard_tokens, args.address)
    if args.address and not args.before:
        parser.error("--address compares jobs: give --before REV too")
    if args.smoke:
        args.mb, args.rounds, args.before = [1], 1, None
    elif min(args.mb) < 50:
        parser.error("--mb must be at least 50")
    if args.no_plain and not args.before:
        parser.error("--no-plain compares the jobs of --before revisions with this tree's: give --before")
    if args.before:
        return compare(args)
    args.mb = args.mb[0]
    import logging

    import ray

    from gptray.core.runtime import configure_logging

    configure_logging(logging.WARNING)
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    corpus = work / f"corpus-{args.mb}mb.jsonl"
    if not corpus.exists():
        print(f"making {corpus} ...", flush=True)
        make_corpus(corpus, args.mb)
    print(f"corpus     {corpus} ({corpus.stat().st_size / 1e6:.0f} MB)")
    print(f"machine    {os.cpu_count()} CPU(s), load average {os.getloadavg()[0]:.2f} at start")

    # Ray runs its workers at nice 15 unless told otherwise: on a machine that other work also loads,
    # they would yield to it while the plain baseline (nice 0) would not. Compare on equal terms.
    os.environ.setdefault("RAY_worker_niceness", str(args.worker_niceness))
    started = time.perf_counter()
    started_here = not ray.is_initialized()
    if started_here:
        ray_tmp = tempfile.mkdtemp(prefix="gptray-bench-ray-", dir="/tmp")
        ray.init(address="local", num_cpus=args.cpus, include_dashboard=False, _temp_dir=ray_tmp,
                 log_to_driver=False)
    else:  # a smoke run inside a test's Ray: its processes are the ones counted
        ray_tmp = ray._private.worker._global_node.get_temp_dir_path()
    print(f"ray.init   {time.perf_counter() - started:.1f} s (not counted), {args.cpus} CPU(s), workers at nice "
          f"{os.environ['RAY_worker_niceness']}")
    plain_rates, list_rates, job_rates, plain_cpu, job_cpu, driver_cpu = [], [], [], [], [], []
    try:
        for round_number in range(1, args.rounds + 1):
            results = plain_tiktoken(corpus)
            tokens, seconds, cpu = min(results.values(), key=lambda r: r[1])  # the faster API
            plain_rates.append(tokens / seconds)
            plain_cpu.append(tokens / cpu)
            list_tokens, list_seconds, _ = results["encode_ordinary_batch"]
            list_rates.append(list_tokens / list_seconds)
            print(f"round {round_number}    plain tiktoken, 1 thread: {tokens:,} tokens; encode_ordinary_batch "
                  f"{list_rates[-1] / 1e6:.2f} M tokens/s, encode_to_numpy "
                  f"{tokens / results['encode_to_numpy'][1] / 1e6:.2f} M tokens/s", flush=True)
            job_tokens, seconds, cpu, driver, tasks = ray_job(corpus, work / "shards", ray_tmp, args.shard_tokens)
            job_rates.append(job_tokens / seconds)
            job_cpu.append(job_tokens / cpu)
            driver_cpu.append(driver)
            print(f"           gptray tokenize job: {job_tokens:,} tokens, {tasks} read task(s), in {seconds:.1f} s = "
                  f"{job_rates[-1] / 1e6:.2f} M tokens/s ({cpu:.1f} CPU s, driver {driver:.2f} CPU s = "
                  f"{driver / job_tokens * 1e9:.0f} s per 1B tokens, {driver / tasks * 1e3:.0f} ms per task; load "
                  f"average {os.getloadavg()[0]:.2f}); ratio {job_rates[-1] / (args.cpus * plain_rates[-1]):.2f}",
                  flush=True)
            if job_tokens != tokens:
                print(f"           token counts differ: job {job_tokens:,} vs plain {tokens:,}", file=sys.stderr)
                return 1
    finally:
        if started_here:
            ray.shutdown()
            shutil.rmtree(ray_tmp, ignore_errors=True)
    warm = slice(1, None) if args.rounds > 1 else slice(None)  # round 1 starts Ray's worker processes
    ratios = [j / (args.cpus * p) for j, p in zip(job_rates, plain_rates)]
    plain, job = statistics.median(plain_rates[warm]), statistics.median(job_rates[warm])
    print(f"median     rounds {'2+' if args.rounds > 1 else 'all'}: plain (faster API) {plain / 1e6:.2f} M tokens/s; "
          f"job {job / 1e6:.2f} M tokens/s")
    print(f"ratio      job / ({args.cpus} × plain), median of those rounds = {statistics.median(ratios[warm]):.2f}; "
          "per round " + ", ".join(f"{r:.2f}" for r in ratios)
          + f"; against encode_ordinary_batch alone {job / (args.cpus * statistics.median(list_rates[warm])):.2f}")
    # Other load on the machine moves wall-clock rates; CPU time per token much less so.
    efficiency = statistics.median(job_cpu[warm]) / statistics.median(plain_cpu[warm])
    print(f"CPU        tokens per CPU second: plain {statistics.median(plain_cpu[warm]) / 1e6:.2f} M, job (driver + "
          f"all Ray processes) {statistics.median(job_cpu[warm]) / 1e6:.2f} M; efficiency {efficiency:.2f}; driver "
          f"{statistics.median(driver_cpu[warm]) / job_tokens * 1e9:.1f} CPU s per 1B tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
