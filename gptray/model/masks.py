"""Attention patterns defined once, as a rule on (sequence, query, key) indices, rendered two ways: a dense
boolean mask for SDPA and the matmul reference, and a FlexAttention BlockMask.

A rule takes index tensors that broadcast against each other (b, q, k) and returns where a query may
attend. The dense rendering calls it on broadcast ranges; FlexAttention calls it on the scalars its
`mask_mod` receives. One definition keeps the two implementations equal by construction, and the
tests check both renderings against masks written out from the definitions.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from gptray.core.errors import ConfigError

IGNORE_TARGET = -100  # F.cross_entropy's ignore_index (gptray.data.global_order.IGNORE_INDEX, a layer above)

Rule = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]  # (b, q, k) → bool


def pattern_rule(kind: str, window: int | None = None, documents: torch.Tensor | None = None,
                 prefix: torch.Tensor | None = None) -> Rule:
    """The configured pattern: `kind` causal (with `window`: the last `window` keys), prefix (keys in the
    first `prefix[b]` positions visible to every query, causal after them) or bidirectional; with
    `documents` (B, T) ids, and only keys of the query's own document."""
    if kind == "prefix" and prefix is None:
        raise ValueError("a prefix pattern needs each sequence's prefix length")

    def rule(b: torch.Tensor, q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        if kind == "bidirectional":
            allowed = (q >= 0) & (k >= 0)
        else:
            allowed = k <= q
            if window is not None:
                allowed = allowed & (q - k < window)
            if kind == "prefix":
                allowed = allowed | (k < prefix[b])
        if documents is not None:
            allowed = allowed & (documents[b, q] == documents[b, k])
        return allowed

    return rule


def with_user_mask(rule: Rule | None, user: torch.Tensor | None) -> Callable:
    """A mask_mod (b, h, q, k): the rule and a boolean user mask (B|1, H|1, Tq, Tk) together; with no
    rule, the user mask alone (a mask that replaces the pattern)."""
    if user is not None and user.dtype != torch.bool:
        raise ValueError("attention_impl=flex takes boolean attention masks (True: may attend); an additive "
                         "mask needs attention_impl=sdpa or matmul")

    def mask_mod(b, h, q, k):
        if user is None:
            return rule(b, q, k)
        picked = user[b if user.size(0) > 1 else 0, h if user.size(1) > 1 else 0, q, k]
        return picked if rule is None else rule(b, q, k) & picked

    return mask_mod


def dense_mask(rule: Rule, batch: int, tq: int, tk: int, per_sequence: bool, device) -> torch.Tensor:
    """(B|1, 1, Tq, Tk) bool: the rule rendered for every (sequence, query, key)."""
    b = torch.arange(batch if per_sequence else 1, device=device)[:, None, None]
    q = torch.arange(tq, device=device)[None, :, None]
    k = torch.arange(tk, device=device)[None, None, :]
    return rule(b, q, k).expand(len(b), tq, tk)[:, None]


@torch.compiler.disable
def block_mask(mask_mod: Callable, batch: int | None, heads: int | None, tq: int, tk: int, device):
    """A FlexAttention BlockMask of a mask_mod; `batch`/`heads` None where the mask is shared by them.
    Built eagerly even inside a compiled model (a graph break, once per forward): Inductor on CPU cannot
    lower flex_attention when the mask construction is traced into the same graph."""
    create_block_mask, _ = flex_functions()
    return create_block_mask(mask_mod, B=batch, H=heads, Q_LEN=tq, KV_LEN=tk, device=device)


def flex_functions():
    """torch's create_block_mask and flex_attention, or a ConfigError naming what this torch lacks."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        raise ConfigError("model.attention_impl",
                          "flex needs torch.nn.attention.flex_attention (torch >= 2.5); this is torch "
                          f"{torch.__version__}: use attention_impl=sdpa") from None
    return create_block_mask, flex_attention


@functools.cache
def _compiled_flex():
    _, flex_attention = flex_functions()
    return torch.compile(flex_attention, dynamic=False)


def flex_attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask) -> torch.Tensor:
    """FlexAttention over (B, H, T, head_dim) tensors with a BlockMask. Fused (compiled) on CUDA; on CPU
    torch 2.13 runs only the forward pass (its unfused reference, unless the whole model is compiled),
    so a CPU pass that needs gradients is refused rather than sent elsewhere."""
    _, flex_attention = flex_functions()
    if torch.is_grad_enabled() and (q.requires_grad or k.requires_grad):
        require_flex_training(q.device)
    if q.device.type == "cuda" and not torch.compiler.is_compiling():
        return _compiled_flex()(q, k, v, block_mask=mask)
    return flex_attention(q, k, v, block_mask=mask)


def require_flex_training(device: torch.device) -> None:
    """Raise a ConfigError where attention_impl=flex cannot train: torch has no flex backward on CPU."""
    flex_functions()
    if torch.device(device).type == "cpu":
        raise ConfigError("model.attention_impl",
                          f"flex cannot train on CPU: torch {torch.__version__} has no FlexAttention backward "
                          "pass for CPU tensors (it runs forward only, for evaluation and generation); train "
                          "with attention_impl=sdpa on CPU, or flex on a CUDA device")


def prefix_lengths(fraction: float, batch: int, length: int, device) -> torch.Tensor:
    """(B,) long: the prefix of a `length`-token window at `fraction` of it, at least 1 token."""
    return torch.full((batch,), max(1, min(length, round(fraction * length))), dtype=torch.long, device=device)


def drop_prefix_targets(targets: torch.Tensor, prefix: torch.Tensor) -> torch.Tensor:
    """Targets with those the prefix lets their query see set to -100: position t predicts token t + 1,
    which a query in the prefix sees when t + 1 is in it too (t < prefix - 1)."""
    t = torch.arange(targets.size(1), device=targets.device)[None, :]
    return targets.masked_fill(t < prefix[:, None] - 1, IGNORE_TARGET)


def visible_bidirectional_targets(targets: torch.Tensor, documents: torch.Tensor | None) -> torch.Tensor:
    """(B, T) bool: counted targets that bidirectional attention shows to the query predicting them (token
    t + 1 is in the input, and in the query's document where documents are masked)."""
    visible = torch.zeros_like(targets, dtype=torch.bool)
    visible[:, :-1] = True
    if documents is not None:
        visible[:, :-1] &= documents[:, :-1] == documents[:, 1:]
    return visible & (targets != IGNORE_TARGET)
