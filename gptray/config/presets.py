"""The named model registry: GPT-2 and GPT-3 shapes, CPU-sized shapes, aliases and paper training recipes.

A preset is a dict of `ModelConfig` field values; fields it leaves out take their GPT-2 value
from `PRESET_DEFAULTS`. A preset from a paper may also carry that paper's training recipe
(learning rate, batch size in tokens, schedule), exposed as data through `training_recipe`.
"""

from __future__ import annotations

from gptray.config.optimizer import OptimizerSettings
from gptray.config.recipes import Recipe

GPT2_VOCAB_SIZE = 50257
GPT2_EOT_TOKEN = 50256  # <|endoftext|> in the GPT-2 BPE vocabulary

# The GPT-2 architecture: what every preset shares unless it says otherwise. These are also
# the values a checkpoint written before a field existed is read with (ModelConfig.from_saved).
PRESET_DEFAULTS: dict = dict(
    vocab_size=GPT2_VOCAB_SIZE,
    vocab_multiple=1,
    dropout=0.0,
    bias=True,
    norm="layernorm",
    norm_eps=1e-5,
    mlp="gelu",
    position="learned",
    rope_base=10000.0,
    attention="causal",
    document_mask=False,
    eot_token=GPT2_EOT_TOKEN,
    attention_impl="sdpa",
    tie_embeddings=True,
)

PRESETS: dict[str, dict] = {
    # Two shapes that train on a laptop CPU; nano trains the quickstart's 1,800 steps (an 8K
    # vocabulary) in about three and a half minutes on two cores.
    "nano": dict(n_layer=4, n_head=4, n_embd=128, block_size=64),
    "tiny": dict(n_layer=6, n_head=6, n_embd=384, block_size=256),
    # The published GPT-2 checkpoints (Radford et al. 2019; Hugging Face `gpt2*`, `distilgpt2`).
    "distilgpt2": dict(n_layer=6, n_head=12, n_embd=768, block_size=1024),
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768, block_size=1024),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280, block_size=1024),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600, block_size=1024),
    # GPT-3 (Brown et al. 2020, Table 2.1): GPT-2's architecture at context 2048. Two rows of the
    # table are not self-consistent: XL lists d_model 2048 with 24 heads of 128, and 13B lists
    # d_model 5140 with 40 heads of 128 (neither width divides by its head count). We keep every
    # printed number and give the attention its own width, n_head × head_dim (3072 and 5120),
    # projected back to d_model by c_proj. For 13B that gives 12.9B parameters, as the paper says;
    # for XL it gives 1.5B, not the 1.3B in its name: the 1.3B reading (d_model 2048 with 16 heads
    # of 128, as GPT-Neo and Cerebras-GPT chose) is `model.preset=gpt3-xl model.n_head=16`.
    "gpt3-small": dict(n_layer=12, n_head=12, n_embd=768, block_size=2048),
    "gpt3-medium": dict(n_layer=24, n_head=16, n_embd=1024, block_size=2048),
    "gpt3-large": dict(n_layer=24, n_head=16, n_embd=1536, block_size=2048),
    "gpt3-xl": dict(n_layer=24, n_head=24, n_embd=2048, head_dim=128, block_size=2048),
    "gpt3-2.7b": dict(n_layer=32, n_head=32, n_embd=2560, block_size=2048),
    "gpt3-6.7b": dict(n_layer=32, n_head=32, n_embd=4096, block_size=2048),
    "gpt3-13b": dict(n_layer=40, n_head=40, n_embd=5140, head_dim=128, block_size=2048),
    "gpt3-175b": dict(n_layer=96, n_head=96, n_embd=12288, block_size=2048),
}

# The OpenAI API model names, mapped to the GPT-3 sizes they are commonly believed to be
# (350M, 1.3B, 6.7B, 175B; an outside estimate, never confirmed by OpenAI).
PRESET_ALIASES: dict[str, str] = {
    "ada": "gpt3-medium",
    "babbage": "gpt3-xl",
    "curie": "gpt3-6.7b",
    "davinci": "gpt3-175b",
}


