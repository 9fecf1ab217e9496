"""Real autoscaling on one machine: Ray's fake multi-node provider adds a worker node for a job and removes it."""

from __future__ import annotations

import json
import os
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers import REPO, free_port, wait_for_dashboard

CLUSTER = REPO / "cluster"
BIN = Path(sys.executable).parent


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


def node_types(dashboard: str, token: str) -> list[str]:
    """Node types in the Active section of the cluster's status, e.g. ['ray.head.default', 'cpu_worker'].

    The dashboard serves the text `ray status` prints; asking it over HTTP costs far less CPU than a
    `ray status` process (1.8 CPU s each), which polling would take from the job on two cores.
    """
    request = urllib.request.Request(f"{dashboard}/api/cluster_status?format=1",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as response:
        out = json.load(response)["data"]["clusterStatus"] or ""
    active = out.split("Active:", 1)[-1].split("Pending:", 1)[0]
    return [line.split()[-1] for line in active.strip().splitlines() if line.strip() and line.split()[0].isdigit()
            for _ in range(int(line.split()[0]))]


@pytest.mark.slow
def test_autoscaler_adds_a_worker_node_for_a_job_and_removes_it_when_idle(shakespeare_dataset):
    root = Path(tempfile.mkdtemp(prefix="gptray-fake-", dir="/tmp"))
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    gcs, dashboard = free_port(), free_port()
    config = load("local-fake.yaml")
    from ray._private.services import get_node_ip_address

    config["provider"]["gcs_address"] = f"{get_node_ip_address()}:{gcs}"  # the shipped file assumes 6379
    config["idle_timeout_minutes"] = 0.2
    (root / "fake.yaml").write_text(yaml.safe_dump(config))
    # AUTOSCALER_UPDATE_INTERVAL_S: the autoscaler looks at demand every second, not every 5 s, so that it
    # reports the head and adds the node up to 4 s sooner each.
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_FAKE_CLUSTER="1",
               AUTOSCALER_UPDATE_INTERVAL_S="1", PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
    command = [str(BIN / "ray"), "start", "--head", "--block", f"--port={gcs}", "--num-cpus=0",
               "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}",
               f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
               f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
               f"--temp-dir={root / 'ray'}", f"--autoscaling-config={root / 'fake.yaml'}", "--disable-usage-stats"]
    log = open(root / "head.log", "w")
    head = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for_dashboard(f"http://127.0.0.1:{dashboard}", head, root / "head.log")
        status = (f"http://127.0.0.1:{dashboard}", token.read_text())
        deadline = time.monotonic() + 60
        while node_types(*status) != ["ray.head.default"]:  # the head alone, with no CPUs for work
            assert time.monotonic() < deadline, f"the autoscaler does not see the head: {node_types(*status)}"
            time.sleep(2)

        # The job's Ray Train workers need 2 CPUs the head does not have: the autoscaler adds a node.
        job_log = open(root / "job.log", "w")
        job = subprocess.Popen(
            [str(BIN / "ray"), "job", "submit", "--address", f"http://127.0.0.1:{dashboard}", "--working-dir",
             str(REPO), "--", "python", "-m", "pipelines.pretrain_job", f"out_dir={root}/runs",
             f"data.dataset_dir={shakespeare_dataset.dataset_dir}", "train.max_steps=2", "schedule.warmup_steps=1",
             "data.tokenizer=gpt2", "checkpoint.interval=2", "generate.max_new_tokens=4",
             "tracking.enabled=false"],
            env=env, cwd=REPO, stdout=job_log, stderr=subprocess.STDOUT)
        seen: set[str] = set()
        deadline = time.monotonic() + 600
        while job.poll() is None:
            assert time.monotonic() < deadline, "the job did not finish"
            seen.update(node_types(*status))
            time.sleep(2)
        job_log.close()
        assert job.returncode == 0, (root / "job.log").read_text()[-6000:]
        assert "cpu_worker" in seen  # the autoscaler added a worker node while the job waited for CPUs
        assert (root / "runs" / "quickstart" / "checkpoint_00000002" / "state.json").is_file()

        deadline = time.monotonic() + 180
        while node_types(*status) != ["ray.head.default"]:  # idle for 12 s: removed
            assert time.monotonic() < deadline, f"worker nodes not removed: {node_types(*status)}"
            time.sleep(3)
    finally:
        # The head, the autoscaler and the fake worker nodes it started are all in the head's process group
        # (Ray starts none in a session of its own): killing the group ends them at once, where a graceful
        # `ray start` stop (SIGTERM) took 2-5 s more.
        os.killpg(head.pid, signal.SIGKILL)
        head.wait()
        log.close()
