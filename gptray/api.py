"""The Python API: `gptray.load` a trained model and its tokenizer, `gptray.generate` text with it.

The same code the CLI runs (`gptray generate`): checkpoints and run directories through
generation.loading, Hugging Face GPT-2s through interop, decoding through generation.text.
Nothing here imports Ray or MLflow.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

from gptray.config import GenerateConfig
from gptray.config.schema import HF_PREFIX
from gptray.core.errors import ConfigError
from gptray.data.tokenizer_loading import load_tokenizer
from gptray.generation import checkpoint_tokenizer, generate_texts, load_model, resolve_device
from gptray.interop.huggingface import load_hf_gpt2
from gptray.model import GPT

GPT2_TOKENIZER = "gpt2"  # what a Hugging Face GPT-2 reads, and a checkpoint whose run names none


def load(source: str | Path, device: str = "auto"):
    """(model, tokenizer) from a run directory (its latest checkpoint), a checkpoint directory (whole or
    sharded; local or s3://…), or `hf:NAME` (a Hugging Face GPT-2: a Hub name or a local directory).

    The model is in eval mode on `device` ("auto": the GPU where there is one, else the CPU).
    """
    where = resolve_device(device)
    source = str(source)
    if source.startswith(HF_PREFIX):
        model = load_hf_gpt2(source.removeprefix(HF_PREFIX)).model.to(where)
        return model, load_tokenizer(GPT2_TOKENIZER)
    model, directory = load_model(source, where)
    return model, checkpoint_tokenizer(directory, GPT2_TOKENIZER)


def generate(model: GPT, tokenizer, prompt: str | list[str], **options) -> str | list[str]:
    """The continuation of `prompt` (without it), or of each prompt of a list, as `gptray generate` makes it.

    `options` are the generate section's settings: max_new_tokens, temperature, top_k, top_p,
    repetition_penalty, num_beams, length_penalty, stop_at_eot, stop, raw_special_tokens, use_cache, seed.
    """
    settings = generate_settings(**options)
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    texts = [c.text for c in generate_texts(model, tokenizer, settings, prompts)]
    return texts[0] if isinstance(prompt, str) else texts


def generate_settings(**options) -> GenerateConfig:
    """A validated GenerateConfig from keyword options; an unknown one is a ConfigError naming it."""
    known = {f.name for f in dataclasses.fields(GenerateConfig)} - {"prompt"}
    for name in options:
        if name not in known:
            raise ConfigError(name, f"not a generation option (use one of {', '.join(sorted(known))})")
    settings = GenerateConfig(**options)
    settings.validate()
    return settings
