"""Loading a model to generate with or evaluate: a checkpoint (or a run's latest), its tokenizer, a device."""

from __future__ import annotations

import logging
from pathlib import Path

import torch

from gptray.checkpoint.files import load_model_state, read_config, read_state, resolve_checkpoint
from gptray.config import ModelConfig
from gptray.config.schema import tokenizer_kind
from gptray.core.errors import CheckpointError, ConfigError, DataError
from gptray.core.storage import Storage
from gptray.data.tokenizer_loading import TOKENIZER_FILE, load_tokenizer, stored_tokenizer
from gptray.model import GPT

log = logging.getLogger(__name__)


def resolve_device(name: str = "auto") -> torch.device:
    """"auto" is the GPU where there is one, else the CPU; anything else is a torch device name."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ConfigError("device", f"not a torch device: {name!r} ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device", f"{name!r} asked for, but torch sees no CUDA GPU here")
    return device


def load_model(checkpoint: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Path]:
    """Build the model a checkpoint (or a run directory's latest checkpoint) holds, in eval mode."""
    directory = resolve_checkpoint(checkpoint)
    state = read_state(directory)
    model = GPT(ModelConfig.from_saved(state.model))
    # whole or sharded (a sharded one is read into the new model's own tensors, the weights alone)
    model.load_state_dict(load_model_state(directory, model.state_dict(), device))
    return model.to(device).eval(), directory


def checkpoint_tokenizer(directory: str | Path, default: str):
    """The tokenizer the checkpoint's run used: the tokenizer.json kept with the checkpoint or in its run
    directory, else the one its config.yaml names (tiktoken's by name; else the file beside its token
    dataset, else the file or Hub name itself); `default` (a data.tokenizer spec) when none is readable."""
    directory = Path(directory)
    config = _saved_config(directory)
    spec = config.data.tokenizer if config is not None else None
    for place in (directory, directory.parent):
        kept = stored_tokenizer(Storage(str(place)), spec or str(place / TOKENIZER_FILE))
        if kept is not None:
            return kept
    if spec is None:
        return load_tokenizer(default)
    if tokenizer_kind(spec) in ("file", "hub"):
        try:
            beside_data = stored_tokenizer(Storage(config.data.dataset_dir), spec)
        except DataError:  # its dataset is gone or unreachable: the file or Hub name itself, below
            beside_data = None
        if beside_data is not None:
            return beside_data
    return load_tokenizer(spec)


def _saved_config(directory: Path):
    try:
        return read_config(directory)
    except (CheckpointError, ConfigError, OSError) as exc:
        log.warning("cannot read the tokenizer of %s (%s)", directory, exc)
        return None
