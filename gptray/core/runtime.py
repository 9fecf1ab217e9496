"""Process-level set-up shared by the CLI, pipelines and workers: Ray connection, Ray Train's settings, logging."""

from __future__ import annotations

import logging
import os
import socket
import sys

LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s | %(message)s"
# `gptray --verbose` sets it; Ray workers of a local cluster inherit it from the driver (on a cluster, give it
# to the job: `ray job submit --runtime-env-json '{"env_vars": {"GPTRAY_VERBOSE": "1"}}'`).
VERBOSE_ENV = "GPTRAY_VERBOSE"
# Ray Train's preemption watcher: an actor per run that tells workers their node is being drained (a spot
# reclaim) through ray.train.get_preemption_info(). Starting it logs a core_worker.cc ERROR line about its
# constructor arguments at every fit, so only an elastic run (ray.num_workers: [min, max]), which checkpoints on
# its notice, starts it; True starts it for every run (the environment variable, if a user sets it, still wins).
RAY_TRAIN_PREEMPTION_WATCHER = False
# Ray Train turns a worker's print() into a log record of its root logger. gptray's workers never print (they
# log), but Ray's worker-side progress bars (progress_bar.ray_worker_bar: rank 0's bar of steps) are printed
# state lines that the driver draws as a bar: logged, they arrive as empty lines and no bar is drawn.
RAY_TRAIN_PRINT_PATCH = False
# Ray Tune warns "The `on_step_begin` operation took 0.8 s, which may be a performance bottleneck" when a step of
# its controller loop passes 0.5 s, which on a busy small machine happens in a sweep whose trials run minutes:
# nothing a user can act on. Five seconds still flags a controller that really stalls.
RAY_TUNE_SLOW_STEP_WARNING_S = 5.0
# Ray Data (2.60) fetches each task output's metadata on a background thread by default, and so learns that a task
# has ended one more `ray.wait` round (up to 0.1 s each) later: between two tokenize read tasks a CPU idled ~0.15 s,
# a quarter of a 0.5 s task (BENCHMARKS.md). gptray's Ray Data tasks return few outputs, which inline fetching (Ray
# Data's other mode) handles at no cost.
RAY_DATA_METADATA_ON_THREAD = False
# Ray Train logs every rank's every ray.train.report at INFO, the whole TrainingReport(...) with its metrics,
# through a logger named by the path of this module (not under "ray.train", so LoggingConfig does not reach it).
RAY_TRAIN_REPORT_LOGGER_MODULE = "ray.train.v2._internal.execution.context"


def verbose() -> bool:
    """Whether Ray's own chatter goes to the console too (`gptray --verbose`)."""
    return os.environ.get(VERBOSE_ENV, "") not in ("", "0")


def ray_train_environment(elastic: bool = False) -> dict[str, str]:
    """The environment variables through which gptray sets Ray Train (its driver passes them to every worker).
    An elastic run (ray.num_workers: [min, max], typically on spot nodes) gets the preemption watcher: its
    notice is when the loop checkpoints before a node goes (gptray/train/preemption.py)."""
    watcher = RAY_TRAIN_PREEMPTION_WATCHER or elastic
    return {"RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "1" if watcher else "0",
            "RAY_TRAIN_ENABLE_PRINT_PATCH": "1" if RAY_TRAIN_PRINT_PATCH else "0"}


def use_ray_tune_settings() -> None:
    """Ray Tune's settings gptray runs with, as environment variables (a user's own still win); before Ray
    Tune is first imported, which reads them then."""
    os.environ.setdefault("TUNE_WARN_THRESHOLD_S", str(RAY_TUNE_SLOW_STEP_WARNING_S))


def use_ray_data_settings() -> None:
    """Ray Data's settings gptray runs with, as environment variables (a user's own still win); before Ray Data is
    first imported, which reads them then."""
    os.environ.setdefault("RAY_DATA_METADATA_PREFETCH_ON_THREAD", "1" if RAY_DATA_METADATA_ON_THREAD else "0")


def configure_logging(level: int = logging.INFO) -> None:
    """Send gptray's log records to stderr (once per process; Ray workers call it too), and unless verbose keep
    Ray Train's per-report dumps out of the console."""
    logger = logging.getLogger("gptray")
    logger.setLevel(level)
    if not any(getattr(h, "_gptray", False) for h in logger.handlers):
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter(LOG_FORMAT, datefmt="%H:%M:%S"))
        handler._gptray = True
        logger.addHandler(handler)
        logger.propagate = False
    if not verbose():
        route_ray_train_reports_to_files()


def route_ray_train_reports_to_files() -> None:
    """Send Ray Train's "Reporting training result N: TrainingReport(...)" records only to the files the root
    logger writes (Ray Train's ray-train-app-worker-*.log in the session's logs/train), not to the console.

    Does nothing where Ray Train is not loaded (a process that never trains); in a Ray Train worker, Ray has
    configured the root logger before the training function (and so this) runs.
    """
    module = sys.modules.get(RAY_TRAIN_REPORT_LOGGER_MODULE)
    if module is None:
        return
    reports = logging.getLogger(module.__file__)
    files = [h for h in logging.getLogger().handlers if not _is_console(h)]
    reports.handlers = [h for h in reports.handlers if not _is_console(h)] + \
        [h for h in files if h not in reports.handlers]
    reports.propagate = False


def _is_console(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(handler, logging.FileHandler)


def init_ray(address: str | None, num_cpus: int | None = None, elastic: bool = False) -> None:
    """Connect to Ray as `ray.address` and `ray.num_cpus` say, unless this process already is.

    address null: join the cluster this process belongs to (`ray job submit`, RAY_ADDRESS, or a
    local `ray start`), otherwise start a local instance. "local": always start a fresh local
    instance, with `num_cpus` CPUs when given.
    """
    import ray

    for name, value in ray_train_environment(elastic).items():  # before any TorchTrainer: Ray Train reads them here
        os.environ.setdefault(name, value)
    use_ray_data_settings()  # before the tokenize job or distributed eval first imports ray.data
    if ray.is_initialized():
        return
    from ray._private.services import canonicalize_bootstrap_address

    if num_cpus is not None or address == "local" or canonicalize_bootstrap_address(address) is None:
        ray.init(**local_ray_options(num_cpus))  # no cluster to join: this process starts one
    else:
        ray.init(address=address)


def local_ray_options(num_cpus: int | None = None, **more) -> dict:
    """ray.init() arguments for a fresh local Ray instance whose processes ask their own dashboard for cluster state.

    Ray Train's PlacementGroupCleaner (an actor per run) asks the state API every second whether the run's
    controller is alive, and removes the run's placement group when told it is not. With no address given, the
    state API finds "the" dashboard through /tmp/ray/ray_current_cluster or a default port (8265): on a machine
    where another Ray instance runs (a `ray start` head, a second job, another user's tests) it asks that one,
    which does not know the controller, and the live run's workers lose their placement group (a run hangs or
    dies). So a local instance gets its dashboard on a port of its own, and every one of its processes is told
    that address (RAY_API_SERVER_ADDRESS, which the state API reads before anything else).
    """
    port = free_port()
    runtime_env = more.pop("runtime_env", None) or {}
    env_vars = {**runtime_env.get("env_vars", {}), "RAY_API_SERVER_ADDRESS": f"http://127.0.0.1:{port}"}
    options = {"address": "local", "include_dashboard": True, "dashboard_port": port,
               "runtime_env": {**runtime_env, "env_vars": env_vars}, **more}
    if num_cpus is not None:
        options["num_cpus"] = num_cpus
    return options


def free_port() -> int:
    """A TCP port on the loopback that is free now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
