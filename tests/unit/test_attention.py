"""Attention patterns: each equals an explicit masked softmax, and masked-out tokens have no influence.

The reference masks here are built from the definitions with plain Python loops, independently of
the model's vectorized mask code; the reference attention is the textbook masked softmax.
"""

from __future__ import annotations

import math

import pytest
import torch

from gptray.config import ModelConfig
from gptray.model import GPT
from gptray.model.attention import document_ids

T, B, H, VOCAB, EOT = 12, 2, 2, 32, 7


def config_for(**overrides) -> ModelConfig:
    return ModelConfig(**{"preset": None, "n_layer": 1, "n_head": H, "n_embd": 16, "block_size": T,
                          "vocab_size": VOCAB, **overrides}).resolved()


def token_batch() -> torch.Tensor:
    """Two sequences with documents of different lengths (EOT = 7), one with two EOTs in a row."""
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(8, VOCAB, (B, T), generator=g)
    idx[0, [3, 8]] = EOT
    idx[1, [0, 5, 6]] = EOT
    return idx


def user_masks() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shared = torch.rand(T, T, generator=g) > 0.3
    per_sequence = torch.rand(B, T, T, generator=g) > 0.3
    per_sequence[0, 4] = False  # a query left with nothing to attend to
    additive = torch.randn(B, H, T, T, generator=g)
    additive[torch.rand(B, H, T, T, generator=g) > 0.7] = float("-inf")
    return {"bool_shared": shared, "bool_per_sequence": per_sequence, "additive_per_head": additive,
            "additive_shared": torch.randn(T, T, generator=g)}


def reference_mask(config: ModelConfig, idx: torch.Tensor, layer: int, user: torch.Tensor | None) -> torch.Tensor:
    """(B, H, T, T) additive mask (0 or -inf, plus the user's) from the pattern's definition."""
    local = config.attention == "sliding_window" or (config.attention == "alternating" and layer % 2 == 1)
    mask = torch.full((B, H, T, T), float("-inf"))
    for b in range(B):
        docs, current = [], 0
        for t in range(T):
            docs.append(current)  # an EOT belongs to the document it ends
            if idx[b, t].item() == config.eot_token:
                current += 1
        for i in range(T):
            for j in range(T):
                ok = j <= i
                if local:
                    ok = ok and i - j < config.attention_window
                if config.document_mask:
                    ok = ok and docs[i] == docs[j]
                if ok:
                    mask[b, :, i, j] = 0.0
    if user is not None:
        user = user.reshape((1,) * (4 - user.dim()) + tuple(user.shape)) if user.dim() != 3 else user[:, None]
        user = user.expand(B, H, T, T)
        mask = mask.masked_fill(~user, float("-inf")) if user.dtype == torch.bool else mask + user
    return mask


