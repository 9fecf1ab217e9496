"""Hugging Face GPT-2 files: read a directory or Hub model into a GPT, import it as a gptray checkpoint,
export a checkpoint as a directory `GPT2LMHeadModel.from_pretrained` loads.

Neither direction needs `transformers` installed: a GPT-2 directory is config.json plus
safetensors (or PyTorch .bin) weights. The conversion itself is gptray.model.hf.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gptray.checkpoint.files import TrainingState, read_config, read_state, resolve_checkpoint, save_checkpoint
from gptray.config import DataConfig, ExperimentConfig, ModelConfig
from gptray.config.presets import PRESET_DEFAULTS
from gptray.config.schema import tokenizer_kind
from gptray.core.errors import CheckpointError, ConfigError, GptrayError
from gptray.data.hf_tokenizer import HuggingFaceTokenizer
from gptray.generation import checkpoint_tokenizer, load_model
from gptray.model.gpt import GPT
from gptray.model.hf import hf_config_for, hf_state_dict, model_config_from_hf, state_dict_from_hf

WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # in order of preference

IMPORT_FILES = ("state.json", "model.pt", "optimizer.pt", "config.yaml", "import.json")  # a gptray checkpoint

EXPORT_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
                "tokenizer.json", *WEIGHT_FILES[1:])  # and an earlier export's other formats

# GPT-2's BPE files as OpenAI published them (tiktoken's `gpt2` encoding reads the same two files):

# encoder.json is Hugging Face's vocab.json and vocab.bpe its merges.txt, byte for byte.

GPT2_TOKENIZER_FILES = {
    "vocab.json": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json",
                   "196139668be63f3b5d6574427317ae82f612a97c5d1cdaf36ed2256dbf636783"),
    "merges.txt": ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                   "1ce1664773c50f3e0cc8842619a93edc4624525b728b188a9e0be33b7726adc5"),
}

HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[\w.-]+)?$")


@dataclass
class HfImport:
    """A GPT-2 read from a Hugging Face directory, and what the reader had to decide on the way."""

    model: GPT
    directory: Path  # where the files were read (a hub name resolves to its local snapshot)
    weights: list[str]  # the weight files read
    hf_config: dict
    notes: list[str] = field(default_factory=list)


def load_hf_gpt2(source: str | Path, revision: str | None = None, cache_dir: str | None = None) -> HfImport:
    """Read a Hugging Face GPT-2 (a local directory, or a hub name where the hub or its cache is
    reachable) into a GPT with identical outputs, in fp32."""
    directory = resolve_hf_source(str(source), revision, cache_dir)
    hf_config = _read_json(directory / "config.json", what="Hugging Face config")
    config, notes = model_config_from_hf(hf_config, where=str(directory))
    hf_state, files = read_hf_weights(directory)
    with torch.device("meta"):  # no random init to overwrite: the weights are the file's tensors themselves
        model = GPT(config)
    state, ignored = state_dict_from_hf(hf_state, model, where=str(directory))
    if ignored:
        notes.append(f"ignored weights outside the language model: {', '.join(sorted(ignored))}")
    model.load_state_dict(state, assign=True)
    if config.tie_embeddings:  # assign gives each name its own Parameter; tie them again
        model.transformer.wte.weight = model.lm_head.weight
    return HfImport(model=model.eval(), directory=directory, weights=files, hf_config=hf_config, notes=notes)


def hf_model_config(source: str | Path, revision: str | None = None, cache_dir: str | None = None,
                    hub: bool = True) -> ModelConfig:
    """Our model config for a Hugging Face GPT-2, from its config.json alone: no weights are read or
    downloaded. A hub name's config.json comes from the local Hub cache, else (with `hub`) the Hub."""
    path = Path(source).expanduser()
    config_path = path / "config.json" if path.is_dir() else _hub_config_file(str(source), revision, cache_dir, hub)
    return model_config_from_hf(_read_json(config_path, what="Hugging Face config"), where=str(config_path.parent))[0]


def _hub_config_file(source: str, revision: str | None, cache_dir: str | None, hub: bool) -> Path:
    if not HUB_NAME.match(source):
        raise CheckpointError(f"no such directory: {source}")
    from huggingface_hub import hf_hub_download, try_to_load_from_cache  # heavy, and only for hub names

    cached = try_to_load_from_cache(source, "config.json", cache_dir=cache_dir, revision=revision)
    if isinstance(cached, str):
        return Path(cached)
    if not hub:
        raise CheckpointError(f"{source!r} is neither a local directory nor in the local Hugging Face cache, "
                              "and this command reads nothing from the Hub")
    try:
        return Path(hf_hub_download(source, "config.json", revision=revision, cache_dir=cache_dir))
    except Exception as exc:  # offline, unknown repo, gated repo, network: all end the same way for the user
        raise CheckpointError(f"{source!r} is not a local directory, and reading its config.json from the Hugging "
                              f"Face hub failed: {_first_line(exc)}") from None


