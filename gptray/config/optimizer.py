"""AdamW's settings, as one dataclass: a run's `train` section, the recipes and the paper presets all hold it."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from gptray.core.errors import ConfigError


@dataclass
class OptimizerSettings:
    """AdamW's hyper-parameters other than the learning rate; None where a source does not give one
    (a run's null settings are filled from its recipe when the config resolves)."""

    weight_decay: float | None = None  # on matrices and embeddings; never on biases or norm gains
    beta1: float | None = None  # AdamW's β1: the decay of the gradient's running mean
    beta2: float | None = None  # AdamW's β2: the decay of the squared gradient's running mean
    eps: float | None = None  # added to AdamW's denominator
    grad_clip: float | None = None  # max global grad norm; 0 disables clipping

    def given(self) -> dict:
        """The settings this source gives (the fields that are not None)."""
        return {name: value for name in optimizer_fields() if (value := getattr(self, name)) is not None}

    def fill_from(self, other: OptimizerSettings) -> None:
        """Take `other`'s value for every setting left None here (in place)."""
        for name in optimizer_fields():
            if getattr(self, name) is None:
                setattr(self, name, getattr(other, name))

    def validate_optimizer(self, prefix: str = "train") -> None:
        """Check resolved settings; raise ConfigError naming the key."""
        checks = (("weight_decay", self.weight_decay >= 0, "must be >= 0"),
                  ("beta1", 0 <= self.beta1 < 1, "must be in [0, 1)"),
                  ("beta2", 0 <= self.beta2 < 1, "must be in [0, 1)"),
                  ("eps", self.eps > 0, "must be positive"),
                  ("grad_clip", self.grad_clip >= 0, "must be >= 0 (0 disables)"))
        for name, ok, message in checks:
            if not ok:
                raise ConfigError(f"{prefix}.{name}", f"{message} (got {getattr(self, name)!r})")


def optimizer_fields() -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(OptimizerSettings))
