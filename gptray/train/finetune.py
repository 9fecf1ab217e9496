"""Fine-tuning: the pretraining engine started from a base model's weights (gptray checkpoint or Hugging Face GPT-2).

`train.init_from` names the base: a gptray checkpoint or run directory (its latest checkpoint), a
Hugging Face GPT-2 directory, or `hf:NAME` from the hub. The run keeps the base's architecture
(its config decides every shape field); only what does not change the parameters, such as
dropout or the attention implementation, may differ. The base is only ever read: a Hugging
Face model is imported once into `out_dir/bases/`, and the run writes its own checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gptray.config.schema import is_uri, join_path
from gptray.data.storage import Storage
from gptray.errors import CheckpointError, ConfigError
from gptray.model.config import SHAPE_FIELDS, ModelConfig
from gptray.model.presets import canonical_preset

log = logging.getLogger(__name__)

HF_PREFIX = "hf:"
BASES_DIR = "bases"  # under out_dir: Hugging Face models imported as gptray checkpoints


@dataclass
class Base:
    """Where fine-tuning starts: a gptray checkpoint, or a Hugging Face model still to be imported."""

    spec: str  # train.init_from as given
    checkpoint: Path | str | None  # a gptray checkpoint: a local directory, or a URI on an object store
    hf_source: str | None  # a Hugging Face directory or hub name

    @property
    def is_hf(self) -> bool:
        return self.hf_source is not None


def find_base(init_from: str) -> Base:
    """Classify train.init_from, checking that it exists (raises ConfigError naming the key)."""
    from gptray.train.checkpoint import STATE_FILE, find_checkpoint

    if init_from.startswith(HF_PREFIX):
        return Base(init_from, None, init_from[len(HF_PREFIX):])
    path = Path(init_from)
    if not is_uri(init_from) and (path / "config.json").is_file() and not (path / STATE_FILE).is_file():
        return Base(init_from, None, str(path))
    try:
        return Base(init_from, find_checkpoint(init_from), None)
    except CheckpointError as exc:
        raise ConfigError("train.init_from", f"{exc}; give a gptray checkpoint or run directory, a Hugging Face "
                                             "GPT-2 directory, or hf:NAME") from None


def base_model_config(base: Base) -> ModelConfig:
    """The resolved model config of the base (for a Hugging Face model, read from its config.json)."""
    from gptray.train.checkpoint import read_state

    if base.is_hf:
        from gptray.model.hf import hf_model_config

        return hf_model_config(base.hf_source).resolved()
    return ModelConfig.from_saved(read_state(base.checkpoint).model)


def finetune_model(requested: ModelConfig, base: ModelConfig, recipe_dropout: float | None) -> ModelConfig:
    """The base's model with the request's settings that leave the parameters as they are.

    A shape field (or preset) set in the request must agree with the base; nothing is silently
    replaced. Dropout: the request's, else the recipe's (fine-tuning turns it on), else the base's.
    """
    if requested.preset is not None and canonical_preset(requested.preset) != base.preset:
        raise ConfigError("model.preset", f"fine-tuning keeps the base model, which is "
                                          f"{base.preset or 'a custom model'} (asked for {requested.preset!r}); "
                                          "set model.preset=null or leave it out")
    values = dataclasses.asdict(base)
    for name, value in dataclasses.asdict(requested).items():
        if name == "preset" or value is None:
            continue
        if name in SHAPE_FIELDS:
            if value != values[name]:
                raise ConfigError(f"model.{name}", f"the base model has {name}={values[name]!r} (asked for "
                                                   f"{value!r}); fine-tuning keeps the base's architecture")
            continue
        values[name] = value
    if requested.dropout is None and recipe_dropout is not None:
        values["dropout"] = recipe_dropout
    return ModelConfig(**values).resolved()


def base_checkpoint(base: Base, out_dir: str) -> Path | str:
    """The base as a gptray checkpoint (a directory, or a URI when out_dir is on an object store),
    importing a Hugging Face model the first time."""
    if not base.is_hf:
        return base.checkpoint
    from gptray.model.hf import import_hf_checkpoint
    from gptray.train.checkpoint import is_complete

    name = re.sub(r"[^A-Za-z0-9._-]+", "--", base.hf_source).strip("-")
    target = join_path(out_dir, BASES_DIR, name) if is_uri(out_dir) else Path(out_dir) / BASES_DIR / name
    store = Storage(str(target))
    if is_complete(store) and store.exists("import.json") and \
            json.loads(store.read_bytes("import.json")).get("source") == base.hf_source:
        return target
    log.info("importing %s as a gptray checkpoint into %s", base.hf_source, target)
    if not is_uri(out_dir):
        import_hf_checkpoint(base.hf_source, target, overwrite=True)
        return target
    with tempfile.TemporaryDirectory(prefix="gptray-base-") as scratch:  # imported here, then uploaded
        import_hf_checkpoint(base.hf_source, Path(scratch) / name, overwrite=True)
        store.upload(Path(scratch) / name)
    return target
