"""GPT models: the architecture, its config and named presets."""

from gptray.model.config import PRESETS, ModelConfig
from gptray.model.gpt import GPT, count_parameters

__all__ = ["GPT", "ModelConfig", "PRESETS", "count_parameters"]
