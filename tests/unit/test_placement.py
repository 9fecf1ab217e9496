"""Fit or fail fast: worker groups and trials checked against what a cluster holds, before anything waits.

Also: every shipped config fits where its header says it runs (2 CPU cores for the CPU ones, the
shipped cluster files' node types for the GPU ones), as shipped.
"""

from __future__ import annotations

import dataclasses

import pytest
import yaml

from gptray.config import RayConfig
from gptray.config.loader import build
from gptray.core.cluster import DRIVER_RESOURCE, Cluster, Demand, check_fits, cpus_per_worker
from gptray.core.errors import ConfigError
from gptray.train.placement import controller_retries, plan_workers
from gptray.tune.runner import concurrency, trial_driver
from gptray.tune.spec import load_sweep
from helpers import REPO

LAPTOP = Cluster(({"CPU": 2.0},), can_grow=False)  # the documented machine: a local Ray on 2 cores
GROWING = Cluster(({"CPU": 0.0, DRIVER_RESOURCE: 1.0},), can_grow=True)


def test_the_documented_sweep_that_hung_is_refused_at_once_with_the_numbers():
    """2 workers × 1 CPU + a trial driver on 2 CPUs never fits: say so instead of waiting forever."""
    with pytest.raises(ConfigError) as info:
        plan_workers(RayConfig(cpus_per_worker=1.0), LAPTOP, "trial rmsnorm-seed0", driver={"CPU": 0.01})
    message = str(info.value)
    assert info.value.exit_code == 2
    for part in ("trial rmsnorm-seed0", "2.01 CPU", "ray.num_workers=2", "ray.cpus_per_worker=1",
                 "2 CPU on 1 node (no autoscaler)"):
        assert part in message, message


def test_auto_sizes_workers_to_fit_beside_the_trial_drivers():
    assert plan_workers(RayConfig(), LAPTOP, "run").cpus == 1.0  # a plain run: one CPU each, as before
    assert plan_workers(RayConfig(), LAPTOP, "trial", driver={"CPU": 0.01}).cpus == 0.99
    assert cpus_per_worker(2, LAPTOP, driver_cpus=0.01, concurrent=2) == 0.49
    assert cpus_per_worker(8, GROWING) == 1.0  # the autoscaler brings what is asked for
    plan_workers(RayConfig(cpus_per_worker=64.0), GROWING, "run")  # a growing cluster is never refused


def test_what_no_node_can_hold_is_refused():
    with pytest.raises(ConfigError, match="one worker needs 1 GPU"):
        plan_workers(RayConfig(use_gpu=True), LAPTOP, "run")
    two_nodes = Cluster(({"CPU": 2.0}, {"CPU": 2.0}), can_grow=False)
    with pytest.raises(ConfigError, match="one worker needs 3 CPU .* more than any node has"):
        plan_workers(RayConfig(cpus_per_worker=3.0, num_workers=1), two_nodes, "run")
    plan_workers(RayConfig(cpus_per_worker=2.0), two_nodes, "run")  # one worker per node fits
    gpus = Cluster(({"CPU": 8.0, "GPU": 8.0, "accelerator_type:A100": 1.0},), can_grow=False)
    with pytest.raises(ConfigError, match="GPU type H100"):
        plan_workers(RayConfig(use_gpu=True, accelerator_type="H100", num_workers=8), gpus, "run")
    pinned = plan_workers(RayConfig(use_gpu=True, accelerator_type="H100", num_workers=16, cpus_per_worker=8.0),
                          GROWING, "trial rmsnorm-seed2")
    assert pinned.demand.describe() == "128 CPU, 16 GPU (H100)"  # what a waiting trial says it waits for
    assert pinned.resources == {"CPU": 8.0, "GPU": 1.0}  # the GPU kind goes to Ray Train as accelerator_type