_GPT2_PAPER = "Radford et al. 2019, Language Models are Unsupervised Multitask Learners, section 2.3"
_GPT3_PAPER = "Brown et al. 2020, Language Models are Few-Shot Learners, Table 2.1 and Appendix B"


def _gpt3(lr: float, batch_sequences: int) -> Recipe:
    # Appendix B: Adam β = (0.9, 0.95), ε = 1e-8, gradient clipping at 1.0, weight decay 0.1,
    # linear warmup over the first 375M tokens, cosine decay to 10% of the peak over 260B tokens.
    # Batch sizes are given as 0.5M/1M/2M/3.2M tokens; we store them as whole 2048-token
    # sequences (256/512/1024 are 2^19/2^20/2^21 tokens; 3.2M is read as 1536 sequences, 3.1M
    # tokens, as in Megatron-LM's GPT-3 175B recipe). The paper's batch-size ramp over the first
    # 4-12B tokens is not part of the recipe.
    return Recipe(
        _GPT3_PAPER, lr=lr, batch_tokens=batch_sequences * 2048, warmup_tokens=375_000_000,
        decay_tokens=260_000_000_000, min_lr_ratio=0.1,
        optimizer=OptimizerSettings(weight_decay=0.1, beta1=0.9, beta2=0.95, eps=1e-8, grad_clip=1.0),
    )


_NEAREST_GPT3 = "learning rate: GPT-3 Table 2.1 at the nearest size (as nanoGPT); batch: " + _GPT2_PAPER
_CPU = "gptray's CPU settings (the quickstart): a few hundred steps in minutes on two cores"

# GPT-2's paper gives a batch of 512 sequences of 1024 tokens and no learning rates ("manually
# tuned" per model): the GPT-2 sizes take GPT-3's rate for the nearest size (125M, 350M, 760M,
# 1.3B), as nanoGPT does. nano and tiny carry the settings gptray's quickstart uses.
TRAINING_RECIPES: dict[str, Recipe] = {
    # nano warms up over the first tenth of its steps whatever the budget: 180 of the quickstart's 1,800.
    "nano": Recipe(source=_CPU, lr=2e-3, batch_tokens=8 * 64, warmup_fraction=0.1),
    "tiny": Recipe(source=_CPU, lr=1e-3, batch_tokens=8 * 256, warmup_tokens=30 * 8 * 256),
    "distilgpt2": Recipe(source="learning rate: GPT-3 Table 2.1 at the nearest size (125M)", lr=6e-4),
    "gpt2": Recipe(source=_NEAREST_GPT3, lr=6e-4, batch_tokens=512 * 1024),
    "gpt2-medium": Recipe(source=_NEAREST_GPT3, lr=3e-4, batch_tokens=512 * 1024),
    "gpt2-large": Recipe(source=_NEAREST_GPT3, lr=2.5e-4, batch_tokens=512 * 1024),
    "gpt2-xl": Recipe(source=_NEAREST_GPT3, lr=2e-4, batch_tokens=512 * 1024),
    "gpt3-small": _gpt3(6.0e-4, 256),
    "gpt3-medium": _gpt3(3.0e-4, 256),
    "gpt3-large": _gpt3(2.5e-4, 256),
    "gpt3-xl": _gpt3(2.0e-4, 512),
    "gpt3-2.7b": _gpt3(1.6e-4, 512),
    "gpt3-6.7b": _gpt3(1.2e-4, 1024),
    "gpt3-13b": _gpt3(1.0e-4, 1024),
    "gpt3-175b": _gpt3(0.6e-4, 1536),
}


def canonical_preset(name: str) -> str | None:
    """The preset a name or alias refers to, or None if there is none."""
    name = PRESET_ALIASES.get(name, name)
    return name if name in PRESETS else None


def training_recipe(name: str | None) -> Recipe | None:
    """The paper training recipe of a preset (or alias); None where the preset has none."""
    if name is None:
        return None
    canonical = canonical_preset(name)
    return TRAINING_RECIPES.get(canonical) if canonical else None
