"""Hugging Face GPT-2 interop: import `GPT2LMHeadModel` weights into a GPT, export a GPT in its format.

Our parameter names are Hugging Face's; the only difference is that GPT-2's Conv1D stores its
weight as (in, out) where nn.Linear stores (out, in), so those four matrices are transposed.
Neither direction needs `transformers` installed: a GPT-2 directory is config.json plus
safetensors (or PyTorch .bin) weights.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from gptray.errors import CheckpointError, ConfigError, GptrayError
from gptray.model.config import ModelConfig
from gptray.model.gpt import GPT
from gptray.model.presets import PRESET_DEFAULTS, PRESETS

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")
# Causal-mask buffers that older transformers versions saved with the weights; they hold no parameters.
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")
DECODER_PREFIXES = ("wte.", "wpe.", "h.", "ln_f.")  # the hub's original files name keys without `transformer.`
# GPT-2's "gelu_new" and its aliases are the tanh approximation of GELU that our MLP computes.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin",
                "pytorch_model.bin.index.json")  # in order of preference
IMPORT_FILES = ("state.json", "model.pt", "optimizer.pt", "config.yaml", "import.json")  # a gptray checkpoint
EXPORT_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json",
                *WEIGHT_FILES[1:])  # and an earlier export's other formats
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


# ---------------------------------------------------------------------------------------------
# Import


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


def hf_model_config(source: str | Path, revision: str | None = None, cache_dir: str | None = None) -> ModelConfig:
    """Our model config for a Hugging Face GPT-2, from its config.json alone (no weights read)."""
    directory = resolve_hf_source(str(source), revision, cache_dir)
    return model_config_from_hf(_read_json(directory / "config.json", what="Hugging Face config"),
                                where=str(directory))[0]


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
        from huggingface_hub import snapshot_download

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
            f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
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


def model_config_from_hf(hf: dict, where: str = "config.json") -> tuple[ModelConfig, list[str]]:
    """Our config for a Hugging Face GPT2Config dict; refuses what our model would compute differently."""
    model_type = hf.get("model_type")
    if model_type != "gpt2":
        raise CheckpointError(f"{where} is a {model_type!r} model; only GPT-2 (model_type 'gpt2') can be imported")

    def get(key: str, default):
        return hf[key] if hf.get(key) is not None else default

    refusals = []
    activation = get("activation_function", "gelu_new")
    if activation not in TANH_GELU:
        refusals.append(f"activation_function {activation!r} (gptray's GPT-2 MLP is GELU with the tanh "
                        f"approximation: {', '.join(TANH_GELU)})")
    if not get("scale_attn_weights", True):
        refusals.append("scale_attn_weights false (gptray always scales attention scores by 1/√head_dim)")
    if get("scale_attn_by_inverse_layer_idx", False):
        refusals.append("scale_attn_by_inverse_layer_idx true (not a gptray variant)")
    if get("add_cross_attention", False):
        refusals.append("add_cross_attention true (gptray models are decoder-only)")
    if refusals:
        raise CheckpointError(f"{where} describes a GPT-2 that gptray would compute differently: {'; '.join(refusals)}")

    notes = []
    dropouts = {key: float(get(key, 0.1)) for key in ("resid_pdrop", "embd_pdrop", "attn_pdrop")}
    if len(set(dropouts.values())) > 1:
        notes.append(f"gptray has one dropout rate; took resid_pdrop {dropouts['resid_pdrop']} of {dropouts}")
    if get("reorder_and_upcast_attn", False):
        notes.append("reorder_and_upcast_attn only changes mixed-precision numerics; ignored")
    n_embd, vocab_size = int(get("n_embd", 768)), int(get("vocab_size", 50257))
    eos = hf.get("eos_token_id")
    values = dict(
        n_layer=int(get("n_layer", 12)), n_head=int(get("n_head", 12)), n_embd=n_embd,
        block_size=int(get("n_positions", 1024)), vocab_size=vocab_size, dropout=dropouts["resid_pdrop"],
        bias=True, mlp_hidden=int(get("n_inner", 4 * n_embd)), norm_eps=float(get("layer_norm_epsilon", 1e-5)),
        tie_embeddings=bool(get("tie_word_embeddings", True)),
        eot_token=eos if isinstance(eos, int) and 0 <= eos < vocab_size else None,
    )
    if n_embd % values["n_head"] != 0:
        raise CheckpointError(f"{where}: n_embd {n_embd} is not divisible by n_head {values['n_head']}")
    try:
        config = ModelConfig(preset=matching_preset(values), **values).resolved()
    except ConfigError as exc:
        raise CheckpointError(f"{where} cannot be represented: {exc}") from None
    return config, notes


def matching_preset(values: dict) -> str | None:
    """The GPT-2 preset with exactly this shape, so that runs and listings show its name."""
    for name, preset in PRESETS.items():
        if all(values[k] == v for k, v in preset.items()) and values["vocab_size"] == PRESET_DEFAULTS["vocab_size"] \
                and values["mlp_hidden"] == 4 * values["n_embd"] and values["tie_embeddings"]:
            return name
    return None


def state_dict_from_hf(hf_state: dict[str, torch.Tensor], model: GPT,
                       where: str = "checkpoint") -> tuple[dict[str, torch.Tensor], list[str]]:
    """Our state dict from Hugging Face tensors: keys prefixed as ours, Conv1D weights transposed,
    fp32. Returns it and the keys ignored because they are not part of the language model."""
    expected = model.state_dict()
    state: dict[str, torch.Tensor] = {}
    ignored, unknown = [], []
    for name, tensor in hf_state.items():
        key = f"transformer.{name}" if name.startswith(DECODER_PREFIXES) else name
        if key.endswith(MASK_BUFFERS):
            continue
        if key not in expected:
            (unknown if key.startswith("transformer.") else ignored).append(name)
            continue
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        if tuple(tensor.shape) != tuple(expected[key].shape):
            raise CheckpointError(f"{where}: {name} has shape {tuple(tensor.shape)}, but config.json implies "
                                  f"{tuple(expected[key].shape)}")
        state[key] = tensor.to(torch.float32).contiguous()
    if unknown:
        raise CheckpointError(f"{where} holds GPT-2 weights gptray has no place for: {', '.join(sorted(unknown))}")
    if model.config.tie_embeddings and "transformer.wte.weight" in state:
        state["lm_head.weight"] = state["transformer.wte.weight"]  # one tensor, as in the file
    missing = sorted(set(expected) - set(state))
    if missing:
        raise CheckpointError(f"{where} lacks weights: {', '.join(missing)}")
    return state, ignored


def import_hf_checkpoint(source: str | Path, out: str | Path, revision: str | None = None,
                         overwrite: bool = False, cache_dir: str | None = None) -> tuple[HfImport, Path]:
    """Write a Hugging Face GPT-2 as a gptray checkpoint directory (model.pt, state.json, config.yaml),
    which `gptray generate --checkpoint` and `load_model` read."""
    # Imported here: the checkpoint format lives with training, which itself imports the model package.
    from gptray.config import ExperimentConfig
    from gptray.train.checkpoint import TrainingState, save_checkpoint

    imported = load_hf_gpt2(source, revision, cache_dir)  # read (and check) everything before writing
    out = _prepare_output(Path(out), overwrite, IMPORT_FILES)
    config = imported.model.config
    save_checkpoint(out, imported.model.state_dict(), None, TrainingState(model=asdict(config)),
                    ExperimentConfig(model=config))
    provenance = dict(source=str(source), revision=revision, directory=str(imported.directory),
                      weights=imported.weights, notes=imported.notes, hf_config=imported.hf_config)
    (out / "import.json").write_text(json.dumps(provenance, indent=2))
    return imported, out


# ---------------------------------------------------------------------------------------------
# Export


def hf_config_for(config: ModelConfig) -> dict:
    """The GPT2Config (as config.json) of a model GPT-2 can express; ConfigError naming every field
    it cannot, and why."""
    reasons = []
    if config.norm != "layernorm":
        reasons.append(("model.norm", f"{config.norm} (GPT-2 has LayerNorm only)"))
    if config.mlp != "gelu":
        reasons.append(("model.mlp", f"{config.mlp} (GPT-2's MLP is GELU with two matrices)"))
    if config.position != "learned":
        reasons.append(("model.position", f"{config.position} (GPT-2 has learned absolute positions only)"))
    if config.attention != "causal":
        reasons.append(("model.attention", f"{config.attention} (GPT-2 attends densely in every layer)"))
    if config.document_mask:
        reasons.append(("model.document_mask", "true (GPT-2 attends across <|endoftext|>, so packed "
                                               "documents would see each other)"))
    if config.n_head * config.head_dim != config.n_embd:
        reasons.append(("model.head_dim", f"{config.head_dim} (GPT-2 needs n_head × head_dim = n_embd, "
                                          f"here {config.n_head} × {config.head_dim} ≠ {config.n_embd})"))
    if reasons:
        detail = "; ".join(f"{key}={why}" for key, why in reasons)
        raise ConfigError(reasons[0][0], f"this model cannot be exported as a Hugging Face GPT-2: {detail}")
    eot = config.eot_token if config.eot_token < config.vocab_size else None
    return {
        "architectures": ["GPT2LMHeadModel"],
        "model_type": "gpt2",
        "vocab_size": config.vocab_size,
        "n_positions": config.block_size,
        "n_embd": config.n_embd,
        "n_layer": config.n_layer,
        "n_head": config.n_head,
        "n_inner": None if config.mlp_hidden == 4 * config.n_embd else config.mlp_hidden,
        "activation_function": "gelu_new",
        "resid_pdrop": config.dropout,
        "embd_pdrop": config.dropout,
        "attn_pdrop": config.dropout,
        "layer_norm_epsilon": config.norm_eps,
        "initializer_range": 0.02,
        "scale_attn_weights": True,
        "scale_attn_by_inverse_layer_idx": False,
        "reorder_and_upcast_attn": False,
        "tie_word_embeddings": config.tie_embeddings,
        "bos_token_id": eot,
        "eos_token_id": eot,
        "use_cache": True,
        "dtype": "float32",
    }


def hf_state_dict(model: GPT) -> dict[str, torch.Tensor]:
    """The model's tensors under Hugging Face's names and layouts. A bias-free model gets zero biases
    (GPT-2 always has them; zero computes the same); a tied head is stored once, as wte."""
    state = {}
    for key, tensor in model.state_dict().items():
        if key == "lm_head.weight" and model.config.tie_embeddings:
            continue
        if key.endswith(CONV1D_WEIGHTS):
            tensor = tensor.t()
        state[key] = tensor.detach().to("cpu", torch.float32).contiguous().clone()
    for name, module in model.named_modules():
        if name == "lm_head":
            continue
        if isinstance(module, torch.nn.Linear) and module.bias is None:
            state[f"{name}.bias"] = torch.zeros(module.out_features)
        elif isinstance(module, torch.nn.LayerNorm) and module.bias is None:
            state[f"{name}.bias"] = torch.zeros(module.normalized_shape)
    return state


@dataclass
class HfExport:
    files: list[Path]  # what was written
    checkpoint: Path | None = None  # the gptray checkpoint it came from
    notes: list[str] = field(default_factory=list)


def export_hf(model: GPT, out: str | Path, overwrite: bool = False, tokenizer: str | None = None) -> HfExport:
    """Write config.json and model.safetensors that `GPT2LMHeadModel.from_pretrained(out)` loads, and
    with `tokenizer="gpt2"` the GPT-2 tokenizer files `AutoTokenizer.from_pretrained(out)` loads."""
    from safetensors.torch import save_file

    hf_config = hf_config_for(model.config)  # refuses before anything is written
    out = _prepare_output(Path(out), overwrite, EXPORT_FILES)
    config_path, weights_path = out / "config.json", out / "model.safetensors"
    config_path.write_text(json.dumps(hf_config, indent=2) + "\n")
    save_file(hf_state_dict(model), str(weights_path), metadata={"format": "pt"})
    result = HfExport(files=[config_path, weights_path])
    if tokenizer == "gpt2" and model.config.vocab_size >= PRESET_DEFAULTS["vocab_size"]:
        try:
            result.files += write_gpt2_tokenizer(out, model.config.block_size)
        except Exception as exc:  # the weights are written; a missing tokenizer must not undo them
            result.notes.append(f"tokenizer files not written: could not read GPT-2's BPE files "
                                f"({type(exc).__name__}: {exc}); set TIKTOKEN_CACHE_DIR to tiktoken's cache")
    elif tokenizer == "gpt2":
        result.notes.append(f"tokenizer files not written: the model's vocabulary ({model.config.vocab_size:,}) "
                            f"is smaller than GPT-2's ({PRESET_DEFAULTS['vocab_size']:,})")
    elif tokenizer is not None:
        result.notes.append(f"tokenizer files not written: only GPT-2's BPE is exported, and the run used "
                            f"tiktoken's {tokenizer!r}")
    return result


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
    from gptray.generation import load_model
    from gptray.train.checkpoint import read_config, read_state, resolve_checkpoint

    directory = resolve_checkpoint(checkpoint)
    hf_config_for(ModelConfig.from_saved(read_state(directory).model))  # refuse before loading any weights
    notes = []
    try:
        tokenizer = read_config(directory).data.tokenizer
    except GptrayError as exc:  # the weights do not depend on it; export them and say so
        tokenizer = None
        notes.append(f"tokenizer files not written: the checkpoint's config.yaml cannot be read ({exc})")
    model, _ = load_model(directory)
    result = export_hf(model, out, overwrite, tokenizer=tokenizer)
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