def test_concurrent_trials_are_checked_together():
    demand = Demand("trial", 2, {"CPU": 0.5}, {"CPU": 0.01}, "ray.num_workers=2 × ray.cpus_per_worker=0.5")
    check_fits(demand, LAPTOP, concurrent=1)
    with pytest.raises(ConfigError, match="2 at a time"):
        check_fits(demand, LAPTOP, concurrent=2)


def test_an_evaluation_actor_pool_is_checked_like_a_worker_group():
    from gptray.config import EvalConfig
    from gptray.eval.runner import actor_pool

    assert actor_pool(EvalConfig(), num_batches=10, cluster=LAPTOP) == (1, 1.0, 0.0)  # a CPU left for Ray Data
    with pytest.raises(ConfigError, match=r"evaluation needs 3 CPU \(eval.num_actors=2 × eval.cpus_per_actor=1, "
                                          "and a CPU for Ray Data's tasks"):
        actor_pool(EvalConfig(num_actors=2), num_batches=10, cluster=LAPTOP)
    with pytest.raises(ConfigError, match="one actor needs 4 CPU"):
        actor_pool(EvalConfig(cpus_per_actor=4.0), num_batches=10, cluster=LAPTOP)
    assert actor_pool(EvalConfig(num_actors=8), num_batches=10, cluster=GROWING)[0] == 8


def test_wait_timeout_bounds_ray_trains_worker_group_start_attempts():
    assert controller_retries(RayConfig()) == -1  # wait as long as it takes
    assert controller_retries(RayConfig(wait_timeout_s=60)) == 0
    assert controller_retries(RayConfig(wait_timeout_s=600)) == 9


def test_trial_drivers_ask_for_the_driver_resource_where_the_cluster_has_one():
    assert trial_driver(GROWING) == {DRIVER_RESOURCE: 0.01}
    assert trial_driver(LAPTOP) == {"CPU": 0.01}


def _shipped_node_types() -> Cluster:
    """One node of each type in cluster/aws.yaml, as the autoscaler sees them (their declared resources)."""
    types = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())["available_node_types"]
    return Cluster(tuple({k: float(v) for k, v in t["resources"].items()} for t in types.values()), can_grow=False)


def _where_it_runs(ray: RayConfig) -> Cluster:
    return _shipped_node_types() if ray.use_gpu else LAPTOP


@pytest.mark.parametrize("path", sorted((REPO / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_run_config_fits_where_it_runs(path):
    """Only the ray section sizes the workers (test_config checks that every file resolves as a whole)."""
    ray = build(RayConfig, yaml.safe_load(path.read_text()).get("ray"), "ray")
    ray.validate()
    plan_workers(ray, _where_it_runs(ray), f"run {path.stem}")


@pytest.mark.parametrize("path", sorted((REPO / "configs" / "sweeps").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_sweep_fits_where_it_runs(path):
    sweep = load_sweep(path)
    cluster = _where_it_runs(sweep.base.ray)
    driver = trial_driver(cluster)
    concurrent, cpus = concurrency(sweep, cluster, driver)
    assert concurrent >= 1
    for trial in sweep.trials:
        ray = trial.config.ray
        if ray.cpus_per_worker == "auto":
            ray = dataclasses.replace(ray, cpus_per_worker=cpus)
        plan_workers(ray, cluster, f"trial {trial.name}", driver, concurrent)


def test_shipped_gpu_configs_pin_one_gpu_kind_the_cluster_files_offer():
    gpu_configs = [p for p in (REPO / "configs").rglob("*.yaml") if "use_gpu: true" in p.read_text()]
    assert gpu_configs
    offered = {key.split(":", 1)[1] for node in _shipped_node_types().nodes for key in node
               if key.startswith("accelerator_type:")}
    for path in gpu_configs:
        kind = yaml.safe_load(path.read_text())["ray"]["accelerator_type"]
        assert kind in offered, f"{path.name}: {kind} is not a GPU type of cluster/aws.yaml ({offered})"
