"""What a Ray cluster can hold: its nodes, whether an autoscaler can add more, and whether a request ever fits.

A worker group or trial that can never fit waits forever on a cluster that cannot grow (Ray Train
retries the worker group's start every 60 s; a local cluster has no autoscaler), so every launch
checks first and stops at once, naming what to change.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass

from gptray.core.errors import ConfigError

# A custom resource of the nodes where sweep trials' drivers and Ray Train controllers belong (the head
# in cluster/*.yaml): a trial asks for a sliver of it where the cluster has it, so drivers stay off
# GPU nodes, whose loss would take the trial down with them.
DRIVER_RESOURCE = "gptray_driver"
DRIVER_SHARE = 0.01  # of DRIVER_RESOURCE (and of a CPU), per trial driver
WAIT_FOR_STATUS_S = 10.0  # the autoscaler's first status report comes a few seconds after Ray starts


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[dict[str, float], ...]  # each alive node's total resources
    can_grow: bool  # an autoscaler can add nodes

    def total(self, resource: str) -> float:
        return sum(node.get(resource, 0.0) for node in self.nodes)

    def largest_node(self, resource: str) -> float:
        return max((node.get(resource, 0.0) for node in self.nodes), default=0.0)

    def describe(self) -> str:
        """e.g. "2 CPU on 1 node (no autoscaler)", "16 CPU, 8 GPU (H100) on 2 nodes"."""
        parts = [f"{_number(self.total('CPU'))} CPU"]
        if self.total("GPU"):
            kinds = sorted({key.split(":", 1)[1] for node in self.nodes for key in node
                            if key.startswith("accelerator_type:")})
            parts.append(f"{_number(self.total('GPU'))} GPU" + (f" ({', '.join(kinds)})" if kinds else ""))
        count = len(self.nodes)
        return f"{', '.join(parts)} on {count} node{'s' if count != 1 else ''}" + \
            ("" if self.can_grow else " (no autoscaler)")


@dataclass(frozen=True)
class Demand:
    """What one launch asks for: `count` bundles of `bundle` (Ray Train workers), plus a driver."""

    what: str  # "run quickstart", "trial rmsnorm-seed2"
    count: int
    bundle: dict[str, float]  # one worker's resources
    driver: dict[str, float]  # resources of the process that waits on the workers (a Tune trial); may be empty
    settings: str  # the settings that size it, for the message: "ray.num_workers=2 × ray.cpus_per_worker=1.0"
    unit: str = "worker"  # what one bundle is, for the message: a Ray Train worker, an evaluation actor

    def total(self, resource: str) -> float:
        return self.count * self.bundle.get(resource, 0.0) + self.driver.get(resource, 0.0)

    def describe(self) -> str:
        """e.g. "16 CPU, 16 GPU (H100)": the GPU kind a worker is pinned to goes with its GPUs."""
        kinds = [r.split(":", 1)[1] for r in self.bundle if r.startswith("accelerator_type:")]
        parts = []
        for resource in sorted({*self.bundle, *self.driver}):
            if self.total(resource) and not resource.startswith("accelerator_type:"):
                kind = f" ({', '.join(kinds)})" if resource == "GPU" and kinds else ""
                parts.append(f"{_number(self.total(resource))} {resource}{kind}")
        return ", ".join(parts)


def check_fits(demand: Demand, cluster: Cluster, concurrent: int = 1) -> None:
    """Raise ConfigError (exit 2) if `concurrent` copies of the demand can never run at once here.

    On a cluster that can grow, the autoscaler is asked for what is missing, so nothing is refused.
    Each worker must fit on one node; the group may spread over nodes (Ray Train's PACK strategy).
    """
    if cluster.can_grow:
        return
    for resource, need in demand.bundle.items():
        if need > cluster.largest_node(resource):
            raise ConfigError("ray", f"{demand.what}: one {demand.unit} needs {_number(need)} "
                                     f"{_resource_name(resource)} ({demand.settings}), more than any node has; "
                                     "the cluster has "
                                     f"{cluster.describe()}")
    for resource in sorted({*demand.bundle, *demand.driver}):
        need = concurrent * demand.total(resource)
        have = cluster.total(resource)
        if need > have + 1e-9:
            many = f"{concurrent} at a time × " if concurrent > 1 else ""
            raise ConfigError("ray", f"{demand.what} needs {many}{_number(demand.total(resource))} "
                                     f"{_resource_name(resource)} ({demand.settings}"
                                     f"{' + the trial driver' if demand.driver.get(resource) else ''}); "
                                     f"the cluster has {cluster.describe()}: lower ray.num_workers or "
                                     "ray.cpus_per_worker (or set ray.cpus_per_worker=auto)")


def cpus_per_worker(num_workers: int, cluster: Cluster, driver_cpus: float = 0.0, concurrent: int = 1) -> float:
    """`ray.cpus_per_worker: auto`: one CPU per worker where that fits (and on clusters that can grow),
    else an equal share of the CPUs left beside the drivers, rounded down to a hundredth."""
    if cluster.can_grow:
        return 1.0
    free = cluster.total("CPU") - concurrent * driver_cpus
    share = math.floor(100 * free / (concurrent * num_workers)) / 100
    per_node = math.floor(100 * cluster.largest_node("CPU")) / 100
    return max(min(1.0, share, per_node), 0.01)


def live_cluster(autoscaling: bool | None = None) -> Cluster:
    """The cluster this process is connected to (ray.init() done). `autoscaling`: whether an autoscaler can
    add nodes; None: ask the autoscaler's status (Ray's read-only provider, on a cluster started without
    an autoscaling config, reports every node as its own node type)."""
    import ray  # heavy

    nodes = tuple(dict(node["Resources"]) for node in ray.nodes() if node["Alive"])
    if autoscaling is None:
        autoscaling = not _started_here() and _autoscaler_can_add_nodes()
    return Cluster(nodes, autoscaling)


def _started_here() -> bool:
    """Whether this process started the local Ray instance it is connected to (which has no autoscaler)."""
    import ray  # heavy

    node = getattr(ray._private.worker, "_global_node", None)
    return bool(node is not None and getattr(node, "head", False))


def _autoscaler_can_add_nodes() -> bool:
    import ray  # heavy
    from ray.experimental.internal_kv import _internal_kv_get, internal_kv_get_gcs_client

    v2 = internal_kv_get_gcs_client().internal_kv_get(ray._raylet.GCS_AUTOSCALER_V2_ENABLED_KEY.encode(),
                                                      namespace=None)
    if v2 == b"1":  # KubeRay's in-tree autoscaler v2
        return True
    deadline = time.monotonic() + WAIT_FOR_STATUS_S
    while (status := _internal_kv_get(b"__autoscaling_status")) is None and time.monotonic() < deadline:
        time.sleep(0.5)
    if status is None:
        return False
    mapping = (json.loads(status).get("autoscaler_report") or {}).get("node_type_mapping") or {}
    return any(node_type != f"node_{node_id}" for node_id, node_type in mapping.items())


def _number(x: float) -> str:
    return f"{x:g}"


def _resource_name(resource: str) -> str:
    return "GPU type " + resource.split(":", 1)[1] if resource.startswith("accelerator_type:") else resource
