"""Model config: the GPT's shape and research variants, each a config axis, with presets filled in."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

from gptray.config.presets import PRESET_ALIASES, PRESET_DEFAULTS, PRESETS, canonical_preset
from gptray.core.errors import CheckpointError, ConfigError

# LLaMA sizes its SwiGLU hidden layer at 2/3 of 4 × width (three matrices instead of two keep the
# parameter count), rounded up to a multiple of 256.
SWIGLU_MULTIPLE_OF = 256

# The fields that decide parameter shapes and names, or what the parameters mean: a checkpoint
# only resumes into a config that agrees on all of them.
SHAPE_FIELDS = ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias", "head_dim", "norm", "mlp",
                "mlp_hidden", "position", "tie_embeddings")


@dataclass
class ModelConfig:
    """A GPT shape and its variants. Fields left null take their value from `preset` (else GPT-2's)."""

    preset: str | None = "nano"  # a shape from `gptray model list` (nano, tiny, gpt2, gpt3-small, …); null: none
    n_layer: int | None = None  # transformer blocks
    n_head: int | None = None  # attention heads per block
    n_embd: int | None = None  # width of the residual stream (the embedding size)
    block_size: int | None = None  # longest context the model can attend over
    # null: the tokenizer's (a tiktoken encoding's from the config, any other from the token dataset),
    # rounded up to a multiple of vocab_multiple; ids past the tokenizer's are never targets
    vocab_size: int | None = None
    vocab_multiple: int | None = None  # e.g. 64 (nanoGPT's 50304): wider matmuls run faster on GPUs
    dropout: float | None = None  # on embeddings, attention weights and residual branches; 0 is off
    bias: bool | None = None  # biases in Linear layers and LayerNorms, as GPT-2 (RMSNorm never has one)
    head_dim: int | None = None  # width of one attention head; default n_embd // n_head
    norm: Literal["layernorm", "rmsnorm"] | None = None  # LayerNorm as GPT-2, or RMSNorm as LLaMA
    norm_eps: float | None = None  # added to the variance in every norm
    mlp: Literal["gelu", "swiglu"] | None = None  # GELU (tanh) as GPT-2, or SwiGLU as LLaMA
    mlp_hidden: int | None = None  # MLP hidden width; default 4 × n_embd (gelu) or LLaMA's rule (swiglu)
    position: Literal["learned", "rope", "none"] | None = None  # position information: wpe, rotary, or none
    rope_base: float | None = None  # rotary frequency base (θ)
    # Which keys a query may attend to: all earlier ones (causal), the last `attention_window`
    # (sliding_window), GPT-3's alternation of dense and locally banded layers (alternating:
    # even layers dense, odd layers banded to `attention_window`), every key of a prefix and the
    # earlier ones after it (prefix: prefix-LM, the loss only on targets the prefix hides), or every
    # key (bidirectional: encoder-style probes through GPT.forward; next-token training refuses it).
    attention: Literal["causal", "sliding_window", "alternating", "prefix", "bidirectional"] | None = None
    attention_window: int | None = None  # keys a query sees, itself included, in banded layers
    # attention=prefix: the bidirectional prefix of each training window, as a fraction of its length
    # (rounded, at least one token). A fixed fraction, not read from the data: packed windows hold
    # several documents or prompt/completion pairs, so no single prefix would come with a window.
    prefix_fraction: float | None = None
    document_mask: bool | None = None  # packed documents do not attend across `eot_token`
    eot_token: int | None = None  # the token that ends a document (<|endoftext|>)
    # sdpa: F.scaled_dot_product_attention (flash / memory-efficient kernels where the device has
    # them); matmul: the explicit masked softmax, as a reference; flex: FlexAttention with block
    # masks built once per batch (CUDA for training: torch 2.13 runs it forward only on CPU).
    attention_impl: Literal["sdpa", "matmul", "flex"] | None = None
    tie_embeddings: bool | None = None  # share the token embedding with the output head, as GPT-2

    def resolved(self, prefix: str = "model", vocab_from_dataset: bool = False) -> ModelConfig:
        """A copy with every field concrete (preset values filled in), validated. With `vocab_from_dataset`
        an unset vocab_size and eot_token stay null: the token dataset sets them (for_dataset)."""
        values = dataclasses.asdict(self)
        preset_values: dict = {}
        if self.preset is not None:
            canonical = canonical_preset(self.preset)
            if canonical is None:
                choices = ", ".join([*PRESETS, *PRESET_ALIASES])
                raise ConfigError(f"{prefix}.preset", f"unknown preset {self.preset!r}; choose from {choices}")
            values["preset"] = canonical
            preset_values = PRESETS[canonical]
        for name, value in {**PRESET_DEFAULTS, **preset_values}.items():
            if values[name] is None and not (vocab_from_dataset and name in ("vocab_size", "eot_token")):
                values[name] = value
        for name in ("n_layer", "n_head", "n_embd", "block_size"):
            if values[name] is None:
                raise ConfigError(f"{prefix}.{name}", "must be set when model.preset is null")
        for name in ("n_layer", "n_head", "n_embd"):
            _require_positive(values[name], f"{prefix}.{name}")
        if values["head_dim"] is None:
            n_embd, n_head = values["n_embd"], values["n_head"]
            if n_embd % n_head != 0:
                raise ConfigError(
                    f"{prefix}.n_embd",
                    f"must be divisible by model.n_head ({n_embd} % {n_head} = {n_embd % n_head}), "
                    "or set model.head_dim",
                )
            values["head_dim"] = n_embd // n_head
        if values["mlp_hidden"] is None:
            values["mlp_hidden"] = default_mlp_hidden(values["mlp"], values["n_embd"])
        config = ModelConfig(**values)
        config.validate(prefix)
        return config

    def validate(self, prefix: str = "model") -> None:
        """Check a resolved config; raise ConfigError naming the key."""
        for name in ("n_layer", "n_head", "n_embd", "block_size", "head_dim", "mlp_hidden", "vocab_multiple"):
            _require_positive(getattr(self, name), f"{prefix}.{name}")
        if self.vocab_size is not None:  # null until the dataset says (for_dataset)
            _require_positive(self.vocab_size, f"{prefix}.vocab_size")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{prefix}.dropout", f"must be in [0, 1) (got {self.dropout})")
        if not self.norm_eps > 0:
            raise ConfigError(f"{prefix}.norm_eps", f"must be positive (got {self.norm_eps})")
        if self.position == "rope":
            if self.head_dim % 2 != 0:
                raise ConfigError(f"{prefix}.head_dim", f"must be even for rotary positions (got {self.head_dim})")
            if not self.rope_base > 1:
                raise ConfigError(f"{prefix}.rope_base", f"must be greater than 1 (got {self.rope_base})")
        if self.attention in ("sliding_window", "alternating"):
            if self.attention_window is None:
                raise ConfigError(f"{prefix}.attention_window",
                                  f"must be set for model.attention={self.attention} (keys each query sees)")
            _require_positive(self.attention_window, f"{prefix}.attention_window")
        if self.attention == "prefix" and not (self.prefix_fraction is not None and 0 < self.prefix_fraction < 1):
            raise ConfigError(f"{prefix}.prefix_fraction", "must be in (0, 1) for model.attention=prefix (the "
                                                           f"share of each window seen bidirectionally; got "
                                                           f"{self.prefix_fraction})")
        if self.attention_impl == "flex" and self.dropout > 0:
            raise ConfigError(f"{prefix}.dropout", f"must be 0 with model.attention_impl=flex (got {self.dropout}): "
                                                   "FlexAttention has no dropout on attention weights")
        if self.document_mask and self.vocab_size is not None and not 0 <= self.eot_token < self.vocab_size:
            raise ConfigError(f"{prefix}.eot_token",
                              f"must be a token id below model.vocab_size {self.vocab_size} (got {self.eot_token})")

    def validate_for_training(self, prefix: str = "model") -> None:
        """Refuse a pattern next-token training cannot learn from (the config of a training run)."""
        if self.attention == "bidirectional":
            raise ConfigError(f"{prefix}.attention", "bidirectional cannot train on next-token prediction: every "
                                                     "query attends to the whole window, so each target (the next "
                                                     "token) is visible to the query that predicts it. Use "
                                                     "attention=prefix (bidirectional over a prefix, the loss on "
                                                     "what follows), or probe a bidirectional model through "
                                                     "GPT.forward with targets masked (-100) wherever the next "
                                                     "token is in the input")

    def for_dataset(self, vocab_size: int, eot_token: int, prefix: str = "model") -> ModelConfig:
        """This config with a vocabulary left to the dataset set from its tokenizer (padded to
        vocab_multiple), and its end-of-text id where that was left too."""
        if self.vocab_size is not None and self.eot_token is not None:
            return self
        config = dataclasses.replace(
            self, vocab_size=self.vocab_size or padded_vocabulary(vocab_size, self.vocab_multiple),
            eot_token=eot_token if self.eot_token is None else self.eot_token)
        config.validate(prefix)
        return config

    def shape(self) -> dict:
        """The fields that decide parameter shapes and names (what a checkpoint must match)."""
        return {k: getattr(self, k) for k in SHAPE_FIELDS}

    def is_local_layer(self, layer: int) -> bool:
        """Whether attention in block `layer` is banded to `attention_window` keys."""
        return self.attention == "sliding_window" or (self.attention == "alternating" and layer % 2 == 1)

    @classmethod
    def from_saved(cls, saved: dict, prefix: str = "model") -> ModelConfig:
        """The resolved config a checkpoint's `state.json` records.

        A checkpoint written before a field existed lacks it; it gets the value that reproduces
        the model it was trained as (GPT-2's), whatever today's preset says.
        """
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(saved) - names)
        if unknown:
            raise CheckpointError(f"the checkpoint's model config has unknown field(s) {', '.join(unknown)}: "
                                  "written by a newer gptray?")
        values = {**PRESET_DEFAULTS, **{k: v for k, v in saved.items() if v is not None}}
        try:
            return cls(**values).resolved(prefix)
        except ConfigError as exc:
            raise CheckpointError(f"the checkpoint's model config is invalid: {exc}") from None


def padded_vocabulary(vocab: int, multiple: int) -> int:
    """`vocab` rounded up to a multiple of `multiple` (nanoGPT's 50304 for GPT-2's 50257 at 64)."""
    return -(-vocab // multiple) * multiple


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


def default_mlp_hidden(mlp: str, n_embd: int) -> int:
    if mlp == "swiglu":
        hidden = int(2 * 4 * n_embd / 3)
        return SWIGLU_MULTIPLE_OF * math.ceil(hidden / SWIGLU_MULTIPLE_OF)
    return 4 * n_embd


def _require_positive(value, key: str) -> None:
    if value is None or value <= 0:
        raise ConfigError(key, f"must be positive (got {value})")
