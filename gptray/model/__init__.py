"""GPT models: the architecture and its variants, the config and named presets, Hugging Face interop."""

from gptray.model.config import ModelConfig
from gptray.model.gpt import GPT, count_parameters
from gptray.model.kv_cache import KVCache
from gptray.model.presets import PRESET_ALIASES, PRESETS, TRAINING_RECIPES, TrainingRecipe, training_recipe

__all__ = ["GPT", "KVCache", "ModelConfig", "PRESETS", "PRESET_ALIASES", "TRAINING_RECIPES", "TrainingRecipe",
           "count_parameters", "training_recipe"]
