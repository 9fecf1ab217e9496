"""Model shape config and the named presets (GPT-2 family and CPU-sized ones)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gptray.errors import ConfigError

GPT2_VOCAB_SIZE = 50257

# Shapes of the published GPT-2 checkpoints (Radford et al. 2019; Hugging Face `gpt2*`,
# `distilgpt2`), plus two small shapes that train on a laptop CPU.
PRESETS: dict[str, dict] = {
    # nano trains ~300 steps in about three minutes on two CPU cores (the quickstart).
    "nano": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    "tiny": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768, block_size=1024),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
}

# What every preset shares unless it says otherwise.
PRESET_DEFAULTS = dict(vocab_size=GPT2_VOCAB_SIZE, dropout=0.0, bias=True)


@dataclass
class ModelConfig:
    """A GPT shape. Fields left null take their value from `preset`."""

    preset: str | None = "nano"
    n_layer: int | None = None
    n_head: int | None = None
    n_embd: int | None = None
    block_size: int | None = None  # longest context the model can attend over
    vocab_size: int | None = None
    dropout: float | None = None
    bias: bool | None = None  # biases in Linear layers and LayerNorms, as GPT-2

    def resolved(self, prefix: str = "model") -> ModelConfig:
        """A copy with every field concrete (preset values filled in), validated."""
        values = dataclasses.asdict(self)
        if self.preset is not None:
            if self.preset not in PRESETS:
                raise ConfigError(
                    f"{prefix}.preset", f"unknown preset {self.preset!r}; choose from {', '.join(PRESETS)}"
                )
            for name, value in {**PRESET_DEFAULTS, **PRESETS[self.preset]}.items():
                if values[name] is None:
                    values[name] = value
        else:
            for name, value in PRESET_DEFAULTS.items():
                if values[name] is None:
                    values[name] = value
        for name, value in values.items():
            if value is None and name != "preset":
                raise ConfigError(f"{prefix}.{name}", "must be set when model.preset is null")
        config = ModelConfig(**values)
        config.validate(prefix)
        return config

    def validate(self, prefix: str = "model") -> None:
        for name in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{prefix}.{name}", f"must be positive (got {getattr(self, name)})")
        if self.n_embd % self.n_head != 0:
            raise ConfigError(
                f"{prefix}.n_embd",
                f"must be divisible by model.n_head ({self.n_embd} % {self.n_head} = {self.n_embd % self.n_head})",
            )
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"{prefix}.dropout", f"must be in [0, 1) (got {self.dropout})")

    def shape(self) -> dict:
        """The fields that decide parameter shapes (what a checkpoint must match)."""
        return {k: getattr(self, k) for k in ("n_layer", "n_head", "n_embd", "block_size", "vocab_size", "bias")}
