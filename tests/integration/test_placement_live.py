"""Fit or fail fast on a real local Ray: what can never fit is refused in seconds, what waits says so."""

from __future__ import annotations

import logging
import time

import pytest

from gptray.cli.main import main as cli
from gptray.config import RayConfig
from gptray.core.cluster import live_cluster
from gptray.train import placement
from gptray.train.placement import PendingReporter, plan_workers
from helpers import REPO

pytestmark = pytest.mark.usefixtures("ray_session")


def test_the_session_cluster_is_seen_as_it_is():
    cluster = live_cluster()
    assert not cluster.can_grow  # a local Ray this process started has no autoscaler
    assert cluster.total("CPU") == 4 and len(cluster.nodes) == 1


def test_a_run_or_sweep_that_can_never_fit_stops_at_once_with_exit_2(shakespeare_dataset, tmp_path, capsys):
    common = [f"out_dir={tmp_path}/runs", f"data.dataset_dir={shakespeare_dataset.dataset_dir}", "data.tokenizer=gpt2"]
    assert cli(["pretrain", *common, "ray.cpus_per_worker=3"]) == 2
    err = capsys.readouterr().err
    assert "run quickstart needs 6 CPU (ray.num_workers=2 × ray.cpus_per_worker=3)" in err
    assert "the cluster has 4 CPU on 1 node (no autoscaler)" in err
    assert not (tmp_path / "runs" / "quickstart").exists()  # refused before anything was written

    sweep = REPO / "configs" / "sweeps" / "norm.yaml"
    assert cli(["sweep", "--config", str(sweep), *common, "ray.cpus_per_worker=2"]) == 2
    err = capsys.readouterr().err
    assert "a trial needs 4.01 CPU (ray.num_workers=2 × ray.cpus_per_worker=2 + the trial driver)" in err
    assert not (tmp_path / "runs" / "ablate-norm").exists()


def test_a_worker_group_waiting_for_the_autoscaler_is_reported(monkeypatch, caplog):
    from ray.util import placement_group, remove_placement_group

    growing = live_cluster(autoscaling=True)
    plan = plan_workers(RayConfig(num_workers=2, cpus_per_worker=100.0), growing, "run big")
    group = placement_group([{"CPU": 100.0}] * 2)  # more than the cluster has: it stays pending
    monkeypatch.setattr(placement, "PENDING_REPORT_S", 0.2)
    logger = logging.getLogger("gptray.train.placement")  # the CLI's logging set-up stops gptray's records at "gptray"
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.INFO, logger="gptray.train.placement"), PendingReporter(plan, growing):
            for _ in range(50):
                if "waiting for 200 CPU for run big: the autoscaler is adding nodes" in caplog.text:
                    break
                time.sleep(0.1)
        assert "waiting for 200 CPU for run big: the autoscaler is adding nodes" in caplog.text
    finally:
        logger.removeHandler(caplog.handler)
        remove_placement_group(group)


def test_a_runs_processes_ask_their_own_cluster_whether_its_controller_lives():
    """Ray Train's PlacementGroupCleaner removes a run's placement group when the state API says the run's
    controller is gone. In a local instance started with gptray's options (as this session's is) the state API
    answers from this cluster's own dashboard, never from whichever one holds the default port or
    /tmp/ray/ray_current_cluster names (another `ray start` head on the machine)."""
    import ray

    @ray.remote(num_cpus=0)
    class Controller:
        def actor_id(self) -> str:
            return ray.get_runtime_context().get_actor_id()

    @ray.remote(num_cpus=0)
    def seen_alive(actor_id: str) -> bool:
        from ray.util.state import get_actor

        state = get_actor(actor_id, timeout=20)
        return state is not None and state.state == "ALIVE"

    controller = Controller.remote()
    try:
        assert ray.get(seen_alive.remote(ray.get(controller.actor_id.remote())))
    finally:
        ray.kill(controller)
