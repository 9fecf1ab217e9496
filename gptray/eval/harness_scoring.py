"""What the harness asks of a model, on gptray's GPT: log-likelihoods of token continuations and greedy (or
sampled) generations with stop strings, batched; units in, results out, so the same code runs in this
process or in each actor of a Ray Data pool."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from gptray.config import GenerateConfig
from gptray.core.devices import autocast
from gptray.generation.decode import generate
from gptray.generation.stopping import StopCondition

IGNORE = -100  # a target that is not scored


def loglikelihood_unit(index: int, context: list[int], continuation: list[int], block_size: int) -> dict:
    """A (context, continuation) pair cut from the left to block_size + 1 tokens, as the harness's own
    models cut it: the continuation is scored whole, the context loses its oldest tokens."""
    if not continuation:
        raise ValueError(f"request {index}: an empty continuation has no log-likelihood")
    if len(continuation) > block_size:
        raise ValueError(f"request {index}: a continuation of {len(continuation)} tokens does not fit the model's "
                         f"window of {block_size}")
    tokens = (list(context) + list(continuation))[-(block_size + 1):]
    return {"index": index, "tokens": tokens, "scored": len(continuation)}


def generation_unit(index: int, context: list[int], until: list[str], max_gen_toks: int, temperature: float,
                    block_size: int) -> dict:
    """A prompt cut from the left to leave room for max_gen_toks new tokens in the window (as the harness's
    own models cut it; at least one token of prompt is kept)."""
    room = max(block_size - max_gen_toks, 1)
    return {"index": index, "context": list(context)[-room:] or list(context)[-1:], "until": list(until),
            "max_gen_toks": int(max_gen_toks), "temperature": float(temperature)}


@torch.no_grad()
def score_loglikelihoods(model, units: list[dict], device: torch.device, precision: str = "fp32") -> list[dict]:
    """One forward pass over `units`: each one's continuation log-probability (summed) and whether greedy
    decoding would have produced it."""
    width = max(len(u["tokens"]) for u in units) - 1
    x = torch.zeros(len(units), width, dtype=torch.long)
    y = torch.full((len(units), width), IGNORE, dtype=torch.long)
    for r, unit in enumerate(units):
        tokens, n = list(unit["tokens"]), int(unit["scored"])
        x[r, : len(tokens) - 1] = torch.tensor(tokens[:-1])  # right padding: earlier positions never see it
        y[r, len(tokens) - 1 - n : len(tokens) - 1] = torch.tensor(tokens[-n:])
    with autocast(device, precision):
        logits, _ = model(x.to(device), prefix_len=model.scoring_prefix(y))
    logprobs = F.log_softmax(logits.float(), dim=-1).cpu()
    results = []
    for r, unit in enumerate(units):
        scored = y[r] != IGNORE
        targets = y[r][scored]
        rows = logprobs[r][scored]
        picked = rows.gather(1, targets[:, None]).squeeze(1)
        results.append({"index": int(unit["index"]), "logprob": float(picked.double().sum()),
                        "greedy": bool((rows.argmax(dim=-1) == targets).all())})
    return results


@torch.no_grad()
def generate_units(model, tokenizer, units: list[dict], device: torch.device, precision: str = "fp32",
                   seed: int = 0) -> list[dict]:
    """Continue each unit's prompt with gptray's decoder and KV cache, stopping at end-of-text or at the
    first of its stop strings; the text is cut before that stop string, as the harness expects. Units that
    share their settings run as one batch."""
    allowed = min(model.config.vocab_size, tokenizer.vocab_size)
    groups: dict[tuple, list[dict]] = {}
    for unit in units:
        key = (tuple(unit["until"]), int(unit["max_gen_toks"]), float(unit["temperature"]))
        groups.setdefault(key, []).append(unit)
    results = []
    for (until, max_gen_toks, temperature), members in groups.items():
        settings = GenerateConfig(max_new_tokens=max_gen_toks, temperature=temperature, top_k=None, seed=seed)
        stop = StopCondition(stop_tokens=frozenset([tokenizer.eot_token]), stop_strings=[s for s in until if s],
                             decode=tokenizer.decode)
        with autocast(device, precision):
            completions = generate(model, [list(u["context"]) for u in members], settings, stop, allowed)
        for unit, completion in zip(members, completions):
            results.append({"index": int(unit["index"]), "text": stop.text(completion.tokens,
                                                                           completion.finish_reason)})
    return results
