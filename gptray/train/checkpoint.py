"""Checkpoints: the complete training state as tensors and JSON, loadable with `weights_only=True`.

A checkpoint directory holds `model.pt` (state dict), `optimizer.pt`, `state.json` (step,
tokens seen, model shape, dataset fingerprint) and `config.yaml` (the resolved run config).
Randomness needs no saved state: every step reseeds from (seed, step, rank), so a resumed
run draws the same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from gptray.config import ExperimentConfig
from gptray.errors import CheckpointError
from gptray.model.config import ModelConfig

STATE_FILE = "state.json"  # written last, with the size of every other file (see is_complete)
CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


@dataclass
class TrainingState:
    step: int = 0  # optimizer steps completed
    tokens_seen: int = 0
    dataset_fingerprint: str = ""
    model: dict = field(default_factory=dict)  # the resolved model config
    world_size: int = 1
    best_val_loss: float | None = None
    metrics: dict = field(default_factory=dict)  # what was reported with this checkpoint
    files: dict = field(default_factory=dict)  # name → bytes of every file beside state.json


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def save_checkpoint(directory: str | Path, model_state: dict, optimizer_state: dict | None,
                    state: TrainingState, config: ExperimentConfig, scaler_state: dict | None = None) -> Path:
    """Write a checkpoint from whole (unsharded) state dicts keyed by parameter name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, directory / "model.pt")
    if optimizer_state is not None:
        torch.save(optimizer_state, directory / "optimizer.pt")
    if scaler_state is not None:
        torch.save(scaler_state, directory / "scaler.pt")
    (directory / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    # Copies to storage (Ray's upload, an rsync) do not keep our write order: the sizes let a
    # reader tell a complete checkpoint from one whose copy was cut short.
    state.files = {f.name: f.stat().st_size for f in sorted(directory.iterdir())
                   if f.is_file() and not f.name.startswith(STATE_FILE)}
    tmp = directory / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, directory / STATE_FILE)
    return directory


def read_state(directory: str | Path) -> TrainingState:
    path = Path(directory) / STATE_FILE
    if not path.is_file():
        raise CheckpointError(f"{directory} is not a complete gptray checkpoint (no {STATE_FILE})")
    try:
        return TrainingState(**json.loads(path.read_text()))
    except (json.JSONDecodeError, TypeError) as exc:
        raise CheckpointError(f"{path} is malformed: {exc}") from None


def read_config(directory: str | Path) -> ExperimentConfig:
    path = Path(directory) / "config.yaml"
    if not path.is_file():
        raise CheckpointError(f"{directory} has no config.yaml")
    return ExperimentConfig.from_dict(yaml.safe_load(path.read_text()))


def load_tensors(directory: str | Path, name: str, device: torch.device | str = "cpu"):
    path = Path(directory) / name
    if not path.is_file():
        raise CheckpointError(f"checkpoint {directory} lacks {name}")
    # weights_only: a checkpoint can never run code when loaded.
    return torch.load(path, map_location=device, weights_only=True)


def optional_tensors(directory: str | Path, name: str, device: torch.device | str = "cpu"):
    """Like load_tensors, but None when the checkpoint has no such file (e.g. no scaler in fp32)."""
    return load_tensors(directory, name, device) if (Path(directory) / name).is_file() else None


def check_compatible(state: TrainingState, config: ExperimentConfig, dataset_fingerprint: str, where: str) -> None:
    """Refuse to resume a checkpoint into a different model shape or dataset."""
    expected = config.model.shape()
    # from_saved: a checkpoint written before a model field existed gets the value it was trained with.
    saved = ModelConfig.from_saved(state.model).shape()
    if saved != expected:
        diff = ", ".join(
            f"{k}: checkpoint {saved[k]} vs config {expected[k]}" for k in expected if saved[k] != expected[k]
        )
        raise CheckpointError(
            f"checkpoint {where} has a different model shape ({diff}). Use a new run name to start afresh."
        )
    if state.dataset_fingerprint != dataset_fingerprint:
        raise CheckpointError(
            f"checkpoint {where} was trained on a different token dataset (fingerprint "
            f"{state.dataset_fingerprint[:12]}… vs {dataset_fingerprint[:12]}… now in {config.data.dataset_dir}). "
            "Resuming would change the data order; use a new run name to start afresh."
        )


def latest_checkpoint(run_dir: str | Path) -> Path | None:
    """The complete checkpoint with the highest step in a run directory, if any."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        return None
    found = [
        (int(m.group(1)), p) for p in run_dir.iterdir()
        if (m := CHECKPOINT_DIR.match(p.name)) and is_complete(p)
    ]
    return max(found)[1] if found else None


def missing_files(directory: str | Path) -> list[str]:
    """What keeps a checkpoint from being complete: state.json, or files it lists absent or cut short."""
    directory = Path(directory)
    try:
        state = read_state(directory)
    except CheckpointError:
        return [STATE_FILE]
    problems = []
    for name, size in state.files.items():
        path = directory / name
        if not path.is_file():
            problems.append(f"{name} (missing)")
        elif path.stat().st_size != size:
            problems.append(f"{name} ({path.stat().st_size} of {size} bytes)")
    return problems


def is_complete(directory: str | Path) -> bool:
    """A checkpoint whose state.json and every file it lists are there, at their recorded sizes."""
    return not missing_files(directory)


def resolve_checkpoint(path: str | Path) -> Path:
    """Accept a checkpoint directory or a run directory (→ its latest checkpoint)."""
    path = Path(path)
    if (path / STATE_FILE).is_file():
        if problems := missing_files(path):
            raise CheckpointError(f"checkpoint {path} is incomplete: {', '.join(problems)} "
                                  "(a copy or upload cut short?)")
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"no checkpoint at {path} (neither a checkpoint nor a run directory holding one)")
    return latest
