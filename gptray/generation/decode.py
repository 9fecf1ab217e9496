"""Decoding a batch of prompts with a KV cache: greedy or sampled, each sequence ending on its own.

Prompts of different lengths are left-padded into one batch; padding is never attended to and positions
start at each prompt's first token, so a prompt continues as it would alone. The model sees at most
block_size tokens: once a sequence is longer, its context slides and every step recomputes the window
(a cache cannot drop a token: later layers' keys depend on everything before them).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from gptray.config import GenerateConfig
from gptray.generation.sampling import apply_repetition_penalty, choose_next
from gptray.generation.stopping import LENGTH, StopCondition
from gptray.model import GPT, KVCache


@dataclass
class Completion:
    tokens: list[int]  # generated tokens, without the prompt (and with a stop token, if one ended it)
    finish_reason: str  # "length", "eot" (a stop token) or "stop" (a stop string)
    text: str | None = None  # set by the text functions: cut at the stop token or string
    score: float | None = None  # beam search: the length-normalized log-probability


def check_tokens(tokens: list[int], vocab_size: int, what: str = "prompt") -> None:
    """A token id the model has no embedding for would fail deep inside it (IndexError): say so here."""
    bad = [t for t in tokens if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"{what} token id {bad[0]} is outside the model's vocabulary of {vocab_size} tokens")


def model_device(model: torch.nn.Module) -> torch.device:
    return next(model.parameters()).device


class ContextWindows:
    """The running sequences' tokens, and forward passes over them: the prompt (or a slid window) once,
    then one new token at a time through a KV cache."""

    def __init__(self, model: GPT, contexts: list[list[int]], max_new_tokens: int, use_cache: bool):
        self.model = model
        self.block_size = model.config.block_size
        self.contexts = contexts  # prompt + generated tokens of each running sequence
        self.prompt_lengths = [len(c) for c in contexts]  # a prefix-LM reads its prompt as the prefix
        self.use_cache = use_cache
        self.max_new_tokens = max_new_tokens
        self.cache: KVCache | None = None
        self.device = model_device(model)

    def next_logits(self, steps_done: int) -> torch.Tensor:
        """(B, V) logits of the token after each context, in fp32."""
        if self.cache is not None and self.use_cache and self.cache.remaining > 0:
            last = torch.tensor([[c[-1]] for c in self.contexts], dtype=torch.long, device=self.device)
            logits, _ = self.model(last, cache=self.cache)
        else:
            logits = self._prefill(steps_done)
        return logits[:, -1, :].float()

    def _prefill(self, steps_done: int) -> torch.Tensor:
        windows = [c[-self.block_size :] for c in self.contexts]
        width = max(len(w) for w in windows)
        padding = [width - len(w) for w in windows]
        # Pad with each sequence's own first token: any id works, padding is masked out.
        rows = [[w[0]] * p + w for w, p in zip(windows, padding)]
        idx = torch.tensor(rows, dtype=torch.long, device=self.device)
        # Room for the rest of the generation, up to block_size (after which windows slide anyway).
        capacity = min(self.block_size, width + self.max_new_tokens - steps_done)
        self.cache = KVCache(self.model.config, len(rows), capacity, self.device, padding=padding)
        prefix = None
        if self.model.config.attention == "prefix":  # the prompt tokens still in the window, not generated ones
            prefix = torch.tensor([max(0, n - (len(c) - len(w))) for n, c, w in
                                   zip(self.prompt_lengths, self.contexts, windows)], device=self.device)
        logits, _ = self.model(idx, cache=self.cache, prefix_len=prefix)
        return logits

    def append(self, tokens: list[int]) -> None:
        for context, token in zip(self.contexts, tokens):
            context.append(token)

    def keep(self, rows: list[int]) -> None:
        """Continue with these sequences only (finished ones leave the batch), in this order."""
        self.contexts = [list(self.contexts[r]) for r in rows]  # a repeated row (a beam) gets its own copy
        self.prompt_lengths = [self.prompt_lengths[r] for r in rows]
        if self.cache is not None:
            self.cache.select(rows)


@torch.no_grad()
def generate(model: GPT, prompts: list[list[int]], settings: GenerateConfig, stop: StopCondition | None = None,
             allowed_vocab: int | None = None,
             on_token: Callable[[int, int], None] | None = None) -> list[Completion]:
    """Continue each prompt (token ids) by up to settings.max_new_tokens tokens.

    temperature 0 is greedy; otherwise tokens are drawn after repetition penalty, temperature, top-k and
    top-p, with sequence i drawing from its own generator seeded `settings.seed + i`. `allowed_vocab`
    keeps generation to the first ids (a model whose vocabulary is padded beyond its tokenizer's).
    `on_token(i, token)` is called for every token sequence i generates (streaming). Beam search
    (settings.num_beams > 1) is `generation.beam.beam_search`.
    """
    stop = stop or StopCondition()
    vocab = model.config.vocab_size
    if not prompts:
        return []
    for prompt in prompts:
        if not prompt:
            raise ValueError("a prompt must hold at least one token")
        check_tokens(prompt, vocab)
    model.eval()
    device = model_device(model)
    generators = [torch.Generator(device=device).manual_seed(settings.seed + i) for i in range(len(prompts))]
    completions = [Completion(tokens=[], finish_reason=LENGTH) for _ in prompts]
    running = list(range(len(prompts)))  # which prompts are still generating, in batch order
    windows = ContextWindows(model, [list(p) for p in prompts], settings.max_new_tokens, settings.use_cache)
    for step in range(settings.max_new_tokens):
        logits = windows.next_logits(step)
        if allowed_vocab is not None and allowed_vocab < vocab:
            logits[:, allowed_vocab:] = float("-inf")
        logits = apply_repetition_penalty(logits, windows.contexts, settings.repetition_penalty)
        chosen = choose_next(logits, settings.temperature, settings.top_k, settings.top_p,
                             [generators[i] for i in running]).tolist()
        windows.append(chosen)
        still = []
        for row, (i, token) in enumerate(zip(running, chosen)):
            completion = completions[i]
            completion.tokens.append(token)
            if on_token is not None:
                on_token(i, token)
            reason = stop.check(completion.tokens)
            if reason is None:
                still.append(row)
            else:
                completion.finish_reason = reason
        if not still:
            break
        if len(still) < len(running):
            windows.keep(still)
            running = [running[row] for row in still]
    return completions
