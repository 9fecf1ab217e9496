"""Helpers the tests share: where things are, small configs, free ports, MLflow metric histories, sweep files."""

from __future__ import annotations

import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
SHAKESPEARE = SHARED / "corpora" / "tinyshakespeare.txt"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_dashboard(url: str, process, log_path: Path, timeout: float = 90) -> None:
    """Wait until a Ray head started by `process` answers on its dashboard (a 401 asking for the token
    counts as up); fail with the end of its log if it exits or the time runs out."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            urllib.request.urlopen(f"{url}/api/version", timeout=2)
            return
        except urllib.error.HTTPError:
            return
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray head did not start:\n{Path(log_path).read_text()[-3000:]}") from None
            time.sleep(0.5)


def make_config(root: Path, *overrides: str):
    """A resolved config whose outputs all live under `root` (a fine-tuning one reads its base)."""
    from gptray.train.finetune import load_finetune_config

    return load_finetune_config(None, [f"out_dir={root}/runs", f"data.dataset_dir={root}/data", *overrides])


# A small model and short schedule for Ray Train tests; 2 workers × 2 micro-batches of 2 also
# exercise gradient accumulation.
SMALL_RUN = [
    "model.n_layer=2", "model.n_head=2", "model.n_embd=64",
    "train.batch_size=8", "train.micro_batch_size=2", "train.lr=3e-3", "train.warmup_steps=4",
    "train.lr_decay_steps=36",  # the schedule must not depend on max_steps for resume to be exact
    "train.log_interval=1", "train.eval_interval=12", "train.eval_windows=15", "train.checkpoint_interval=12",
    "generate.max_new_tokens=20",
]


def small_run_config(root: Path, dataset, *overrides: str):
    """SMALL_RUN on a tokenized dataset, outputs under `root`."""
    return make_config(root, *SMALL_RUN, f"data.dataset_dir={dataset.dataset_dir}", *overrides)


def metric_history(result, key: str) -> dict[int, float]:
    """step → value of an MLflow metric of a pretrain result (the last value where a step repeats)."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(result.tracking_uri)
    history = sorted(client.get_metric_history(result.mlflow_run_id, key), key=lambda m: m.timestamp)
    return {m.step: m.value for m in history}


TINY_TRIALS = {
    "model": {"n_layer": 1, "n_head": 2, "n_embd": 64},
    "train": {"max_steps": 4, "batch_size": 4, "micro_batch_size": 4, "warmup_steps": 1, "eval_interval": 2,
              "eval_windows": 8, "checkpoint_interval": 2, "log_interval": 1},
    "ray": {"num_workers": 1, "num_cpus": 4},  # num_cpus: a sweep started from the CLI gets its own local Ray
}


def write_sweep(path: Path, dataset_dir: str, sweep: dict, **sections) -> Path:
    content = {"name": path.stem, "out_dir": str(path.parent / "runs"), "data": {"dataset_dir": dataset_dir},
               **TINY_TRIALS, **sections, "sweep": sweep}
    path.write_text(yaml.safe_dump(content, sort_keys=False))
    return path
