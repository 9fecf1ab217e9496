"""Fine-tuning: the pretraining engine started from a base model's weights (gptray checkpoint or Hugging Face GPT-2).

`train.init_from` names the base: a gptray checkpoint or run directory (its latest checkpoint), a
Hugging Face GPT-2 directory, or `hf:NAME` from the hub. The run keeps the base's architecture
(its config decides every shape field); only what does not change the parameters, such as
dropout or the attention implementation, may differ. The base is only ever read: a Hugging
Face model is imported once into `out_dir/bases/`, and the run writes its own checkpoints.
"""

from __future__ import annotations

import json
import logging
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

from gptray.checkpoint.files import STATE_FILE, find_checkpoint, is_complete, read_state
from gptray.config import ExperimentConfig, ModelConfig, load_config, parse_override, read_yaml
from gptray.config.schema import HF_PREFIX, BaseModelReader
from gptray.core.errors import CheckpointError, ConfigError, DataError
from gptray.core.paths import is_uri, join_path, within
from gptray.core.storage import Storage
from gptray.data.tokenizer_loading import TOKENIZER_FILE
from gptray.generation.loading import checkpoint_tokenizer
from gptray.interop.huggingface import hf_model_config, import_hf_checkpoint

log = logging.getLogger(__name__)

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


def base_model_config(base: Base, hub: bool = True) -> ModelConfig:
    """The resolved model config of the base: a checkpoint's state.json, or a Hugging Face model's
    config.json (from the Hub only with `hub`, and never its weights)."""
    if base.is_hf:
        try:
            return hf_model_config(base.hf_source, hub=hub).resolved()
        except CheckpointError as exc:
            if hub:
                raise
            raise ConfigError("train.init_from", f"{exc}; `gptray finetune` reads its config.json (no weights) "
                                                 "from the Hub") from None
    return ModelConfig.from_saved(read_state(base.checkpoint).model)


def base_model_reader(hub: bool = True) -> BaseModelReader:
    """What ExperimentConfig.resolved calls to read a fine-tuning run's base model config; `hub=False`
    reads nothing from the Hugging Face Hub (`gptray config`), only local files and its local cache."""

    def read(config: ExperimentConfig) -> ModelConfig:
        base = find_base(config.train.init_from)
        if base.checkpoint is not None and within(str(base.checkpoint), config.run_dir):
            raise ConfigError("name", f"the run directory {config.run_dir} holds the base checkpoint; fine-tuning "
                                      "writes its own checkpoints, so give the run another name")
        return base_model_config(base, hub)

    return read


def load_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                    hub: bool = True, settings: dict | None = None) -> ExperimentConfig:
    """A run's config from a YAML file and overrides: load_config with the reader a fine-tuning base
    (train.init_from) needs, so that it serves every config."""
    return load_config(path, overrides, base_model_reader(hub), settings)


def finetune_run_config(path: str | Path | None = None, overrides: list[str] | None = None,
                        init_from: str | None = None) -> ExperimentConfig:
    """The config of a fine-tuning run (`gptray finetune`): the `finetune` recipe unless the file or an
    override names another; `init_from` (--init-from) sets train.init_from, over an override of it.
    Refuses a config without a base."""
    overrides = list(overrides or [])
    if init_from:
        overrides = [text for text in overrides if parse_override(text)[0] != "train.init_from"]
    settings: dict = {}
    given = {parse_override(text)[0] for text in overrides}
    in_file = (read_yaml(path).get("train") or {}) if path is not None else {}
    if "train.recipe" not in given and "recipe" not in in_file:
        settings["train.recipe"] = "finetune"
    if init_from:
        settings["train.init_from"] = init_from
    config = load_run_config(path, overrides, settings=settings)
    if not config.train.init_from:
        raise ConfigError("train.init_from", "fine-tuning needs a base model: pass --init-from CHECKPOINT "
                                             "(a gptray checkpoint or run directory, an HF directory or hf:NAME)")
    return config


def base_checkpoint(base: Base, out_dir: str) -> Path | str:
    """The base as a gptray checkpoint (a directory, or a URI when out_dir is on an object store),
    importing a Hugging Face model the first time."""
    if not base.is_hf:
        return base.checkpoint
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


def base_for_run(config: ExperimentConfig, tokenizer) -> Storage | None:
    """A fine-tuning run's base weights as a gptray checkpoint (imported first if from Hugging Face),
    checked against the run's model and its dataset's tokenizer; None for a run that is not fine-tuning."""
    if not config.train.init_from:
        return None
    directory = base_checkpoint(find_base(config.train.init_from), config.out_dir)
    base_shape = ModelConfig.from_saved(read_state(directory).model).shape()
    if base_shape != config.model.shape():
        raise CheckpointError(f"the base checkpoint {directory} no longer matches the run's model "
                              "(did it change since the config was resolved?)")
    check_base_tokenizer(directory, tokenizer)
    log.info("fine-tuning from %s", directory)
    return Storage(str(directory))


def check_base_tokenizer(base: Path | str, tokenizer) -> None:
    """Fine-tuning data must be tokenized with the base's own tokenizer: ids mean nothing across tokenizers."""
    if is_uri(str(base)):
        return  # an object-store base: its vocabulary was checked against the dataset's (check_dataset_fits)
    own = checkpoint_tokenizer(base, tokenizer.name)
    if own.digest != tokenizer.digest:
        hint = (f"data.tokenizer={Path(base).parent / TOKENIZER_FILE}" if own.kind != "tiktoken"
                else f"data.tokenizer={own.name}")
        raise DataError(f"the base {base} was trained with the tokenizer {own.name}, the fine-tuning dataset "
                        f"{tokenizer.name}: tokenize it with the base's ({hint}) into another data.dataset_dir")
