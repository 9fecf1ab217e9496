"""The GPT-2 model: preset sizes, shapes, initial loss, causality, HF-compatible names."""

from __future__ import annotations

import math

import pytest
import torch

from gptray.config import ModelConfig
from gptray.config.presets import PRESETS
from gptray.model import GPT, count_parameters


def small(**overrides) -> ModelConfig:
    return ModelConfig(**{"preset": None, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16,
                          **overrides}).resolved()


def gpt2_formula(n_layer: int, n_embd: int, block_size: int, vocab: int = 50257, attn_width: int | None = None) -> int:
    """Parameters of GPT-2 with tied embeddings, counted by hand: embeddings, blocks, final norm.
    `attn_width` is n_head × head_dim where that differs from n_embd (two GPT-3 presets)."""
    inner = attn_width or n_embd
    per_block = (
        2 * 2 * n_embd  # ln_1, ln_2 (weight + bias)
        + n_embd * 3 * inner + 3 * inner  # attn.c_attn
        + inner * n_embd + n_embd  # attn.c_proj
        + n_embd * 4 * n_embd + 4 * n_embd  # mlp.c_fc
        + 4 * n_embd * n_embd + n_embd  # mlp.c_proj
    )
    return vocab * n_embd + block_size * n_embd + n_layer * per_block + 2 * n_embd


# The parameter counts Hugging Face reports for the published checkpoints.
PUBLISHED = {
    "distilgpt2": 81_912_576,
    "gpt2": 124_439_808,
    "gpt2-medium": 354_823_168,
    "gpt2-large": 774_030_080,
    "gpt2-xl": 1_557_611_200,
}


@pytest.mark.parametrize("preset", list(PRESETS))
def test_preset_parameter_counts(preset):
    config = ModelConfig(preset=preset).resolved()
    n = count_parameters(config)
    assert n == gpt2_formula(config.n_layer, config.n_embd, config.block_size,
                             attn_width=config.n_head * config.head_dim)
    if preset in PUBLISHED:
        assert n == PUBLISHED[preset]


def test_gpt2_has_124m_parameters():
    assert count_parameters(ModelConfig(preset="gpt2").resolved()) == 124_439_808


def test_forward_and_backward_shapes():
    torch.manual_seed(0)
    config = small()
    model = GPT(config)
    idx = torch.randint(0, config.vocab_size, (3, 16))
    logits, loss = model(idx, idx)
    assert logits.shape == (3, 16, config.vocab_size)
    assert loss.shape == ()
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.shape == p.shape, name
    logits, loss = model(idx[:, :5])
    assert logits.shape == (3, 5, config.vocab_size) and loss is None


def test_untrained_loss_is_about_ln_vocab():
    torch.manual_seed(0)
    model = GPT(ModelConfig(preset="nano").resolved())
    idx = torch.randint(0, 50257, (4, 64))
    _, loss = model(idx, torch.randint(0, 50257, (4, 64)))
    assert loss.item() == pytest.approx(math.log(50257), abs=0.1)


def test_attention_is_causal():
    torch.manual_seed(0)
    model = GPT(small()).eval()
    idx = torch.randint(0, 50257, (1, 16))
    changed = idx.clone()
    changed[0, 10:] = (changed[0, 10:] + 1) % 50257
    a, _ = model(idx)
    b, _ = model(changed)
    assert torch.equal(a[0, :10], b[0, :10])
    assert not torch.allclose(a[0, 10:], b[0, 10:])


def test_sequence_longer_than_block_size_is_refused():
    model = GPT(small())
    with pytest.raises(ValueError, match="block_size"):
        model(torch.zeros(1, 17, dtype=torch.long))


def test_embedding_and_head_are_tied():
    model = GPT(small())
    assert model.transformer.wte.weight is model.lm_head.weight


def test_parameter_names_match_hugging_face_gpt2():
    names = set(GPT(small(n_layer=1)).state_dict())
    block = ["ln_1.weight", "ln_1.bias", "attn.c_attn.weight", "attn.c_attn.bias", "attn.c_proj.weight",
             "attn.c_proj.bias", "ln_2.weight", "ln_2.bias", "mlp.c_fc.weight", "mlp.c_fc.bias",
             "mlp.c_proj.weight", "mlp.c_proj.bias"]
    expected = {"transformer.wte.weight", "transformer.wpe.weight", "transformer.ln_f.weight",
                "transformer.ln_f.bias", "lm_head.weight", *(f"transformer.h.0.{n}" for n in block)}
    assert names == expected


def test_gpt2_init_scales_residual_projections():
    torch.manual_seed(0)
    config = small(n_layer=8, n_embd=256, n_head=4)
    model = GPT(config)
    scaled = 0.02 / math.sqrt(2 * config.n_layer)
    block = model.transformer.h[3]
    assert block.attn.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert block.mlp.c_proj.weight.std().item() == pytest.approx(scaled, rel=0.05)
    assert block.attn.c_attn.weight.std().item() == pytest.approx(0.02, rel=0.05)
    assert torch.count_nonzero(block.attn.c_attn.bias) == 0


def test_bias_free_variant_has_no_biases():
    model = GPT(small(bias=False))
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]
