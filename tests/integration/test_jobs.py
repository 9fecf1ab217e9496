"""`ray job submit` of the pipelines against a `ray start --head` on loopback, with token auth on."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import REPO, free_port, wait_for_dashboard

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent  # the venv that runs the tests also runs the cluster


@pytest.fixture(scope="module")
def head():
    """A one-node Ray cluster with its own token, killed (only it) at the end."""
    root = Path(tempfile.mkdtemp(prefix="gptray-head-", dir="/tmp"))  # short: Ray's socket paths are limited
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token),
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    worker_ports = free_port()
    taken = set(range(worker_ports, worker_ports + 201))  # Ray refuses a component port inside the worker range

    def port() -> int:
        while (number := free_port()) in taken:
            pass
        taken.add(number)
        return number

    dashboard = port()
    command = [
        str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={port()}",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--num-cpus=4",
        f"--ray-client-server-port={port()}", f"--dashboard-agent-listen-port={port()}",
        f"--dashboard-agent-grpc-port={port()}", f"--runtime-env-agent-port={port()}",
        f"--min-worker-port={worker_ports}", f"--max-worker-port={worker_ports + 200}",
        f"--temp-dir={root / 'ray'}", "--disable-usage-stats",
    ]
    log = open(root / "head.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    address = f"http://127.0.0.1:{dashboard}"
    wait_for_dashboard(address, process, root / "head.log")
    yield address, env, root
    # Every process of this cluster is in the head's own session and process group (Ray starts none in a
    # session of its own), so killing the group ends all of them at once; a graceful `ray start` stop
    # (SIGTERM) took 2-5 s more and checked nothing.
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    log.close()
    shutil.rmtree(root, ignore_errors=True)


def submit(address: str, env: dict, *entrypoint: str, timeout: int = 400) -> subprocess.CompletedProcess:
    command = [str(BIN / "ray"), "job", "submit", "--address", address, "--working-dir", str(REPO), "--",
               *entrypoint]
    return subprocess.run(command, env=env, cwd=REPO, capture_output=True, text=True, timeout=timeout)


def test_submit_without_the_token_is_refused(head):
    address, env, _ = head
    without = {k: v for k, v in env.items() if k != "RAY_AUTH_TOKEN_PATH"}
    without["RAY_AUTH_TOKEN"] = "0" * 64  # a wrong token
    result = submit(address, without, "python", "-c", "print('should not run')", timeout=60)
    assert result.returncode != 0
    assert "should not run" not in result.stdout


def job_command(address: str, *args: str) -> list[str]:
    return [str(BIN / "ray"), "job", *args[:1], "--address", address, *args[1:]]


def test_tokenize_job_then_a_stopped_pretrain_job_that_the_next_job_resumes(head):
    """The quickstart as jobs: tokenize, pretrain stopped by `ray job stop` after a checkpoint, and the
    same pretrain job submitted again resumes from the newest complete checkpoint into the same MLflow run."""
    import json

    from mlflow.tracking import MlflowClient

    from gptray.checkpoint.files import is_complete, latest_checkpoint, read_state

    address, env, root = head
    out = root / "out"
    common = ["--config", "configs/quickstart.yaml", f"data.dataset_dir={out}/data", f"out_dir={out}/runs"]
    # `python -m gptray COMMAND` is a job entrypoint as much as the pipelines are
    tokenize = submit(address, env, "python", "-m", "gptray", "tokenize", *common)
    assert tokenize.returncode == 0, tokenize.stdout[-3000:] + tokenize.stderr[-3000:]
    assert "succeeded" in tokenize.stdout + tokenize.stderr
    assert (out / "data" / "manifest.json").is_file()

    run_dir = out / "runs" / "job"
    runtime_env = json.dumps({"working_dir": str(REPO), "env_vars": {"PYTHONUNBUFFERED": "1"}})
    pretrain = ["python", "-m", "pipelines.pretrain_job", *common, "name=job", "model.n_layer=1",
                "checkpoint.interval=3", "train.log_interval=1", "generate.max_new_tokens=8"]
    submitted = subprocess.run(
        job_command(address, "submit", "--no-wait", "--submission-id", "gptray-stop-test",
                    "--runtime-env-json", runtime_env, "--", *pretrain, "train.max_steps=400"),
        env=env, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert submitted.returncode == 0, submitted.stderr[-3000:]
    deadline = time.monotonic() + 300
    while latest_checkpoint(run_dir) is None:
        assert time.monotonic() < deadline, "no checkpoint before the deadline"
        time.sleep(0.5)
    stop = subprocess.run(job_command(address, "stop", "gptray-stop-test"), env=env, capture_output=True,
                          text=True, timeout=120)
    assert stop.returncode == 0, stop.stderr[-3000:]
    status = subprocess.run(job_command(address, "status", "gptray-stop-test"), env=env, capture_output=True,
                            text=True, timeout=60)
    assert "was stopped" in status.stdout + status.stderr
    left = latest_checkpoint(run_dir)
    step = read_state(left).step
    assert is_complete(left) and 3 <= step < 400

    resumed = subprocess.run(
        job_command(address, "submit", "--runtime-env-json", runtime_env, "--", *pretrain,
                    f"train.max_steps={step + 3}"),
        env=env, cwd=REPO, capture_output=True, text=True, timeout=400)
    logs = resumed.stdout + resumed.stderr
    assert resumed.returncode == 0, logs[-5000:]
    assert f"resumed from checkpoint at step {step}" in logs  # the newest complete one
    assert f"step {step + 3}/{step + 3}" in logs  # training progress reaches the job's logs
    assert read_state(latest_checkpoint(run_dir)).step == step + 3

    client = MlflowClient(f"sqlite:///{out}/runs/mlflow.db")
    runs = client.search_runs([client.get_experiment_by_name("gptray").experiment_id])
    assert sorted(r.data.tags.get("gptray.job", "train") for r in runs) == ["tokenize", "train"]  # the dataset's run
    (run,) = [r for r in runs if "gptray.job" not in r.data.tags]  # one training run, continued
    assert run.info.status == "FINISHED" and run.info.run_name == "job"
    logged = {m.step for m in client.get_metric_history(run.info.run_id, "train/loss")}
    assert {step + 1, step + 2, step + 3} <= logged and max(logged) == step + 3
