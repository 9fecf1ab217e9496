"""Cluster definitions: launcher YAMLs against Ray's schema, KubeRay manifests, the image."""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest
import ray
import yaml

from helpers import REPO

CLUSTER = REPO / "cluster"
LAUNCHER_YAMLS = ["aws.yaml", "gcp.yaml", "local-fake.yaml"]
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


SHIPPED = LAUNCHER_YAMLS + ["kuberay/raycluster.yaml", "kuberay/rayjob.yaml"]
OPEN_TO_ALL = ("0.0.0.0/0", "::/0")


def _strings(node):
    if isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from _strings(value)
    elif isinstance(node, list):
        for value in node:
            yield from _strings(value)
    else:
        yield str(node)


@pytest.mark.parametrize("name", SHIPPED)
def test_no_shipped_cluster_file_opens_a_port_to_everyone_or_asks_for_public_ips(name):
    config = load(name)
    assert not [s for s in _strings(config) if any(cidr in s for cidr in OPEN_TO_ALL)], name
    provider = config.get("provider", {}) if name in LAUNCHER_YAMLS else {}
    node_configs = [t.get("node_config", {}) for t in config.get("available_node_types", {}).values()]
    if provider.get("type") in ("aws", "gcp"):
        assert provider.get("use_internal_ips") is True, f"{name}: nodes must have private addresses only"
    if provider.get("type") == "aws":
        # Ray's launcher creates a security group, with 22/tcp open to 0.0.0.0/0, for any node type
        # without SecurityGroupIds (ray/autoscaler/_private/aws/config.py), and rules from provider.security_group
        assert "security_group" not in provider
        for node_config in node_configs:
            assert node_config.get("SecurityGroupIds") and node_config.get("SubnetIds"), node_config
            for interface in node_config.get("NetworkInterfaces", []):
                assert not interface.get("AssociatePublicIpAddress"), node_config
    if provider.get("type") == "gcp":
        # without networkInterfaces Ray's launcher gives each node an external address (ONE_TO_ONE_NAT)
        for node_config in node_configs:
            interfaces = node_config.get("networkInterfaces")
            assert interfaces and all(not i.get("accessConfigs") for i in interfaces), node_config


@pytest.mark.parametrize("name", ["aws.yaml", "gcp.yaml"])
def test_cloud_yamls_autoscale_gpu_workers_running_this_project(name):
    config = load(name)
    types = config["available_node_types"]
    # the head trains nothing, and is where sweep trials' drivers go
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0, "gptray_driver": 1}
    workers = [t["resources"] for n, t in types.items() if n != config["head_node_type"]]
    assert {8, 1} <= {r.get("GPU") for r in workers}  # an 8-GPU type (H100 nodes) and a single-GPU type
    for resources in workers:  # the autoscaler knows each type's GPU kind, so ray.accelerator_type scales it
        assert sum(1 for key in resources if key.startswith("accelerator_type:")) == 1, resources
    assert {"accelerator_type:H100": 1} == {k: v for r in workers for k, v in r.items() if k.endswith("H100")}
    for node_type in types.values():
        assert node_type.get("min_workers", 0) <= node_type.get("max_workers", 0) <= config["max_workers"]
    assert config["docker"]["image"].split("@")[0] == f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-gpu"
    assert "TORCH_VARIANT=cuda bash ~/gptray/scripts/install.sh --locked python" in config["setup_commands"]
    assert config["file_mounts"]["~/gptray"] == "."


def check_pod_template(template: dict, where: str, gpus: int | None = None) -> None:
    containers = template["spec"]["containers"]
    assert containers, f"{where}: a pod needs a container"
    image = containers[0]["image"]
    # gptray's image, as shipped or as scripts/pin_images.sh REGISTRY/gptray:TAG leaves it
    assert re.fullmatch(rf"(\S+/)?gptray:{ray.__version__}-{PYTHON_TAG}-gpu(@sha256:[0-9a-f]{{64}})?", image), \
        f"{where}: image {image}"
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


