"""Choosing the next token from logits: repetition penalty, temperature, top-k, top-p (nucleus), greedy.

The order is the usual one (CTRL, Hugging Face): penalize repeats on the raw logits, scale by the
temperature, keep the k most likely tokens, then the smallest set holding top_p of the probability.
"""

from __future__ import annotations

import torch


def apply_repetition_penalty(logits: torch.Tensor, contexts: list[list[int]], penalty: float) -> torch.Tensor:
    """CTRL's penalty on (B, V) logits: tokens already in a sequence's context become less likely
    (a positive logit is divided by `penalty`, a negative one multiplied). 1.0 changes nothing."""
    if penalty == 1.0:
        return logits
    logits = logits.clone()
    for row, context in enumerate(contexts):
        seen = torch.tensor(sorted(set(context)), dtype=torch.long, device=logits.device)
        values = logits[row, seen]
        logits[row, seen] = torch.where(values > 0, values / penalty, values * penalty)
    return logits


def top_k_filter(logits: torch.Tensor, k: int | None) -> torch.Tensor:
    """Keep each row's k largest logits (ties with the k-th included); the rest become -inf."""
    if k is None or k >= logits.size(-1):
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float | None) -> torch.Tensor:
    """Nucleus filtering: keep the most likely tokens whose probabilities sum to at least p, and no more:
    a token stays if the tokens more likely than it hold less than p. The most likely always stays."""
    if p is None or p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = torch.softmax(sorted_logits, dim=-1)
    mass_before = torch.cumsum(probs, dim=-1) - probs  # probability of the tokens ranked above each one
    remove_sorted = mass_before >= p
    remove_sorted[..., 0] = False
    remove = torch.zeros_like(remove_sorted).scatter(-1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def choose_next(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                generators: list[torch.Generator | None]) -> torch.Tensor:
    """(B, V) logits → (B,) next tokens: argmax for temperature 0, else a draw from the filtered
    distribution with each row's own generator (so a sequence's sample does not depend on its batch)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = top_p_filter(top_k_filter(logits / temperature, top_k), top_p)
    probs = torch.softmax(logits, dim=-1)
    return torch.cat([torch.multinomial(probs[row : row + 1], num_samples=1, generator=generators[row])[0]
                      for row in range(probs.size(0))])
