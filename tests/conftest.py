"""Test fixtures: offline tiktoken and corpora, isolated caches, one local Ray instance per session.

Helpers that tests call (configs, ports, MLflow histories) live in helpers.py.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from helpers import SHARED, MlflowServer, make_config, small_run_config

# Before anything imports tiktoken, datasets or ray: these machines have no internet, and tests
# must not write into the user's caches. Ray workers started by this process inherit all of it.
_SCRATCH = Path(tempfile.mkdtemp(prefix="gptray-tests-"))
os.environ.setdefault("TIKTOKEN_CACHE_DIR", str(SHARED / "tiktoken"))
os.environ.setdefault("GPTRAY_CORPORA", str(SHARED / "corpora"))
os.environ["XDG_CACHE_HOME"] = str(_SCRATCH / "cache")  # gptray's token cache and corpus downloads
os.environ["HF_HOME"] = str(_SCRATCH / "hf")
os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["HF_DATASETS_OFFLINE"] = "1"
os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
# Ray Train's controller polls its workers every 2 s and so sees a finished run up to 2 s late; the
# suite runs ~40 short fits. Polling every 0.25 s saves ~2 s a fit and changes nothing else.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
# Ray Train starts a PreemptionWatcher actor per run, to act on nodes being drained (spot reclaims).
# No test drains a node, and each such actor is one more process start (~1 s of CPU here) per fit.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# S3 tests talk to a moto server on loopback. Ray workers read S3 through filesystems pickled by
# the driver (which carry the endpoint) but take credentials from their environment: give every
# process dummy ones, and never let an S3 client wait on the EC2 metadata service.
os.environ.setdefault("AWS_ACCESS_KEY_ID", "testing")
os.environ.setdefault("AWS_SECRET_ACCESS_KEY", "testing")
os.environ.setdefault("AWS_DEFAULT_REGION", "us-east-1")
os.environ["AWS_EC2_METADATA_DISABLED"] = "true"


def pytest_sessionfinish(session, exitstatus):
    shutil.rmtree(_SCRATCH, ignore_errors=True)


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray instance for the whole session.

    num_cpus=4 on a 2-core machine on purpose: two 1-CPU training workers plus a Ray Data task
    otherwise wait on each other forever (see ../shared/RAY-NOTES.md).
    """
    import ray

    from gptray.core.runtime import local_ray_options

    temp_dir = tempfile.mkdtemp(prefix="gptray-ray-", dir="/tmp")  # short: Ray's socket paths are limited
    # gptray's own options for a local instance: its processes ask their own dashboard for cluster state, so
    # the `ray start` heads other tests run cannot make Ray Train think a live run's controller is gone
    ray.init(**local_ray_options(4, _temp_dir=temp_dir))
    yield
    ray.shutdown()
    shutil.rmtree(temp_dir, ignore_errors=True)


def _ray_address_file() -> Path:
    return Path("/tmp/ray/ray_current_cluster")  # ray._common.utils.get_ray_address_file(None) on Linux


_RAY_ADDRESS_AT_START = _ray_address_file().read_bytes() if _ray_address_file().is_file() else None


@pytest.fixture(autouse=True)
def restore_ray_address_file():
    """After each test, put Ray's record of "the current cluster" (/tmp/ray/ray_current_cluster) back as
    the session found it.

    `ray start --head` in a test writes it, and the test then kills that head. Processes of the
    session's Ray instance that look the cluster up by it (Ray Train's PlacementGroupCleaner asks
    the state API with no address) would then wait on a dead GCS: 12 s more per Ray Train run.
    """
    yield
    path = _ray_address_file()
    now = path.read_bytes() if path.is_file() else None
    if now != _RAY_ADDRESS_AT_START:
        if _RAY_ADDRESS_AT_START is None:
            path.unlink(missing_ok=True)
        else:
            path.write_bytes(_RAY_ADDRESS_AT_START)


@pytest.fixture(scope="session")
def shakespeare_dataset(ray_session, tmp_path_factory):
    """tinyshakespeare tokenized once (paragraph documents, 10% validation)."""
    from gptray.data.tokenize_job import tokenize_corpus

    root = tmp_path_factory.mktemp("shakespeare")
    config = make_config(root)
    return tokenize_corpus(config)


@pytest.fixture(scope="session")
def reference_run(shakespeare_dataset, tmp_path_factory):
    """An uninterrupted 36-step run: 2 CPU workers, DDP, fp32. Other runs are compared with it."""
    from gptray.train.pretrain import pretrain

    root = tmp_path_factory.mktemp("reference")
    config = small_run_config(root, shakespeare_dataset, "name=reference", "train.max_steps=36")
    return config, pretrain(config)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """One real `mlflow server` (SQLite store, local artifacts) for the whole session: it takes 5-20 s to start
    here. Tests reach it through relays of their own and log to runs of their own; one that kills it starts
    it again on the same address and store before it ends."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    if server.process.poll() is None:
        server.kill()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A real S3-compatible server (moto in server mode) on a free loopback port, for the whole session."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def s3_bucket(s3_endpoint, monkeypatch, request):
    """A fresh bucket; AWS_ENDPOINT_URL points this process's S3 clients at the server."""
    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    name = "gptray-" + request.node.name.lower().replace("_", "-")[:40].strip("-")
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=name)
    return name
