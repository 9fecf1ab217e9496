"""GPT models: the architecture and its variants (the config and presets live in gptray.config)."""

from gptray.model.gpt import GPT, count_parameters
from gptray.model.kv_cache import KVCache

__all__ = ["GPT", "KVCache", "count_parameters"]
