"""Text generation from a GPT: greedy or temperature/top-k sampling, and loading from checkpoints."""

from __future__ import annotations

from pathlib import Path

import torch

from gptray.config import GenerateConfig
from gptray.model import GPT, ModelConfig
from gptray.train.checkpoint import load_tensors, read_state, resolve_checkpoint


@torch.no_grad()
def generate_tokens(model: GPT, prompt: list[int], max_new_tokens: int, temperature: float = 1.0,
                    top_k: int | None = None, generator: torch.Generator | None = None) -> list[int]:
    """Continue `prompt` by `max_new_tokens` tokens. temperature 0 is greedy (argmax)."""
    model.eval()
    device = next(model.parameters()).device
    idx = torch.tensor([prompt], dtype=torch.long, device=device)  # (1, T)
    for _ in range(max_new_tokens):
        context = idx[:, -model.config.block_size :]
        logits, _ = model(context)
        logits = logits[:, -1, :].float()  # (1, vocab)
        if temperature == 0:
            next_token = logits.argmax(dim=-1, keepdim=True)
        else:
            logits = logits / temperature
            if top_k is not None and top_k < logits.size(-1):
                kth = torch.topk(logits, top_k).values[:, -1:]
                logits = logits.masked_fill(logits < kth, float("-inf"))
            probs = torch.softmax(logits, dim=-1)
            next_token = torch.multinomial(probs, num_samples=1, generator=generator)
        idx = torch.cat([idx, next_token], dim=1)
    return idx[0, len(prompt) :].tolist()


def generate_text(model: GPT, tokenizer, settings: GenerateConfig, prompt: str | None = None) -> str:
    """The prompt's continuation as text (the prompt itself is not repeated)."""
    text = settings.prompt if prompt is None else prompt
    tokens = tokenizer.encode(text) or [tokenizer.eot_token]  # an empty prompt starts a new document
    generator = torch.Generator(device=next(model.parameters()).device).manual_seed(settings.seed)
    out = generate_tokens(model, tokens, settings.max_new_tokens, settings.temperature, settings.top_k, generator)
    return tokenizer.decode(out)


def load_model(checkpoint: str | Path, device: str = "cpu") -> tuple[GPT, Path]:
    """Build the model a checkpoint (or a run directory's latest checkpoint) holds, in eval mode."""
    directory = resolve_checkpoint(checkpoint)
    state = read_state(directory)
    model = GPT(ModelConfig.from_saved(state.model))
    model.load_state_dict(load_tensors(directory, "model.pt", device))
    return model.to(device).eval(), directory