def _first_line(exc: Exception) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0] if text else ''}"


def resolve_hf_source(source: str, revision: str | None = None, cache_dir: str | None = None) -> Path:
    """A local directory as it is; anything else that looks like a hub name is fetched from the hub
    (config and weights only, safetensors preferred) or found in the local hub cache."""
    path = Path(source).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{source} is a file; give the directory holding config.json and the weights")
    if not HUB_NAME.match(source):
        raise CheckpointError(f"no such directory: {source}")
    try:
        from huggingface_hub import snapshot_download  # heavy, and only for hub names

        directory = None
        # Only one weight format: hub repos often carry both, and GPT-2 XL's .bin alone is 6 GB.
        for weights in (["*.safetensors", "model.safetensors.index.json"], ["pytorch_model*.bin", "*.bin.index.json"]):
            directory = Path(snapshot_download(repo_id=source, revision=revision, cache_dir=cache_dir,
                                               allow_patterns=["config.json", *weights]))
            if any((directory / name).is_file() for name in WEIGHT_FILES):
                break
    except Exception as exc:  # offline, unknown repo, gated repo, network: all end the same way for the user
        raise CheckpointError(
            f"{source!r} is not a local directory, and getting it from the Hugging Face hub failed: "
            f"{_first_line(exc)}"
        ) from None
    return directory


def read_hf_weights(directory: Path) -> tuple[dict[str, torch.Tensor], list[str]]:
    """All tensors of a (possibly sharded) safetensors or PyTorch checkpoint, and the files read."""
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if name.endswith(".index.json"):
            weight_map = _read_json(path, what="weight index").get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{path} has no weight_map")
            files = sorted(set(weight_map.values()))
        else:
            files = [name]
        state: dict[str, torch.Tensor] = {}
        for file in files:
            state.update(_read_weight_file(directory / file))
        return state, files
    present = ", ".join(sorted(p.name for p in directory.iterdir())) or "nothing"
    raise CheckpointError(f"{directory} holds no GPT-2 weights (looked for {', '.join(WEIGHT_FILES)}; found {present})")


