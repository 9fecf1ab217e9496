"""Generating text from trained models."""

from gptray.generation.sampling import generate_text, generate_tokens, load_model

__all__ = ["generate_text", "generate_tokens", "load_model"]
