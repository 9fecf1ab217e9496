"""Optimizer recipes of the GPT papers: the values a run takes for any optimizer setting left null."""

from __future__ import annotations

from dataclasses import dataclass

from gptray.config.optimizer import OptimizerSettings


@dataclass(frozen=True)
class Recipe:
    name: str
    source: str
    optimizer: OptimizerSettings  # every setting given: a run takes any it leaves null from here
    min_lr_ratio: float  # the cosine decay ends at lr × this
    warmup_tokens: int | None = None  # warmup length in tokens (GPT-3) …
    warmup_steps: int | None = None  # … or in optimizer steps (GPT-1/2) …
    warmup_fraction: float | None = None  # … or a share of max_steps (fine-tuning)
    # Fine-tuning also sets what pretraining takes from the model preset, and turns dropout on.
    lr: float | None = None
    batch_size: int | None = None
    dropout: float | None = None

    def train_values(self) -> dict:
        """The train settings this recipe gives in place of the model preset's."""
        return {k: v for k, v in (("lr", self.lr), ("batch_size", self.batch_size)) if v is not None}


RECIPES: dict[str, Recipe] = {
    # Brown et al. 2020, appendix B: Adam β=(0.9, 0.95), ε=1e-8, clip 1.0, cosine to 10% of
    # the learning rate, linear warmup over the first 375M tokens, weight decay 0.1.
    "gpt3": Recipe("gpt3", "GPT-3 paper, appendix B",
                   OptimizerSettings(beta1=0.9, beta2=0.95, eps=1e-8, weight_decay=0.1, grad_clip=1.0),
                   min_lr_ratio=0.1, warmup_tokens=375_000_000),
    # Radford et al. 2018/2019 (GPT-1, followed by GPT-2): Adam with default betas, linear warmup
    # over 2000 updates, cosine annealing to 0, weight decay 0.01 on non-bias, non-gain weights.
    # The papers name no clipping; gptray clips at 1.0 as nanoGPT does.
    "gpt2": Recipe("gpt2", "GPT-1/GPT-2 papers",
                   OptimizerSettings(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0),
                   min_lr_ratio=0.0, warmup_steps=2000),
    # The usual GPT-2 fine-tune (Hugging Face's run_clm defaults and the common GPT-2 recipes):
    # AdamW at lr 5e-5 with default betas, weight decay 0.01, a short warmup (5% of the steps),
    # decay to 0, a batch of 32 sequences, and dropout 0.1 as in GPT-2's own training.
    "finetune": Recipe("finetune", "GPT-2 fine-tuning practice",
                       OptimizerSettings(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.01, grad_clip=1.0),
                       min_lr_ratio=0.0, warmup_fraction=0.05, lr=5e-5, batch_size=32, dropout=0.1),
}