def test_kuberay_spot_group_lands_on_spot_gpu_nodes_and_tells_ray_before_its_pod_goes():
    from ray.scripts.scripts import drain_node  # the installed Ray's `ray drain-node`

    groups = {g["groupName"]: g for g in load("kuberay/raycluster.yaml")["spec"]["workerGroupSpecs"]}
    spot, on_demand = groups["gpu-h100x8-spot"], groups["gpu-h100x8"]
    assert 0 == spot["minReplicas"] <= spot["replicas"] <= spot["maxReplicas"] >= 1  # the autoscaler adds them
    assert spot["rayStartParams"] == on_demand["rayStartParams"]  # the same GPU kind: one DDP group spans both
    pod = spot["template"]["spec"]
    # any one of the clouds' spot labels (node selector terms are OR'ed), each with the H100 product label
    terms = pod["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    labels = [{e["key"]: e["values"] for e in term["matchExpressions"]} for term in terms]
    assert {"cloud.google.com/gke-spot": ["true"]}.items() <= labels[0].items()  # GKE Spot
    assert {"eks.amazonaws.com/capacityType": ["SPOT"]}.items() <= labels[1].items()  # EKS managed node groups
    h100 = on_demand["template"]["spec"]["nodeSelector"]["nvidia.com/gpu.product"]
    assert all(term["nvidia.com/gpu.product"] == [h100] for term in labels)
    tolerated = {t["key"] for t in pod["tolerations"]}
    assert {"nvidia.com/gpu", "cloud.google.com/gke-spot", "eks.amazonaws.com/capacityType"} <= tolerated
    # the preStop hook drains the node as preempted, with options the installed `ray drain-node` has, and a
    # deadline inside the pod's grace period
    command = pod["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][-1]
    options = dict(re.findall(r"(--[a-z-]+) (\S+)", command[command.index("ray drain-node"):]))
    params = {p.opts[0]: p for p in drain_node.params}
    assert set(options) <= set(params), set(options) - set(params)
    assert options["--reason"] == "DRAIN_NODE_REASON_PREEMPTION" in params["--reason"].type.choices
    deadline = int(options["--deadline-remaining-seconds"].rstrip(";"))
    assert 0 < deadline <= pod["terminationGracePeriodSeconds"]
    check_pod_template(spot["template"], "gpu-h100x8-spot", 8)


def test_kuberay_rayjob_runs_an_elastic_pretrain_on_that_cluster():
    from gptray.config import load_config

    job = load("kuberay/rayjob.yaml")
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob" and job["metadata"]["name"]
    spec = job["spec"]
    module, config, overrides = re.fullmatch(r"python -m (\S+) --config (\S+) (.*)", spec["entrypoint"]).groups()
    assert module == "pipelines.pretrain_job" and (REPO / "pipelines" / "pretrain_job.py").is_file()
    assert (REPO / config).is_file()
    ray_config = load_config(REPO / config, shlex.split(overrides)).ray  # as the job's shell passes them
    assert ray_config.elastic and (ray_config.min_workers, ray_config.max_workers) == (8, 24)
    assert ray_config.max_failures == -1  # a node lost without notice restarts the group smaller
    assert spec["clusterSelector"]["ray.io/cluster"] == load("kuberay/raycluster.yaml")["metadata"]["name"]
    assert yaml.safe_load(spec["runtimeEnvYAML"])["working_dir"] == "/app"  # where the Dockerfile puts us
    check_pod_template(spec["submitterPodTemplate"], "submitter")


def test_the_image_is_the_pinned_ray_image_installed_the_way_ci_installs():
    dockerfile = (REPO / "Dockerfile").read_text()
    base = re.search(r"^FROM (\S+)$", dockerfile, re.M).group(1)
    assert base.split("@")[0] == f"rayproject/ray:{ray.__version__}-{PYTHON_TAG}-gpu"  # @sha256:… once pinned
    pinned = re.search(r'"ray\[[^\]]+\]==([^"]+)"', (REPO / "pyproject.toml").read_text()).group(1)
    assert pinned == ray.__version__
    assert "WORKDIR /app" in dockerfile
    install = re.search(r"^RUN (.*scripts/install\.sh.*)$", dockerfile, re.M).group(1)
    assert "scripts/install.sh --locked python" in install  # the hashed lock (tests/unit/test_install_pinning.py)
    # CI runs `make test`, whose setup runs the same script
    assert "make test" in (REPO / ".ci" / "run").read_text()
    assert re.search(r"^\tscripts/install\.sh \$\(BIN\)/python dev$", (REPO / "Makefile").read_text(), re.M)






def test_the_slurm_script_makes_a_ray_token_only_its_user_can_read(tmp_path):
    """Run for real under a permissive umask: `ray get-auth-token --generate` writes with the umask it
    inherits, and a token others can read lets them join the cluster and run code as the user."""
    import os
    import stat
    import subprocess

    script = (CLUSTER / "slurm" / "gptray.sbatch").read_text()
    assert ". cluster/slurm/auth-token.sh" in script
    env = {**os.environ, "HOME": str(tmp_path), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    env.pop("RAY_AUTH_TOKEN", None), env.pop("RAY_AUTH_TOKEN_PATH", None)
    made = subprocess.run(["bash", "-c", "umask 022 && set -euo pipefail && . cluster/slurm/auth-token.sh"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    assert made.returncode == 0, made.stderr
    token = tmp_path / ".ray" / "auth_token"
    assert token.read_text().strip() and stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) == 0o700
    token.chmod(0o644)  # one made before: reported
    again = subprocess.run(["bash", "-c", ". cluster/slurm/auth-token.sh"], cwd=REPO, env=env,
                           capture_output=True, text=True)
    assert again.returncode == 0 and "can be read by other users" in again.stderr