def _read_weight_file(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError(f"weight file {path} is missing")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        # weights_only: a downloaded file can never run code when loaded.
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CheckpointError(f"cannot read weights from {path}: {type(exc).__name__}: {exc}") from None


def import_hf_checkpoint(source: str | Path, out: str | Path, revision: str | None = None,
                         overwrite: bool = False, cache_dir: str | None = None) -> tuple[HfImport, Path]:
    """Write a Hugging Face GPT-2 as a gptray checkpoint directory (model.pt, state.json, config.yaml),
    which `gptray generate --checkpoint` and `load_model` read."""
    imported = load_hf_gpt2(source, revision, cache_dir)  # read (and check) everything before writing
    out = _prepare_output(Path(out), overwrite, IMPORT_FILES)
    config = imported.model.config
    # GPT-2's weights read GPT-2's BPE: generation and export find it in config.yaml
    save_checkpoint(out, imported.model.state_dict(), None, TrainingState(model=asdict(config)),
                    ExperimentConfig(model=config, data=DataConfig(tokenizer="gpt2")))
    provenance = dict(source=str(source), revision=revision, directory=str(imported.directory),
                      weights=imported.weights, notes=imported.notes, hf_config=imported.hf_config)
    (out / "import.json").write_text(json.dumps(provenance, indent=2))
    return imported, out


@dataclass
class HfExport:
    files: list[Path]  # what was written
    checkpoint: Path | None = None  # the gptray checkpoint it came from
    notes: list[str] = field(default_factory=list)


def export_hf(model: GPT, out: str | Path, overwrite: bool = False, tokenizer: str | None = None,
              tokenizer_json: str | None = None) -> HfExport:
    """Write config.json and model.safetensors that `GPT2LMHeadModel.from_pretrained(out)` loads, and the
    tokenizer files `AutoTokenizer.from_pretrained(out)` loads: GPT-2's with `tokenizer="gpt2"`, or a
    Hugging Face tokenizer's own tokenizer.json (`tokenizer_json`, the run's)."""
    from safetensors.torch import save_file

    hf_config = hf_config_for(model.config)  # refuses before anything is written
    out = _prepare_output(Path(out), overwrite, EXPORT_FILES)
    config_path, weights_path = out / "config.json", out / "model.safetensors"
    config_path.write_text(json.dumps(hf_config, indent=2) + "\n")
    save_file(hf_state_dict(model), str(weights_path), metadata={"format": "pt"})
    result = HfExport(files=[config_path, weights_path])
    if tokenizer_json is not None:
        result.files += write_hf_tokenizer(out, tokenizer_json, model.config.block_size)
    elif tokenizer == "gpt2" and model.config.vocab_size >= PRESET_DEFAULTS["vocab_size"]:
        try:
            result.files += write_gpt2_tokenizer(out, model.config.block_size)
        except Exception as exc:  # the weights are written; a missing tokenizer must not undo them
            result.notes.append(f"tokenizer files not written: could not read GPT-2's BPE files "
                                f"({type(exc).__name__}: {exc}); set TIKTOKEN_CACHE_DIR to tiktoken's cache")
    elif tokenizer == "gpt2":
        result.notes.append(f"tokenizer files not written: the model's vocabulary ({model.config.vocab_size:,}) "
                            f"is smaller than GPT-2's ({PRESET_DEFAULTS['vocab_size']:,})")
    elif tokenizer is not None:
        used = "the bytes tokenizer" if tokenizer == "bytes" else f"tiktoken's {tokenizer!r}"
        result.notes.append(f"tokenizer files not written: only GPT-2's BPE is exported, and the run used {used}")
    return result


def write_hf_tokenizer(out: Path, tokenizer_json: str, model_max_length: int) -> list[Path]:
    """A Hugging Face tokenizer's tokenizer.json, and the tokenizer_config.json that makes AutoTokenizer
    load it as a fast tokenizer with its end-of-text token as eos (and bos, as GPT-2's)."""
    eot = HuggingFaceTokenizer(tokenizer_json, "export").eot_token
    eot_text = json.loads(tokenizer_json)["added_tokens"]
    eot_text = next((t["content"] for t in eot_text if t["id"] == eot), "<|endoftext|>")
    (out / "tokenizer.json").write_text(tokenizer_json, encoding="utf-8")
    settings = dict(tokenizer_class="PreTrainedTokenizerFast", model_max_length=model_max_length,
                    bos_token=eot_text, eos_token=eot_text)
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return [out / "tokenizer.json", out / "tokenizer_config.json"]


def write_gpt2_tokenizer(out: Path, model_max_length: int) -> list[Path]:
    """vocab.json, merges.txt and tokenizer_config.json of GPT-2's tokenizer, from tiktoken's files
    (its cache, else downloaded), checked against their published sha256."""
    from tiktoken.load import read_file_cached

    written = []
    for name, (url, sha256) in GPT2_TOKENIZER_FILES.items():
        (out / name).write_bytes(read_file_cached(url, sha256))
        written.append(out / name)
    eot = "<|endoftext|>"
    settings = dict(tokenizer_class="GPT2Tokenizer", model_max_length=model_max_length, bos_token=eot,
                    eos_token=eot, unk_token=eot, add_prefix_space=False)
    (out / "tokenizer_config.json").write_text(json.dumps(settings, indent=2) + "\n")
    return [*written, out / "tokenizer_config.json"]


def export_checkpoint(checkpoint: str | Path, out: str | Path, overwrite: bool = False) -> HfExport:
    """Export a gptray checkpoint (or a run directory's latest) as a Hugging Face GPT-2 directory,
    with the tokenizer when the run used GPT-2's."""
    directory = resolve_checkpoint(checkpoint)
    hf_config_for(ModelConfig.from_saved(read_state(directory).model))  # refuse before loading any weights
    notes = []
    tokenizer_json = None
    try:
        tokenizer = read_config(directory).data.tokenizer
        if tokenizer_kind(tokenizer) in ("file", "hub"):
            tokenizer_json = checkpoint_tokenizer(directory, tokenizer).to_json()
    except GptrayError as exc:  # the weights do not depend on it; export them and say so
        tokenizer = None
        notes.append(f"tokenizer files not written: the checkpoint's tokenizer cannot be read ({exc})")
    model, _ = load_model(directory)
    result = export_hf(model, out, overwrite, tokenizer=tokenizer, tokenizer_json=tokenizer_json)
    result.checkpoint = directory
    result.notes = notes + result.notes
    return result


def _prepare_output(out: Path, overwrite: bool, writes: tuple[str, ...]) -> Path:
    """An output directory to write `writes` into: new or empty, or with overwrite, rid of those files
    (only those: a mistyped --out must not cost anything else)."""
    if out.exists() and not out.is_dir():
        raise ConfigError("--out", f"{out} is a file")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise ConfigError("--out", f"{out} already exists and is not empty (pass --overwrite to replace it)")
        for name in writes:
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    return out


def _read_json(path: Path, what: str) -> dict:
    if not path.is_file():
        raise CheckpointError(f"{path.parent} has no {path.name} ({what})")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} is not valid JSON: {exc}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path} must hold a JSON object")
    return data
