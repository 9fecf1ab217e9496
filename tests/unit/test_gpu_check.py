"""benchmarks/gpu_check.py (issue 21): its CPU smoke run, a run without Ray or MLflow, checks that fail."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest
import torch

from helpers import REPO

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
SECTIONS = ["environment", "matmul_peak", "precision", "flash", "fused_adamw", "checkpoint", "fsdp", "compile",
            "throughput", "ray_throughput", "memory", "mask_cost", "mask_flex"]
CPU_CHECKS = ["precision", "fused_adamw", "checkpoint", "fsdp", "compile"]
CUDA_ONLY = ["flash", "memory", "mask_flex"]
VARIANTS = ["default", "rmsnorm", "swiglu", "rope", "sliding_window", "alternating", "document_mask"]

# Runs the script as the GPU machine is: no Ray or MLflow (its image has PyYAML, pyarrow, tiktoken).
WITHOUT_OPTIONAL_PACKAGES = """
import importlib.abc, runpy, sys
HIDDEN = {"ray", "mlflow"}
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in HIDDEN:
            raise ModuleNotFoundError(f"No module named {name!r} (hidden by the test)", name=name)
sys.meta_path.insert(0, Hide())
script, *sys.argv[1:] = sys.argv[1:]
sys.argv[0] = script
runpy.run_path(script, run_name="__main__")
"""


def run_script(*args: str, without_optional: bool = False) -> subprocess.CompletedProcess:
    command = [sys.executable, "-c", WITHOUT_OPTIONAL_PACKAGES, str(SCRIPT)] if without_optional \
        else [sys.executable, str(SCRIPT)]
    return subprocess.run([*command, *args], capture_output=True, text=True, timeout=180, cwd=REPO)


@pytest.fixture(scope="module")
def gpu_check():
    """The script as a module, for its functions, on one thread as its smoke run (restored after)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    spec = importlib.util.spec_from_file_location("gpu_check", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_check"] = module  # its dataclasses look their module up while it runs
    spec.loader.exec_module(module)
    yield module
    del sys.modules["gpu_check"]
    torch.set_num_threads(threads)


def test_cpu_smoke_runs_every_section(tmp_path):
    out = tmp_path / "x.json"
    done = run_script("--cpu-smoke", "--out", str(out))
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    sections = results["sections"]
    assert list(sections) == SECTIONS
    assert results["meta"]["mode"] == "cpu-smoke" and results["meta"]["exit_status"] == 0
    for name in CPU_CHECKS:  # ran on CPU, and every check in them passed against a stated tolerance
        assert sections[name]["status"] == "passed", (name, sections[name])
        for item in sections[name]["checks"]:
            assert item["passed"] and item["comparisons"], item
            assert all("tolerance" in c or "expected" in c for c in item["comparisons"].values()), item
    for name in CUDA_ONLY:
        assert sections[name] == {"status": "skipped: needs CUDA"}
    precision = [c["name"] for c in sections["precision"]["checks"]]
    assert precision == [f"{v} {p}" for v in VARIANTS for p in ("bf16", "fp16")]
    assert sections["checkpoint"]["checks"][0]["saved_with"] == "save_checkpoint"
    same_as_plain, sharded_resume = sections["fsdp"]["checks"]
    assert same_as_plain["comparisons"]["sharded"]["value"] == "DTensor"
    assert sharded_resume["name"].startswith("FSDP2 sharded checkpoint (DCP) resumed")
    assert sections["matmul_peak"]["status"] == "ok" and sections["matmul_peak"]["tflops"] > 0
    assert sections["throughput"]["status"] == "ok"
    assert [r["micro_batch"] for r in sections["throughput"]["runs"]] == [4, 8]
    assert sections["throughput"]["best"]["tokens_per_s"] > 0
    assert sections["throughput"]["best"]["mfu_vs_measured_peak"] > 0
    assert sections["ray_throughput"]["status"].startswith("skipped: not under --cpu-smoke")
    assert sections["mask_cost"]["status"] == "ok"
    assert set(sections["mask_cost"]["ratios_vs_causal"]) == {"document_mask", "sliding_window"}
    table = done.stdout.strip().splitlines()
    assert table[-1].startswith("results: ") and any(line.startswith("precision ") for line in table[-16:])


def test_runs_without_ray_or_mlflow(tmp_path):
    out = tmp_path / "x.json"
    done = run_script("--cpu-smoke", "--ray", "on", "--sections", "environment,checkpoint,ray_throughput",
                      "--out", str(out), without_optional=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads(out.read_text())
    sections = results["sections"]
    assert sections["checkpoint"]["status"] == "passed"
    assert all(c["saved_with"] == "save_checkpoint" for c in sections["checkpoint"]["checks"])
    assert sections["ray_throughput"]["status"].startswith("skipped: Ray does not import here")
    assert sections["precision"]["status"] == "skipped: not selected (--sections)"


def test_comparisons_fail_on_mismatching_tensors(gpu_check):
    torch.manual_seed(0)
    reference = torch.randn(1000)
    off_by_a_percent = reference + 0.01 * torch.randn(1000)
    assert gpu_check.compare(gpu_check.relative_error(reference, reference.clone()), 0.0)["passed"]
    assert not gpu_check.compare(gpu_check.relative_error(reference, off_by_a_percent), 1e-3)["passed"]
    with_nan = reference.clone()
    with_nan[3] = float("nan")
    assert not gpu_check.compare(gpu_check.relative_error(reference, with_nan), 1.0)["passed"]
    assert gpu_check.relative_error({"a": reference}, {}) == float("inf")  # a gradient that went missing
    assert gpu_check.relative_error({"a": reference}, {"a": reference[:10]}) == float("inf")
    assert not gpu_check.check("nothing compared", {})["passed"]


def test_a_pass_with_one_wrong_gradient_fails(gpu_check):
    """All logits, the loss and nearly all gradients right: the one parameter that is off fails the check."""
    torch.manual_seed(0)
    grads = {f"p{i}": torch.randn(100, 100) for i in range(20)} | {"tiny": torch.randn(10)}
    reference = gpu_check.Pass(torch.randn(2, 8, 50), torch.tensor(10.8), grads)
    wrong = dict(grads, tiny=grads["tiny"] * 1.5)
    result = gpu_check.compare_passes("one bad gradient", reference, reference._replace(grads=wrong),
                                      gpu_check.TOLERANCES["bf16"])
    assert not result["passed"]
    assert result["comparisons"]["grads"]["passed"]  # lost in the total ...
    assert result["comparisons"]["worst_param"] == {"error": pytest.approx(0.5), "tolerance": 6e-2,
                                                    "passed": False, "param": "tiny"}  # ... but not alone
    same = gpu_check.compare_passes("same", reference, reference, gpu_check.TOLERANCES["bf16"])
    assert same["passed"]


def test_exit_status_is_one_when_a_check_fails_or_a_section_raises(gpu_check):
    def data(*statuses):
        return {"meta": {}, "sections": {f"s{i}": {"status": s} for i, s in enumerate(statuses)}}

    assert gpu_check.exit_status(data("passed", "ok", "partial", "skipped: needs CUDA")) == 0
    assert gpu_check.exit_status(data("passed", "failed")) == 1
    assert gpu_check.exit_status(data("ok", "error")) == 1
    assert gpu_check.exit_status({**data("passed"), "meta": {"no_device": "no CUDA device here"}}) == 1


def test_cuda_only_sections_run_their_code_on_cpu(gpu_check):
    """What the smoke run skips for want of CUDA still runs here, on CPU's own flash kernel and without a peak."""
    settings = gpu_check.smoke_settings(gpu_check.parse_args(["--cpu-smoke"]))
    flash = gpu_check.flash_section(settings, gpu_check.Budget(60), {})
    causal, masked = flash["checks"]
    assert causal["passed"], causal
    assert any("flash" in op for op in causal["ops"])
    assert "refused" in masked["comparisons"]  # CPU's flash kernel takes masks: only CUDA's refuses them
    row = gpu_check.memory_run(settings, "nano", checkpointing=True)
    assert row["tokens_per_s"] > 0 and row["peak_allocated_gib"] is None
