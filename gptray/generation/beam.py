"""Beam search: keep the `num_beams` most likely continuations at every step, through one shared KV cache.

A hypothesis that ends (stop token or stop string) is set aside, scored by its log-probability over
its length to the power `length_penalty`. The search stops once `num_beams` hypotheses have ended and
no running beam scores better than the worst of them (Hugging Face's default rule), or at
max_new_tokens, when the running beams join the ended ones. Deterministic: temperature, top-k and
top-p do not apply; the repetition penalty does.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from gptray.config import GenerateConfig
from gptray.generation.decode import Completion, ContextWindows, check_tokens
from gptray.generation.sampling import apply_repetition_penalty
from gptray.generation.stopping import LENGTH, StopCondition
from gptray.model import GPT


@dataclass
class Hypothesis:
    tokens: list[int]
    log_prob: float
    finish_reason: str = LENGTH

    def score(self, length_penalty: float) -> float:
        return self.log_prob / max(len(self.tokens), 1) ** length_penalty


@torch.no_grad()
def beam_search(model: GPT, prompt: list[int], settings: GenerateConfig, stop: StopCondition | None = None,
                allowed_vocab: int | None = None) -> Completion:
    """The best continuation of `prompt` found with settings.num_beams beams."""
    stop = stop or StopCondition()
    num_beams, penalty = settings.num_beams, settings.length_penalty
    if not prompt:
        raise ValueError("a prompt must hold at least one token")
    check_tokens(prompt, model.config.vocab_size)
    model.eval()
    windows = ContextWindows(model, [list(prompt)], settings.max_new_tokens, settings.use_cache)
    beams = [Hypothesis([], 0.0)]
    ended: list[Hypothesis] = []
    for step in range(settings.max_new_tokens):
        logits = windows.next_logits(step)
        if allowed_vocab is not None and allowed_vocab < logits.size(-1):
            logits[:, allowed_vocab:] = float("-inf")
        logits = apply_repetition_penalty(logits, windows.contexts, settings.repetition_penalty)
        log_probs = torch.log_softmax(logits, dim=-1)  # (beams, V)
        totals = torch.tensor([b.log_prob for b in beams], device=log_probs.device)[:, None] + log_probs
        # 2 × num_beams candidates: enough to refill every beam even if num_beams of them end here.
        top = torch.topk(totals.flatten(), min(2 * num_beams, totals.numel()))
        survivors: list[tuple[int, Hypothesis]] = []
        for rank, (total, flat) in enumerate(zip(top.values.tolist(), top.indices.tolist())):
            beam, token = divmod(flat, totals.size(1))
            if total == float("-inf"):
                break
            candidate = Hypothesis(beams[beam].tokens + [token], total)
            reason = stop.check(candidate.tokens)
            if reason is not None:
                if rank < num_beams:  # an ending ranked below the beams would not have been kept anyway
                    candidate.finish_reason = reason
                    ended.append(candidate)
            else:
                survivors.append((beam, candidate))
            if len(survivors) == num_beams:
                break
        beams = [h for _, h in survivors]
        if not beams or _done(ended, beams, num_beams, penalty):
            break
        windows.keep([beam for beam, _ in survivors])  # reorder (and repeat) the cache's rows
        windows.append([h.tokens[-1] for h in beams])
    # Running beams compete too: at max_new_tokens they are complete; after the stopping rule none can win.
    best = max(ended + beams or [Hypothesis([], 0.0)], key=lambda h: h.score(penalty))
    return Completion(tokens=best.tokens, finish_reason=best.finish_reason, score=best.score(penalty))


def _done(ended: list[Hypothesis], running: list[Hypothesis], num_beams: int, penalty: float) -> bool:
    if len(ended) < num_beams:
        return False
    worst_kept = sorted((h.score(penalty) for h in ended), reverse=True)[num_beams - 1]
    best_running = max(h.score(penalty) for h in running)
    return best_running <= worst_kept
