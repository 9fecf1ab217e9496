"""One whole checkpoint from a sharded one: model.pt (and optionally optimizer.pt), in one process."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch

from gptray.checkpoint.files import (
    find_checkpoint,
    local_checkpoint,
    optional_tensors,
    read_config,
    read_state,
    save_checkpoint,
)
from gptray.checkpoint.sharded import SHARDED, load_sharded
from gptray.config import ModelConfig
from gptray.core.errors import CheckpointError, ConfigError
from gptray.core.paths import is_uri
from gptray.model import GPT
from gptray.train.optim import build_optimizers


@dataclasses.dataclass
class Consolidated:
    source: str  # the sharded checkpoint, as found (a URI for one on an object store)
    out: Path
    step: int
    files: dict[str, int]  # name → bytes written


def default_output(found: Path | str) -> Path:
    """Beside a local checkpoint (a name the run's own checkpoint search never matches), else here."""
    name = f"{Path(str(found).rstrip('/')).name}.whole"
    return Path(name) if is_uri(str(found)) else Path(found).parent / name


# What consolidating writes into --out; --overwrite removes these and nothing else.
WRITES = ("model.pt", "optimizer.pt", "scaler.pt", "config.yaml", "state.json", "state.json.tmp")


def _prepare_output(target: Path, overwrite: bool) -> None:
    """--out new or empty, or with --overwrite rid of the files consolidating writes (only those: a mistyped
    --out must not cost anything else, and a checkpoint directory must hold nothing else)."""
    if target.exists() and not target.is_dir():
        raise ConfigError("--out", f"{target} is a file")
    if target.is_dir() and any(target.iterdir()):
        if not overwrite:
            raise ConfigError("--out", f"{target} already exists (pass --overwrite to replace it)")
        others = sorted(p.name for p in target.iterdir() if p.name not in WRITES)
        if others:
            raise ConfigError("--out", f"{target} holds files a checkpoint does not ({', '.join(others[:5])}): "
                                       "--overwrite replaces only a checkpoint's files; choose another --out")
        for name in WRITES:
            (target / name).unlink(missing_ok=True)


def consolidate_checkpoint(checkpoint: str | Path, out: str | Path | None = None, optimizer: bool = False,
                           overwrite: bool = False) -> Consolidated:
    """Write a sharded checkpoint (or a run directory's latest) as a whole one, loadable with
    torch.load(weights_only=True). The whole model (and optimizer) is held in this process's memory:
    that is what one file means. With `optimizer`, the result resumes like any whole checkpoint."""
    found = find_checkpoint(checkpoint)
    directory = local_checkpoint(found)
    state = read_state(directory)
    if state.format != SHARDED:
        raise CheckpointError(f"checkpoint {found} is already whole (model.pt): nothing to consolidate")
    target = Path(out) if out is not None else default_output(found)
    if is_uri(str(target)):
        raise ConfigError("--out", f"must be a local directory (got {target}); copy the result to storage after")
    _prepare_output(target, overwrite)

    config = read_config(directory)
    model = GPT(ModelConfig.from_saved(state.model))
    wanted = {"model": model.state_dict()}
    if optimizer:  # a fresh optimizer's state dict gives the shapes of the saved one (torch fills it at lr 0)
        from torch.distributed.checkpoint.state_dict import get_state_dict

        optimizers = build_optimizers(model, config.optimizer, torch.device("cpu"))
        model_state, optimizer_state = get_state_dict(model, optimizers)
        wanted = {"model": model_state, "optimizer": optimizer_state}
    load_sharded(directory, wanted)
    whole = dataclasses.replace(state, files={})
    save_checkpoint(target, wanted["model"], wanted.get("optimizer"), whole, config,
                    optional_tensors(directory, "scaler.pt") if optimizer else None)
    return Consolidated(str(found), target, state.step, read_state(target).files)
