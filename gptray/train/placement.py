"""Where a run's Ray Train workers go: their resources (`ray.cpus_per_worker: auto` resolved), checked to fit."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from gptray.config import RayConfig
from gptray.core.cluster import Cluster, Demand, check_fits, cpus_per_worker

log = logging.getLogger(__name__)

ACCELERATOR_SHARE = 0.001  # what Ray asks of a node's accelerator_type:<kind> resource per worker
PENDING_REPORT_S = 30.0  # on a cluster that grows, say this often what the workers still wait for
WORKER_GROUP_START_TIMEOUT_S = 60.0  # Ray Train's own wait per attempt to start the worker group


@dataclass(frozen=True)
class WorkerPlan:
    cpus: float  # per worker
    demand: Demand

    @property
    def resources(self) -> dict[str, float]:
        """resources_per_worker for Ray Train's ScalingConfig (the accelerator type goes on its own)."""
        return {k: v for k, v in self.demand.bundle.items() if not k.startswith("accelerator_type:")}


def plan_workers(ray: RayConfig, cluster: Cluster, what: str, driver: dict[str, float] | None = None,
                 concurrent: int = 1) -> WorkerPlan:
    """The workers' resources for `concurrent` runs like this one at a time, refused (ConfigError, exit 2)
    where a cluster that cannot grow will never hold them."""
    driver = driver or {}
    cpus = ray.cpus_per_worker
    # An elastic run (ray.num_workers: [min, max]) starts once `min` fit: that is what must fit, and what an
    # auto share is cut for; more workers join as the cluster has room for them.
    if cpus == "auto":
        cpus = cpus_per_worker(ray.min_workers, cluster, driver.get("CPU", 0.0), concurrent)
    bundle = {"CPU": float(cpus)}
    if ray.use_gpu:
        bundle["GPU"] = 1.0
    if ray.accelerator_type:
        bundle[f"accelerator_type:{ray.accelerator_type}"] = ACCELERATOR_SHARE
    workers = f"ray.num_workers={ray.num_workers}" + (f" (at least {ray.min_workers})" if ray.elastic else "")
    settings = f"{workers} × ray.cpus_per_worker={cpus:g}" + (" and a GPU each (ray.use_gpu)" if ray.use_gpu else "")
    demand = Demand(what, ray.min_workers, bundle, driver, settings)
    check_fits(demand, cluster, concurrent)
    return WorkerPlan(float(cpus), demand)


def controller_retries(ray: RayConfig) -> int:
    """Ray Train's controller_failure_limit: each failed attempt to start the worker group waited
    WORKER_GROUP_START_TIMEOUT_S; ray.wait_timeout_s bounds the attempts (-1: no bound)."""
    if ray.wait_timeout_s is None:
        return -1
    return max(0, -(-int(ray.wait_timeout_s) // int(WORKER_GROUP_START_TIMEOUT_S)) - 1)


class PendingReporter:
    """While a run's worker group waits for the autoscaler, log every PENDING_REPORT_S what it waits for."""

    def __init__(self, plan: WorkerPlan, cluster: Cluster):
        self.plan, self.cluster = plan, cluster
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="gptray-pending", daemon=True)

    def __enter__(self) -> PendingReporter:
        if self.cluster.can_grow:
            self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(PENDING_REPORT_S):
            try:
                if self._waiting():
                    log.info("waiting for %s for %s: the autoscaler is adding nodes", self.plan.demand.describe(),
                             self.plan.demand.what)
            except Exception as exc:  # a report is a courtesy: never let it take the run down
                log.debug("could not read Ray's placement groups: %s", exc)

    def _waiting(self) -> bool:
        """Whether a placement group shaped like this run's worker group is still pending."""
        from ray.util import placement_group_table  # heavy

        bundle = self.plan.demand.bundle
        for group in placement_group_table().values():
            bundles = list((group.get("bundles") or {}).values())
            if group.get("state") == "PENDING" and len(bundles) >= self.plan.demand.count and \
                    all(_same(b, bundle) for b in bundles):
                return True
        return False


def _same(bundle: dict, expected: dict) -> bool:
    return all(abs(bundle.get(k, 0.0) - v) < 1e-6 for k, v in expected.items())
