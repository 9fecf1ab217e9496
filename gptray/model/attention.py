"""Multi-head self-attention: rotary positions, attention patterns as masks, and two implementations.

Masks are built from query and key *positions* (not from a square T × T assumption), so a
key/value cache only has to pass longer key positions. Boolean masks say True where a query may
attend; additive masks are added to the attention scores (-inf blocks).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from gptray.config.model import ModelConfig
from gptray.model.kv_cache import LayerCache
from gptray.model.masks import flex_attend


@dataclass
class LayerMask:
    """What one attention layer may see: `mask` broadcastable to (B, n_head, Tq, Tk), or None with
    `is_causal`, the plain causal pattern that SDPA runs without a mask (and so with flash kernels);
    under attention_impl=flex, `block_mask` (a FlexAttention BlockMask) instead."""

    mask: torch.Tensor | None
    is_causal: bool
    block_mask: object | None = None


def allowed_keys(q_pos: torch.Tensor, k_pos: torch.Tensor, window: int | None = None) -> torch.Tensor:
    """(Tq, Tk) bool: key positions at or before each query position, the last `window` of them if given.
    Positions per sequence, (B, Tq) and (B, Tk), give (B, Tq, Tk)."""
    offset = q_pos[..., :, None] - k_pos[..., None, :]  # how far back each key is from each query
    allowed = offset >= 0
    if window is not None:
        allowed = allowed & (offset < window)
    return allowed


def document_ids(idx: torch.Tensor, eot_token: int) -> torch.Tensor:
    """(B, T) long: which packed document each token belongs to. An end-of-text token closes its
    document (it belongs to the document it ends), so the count of EOTs *before* a token is its id."""
    is_eot = (idx == eot_token).long()
    return torch.cumsum(is_eot, dim=1) - is_eot


def user_mask_4d(mask: torch.Tensor, batch: int, n_head: int, tq: int, tk: int) -> torch.Tensor:
    """A mask passed to `GPT.forward` as (Tq, Tk) shared, (B, Tq, Tk) per sequence or (B|1, H|1, Tq, Tk)."""
    if mask.dtype != torch.bool and not mask.is_floating_point():
        raise ValueError(f"attn_mask must be boolean (True: may attend) or floating (additive), not {mask.dtype}")
    if mask.dim() == 2:
        mask = mask[None, None]
    elif mask.dim() == 3:
        mask = mask[:, None]
    ok = (mask.dim() == 4 and mask.shape[-2:] == (tq, tk) and mask.shape[0] in (1, batch)
          and mask.shape[1] in (1, n_head))
    if not ok:
        raise ValueError(f"attn_mask of shape {tuple(mask.shape)} does not fit a batch of {batch} sequences "
                         f"of {tq} tokens with {n_head} heads: use (T, T), (B, T, T) or (B|1, H|1, T, T)")
    return mask


def combine_masks(pattern: torch.Tensor | None, user: torch.Tensor | None) -> torch.Tensor | None:
    """The pattern (bool) and a user mask together: a key must be allowed by both. An additive user
    mask stays additive, with -inf where the pattern forbids."""
    if user is None:
        return pattern
    if pattern is None:
        return user
    if user.dtype == torch.bool:
        return pattern & user
    return torch.where(pattern, user, torch.tensor(float("-inf"), dtype=user.dtype, device=user.device))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, layer_mask: LayerMask, dropout_p: float,
           impl: str) -> torch.Tensor:
    """softmax(q kᵀ / √d + mask) v over (B, H, T, head_dim) tensors. A query with no key left to
    attend to gets a zero output (what SDPA returns) rather than NaN. Under flex, a pass without a block
    mask (cached decoding: a BlockMask per new length would recompile the kernel each step) runs SDPA
    over the dense mask of its few queries."""
    if impl == "flex" and layer_mask.block_mask is not None:
        return flex_attend(q, k, v, layer_mask.block_mask)
    mask = layer_mask.mask
    if mask is not None and mask.is_floating_point():
        mask = mask.to(q.dtype)  # SDPA wants an additive mask in the query's dtype (bf16 under autocast)
    if impl in ("sdpa", "flex"):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p,
                                              is_causal=layer_mask.is_causal and mask is None)
    scores = (q @ k.transpose(-2, -1)) * q.size(-1) ** -0.5  # (B, H, Tq, Tk)
    if mask is None and layer_mask.is_causal:
        positions = torch.arange(q.size(-2), device=q.device)
        mask = allowed_keys(positions, positions)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf")) if mask.dtype == torch.bool else scores + mask
    nothing_to_attend = scores.amax(dim=-1, keepdim=True) == float("-inf")
    weights = torch.softmax(scores.masked_fill(nothing_to_attend, 0.0), dim=-1).masked_fill(nothing_to_attend, 0.0)
    weights = F.dropout(weights, p=dropout_p)
    return weights @ v


def rope_tables(positions: torch.Tensor, head_dim: int, base: float) -> tuple[torch.Tensor, torch.Tensor]:
    """cos and sin of the rotary angles, (T, head_dim), in fp32 whatever the autocast dtype; positions
    per sequence, (B, T), give (B, T, head_dim)."""
    inv_freq = base ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions.float()[..., None] * inv_freq  # (T, head_dim / 2)
    angles = torch.cat([angles, angles], dim=-1)  # the two halves of a head rotate as pairs (i, i + d/2)
    return angles.cos(), angles.sin()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate each pair (x_i, x_{i+d/2}) of a (B, H, T, head_dim) tensor by its position's angle."""
    first, second = x.chunk(2, dim=-1)
    rotated_half = torch.cat([-second, first], dim=-1)
    return (x.float() * cos + rotated_half.float() * sin).to(x.dtype)


class CausalSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.n_head = config.n_head
        self.head_dim = config.head_dim
        self.inner = config.n_head * config.head_dim  # equals n_embd unless head_dim says otherwise
        self.dropout = config.dropout
        self.impl = config.attention_impl
        self.local = config.is_local_layer(layer)  # banded to attention_window keys in this layer
        self.c_attn = nn.Linear(config.n_embd, 3 * self.inner, bias=config.bias)
        self.c_proj = nn.Linear(self.inner, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True  # GPT-2 init scales residual projections
        self.resid_dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor, layer_mask: LayerMask,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, kv: LayerCache | None = None) -> torch.Tensor:
        """`kv`: this layer's slot in a KVCache; the new keys and values join the cached ones, and the
        queries (the new tokens only) attend over all of them."""
        B, T, _ = x.shape
        q, k, v = self.c_attn(x).split(self.inner, dim=2)
        # (B, T, inner) → (B, n_head, T, head_dim)
        q = q.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = k.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        v = v.view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        if rope is not None:
            q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if kv is not None:
            k, v = kv.extend(k, v)  # (B, n_head, past + T, head_dim)
        y = attend(q, k, v, layer_mask, self.dropout if self.training else 0.0, self.impl)
        y = y.transpose(1, 2).contiguous().view(B, T, self.inner)
        return self.resid_dropout(self.c_proj(y))
