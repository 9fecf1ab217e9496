"""Every benchmark runs as BENCHMARKS.md documents it: its first documented command line, plus --smoke (tiny sizes).

The command lines are read from BENCHMARKS.md itself, so a change of defaults or of the documented arguments that
breaks one fails here. Each runs in this process, on the session's Ray instance where it uses Ray (a benchmark
uses a Ray it finds started as it is). gpu_check's CPU run is tests/unit/test_gpu_check.py's.
"""

from __future__ import annotations

import importlib.util
import re
import shlex
import sys

import pytest
import ray
import torch

from helpers import REPO

BENCHMARKS = sorted(p.stem for p in (REPO / "benchmarks").glob("*.py"))
TESTED_ELSEWHERE = {"gpu_check": "tests/unit/test_gpu_check.py runs its --cpu-smoke",
                    # its scenario needs a multi-node cluster of its own (a process apart), once a session
                    "elastic_resize": "tests/integration/test_elastic.py runs its documented command with --smoke"}
USES_RAY = {"train_throughput", "tokenize_throughput", "checkpoint_blocking", "first_five_minutes", "local_mode",
            "harness_in_training"}


def documented_arguments(name: str) -> list[str]:
    """The arguments of the first `python benchmarks/NAME.py …` command in BENCHMARKS.md (comments dropped)."""
    for line in (REPO / "BENCHMARKS.md").read_text().splitlines():
        match = re.search(rf"python benchmarks/{name}\.py(.*)", line)
        if match:
            return shlex.split(re.split(r"[#`]", match.group(1))[0].rstrip("\\ "))
    raise AssertionError(f"BENCHMARKS.md documents no command line of benchmarks/{name}.py")


def load(name: str):
    """The benchmark script as a module (registered: its dataclasses look their module up), loaded once."""
    module_name = f"benchmark_{name}"
    if module_name not in sys.modules:
        spec = importlib.util.spec_from_file_location(module_name, REPO / "benchmarks" / f"{name}.py")
        sys.modules[module_name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(sys.modules[module_name])
        ray.cloudpickle.register_pickle_by_value(sys.modules[module_name])  # Ray workers cannot import it by name
    return sys.modules[module_name]


@pytest.fixture
def torch_threads():
    """Benchmarks set torch's thread count for their measurements: put the session's back."""
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_every_benchmark_is_documented_and_has_a_smoke_mode():
    for name in BENCHMARKS:
        documented_arguments(name)
        assert "--smoke" in load(name).__doc__, f"benchmarks/{name}.py: its usage line does not show --smoke"
    assert set(TESTED_ELSEWHERE) | {name for name, *_ in CASES} == set(BENCHMARKS)


# (benchmark, what its output must show)
CASES = [
    ("train_throughput", "Ray overhead:"),
    ("tokenize_throughput", "median     rounds all"),
    ("streaming_data", "## mixture share per global batch of 512"),
    ("tracking_overhead", "async: 2 of 2 train/loss points on the server"),
    ("checkpoint_blocking", "fsdp-sharded-async"),
    ("first_five_minutes", "| quickstart | 1337 | 4 |"),
    ("local_mode", "local mode / 1 worker:"),
    ("attention_masks", "flex forward  median"),
    ("harness_in_training", "held per evaluation in the loop (train/lm_eval_blocked_s)"),
]


@pytest.mark.slow
@pytest.mark.parametrize("name, shows", CASES, ids=[name for name, _ in CASES])
def test_a_benchmark_runs_as_documented(name, shows, request, tmp_path, capsys, torch_threads):
    if name in USES_RAY:
        request.getfixturevalue("ray_session")
    arguments = documented_arguments(name) + ["--smoke"]
    if name == "tokenize_throughput":
        arguments += ["--workdir", str(tmp_path)]
    if name == "first_five_minutes":
        arguments += ["--out", str(tmp_path)]
    if name == "harness_in_training":  # the session's tokens, not a tokenize job of its own
        arguments += ["--dataset", request.getfixturevalue("shakespeare_dataset").dataset_dir]
    assert load(name).main(arguments) in (0, None)
    assert shows in capsys.readouterr().out
