"""Training recipes: the hyper-parameters a paper or a practice gives, which a run takes for settings it leaves null.

One type for both kinds a run draws on: `train.recipe` names one of RECIPES (the GPT-3 and GPT-1/2
papers' optimizer settings, GPT-2 fine-tuning practice), and a model preset may carry its paper's
(presets.py: learning rate, batch, warmup and decay in tokens).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from gptray.config.optimizer import OptimizerSettings


@dataclass(frozen=True)
class Recipe:
    """A source's training hyper-parameters; a field is None where the source does not give it."""

    source: str
    optimizer: OptimizerSettings = field(default_factory=OptimizerSettings)  # AdamW's settings but the lr
    lr: float | None = None  # peak learning rate
    min_lr_ratio: float | None = None  # the decay ends at lr × this
    batch_size: int | None = None  # sequences per optimizer step …
    batch_tokens: int | None = None  # … or tokens per optimizer step
    warmup_steps: int | None = None  # linear warmup over this many optimizer steps …
    warmup_tokens: int | None = None  # … or tokens …
    warmup_fraction: float | None = None  # … or this share of train.max_steps (a budget-free recipe)
    decay_tokens: int | None = None  # the decay reaches min_lr after this many tokens
    dropout: float | None = None  # fine-tuning turns dropout on

    def batch_sequences(self, seq_len: int) -> int | None:
        """The batch in sequences of `seq_len` tokens (a token count rounded down, at least one)."""
        if seq_len <= 0:
            raise ValueError(f"seq_len must be positive (got {seq_len})")
        if self.batch_size is not None:
            return self.batch_size
        return max(self.batch_tokens // seq_len, 1) if self.batch_tokens is not None else None

    def config_values(self, seq_len: int) -> dict:
        """The recipe as dotted config values (`optimizer.lr`, `train.batch_size`, `schedule.warmup_steps`, …)
        at `seq_len` tokens per sequence. Only what the source gives appears; token counts become whole steps
        (rounded up) and sequences (rounded down)."""
        values: dict = {f"optimizer.{name}": value for name, value in self.optimizer.given().items()}
        if self.lr is not None:
            values["optimizer.lr"] = self.lr
            if self.min_lr_ratio is not None:
                values["schedule.min_lr"] = self.lr * self.min_lr_ratio
        batch = self.batch_sequences(seq_len)
        if batch is not None:
            values["train.batch_size"] = batch
            step_tokens = batch * seq_len
            if self.warmup_tokens is not None:
                values["schedule.warmup_steps"] = math.ceil(self.warmup_tokens / step_tokens)
            if self.decay_tokens is not None:
                values["schedule.decay_steps"] = math.ceil(self.decay_tokens / step_tokens)
        if self.warmup_steps is not None:
            values["schedule.warmup_steps"] = self.warmup_steps
        return values


RECIPES: dict[str, Recipe] = {
    # Brown et al. 2020, appendix B: Adam β=(0.9, 0.95), ε=1e-8, clip 1.0, cosine to 10% of
    # the learning rate, linear warmup over the first 375M tokens, weight decay 0.1.
    "gpt3": Recipe("GPT-3 paper, appendix B",
                   OptimizerSettings(beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0),
                   min_lr_ratio=0.1, warmup_tokens=375_000_000),
    # Radford et al. 2018/2019 (GPT-1, followed by GPT-2): Adam with default betas, linear warmup
    # over 2000 updates, cosine annealing to 0, weight decay 0.01 on non-bias, non-gain weights.
    # The papers name no clipping; gptray clips at 1.0 as nanoGPT does.
    "gpt2": Recipe("GPT-1/GPT-2 papers",
                   OptimizerSettings(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0),
                   min_lr_ratio=0.0, warmup_steps=2000),
    # The usual GPT-2 fine-tune (Hugging Face's run_clm defaults and the common GPT-2 recipes):
    # AdamW at lr 5e-5 with default betas, weight decay 0.01, a short warmup (5% of the steps),
    # decay to 0, a batch of 32 sequences, and dropout 0.1 as in GPT-2's own training.
    "finetune": Recipe("GPT-2 fine-tuning practice",
                       OptimizerSettings(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0),
                       min_lr_ratio=0.0, warmup_fraction=0.05, lr=5e-5, batch_size=32, dropout=0.1),
}
