"""One live launch per run directory: a second is refused naming both, a dead one's lease is taken over,
and `checkpoint consolidate --overwrite` removes only what it writes."""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from gptray.cli.main import main as cli
from gptray.config import load_config
from gptray.core.errors import RunInUse
from gptray.core.storage import Storage
from gptray.train import run_lease
from gptray.train.pretrain import pretrain
from gptray.train.run_lease import LEASE_FILE, RunLease

HOLD = """
import sys, time
from gptray.core.storage import Storage
from gptray.train.run_lease import RunLease
with RunLease(Storage(sys.argv[1]), "other"):
    print("held", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def other_launch(tmp_path):
    """A live launch in another process holding the lease on tmp_path/runs/quickstart."""
    run_dir = tmp_path / "runs" / "quickstart"
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    yield run_dir, holder
    holder.kill()
    holder.wait()


def test_a_second_live_launch_is_refused_naming_both(other_launch, tmp_path):
    run_dir, holder = other_launch
    with pytest.raises(RunInUse) as refused:
        RunLease(Storage(str(run_dir)), "quickstart").acquire()
    message = str(refused.value)
    assert f"pid {holder.pid}" in message and f"pid {os.getpid()}" in message
    assert message.count(socket.gethostname()) == 2
    # the pretrain driver takes it first, before reading any data or starting Ray
    config = load_config(overrides=[f"out_dir={tmp_path / 'runs'}", "data.dataset_dir=/nonexistent"])
    with pytest.raises(RunInUse, match=f"in use by .*pid {holder.pid}"):
        pretrain(config)
    assert cli(["pretrain", f"out_dir={tmp_path / 'runs'}", "data.dataset_dir=/nonexistent"]) == RunInUse.exit_code


def test_the_lease_of_a_launch_that_died_is_taken_over_with_a_warning(other_launch, caplog):
    run_dir, holder = other_launch
    holder.kill()  # killed: no release, its lease stays behind; not reaped yet (a zombie), so its pid exists
    deadline = time.monotonic() + 30
    while open(f"/proc/{holder.pid}/stat").read().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert json.loads((run_dir / LEASE_FILE).read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING, logger=run_lease.__name__):
        lease = RunLease(Storage(str(run_dir)), "quickstart").acquire()
    assert "taking over the lease of " in caplog.text and f"pid {holder.pid}" in caplog.text
    assert json.loads((run_dir / LEASE_FILE).read_text())["pid"] == os.getpid()
    lease.release()
    assert not (run_dir / LEASE_FILE).exists()


def test_a_lease_from_another_host_counts_while_its_heartbeat_is_fresh(tmp_path, caplog):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    elsewhere = {"user": "alice", "host": "gpu-node-7", "pid": 4242, "token": "t", "since": time.time() - 3600,
                 "heartbeat": time.time() - 10}
    (run_dir / LEASE_FILE).write_text(json.dumps(elsewhere))
    with pytest.raises(RunInUse, match="alice@gpu-node-7 pid 4242"):
        RunLease(Storage(str(run_dir)), "run").acquire()
    elsewhere["heartbeat"] = time.time() - run_lease.STALE_SECONDS - 1
    (run_dir / LEASE_FILE).write_text(json.dumps(elsewhere))
    with caplog.at_level(logging.WARNING, logger=run_lease.__name__):
        with RunLease(Storage(str(run_dir)), "run"):
            assert json.loads((run_dir / LEASE_FILE).read_text())["host"] == socket.gethostname()
    assert "alice@gpu-node-7" in caplog.text


def test_the_holder_renews_its_heartbeat(tmp_path, monkeypatch):
    monkeypatch.setattr(run_lease, "HEARTBEAT_SECONDS", 0.05)
    with RunLease(Storage(str(tmp_path / "run")), "run"):
        first = json.loads((tmp_path / "run" / LEASE_FILE).read_text())["heartbeat"]
        deadline = time.monotonic() + 10
        while json.loads((tmp_path / "run" / LEASE_FILE).read_text())["heartbeat"] == first:
            assert time.monotonic() < deadline, "no heartbeat"
            time.sleep(0.05)
    assert not (tmp_path / "run").exists()  # nothing else was written: no directory is left
