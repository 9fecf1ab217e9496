"""The SLURM script, run for real by sbatch on a one-node SLURM cluster started by the test."""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from helpers import REPO, free_port

SCRIPT = REPO / "cluster" / "slurm" / "gptray.sbatch"
DAEMONS = ("munged", "slurmctld", "slurmd", "sbatch", "sinfo", "squeue", "scancel")


def find(name: str) -> str | None:
    return shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")


def test_script_is_valid_bash_and_follows_the_ray_slurm_pattern():
    subprocess.run(["bash", "-n", str(SCRIPT)], check=True)
    text = SCRIPT.read_text()
    assert "ray start --head --block" in text and "ray start --block --address" in text
    assert "--dashboard-host=127.0.0.1" in text and "RAY_AUTH_MODE=token" in text
    assert 'python -u -m "$pipeline"' in text


@pytest.fixture
def slurm_cluster():
    """slurmctld + slurmd for this host, with their own config, ports and state (munged shared)."""
    missing = [d for d in DAEMONS if find(d) is None]
    if missing or os.geteuid() != 0:
        pytest.skip(f"needs root and SLURM ({', '.join(missing) or 'root'} missing): apt-get install slurm-wlm munge")
    root = Path(tempfile.mkdtemp(prefix="gptray-slurm-", dir="/tmp"))
    host = socket.gethostname().split(".")[0]
    conf = root / "slurm.conf"
    conf.write_text("\n".join([
        "ClusterName=gptraytest", f"SlurmctldHost={host}", f"SlurmctldPort={free_port()}",
        f"SlurmdPort={free_port()}", "AuthType=auth/munge", f"StateSaveLocation={root}/state",
        f"SlurmdSpoolDir={root}/spool", f"SlurmctldPidFile={root}/slurmctld.pid", f"SlurmdPidFile={root}/slurmd.pid",
        f"SlurmctldLogFile={root}/slurmctld.log", f"SlurmdLogFile={root}/slurmd.log", "SlurmUser=root",
        "ProctrackType=proctrack/linuxproc", "TaskPlugin=task/none", "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_CPU", "ReturnToService=2", "MpiDefault=none", "KillWait=2",
        f"NodeName={host} CPUs={os.cpu_count()} RealMemory=1000 State=UNKNOWN",
        f"PartitionName=test Nodes={host} Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES", ""]))
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    started_munge = None
    if subprocess.run(["pgrep", "-x", "munged"], capture_output=True).returncode != 0:
        Path("/run/munge").mkdir(parents=True, exist_ok=True)
        shutil.chown("/run/munge", "munge", "munge")
        started_munge = subprocess.run([find("munged"), "--force"], capture_output=True)
    env = dict(os.environ, SLURM_CONF=str(conf))
    subprocess.run([find("slurmctld"), "-f", str(conf)], env=env, check=True)
    subprocess.run([find("slurmd"), "-f", str(conf)], env=env, check=True)
    deadline = time.monotonic() + 60
    while "idle" not in subprocess.run([find("sinfo"), "-h", "-o", "%t"], env=env, capture_output=True,
                                       text=True).stdout:
        assert time.monotonic() < deadline, (root / "slurmctld.log").read_text()[-2000:]
        time.sleep(1)
    yield root, env
    subprocess.run([find("scancel"), "--full", "--signal=KILL", "--user=root"], env=env, capture_output=True)
    deadline = time.monotonic() + 30
    while subprocess.run([find("squeue"), "-h"], env=env, capture_output=True, text=True).stdout.strip():
        if time.monotonic() > deadline:
            break
        time.sleep(1)
    pids = [int((root / f"{d}.pid").read_text()) for d in ("slurmd", "slurmctld") if (root / f"{d}.pid").is_file()]
    for sig, patience in ((signal.SIGTERM, 5), (signal.SIGKILL, 5)):
        for pid in pids:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        if wait_for_exit(pids, patience):  # as soon as they are gone, not after a fixed pause
            break
    if started_munge is not None:
        subprocess.run(["pkill", "-x", "munged"])
    shutil.rmtree(root, ignore_errors=True)


def wait_for_exit(pids: list[int], seconds: float) -> bool:
    """Whether every process in `pids` (daemons: not our children) has ended within `seconds`."""
    deadline = time.monotonic() + seconds
    while True:
        alive = [pid for pid in pids if running(pid)]
        if not alive:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)


def running(pid: int) -> bool:
    """Whether `pid` is a process that has not ended (a zombie waiting to be reaped has)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat[stat.rfind(")") + 2:].split()[0] != "Z"


@pytest.mark.slow
def test_sbatch_starts_ray_and_runs_the_pretrain_pipeline(slurm_cluster, shakespeare_dataset):
    root, env = slurm_cluster
    token = root / "token"
    token.write_text(secrets.token_hex(32))
    token.chmod(0o600)  # the script reports a token others can read
    env = dict(env, RAY_AUTH_TOKEN_PATH=str(token), RAY_PORT=str(free_port()),
               PATH=f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}")
    log = root / "job.log"
    job = subprocess.run(
        [find("sbatch"), "--wait", "--nodes=1", f"--output={log}", str(SCRIPT), "configs/quickstart.yaml",
         f"out_dir={root}/runs", f"data.dataset_dir={shakespeare_dataset.dataset_dir}", "train.max_steps=2",
         "data.tokenizer=gpt2", "schedule.warmup_steps=1", "checkpoint.interval=2", "generate.max_new_tokens=4",
         "tracking.enabled=false"],
        env=env, cwd=REPO, capture_output=True, text=True, timeout=600)
    output = log.read_text() if log.exists() else ""
    assert job.returncode == 0, job.stderr + output[-5000:]
    assert "1 Ray node(s) up" in output and "step 2/2" in output
    assert "pipelines.pretrain_job exited with 0" in output and "can be read by other users" not in output
    assert (root / "runs" / "quickstart" / "checkpoint_00000002" / "state.json").is_file()
