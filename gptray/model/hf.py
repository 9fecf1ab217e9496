"""Hugging Face GPT-2 format, pure: configs and state dicts converted both ways (no files, no Hub).

Our parameter names are Hugging Face's; the only difference is that GPT-2's Conv1D stores its
weight as (in, out) where nn.Linear stores (out, in), so those four matrices are transposed.
Reading and writing Hugging Face directories and the Hub is gptray.interop.huggingface.
"""

from __future__ import annotations

import torch

from gptray.config import ModelConfig
from gptray.config.presets import PRESET_DEFAULTS, PRESETS
from gptray.core.errors import CheckpointError, ConfigError
from gptray.model.gpt import GPT

CONV1D_WEIGHTS = ("attn.c_attn.weight", "attn.c_proj.weight", "mlp.c_fc.weight", "mlp.c_proj.weight")

# Causal-mask buffers that older transformers versions saved with the weights; they hold no parameters.
MASK_BUFFERS = (".attn.bias", ".attn.masked_bias")

DECODER_PREFIXES = ("wte.", "wpe.", "h.", "ln_f.")  # the hub's original files name keys without `transformer.`

# GPT-2's "gelu_new" and its aliases are the tanh approximation of GELU that our MLP computes.
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


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
        reasons.append(("model.attention", f"{config.attention} (GPT-2 attends causally and densely in every layer)"))
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