def reference_attention(attn, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Textbook multi-head attention with an additive mask; a query that sees nothing outputs 0."""
    q, k, v = (x @ attn.c_attn.weight.T + attn.c_attn.bias).split(attn.inner, dim=2)
    heads = [t.reshape(B, T, H, attn.head_dim).transpose(1, 2) for t in (q, k, v)]
    scores = heads[0] @ heads[1].transpose(-2, -1) / math.sqrt(attn.head_dim) + mask
    weights = torch.zeros_like(scores)
    for b in range(B):
        for h in range(H):
            for i in range(T):
                row = scores[b, h, i]
                if torch.isfinite(row).any():
                    weights[b, h, i] = torch.softmax(row, dim=-1)
    y = (weights @ heads[2]).transpose(1, 2).reshape(B, T, attn.inner)
    return y @ attn.c_proj.weight.T + attn.c_proj.bias


PATTERNS = {
    "causal": dict(),
    "sliding_window": dict(attention="sliding_window", attention_window=3),
    "alternating": dict(attention="alternating", attention_window=3, n_layer=2),
    "document": dict(document_mask=True, eot_token=EOT),
    "document_sliding_window": dict(document_mask=True, eot_token=EOT, attention="sliding_window",
                                    attention_window=4),
}
CASES = [(name, None) for name in PATTERNS] + [("causal", u) for u in user_masks()] + [
    ("alternating", "additive_shared"), ("document", "bool_per_sequence"), ("document", "additive_shared")]


def case_id(case) -> str:
    return case[0] + (f"+user_{case[1]}" if case[1] else "")


@pytest.mark.parametrize("impl", ["sdpa", "matmul"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_every_layer_equals_the_explicit_masked_softmax(case, impl):
    pattern, user_name = case
    config = config_for(attention_impl=impl, **PATTERNS[pattern])
    user = user_masks()[user_name] if user_name else None
    torch.manual_seed(0)
    model = GPT(config).eval()
    for module in model.modules():  # random biases too, so a wrong bias path cannot hide
        if isinstance(module, torch.nn.Linear) and module.bias is not None:
            torch.nn.init.normal_(module.bias, std=0.1)
    idx = token_batch()
    seen = []
    hooks = [block.attn.register_forward_hook(lambda m, args, out, layer=layer: seen.append((layer, m, args[0], out)))
             for layer, block in enumerate(model.transformer.h)]
    model(idx, attn_mask=user)
    for hook in hooks:
        hook.remove()
    assert len(seen) == config.n_layer
    for layer, attn, x, out in seen:
        expected = reference_attention(attn, x, reference_mask(config, idx, layer, user))
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def reachable(config: ModelConfig, idx: torch.Tensor, user: torch.Tensor | None) -> torch.Tensor:
    """(B, T, T) bool: which input positions can influence which outputs through all the layers
    (each layer passes a position its own residual plus what its attention allows)."""
    reach = torch.eye(T, dtype=torch.bool).expand(B, T, T)
    for layer in range(config.n_layer):
        allowed = (reference_mask(config, idx, layer, user) > float("-inf")).any(dim=1) | torch.eye(T, dtype=torch.bool)
        reach = (allowed.float() @ reach.float()) > 0
    return reach


@pytest.mark.parametrize("impl", ["sdpa", "matmul"])
@pytest.mark.parametrize("case", CASES, ids=case_id)
def test_masked_out_positions_have_zero_gradient_influence(case, impl):
    pattern, user_name = case
    config = config_for(attention_impl=impl, **PATTERNS[pattern])
    user = user_masks()[user_name] if user_name else None
    torch.manual_seed(0)
    model = GPT(config).eval()
    idx = token_batch()
    captured = {}
    model.transformer.drop.register_forward_hook(lambda m, args, out: captured.update(x=out))
    logits, _ = model(idx, attn_mask=user)
    expected = reachable(config, idx, user)
    probe = torch.randn(VOCAB, generator=torch.Generator().manual_seed(2))
    influence = torch.zeros(B, T, T)  # [b, i, j]: size of d(logits[b, i]) / d(input[b, j])
    for i in range(T):
        (grad,) = torch.autograd.grad((logits[:, i] @ probe).sum(), captured["x"], retain_graph=True)
        influence[:, i] = grad.abs().sum(dim=-1)
    assert torch.all(influence[~expected] == 0), "a masked-out position influenced an output"
    assert torch.all(influence[expected] > 0), "an allowed position had no influence (the test would be vacuous)"
    assert (~expected).any()


def test_document_ids_close_a_document_with_its_end_of_text():
    idx = torch.tensor([[5, 6, EOT, 8, EOT, EOT, 9]])
    assert document_ids(idx, EOT).tolist() == [[0, 0, 0, 1, 1, 2, 3]]


def test_packed_document_sees_only_itself():
    # With rotary positions, attention depends only on relative offsets, so a document packed after
    # another must get exactly the logits it gets alone: nothing leaks across <|endoftext|>.
    config = config_for(n_layer=2, position="rope", document_mask=True, eot_token=EOT)
    torch.manual_seed(0)
    model = GPT(config).eval()
    first, second = [9, 10, 11, EOT], [12, 13, 14, 15, 16, EOT, 17]
    packed, _ = model(torch.tensor([first + second]))
    alone, _ = model(torch.tensor([second]))
    torch.testing.assert_close(packed[0, len(first):], alone[0], atol=1e-5, rtol=1e-5)
    unmasked = GPT(config_for(n_layer=2, position="rope")).eval()
    unmasked.load_state_dict(model.state_dict())
    leaked, _ = unmasked(torch.tensor([first + second]))
    assert not torch.allclose(leaked[0, len(first):], alone[0], atol=1e-3)


def test_sliding_window_as_wide_as_the_context_is_causal_attention():
    torch.manual_seed(0)
    causal = GPT(config_for(n_layer=2)).eval()
    windowed = GPT(config_for(n_layer=2, attention="sliding_window", attention_window=T)).eval()
    windowed.load_state_dict(causal.state_dict())
    idx = token_batch()
    torch.testing.assert_close(windowed(idx)[0], causal(idx)[0], atol=1e-5, rtol=1e-5)


def test_a_user_mask_that_allows_everything_changes_nothing():
    torch.manual_seed(0)
    model = GPT(config_for(n_layer=2)).eval()
    idx = token_batch()
    plain, _ = model(idx)
    torch.testing.assert_close(model(idx, attn_mask=torch.ones(T, T, dtype=torch.bool))[0], plain)
    torch.testing.assert_close(model(idx, attn_mask=torch.zeros(B, T, T))[0], plain)


@pytest.mark.parametrize("mask, message", [
    (torch.ones(T, T + 1, dtype=torch.bool), "does not fit"),
    (torch.ones(3, T, T, dtype=torch.bool), "does not fit"),
    (torch.ones(B, 5, T, T, dtype=torch.bool), "does not fit"),
    (torch.ones(T, T, dtype=torch.long), "boolean"),
])
def test_a_malformed_user_mask_is_refused(mask, message):
    model = GPT(config_for())
    with pytest.raises(ValueError, match=message):
        model(token_batch(), attn_mask=mask)
