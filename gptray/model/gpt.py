"""The GPT decoder: pre-norm blocks, GPT-2 by default, with the research variants as config axes.

Parameter names follow Hugging Face's `GPT2LMHeadModel` (`transformer.h.0.attn.c_attn.weight`,
…), so HF weights load with a transpose of the Conv1D matrices and nothing else. Variants only
add or drop parameters (`mlp.c_gate` for SwiGLU; no `wpe` without learned positions; no norm
biases with RMSNorm; a separate `lm_head` when untied).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint

from gptray.config.model import ModelConfig
from gptray.model.attention import (
    CausalSelfAttention,
    LayerMask,
    allowed_keys,
    combine_masks,
    document_ids,
    rope_tables,
    user_mask_4d,
)
from gptray.model.kv_cache import CacheStep, KVCache, LayerCache
from gptray.model.masks import (
    IGNORE_TARGET,
    block_mask,
    dense_mask,
    drop_prefix_targets,
    pattern_rule,
    prefix_lengths,
    visible_bidirectional_targets,
    with_user_mask,
)

MASK_MODES = ("restrict", "replace")


def make_norm(config: ModelConfig) -> nn.Module:
    if config.norm == "rmsnorm":
        return nn.RMSNorm(config.n_embd, eps=config.norm_eps)
    return nn.LayerNorm(config.n_embd, eps=config.norm_eps, bias=config.bias)


class MLP(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.swiglu = config.mlp == "swiglu"
        self.c_fc = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        if self.swiglu:
            self.c_gate = nn.Linear(config.n_embd, config.mlp_hidden, bias=config.bias)
        self.c_proj = nn.Linear(config.mlp_hidden, config.n_embd, bias=config.bias)
        self.c_proj.residual_scale = True
        self.dropout = nn.Dropout(config.dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.swiglu:
            hidden = F.silu(self.c_gate(x)) * self.c_fc(x)
        else:
            hidden = F.gelu(self.c_fc(x), approximate="tanh")  # GPT-2 uses the tanh approximation
        return self.dropout(self.c_proj(hidden))


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer: int):
        super().__init__()
        self.ln_1 = make_norm(config)
        self.attn = CausalSelfAttention(config, layer)
        self.ln_2 = make_norm(config)
        self.mlp = MLP(config)

    def forward(self, x: torch.Tensor, layer_mask: LayerMask,
                rope: tuple[torch.Tensor, torch.Tensor] | None = None, kv: LayerCache | None = None) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), layer_mask, rope, kv)
        return x + self.mlp(self.ln_2(x))


class GPT(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        config = config.resolved()  # a no-op for a resolved config; fills in older checkpoints' configs
        self.config = config
        self.activation_checkpointing = False
        modules = dict(wte=nn.Embedding(config.vocab_size, config.n_embd))
        if config.position == "learned":
            modules["wpe"] = nn.Embedding(config.block_size, config.n_embd)
        modules.update(
            drop=nn.Dropout(config.dropout),
            h=nn.ModuleList([Block(config, layer) for layer in range(config.n_layer)]),
            ln_f=make_norm(config),
        )
        self.transformer = nn.ModuleDict(modules)
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.transformer.wte.weight = self.lm_head.weight  # weight tying, as GPT-2
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # GPT-2: N(0, 0.02) everywhere, residual projections scaled by 1/sqrt(2 · n_layer)
        # because each block adds two of them to the residual stream.
        if isinstance(module, nn.Linear):
            std = 0.02
            if getattr(module, "residual_scale", False):
                std /= math.sqrt(2 * self.config.n_layer)
            nn.init.normal_(module.weight, mean=0.0, std=std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=0.02)

    def set_activation_checkpointing(self, enabled: bool = True) -> GPT:
        """Recompute each block's activations in the backward pass instead of keeping them: less
        memory for about one more forward pass of compute. Dropout masks are replayed exactly."""
        self.activation_checkpointing = enabled
        return self

    def forward(
        self, idx: torch.Tensor, targets: torch.Tensor | None = None, attn_mask: torch.Tensor | None = None,
        cache: KVCache | None = None, mask_mode: str = "restrict", prefix_len: torch.Tensor | int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """idx: (B, T) token ids → logits (B, T, vocab); loss is mean cross-entropy if targets given.

        `attn_mask`: boolean, True where a query may attend, or additive (added to the scores, -inf
        blocks), shaped (T, T) for every sequence, (B, T, T) per sequence or (B|1, n_head|1, T, T) per
        head. With a cache its last dimension spans the cached tokens too. `mask_mode` says what it does:

        - "restrict" (the default): it restricts attention further, on top of the configured pattern
          (`model.attention` and `model.document_mask`): a causal LM never sees later tokens.
        - "replace": it *is* the pattern, in every layer; the configured one is not applied. Full
          bidirectional attention is `attn_mask=torch.ones(T, T, dtype=torch.bool)`; a sliding window
          of `w` keys either side is `(i - j).abs() < w` for `i = torch.arange(T)[:, None]`,
          `j = torch.arange(T)[None, :]`. What the targets can see is then the caller's to decide:
          the model drops or refuses none of them.

        `prefix_len` (model.attention=prefix): per sequence (B,) or for all, how many leading tokens
        attend bidirectionally; default `model.prefix_fraction` of T. Targets inside the prefix (those
        its queries see) are left out of the loss. With a cache it applies to the first chunk (default:
        the whole prompt is the prefix; generated tokens are causal).

        `cache`: a KVCache holding the keys and values of tokens already seen; `idx` holds only the
        new tokens, which are appended to it (incremental decoding).
        """
        if mask_mode not in MASK_MODES:
            raise ValueError(f"mask_mode must be one of {', '.join(MASK_MODES)} (got {mask_mode!r})")
        if mask_mode == "replace" and attn_mask is None:
            raise ValueError('mask_mode="replace" needs an attn_mask to replace the configured pattern with')
        if prefix_len is not None and (self.config.attention != "prefix" or mask_mode == "replace"):
            raise ValueError("prefix_len is for model.attention=prefix (and mask_mode='restrict'); this model's "
                             f"attention is {self.config.attention}")
        B, T = idx.shape
        prefix = None
        if cache is None:
            if T > self.config.block_size:
                raise ValueError(f"sequence of length {T} is longer than block_size {self.config.block_size}")
            pos = torch.arange(T, dtype=torch.long, device=idx.device)
            if self.config.attention == "prefix" and mask_mode == "restrict":
                prefix = self._prefix(prefix_len, B, T, idx.device)
            dense, local = self.layer_masks(idx, pos, attn_mask, mask_mode, prefix)
        else:
            if self.config.attention == "bidirectional" and mask_mode == "restrict":
                raise ValueError("a KV cache cannot serve bidirectional attention: cached tokens would have to "
                                 "see the tokens that come after them")
            step = cache.begin(idx, None if prefix_len is None else self._prefix(prefix_len, B, T, idx.device))
            pos = step.q_positions.clamp(min=0)  # (B, T); padding takes position 0, and is never attended to
            dense, local = self.cached_layer_masks(step, attn_mask, cache.padded, mask_mode)
        x = self.transformer.wte(idx)
        if self.config.position == "learned":
            x = x + self.transformer.wpe(pos)
        x = self.transformer.drop(x)
        rope = None
        if self.config.position == "rope":
            rope = rope_tables(pos, self.config.head_dim, self.config.rope_base)
            if pos.dim() == 2:  # per-sequence positions: (B, T, head_dim) → (B, 1, T, head_dim), shared by heads
                rope = tuple(t[:, None] for t in rope)
        for i, block in enumerate(self.transformer.h):
            layer_mask = local if block.attn.local and local is not None else dense
            if cache is not None:
                x = block(x, layer_mask, rope, cache.layers[i])
            elif self.activation_checkpointing and self.training and torch.is_grad_enabled():
                x = checkpoint(block, x, layer_mask, rope, use_reentrant=False)
            else:
                x = block(x, layer_mask, rope)
        if cache is not None:
            cache.commit(T)
        logits = self.lm_head(self.transformer.ln_f(x))
        loss = None
        if targets is not None:
            if mask_mode == "restrict":
                targets = self.prediction_targets(targets, idx, prefix)
            loss = F.cross_entropy(logits.float().reshape(-1, logits.size(-1)), targets.reshape(-1))
        return logits, loss

    def _prefix(self, prefix_len: torch.Tensor | int | None, batch: int, length: int, device) -> torch.Tensor:
        """(B,) prefix lengths: those given, else model.prefix_fraction of the window."""
        if prefix_len is None:
            return prefix_lengths(self.config.prefix_fraction, batch, length, device)
        prefix = torch.as_tensor(prefix_len, dtype=torch.long, device=device).expand(batch)
        if ((prefix < 0) | (prefix > length)).any():
            raise ValueError(f"prefix_len must be in [0, {length}] (got {prefix.tolist()})")
        return prefix

    def prediction_targets(self, targets: torch.Tensor, idx: torch.Tensor,
                           prefix: torch.Tensor | None = None) -> torch.Tensor:
        """The targets a next-token loss may count under the configured pattern: under prefix, those inside
        the prefix (visible to their queries) become -100; under bidirectional, a counted target its query
        can see (judged by the pattern, before any restricting attn_mask) is refused (ValueError)."""
        config = self.config
        if config.attention == "prefix":
            if prefix is None:
                prefix = prefix_lengths(config.prefix_fraction, targets.size(0), targets.size(1), targets.device)
            return drop_prefix_targets(targets, prefix)
        if config.attention == "bidirectional":
            documents = document_ids(idx, config.eot_token) if config.document_mask else None
            visible = visible_bidirectional_targets(targets, documents)
            if visible.any():
                raise ValueError(f"{int(visible.sum())} counted target(s) are visible to the queries that predict "
                                 "them: model.attention=bidirectional lets every position see the next token. "
                                 "Mask them out of the loss (-100) wherever the next token is in the input, or "
                                 "train with model.attention=prefix")
        return targets

    def scoring_prefix(self, targets: torch.Tensor) -> torch.Tensor | None:
        """For scoring with a loss computed outside forward (evaluations): under prefix, the longest prefix
        of each row that hides its counted targets (up to and including the first one's query), so
        context tokens are read bidirectionally; None for every other pattern."""
        if self.config.attention != "prefix":
            return None
        counted = targets != IGNORE_TARGET
        first = torch.where(counted.any(dim=1), counted.float().argmax(dim=1), targets.size(1) - 1)
        return first + 1

    def _pattern_kind(self) -> str:
        """The configured attention as a rule's kind: banded layers are causal with a window."""
        return "causal" if self.config.attention in ("sliding_window", "alternating") else self.config.attention

    def layer_masks(self, idx: torch.Tensor, pos: torch.Tensor, attn_mask: torch.Tensor | None,
                    mask_mode: str = "restrict",
                    prefix: torch.Tensor | None = None) -> tuple[LayerMask, LayerMask | None]:
        """The masks of dense and of banded layers (None where no layer is banded), built once per forward
        (under flex, once per batch: a BlockMask each)."""
        config = self.config
        B, T = idx.size(0), len(pos)
        user = None if attn_mask is None else user_mask_4d(attn_mask, B, config.n_head, T, T)
        replace = mask_mode == "replace"
        documents = document_ids(idx, config.eot_token) if config.document_mask and not replace else None
        per_sequence = documents is not None or prefix is not None
        kind = self._pattern_kind()

        def build(window: int | None) -> LayerMask:
            rule = None if replace else pattern_rule(kind, window, documents, prefix)
            if config.attention_impl == "flex":
                by_sequence = per_sequence or (user is not None and user.size(0) > 1)
                heads = config.n_head if user is not None and user.size(1) > 1 else None
                blocks = block_mask(with_user_mask(rule, user), B if by_sequence else None, heads, T, T, idx.device)
                return LayerMask(mask=None, is_causal=False, block_mask=blocks)
            if replace:
                return LayerMask(mask=user, is_causal=False)
            if kind == "causal" and window is None and documents is None and user is None:
                return LayerMask(mask=None, is_causal=True)  # the fast path: SDPA's own causal kernel
            if kind == "bidirectional" and documents is None and user is None:
                return LayerMask(mask=None, is_causal=False)  # every key: no mask at all
            pattern = dense_mask(rule, B, T, T, per_sequence, idx.device)  # (B|1, 1, T, T)
            return LayerMask(mask=combine_masks(pattern, user), is_causal=False)

        dense = build(None)
        local = None
        if config.attention in ("sliding_window", "alternating"):
            local = dense if replace else build(config.attention_window)
        return dense, local

    def cached_layer_masks(self, step: CacheStep, attn_mask: torch.Tensor | None, padded: bool,
                           mask_mode: str = "restrict") -> tuple[LayerMask, LayerMask | None]:
        """The masks of new tokens' queries against cached and new keys, from the positions the cache keeps."""
        config = self.config
        B, T = step.q_positions.shape
        tk = step.k_positions.size(1)
        user = None if attn_mask is None else user_mask_4d(attn_mask, B, config.n_head, T, tk)
        if mask_mode == "replace":
            return LayerMask(mask=user, is_causal=False), None
        # A prefix's first chunk attends bidirectionally; later tokens (all past it) are plainly causal.
        prefix = step.prefix if step.past == 0 else None
        plain = step.q_documents is None and user is None and not padded and prefix is None

        def build(window: int | None) -> LayerMask:
            if plain and window is None:
                if T == 1:
                    return LayerMask(mask=None, is_causal=False)  # one new token sees every cached key
                if step.past == 0:
                    return LayerMask(mask=None, is_causal=True)  # a first chunk: the square causal pattern
            pattern = allowed_keys(step.q_positions, step.k_positions, window)
            if step.prefix is not None:
                pattern = pattern | (step.k_positions[:, None, :] < step.prefix[:, None, None])
            pattern = pattern & step.k_valid[:, None, :]
            if step.q_documents is not None:
                pattern = pattern & (step.q_documents[:, :, None] == step.k_documents[:, None, :])
            # Padding queries may look anywhere: their outputs are never used, but must stay finite (a
            # query with no key at all could give NaN, which zero attention weights would still spread).
            pattern = pattern | ~step.q_valid[:, :, None]
            return LayerMask(mask=combine_masks(pattern[:, None], user), is_causal=False)  # (B, 1, T, Tk)

        dense = build(None)
        local = build(config.attention_window) if config.attention in ("sliding_window", "alternating") else None
        return dense, local

    def num_parameters(self, exclude_positions: bool = False) -> int:
        """Parameters counted once each (the tied embedding/head matrix once)."""
        n = sum(p.numel() for p in self.parameters())  # parameters() already yields tied ones once
        if exclude_positions and "wpe" in self.transformer:
            n -= self.transformer.wpe.weight.numel()
        return n




def cross_entropy_and_z_loss(logits: torch.Tensor, targets: torch.Tensor,
                             coefficient: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean cross-entropy of `logits` (B, T, vocab) against `targets` (B, T), and the z-loss term
    coefficient × mean(log² Z), Z = Σ exp(logits) the softmax normalizer of each counted position
    (PaLM, Chowdhery et al. 2022; targets equal to -100 are not counted, as in F.cross_entropy).

    log Z is computed once for both: the cross-entropy is log Z − the target's logit.
    """
    logits = logits.float().reshape(-1, logits.size(-1))  # (B·T, vocab)
    targets = targets.reshape(-1)
    counted = targets != IGNORE_TARGET
    log_z = torch.logsumexp(logits, dim=-1)  # (B·T,)
    target_logits = logits.gather(1, targets.clamp(min=0)[:, None])[:, 0]
    n = counted.sum()
    cross_entropy = torch.where(counted, log_z - target_logits, 0.0).sum() / n
    z_loss = coefficient * torch.where(counted, log_z.square(), 0.0).sum() / n
    return cross_entropy, z_loss


def count_parameters(config: ModelConfig) -> int:
    """Parameter count of a shape, computed on the meta device (no memory is allocated)."""
    with torch.device("meta"):
        return GPT(config).num_parameters()
