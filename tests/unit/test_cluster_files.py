"""Cluster definitions: launcher YAMLs against Ray's schema, KubeRay manifests, the image, and real
autoscaling on one machine with Ray's fake multi-node provider."""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest
import ray
import yaml

from conftest import REPO, free_port, wait_for_dashboard

CLUSTER = REPO / "cluster"
LAUNCHER_YAMLS = ["aws.yaml", "gcp.yaml", "local-fake.yaml"]
BIN = Path(sys.executable).parent
PYTHON_TAG = f"py{sys.version_info.major}{sys.version_info.minor}"


def load(name: str):
    return yaml.safe_load((CLUSTER / name).read_text())


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_matches_the_schema_shipped_with_ray(name):
    import jsonschema

    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    jsonschema.validate(load(name), schema)


@pytest.mark.parametrize("name", LAUNCHER_YAMLS)
def test_launcher_yaml_keeps_the_dashboard_private_and_token_auth_on(name):
    config = load(name)
    commands = " ".join(config.get("head_start_ray_commands", []) + config.get("worker_start_ray_commands", []))
    assert "0.0.0.0" not in yaml.safe_dump(config)
    for command in config.get("head_start_ray_commands", []):
        if "ray start" in command:
            assert "--dashboard-host=127.0.0.1" in command and "RAY_AUTH_MODE=token" in command
    if commands:
        assert commands.count("RAY_AUTH_MODE=token") == commands.count("ray start")


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_yamls_autoscale_gpu_workers_running_this_project(name):
    config = load(name)
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # the head trains nothing
    gpus = {t["resources"].get("GPU") for n, t in types.items() if n != config["head_node_type"]}
    assert {8, 1} <= gpus  # an 8-GPU type (H100 nodes) and a single-GPU type
    for node_type in types.values():
        assert node_type.get("min_workers", 0) <= node_type.get("max_workers", 0) <= config["max_workers"]
    assert config["docker"]["image"] == f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-gpu"
    assert "pip install -e ~/gptray" in config["setup_commands"]
    assert config["file_mounts"]["~/gptray"] == "."


def check_pod_template(template: dict, where: str, gpus: int | None = None) -> None:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: a pod needs a container"
    image = containers[0]["image"]
    assert image == f"gptray:{ray.__version__}-{PYTHON_TAG}-gpu", f"{where}: image {image}"
    env = {e["name"]: e for e in containers[0].get("env", [])}
    assert env["RAY_AUTH_MODE"]["value"] == "token", f"{where}: token auth must be on"
    assert "secretKeyRef" in env["RAY_AUTH_TOKEN"]["valueFrom"], f"{where}: the token comes from a Secret"
    if gpus is not None:
        limits = containers[0]["resources"]["limits"]
        assert int(limits["nvidia.com/gpu"]) == gpus, f"{where}: GPU limit"


def test_kuberay_raycluster_structure():
    manifest = load("kuberay/raycluster.yaml")
    assert manifest["apiVersion"] == "ray.io/v1" and manifest["kind"] == "RayCluster"
    assert manifest["metadata"]["name"]
    spec = manifest["spec"]
    assert spec["rayVersion"] == ray.__version__
    assert spec["enableInTreeAutoscaling"] is True
    head = spec["headGroupSpec"]
    assert head.get("serviceType", "ClusterIP") == "ClusterIP"  # never a public LoadBalancer/NodePort
    assert head["rayStartParams"]["num-cpus"] == "0"
    check_pod_template(head["template"], "head")
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert {8, 1} <= {int(g["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"])
                      for g in groups.values()}
    for name, group in groups.items():
        assert 0 <= group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], name
        check_pod_template(group["template"], name,
                           int(group["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"]))


def test_kuberay_rayjob_runs_the_pretrain_pipeline_on_that_cluster():
    job = load("kuberay/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    module, config = re.fullmatch(r"python -m (\S+) --config (\S+)", spec["entrypoint"]).groups()
    assert module == "pipelines.pretrain_job" and (REPO / "pipelines" / "pretrain_job.py").is_file()
    assert (REPO / config).is_file()
    assert spec["clusterSelector"]["ray.io/cluster"] == load("kuberay/raycluster.yaml")["metadata"]["name"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/app"  # where the Dockerfile puts us
    check_pod_template(spec["submitterPodTemplate"], "submitter")


def test_the_image_is_the_pinned_ray_image_installed_the_way_ci_installs():
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)$", dockerfile, re.M).group(1)
    assert base == f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-gpu"
    pinned = re.search(r'"ray\[[^\]]+\]==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert pinned == ray.__version__
    assert "WORKDIR /app" in dockerfile
    install = re.search(r"^RUN (.*scripts/install\.sh.*)$", dockerfile, re.M).group(1)
    assert "scripts/install.sh python" in install
    # CI runs `make test`, whose setup runs the same script
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert re.search(r"^\tscripts/install\.sh \$\(BIN\)/python dev$", (REPO / "Makefile").read_text(), re.M)


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
    env = dict(os.environ, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token), RAY_FAKE_CLUSTER="1",
               PATH=f"{BIN}{os.pathsep}{os.environ['PATH']}")
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
             f"data.dataset_dir={shakespeare_dataset.dataset_dir}", "train.max_steps=2", "train.warmup_steps=1",
             "train.checkpoint_interval=2", "generate.max_new_tokens=4", "tracking.enabled=false"],
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
        head.send_signal(signal.SIGTERM)
        try:
            head.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(head.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        log.close()
