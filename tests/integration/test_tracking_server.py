"""Training against a real `mlflow server` on loopback over HTTP, and surviving its outage."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from gptray.train.pretrain import pretrain
from helpers import PretrainInThread, Relay, small_run_config

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def server(mlflow_server):
    """The session's real `mlflow server`; the outage test kills it and starts it again on the same address and
    store, as it leaves it for the next test."""
    return mlflow_server


@pytest.fixture(scope="module")
def blip(server, shakespeare_dataset, tmp_path_factory):
    """A run that logs to the server over HTTP through a relay, so that the server can vanish and be back within
    2 s (a restarted `mlflow server` took 10-20 s under load, and the run had to outlast that): the relay goes
    down after the run's first checkpoint and comes back 2 s later, while the run goes on."""
    root = tmp_path_factory.mktemp("blip")
    relay = Relay(server.port)
    config = small_run_config(root, shakespeare_dataset, "name=blip", "model.n_layer=1", "train.max_steps=50",
                              "schedule.decay_steps=50", "checkpoint.interval=6", "train.eval_interval=25",
                              f"tracking.uri={relay.uri}", "tracking.experiment=remote", "tracking.retry_seconds=1")
    run = PretrainInThread(config)  # with the final sample, as a user's run has
    run.wait_for_checkpoint(6)
    relay.down()
    time.sleep(2)  # steps go by with the server away
    reconnections = relay.accepted
    relay.up()
    back_in_time = run.is_alive()
    run.thread.join(timeout=300)
    yield SimpleNamespace(config=config, relay=relay, reconnections=reconnections, back_in_time=back_in_time,
                          result=run.result, error=run.error)
    relay.down()


def test_pretrain_logs_to_a_tracking_server_over_http(blip, server):
    from mlflow.tracking import MlflowClient

    result = blip.result
    assert result is not None, blip.error
    assert result.tracking_uri == blip.relay.uri  # the server, at the address the run was given
    client = MlflowClient(server.uri)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and run.data.params["model.n_layer"] == "1"
    assert client.get_experiment(run.info.experiment_id).name == "remote"
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
    assert {"config.yaml", "samples"} <= artifacts
    # the artifacts went through the server into its store, not into a local ./mlruns
    assert [p for p in (server.root / "artifacts").rglob("config.yaml") if result.mlflow_run_id in p.parts]


def test_training_outlives_the_tracking_server_and_its_metrics_are_sent_later(server, shakespeare_dataset, tmp_path):
    from mlflow.tracking import MlflowClient

    config = small_run_config(tmp_path, shakespeare_dataset, "name=outage", "train.max_steps=36",
                              f"tracking.uri={server.uri}", "tracking.retry_seconds=1")
    run = PretrainInThread(config, sample=False)
    client = MlflowClient(server.uri)
    deadline = time.monotonic() + 300
    while True:  # training has begun logging
        runs = client.search_runs([client.get_experiment_by_name("gptray").experiment_id]) \
            if client.get_experiment_by_name("gptray") else []
        if runs and len(client.get_metric_history(runs[0].info.run_id, "train/loss")) >= 3:
            break
        assert run.is_alive() and time.monotonic() < deadline, run.error
        time.sleep(0.5)
    server.kill()
    result = run.join(timeout=300)  # training ends while the server is still away
    assert result.final_step == 36
    outbox = Path(config.run_dir) / "mlflow_outbox.jsonl"
    assert outbox.is_file()  # the points the server never got, kept with the run

    server.start()  # the same store comes back on the same address
    again = pretrain(config, sample=False)  # launching the finished run again delivers them
    assert (again.start_step, again.final_step) == (36, 36) and not outbox.exists()
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED"
    steps = sorted({m.step for m in client.get_metric_history(run.info.run_id, "train/loss")})
    assert steps == list(range(1, 37))  # nothing logged during the outage was lost


def test_a_server_back_during_training_gets_the_metrics_from_the_running_job(blip, server):
    from mlflow.tracking import MlflowClient

    assert blip.back_in_time, "training ended before the server came back: make the run longer"
    result = blip.result
    assert result is not None, blip.error
    client = MlflowClient(server.uri)
    steps = sorted({m.step for m in client.get_metric_history(result.mlflow_run_id, "train/loss")})
    assert blip.relay.accepted > blip.reconnections  # the job's connections were cut, and it came back through new ones
    assert steps == list(range(1, 51)) and client.get_run(result.mlflow_run_id).info.status == "FINISHED"
    assert not (Path(blip.config.run_dir) / "mlflow_outbox.jsonl").exists()  # nothing was left for later
