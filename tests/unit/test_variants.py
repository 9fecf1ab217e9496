"""Model variants as config axes: norms, MLPs, positions, tying, head width, both attention
implementations, activation checkpointing, torch.compile, and configs of older checkpoints."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from gptray.config import ModelConfig, load_config
from gptray.core.errors import CheckpointError, ConfigError
from gptray.model import GPT, count_parameters
from gptray.model.attention import apply_rope, rope_tables


def small(**overrides) -> ModelConfig:
    return ModelConfig(**{"preset": None, "n_layer": 2, "n_head": 2, "n_embd": 32, "block_size": 16,
                          "vocab_size": 64, **overrides}).resolved()


VARIANTS = {
    "gpt2": dict(),
    "rmsnorm": dict(norm="rmsnorm"),
    "swiglu": dict(mlp="swiglu"),
    "rope": dict(position="rope"),
    "no_positions": dict(position="none"),
    "untied": dict(tie_embeddings=False),
    "no_bias": dict(bias=False),
    "head_dim": dict(head_dim=24),  # attention 2 × 24 = 48 wide in a 32-wide model
    "sliding_window": dict(attention="sliding_window", attention_window=5),
    "alternating": dict(attention="alternating", attention_window=5),
    "document_mask": dict(document_mask=True, eot_token=3),
    "prefix": dict(attention="prefix", prefix_fraction=0.5, document_mask=True, eot_token=3),
    "llama_like": dict(norm="rmsnorm", mlp="swiglu", position="rope", bias=False, tie_embeddings=False),
    "everything": dict(norm="rmsnorm", mlp="swiglu", position="rope", attention="alternating", attention_window=4,
                       document_mask=True, eot_token=3, head_dim=8, tie_embeddings=False, dropout=0.1),
}


def tokens(batch: int = 2, length: int = 16, seed: int = 0) -> torch.Tensor:
    idx = torch.randint(0, 64, (batch, length), generator=torch.Generator().manual_seed(seed))
    idx[:, 6] = 3  # an end-of-text for the document-mask variants
    return idx


def test_variant_parameter_names():
    def names(**overrides):
        return {n.removeprefix("transformer.") for n in GPT(small(n_layer=1, **overrides)).state_dict()}

    gpt2 = names()
    assert names(norm="rmsnorm") == gpt2 - {"h.0.ln_1.bias", "h.0.ln_2.bias", "ln_f.bias"}
    assert names(mlp="swiglu") == gpt2 | {"h.0.mlp.c_gate.weight", "h.0.mlp.c_gate.bias"}
    assert names(position="rope") == names(position="none") == gpt2 - {"wpe.weight"}
    assert names(tie_embeddings=False) == gpt2  # same names; the head is simply its own tensor
    untied = GPT(small(tie_embeddings=False))
    assert untied.lm_head.weight is not untied.transformer.wte.weight


def test_parameter_counts_of_variants_match_hand_counts():
    d, h, L, V, T = 32, 2, 2, 64, 16
    gpt2 = count_parameters(small())
    assert count_parameters(small(tie_embeddings=False)) == gpt2 + V * d
    assert count_parameters(small(position="rope")) == gpt2 - T * d
    assert count_parameters(small(norm="rmsnorm")) == gpt2 - (2 * L + 1) * d
    swiglu = small(mlp="swiglu")
    hidden = swiglu.mlp_hidden
    assert count_parameters(swiglu) == gpt2 + L * (3 * d * hidden + 2 * hidden - (8 * d * d + 4 * d))
    inner = h * 24
    assert count_parameters(small(head_dim=24)) == gpt2 + L * (4 * d * inner + 3 * inner - 4 * d * d - 3 * d)


@pytest.mark.parametrize("n_embd, hidden", [(32, 256), (768, 2048), (4096, 11008)])
def test_swiglu_hidden_width_follows_llama(n_embd, hidden):
    # LLaMA-7B: width 4096 → 11008, i.e. 2/3 of 4 × 4096 rounded up to a multiple of 256.
    shape = dict(preset=None, n_layer=1, n_head=1, n_embd=n_embd, block_size=8)
    assert ModelConfig(**shape, mlp="swiglu").resolved().mlp_hidden == hidden
    assert ModelConfig(**shape).resolved().mlp_hidden == 4 * n_embd
    assert ModelConfig(**shape, mlp="swiglu", mlp_hidden=100).resolved().mlp_hidden == 100


def test_rmsnorm_and_swiglu_compute_their_definitions():
    torch.manual_seed(0)
    model = GPT(small(norm="rmsnorm", mlp="swiglu", bias=False))
    block = model.transformer.h[0]
    torch.nn.init.normal_(block.ln_1.weight)
    x = torch.randn(3, 32)
    expected_norm = x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + 1e-5) * block.ln_1.weight
    torch.testing.assert_close(block.ln_1(x), expected_norm)
    mlp = block.mlp
    gate = x @ mlp.c_gate.weight.T
    expected_mlp = (gate * torch.sigmoid(gate) * (x @ mlp.c_fc.weight.T)) @ mlp.c_proj.weight.T
    torch.testing.assert_close(mlp(x), expected_mlp)


def test_rope_rotates_pairs_by_position_angles():
    head_dim, base = 8, 10000.0
    positions = torch.arange(6)
    x = torch.randn(1, 2, 6, head_dim)
    cos, sin = rope_tables(positions, head_dim, base)
    rotated = apply_rope(x, cos, sin)
    # The reference: pair (x_i, x_{i+d/2}) as a complex number, multiplied by e^{i·pos·θ_i}.
    half = head_dim // 2
    freqs = base ** (-torch.arange(half, dtype=torch.float64) * 2 / head_dim)
    z = torch.complex(x[..., :half].double(), x[..., half:].double())
    z = z * torch.polar(torch.ones(6, half, dtype=torch.float64), positions[:, None].double() * freqs)
    torch.testing.assert_close(rotated, torch.cat([z.real, z.imag], dim=-1).float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rotated[:, :, 0], x[:, :, 0])  # position 0 is not rotated


def test_rope_scores_depend_only_on_relative_position():
    head_dim = 16
    q, k = torch.randn(head_dim), torch.randn(head_dim)

    def score(q_pos: int, k_pos: int) -> torch.Tensor:
        cos, sin = rope_tables(torch.tensor([q_pos, k_pos]), head_dim, 10000.0)
        rotated = apply_rope(torch.stack([q, k])[None, None], cos, sin)[0, 0]
        return rotated[0] @ rotated[1]

    torch.testing.assert_close(score(7, 3), score(107, 103), atol=1e-4, rtol=1e-4)
    assert not torch.allclose(score(7, 3), score(7, 5), atol=1e-3)


@pytest.mark.parametrize("variant", [v for v in VARIANTS if v != "everything"] + ["everything"])
def test_sdpa_and_explicit_matmul_attention_agree(variant):
    overrides = {**VARIANTS[variant], "dropout": 0.0}
    torch.manual_seed(0)
    sdpa = GPT(small(**overrides)).eval()
    matmul = GPT(small(**overrides, attention_impl="matmul")).eval()
    matmul.load_state_dict(sdpa.state_dict())
    idx = tokens()
    torch.testing.assert_close(matmul(idx, idx)[1], sdpa(idx, idx)[1], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(matmul(idx)[0], sdpa(idx)[0], atol=1e-5, rtol=1e-5)


def test_dropout_switches_on_and_off():
    idx = tokens()
    torch.manual_seed(0)
    off = GPT(small(dropout=0.0)).train()
    torch.testing.assert_close(off(idx)[0], off.eval()(idx)[0])
    on = GPT(small(dropout=0.2)).train()
    assert not torch.allclose(on(idx)[0], on(idx)[0])  # a new mask every call
    on.eval()
    torch.testing.assert_close(on(idx)[0], on(idx)[0])


def loss_and_grads(model: GPT, idx: torch.Tensor, seed: int) -> tuple[torch.Tensor, dict]:
    model.zero_grad()
    torch.manual_seed(seed)  # the same dropout masks in both runs
    _, loss = model(idx, idx)
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("variant", ["gpt2", "everything"])
def test_activation_checkpointing_gives_the_same_loss_and_gradients(variant):
    torch.manual_seed(0)
    model = GPT(small(**{**VARIANTS[variant], "dropout": 0.1})).train()
    idx = tokens()
    plain_loss, plain_grads = loss_and_grads(model, idx, seed=5)
    model.set_activation_checkpointing(True)
    loss, grads = loss_and_grads(model, idx, seed=5)
    assert torch.equal(loss, plain_loss)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, plain_grads[name], atol=0, rtol=0, msg=name)


def saved_tensor_count(model: GPT, idx: torch.Tensor) -> int:
    count = 0

    def pack(tensor):
        nonlocal count
        count += 1
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        model(idx, idx)
    return count


def test_activation_checkpointing_keeps_fewer_activations():
    model = GPT(small(n_layer=4)).train()
    idx = tokens()
    plain = saved_tensor_count(model, idx)
    checkpointed = saved_tensor_count(model.set_activation_checkpointing(True), idx)
    assert checkpointed < plain / 2
    assert saved_tensor_count(model.set_activation_checkpointing(False), idx) == plain


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_every_variant_compiles_to_one_graph(variant):
    # fullgraph=True fails on any graph break; aot_eager traces forward and backward through
    # AOTAutograd without generating kernels, which keeps this fast on CPU.
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(small(**{**VARIANTS[variant], "dropout": 0.0})).train()
    model.set_activation_checkpointing(variant == "everything")
    idx = tokens()
    eager_loss, eager_grads = loss_and_grads(model, idx, seed=1)
    compiled = torch.compile(model, backend="aot_eager", fullgraph=True)
    loss, grads = loss_and_grads(compiled, idx, seed=1)
    torch.testing.assert_close(loss, eager_loss, atol=1e-6, rtol=1e-6)
    for name, grad in grads.items():
        torch.testing.assert_close(grad.to(eager_grads[name.removeprefix("_orig_mod.")]),
                                   eager_grads[name.removeprefix("_orig_mod.")], atol=1e-6, rtol=1e-5)


@pytest.mark.slow
def test_inductor_compiles_the_combined_variant():
    torch._dynamo.reset()
    torch.manual_seed(0)
    model = GPT(small(**{**VARIANTS["everything"], "dropout": 0.0})).eval()
    idx = tokens()
    expected, _ = model(idx)
    logits, _ = torch.compile(model, fullgraph=True)(idx)
    torch.testing.assert_close(logits, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("overrides, key, message", [
    (["model.attention=sliding_window"], "model.attention_window", "must be set"),
    (["model.attention=alternating", "model.attention_window=0"], "model.attention_window", "positive"),
    (["model.position=rope", "model.head_dim=7"], "model.head_dim", "even"),
    (["model.norm=batchnorm"], "model.norm", "must be one of"),
    (["model.document_mask=true", "model.vocab_size=100"], "model.eot_token", "below model.vocab_size"),
    (["model.norm_eps=0"], "model.norm_eps", "positive"),
    (["model.mlp_hidden=-4"], "model.mlp_hidden", "positive"),
    (["model.n_embd=100", "model.n_head=3"], "model.n_embd", "or set model.head_dim"),
])
def test_invalid_variant_settings_name_the_key(overrides, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, overrides)
    assert info.value.key == key


def test_head_dim_lets_width_and_heads_disagree():
    config = load_config(None, ["model.n_embd=100", "model.n_head=3", "model.head_dim=32"]).model
    assert (config.n_embd, config.n_head, config.head_dim) == (100, 3, 32)
    _, loss = GPT(config)(tokens(length=8), tokens(length=8))
    assert torch.isfinite(loss)


# A model section as checkpoints recorded it before the variant fields existed.
OLD_STATE_MODEL = dict(preset="nano", n_layer=4, n_head=4, n_embd=128, block_size=64, vocab_size=50257,
                       dropout=0.0, bias=True)


def test_configs_of_older_checkpoints_mean_gpt2():
    config = ModelConfig.from_saved(OLD_STATE_MODEL)
    assert (config.norm, config.mlp, config.position, config.attention, config.tie_embeddings) == (
        "layernorm", "gelu", "learned", "causal", True)
    assert (config.head_dim, config.mlp_hidden, config.document_mask) == (32, 512, False)
    assert config.shape() == ModelConfig(preset="nano").resolved().shape()
    assert GPT(ModelConfig(**OLD_STATE_MODEL)).config == config  # the model fills them in itself, too
    assert ModelConfig.from_saved(dataclasses.asdict(config)) == config
    with pytest.raises(CheckpointError, match="newer gptray"):
        ModelConfig.from_saved({**OLD_STATE_MODEL, "moe_experts": 8})


def test_an_older_checkpoint_still_resumes(tmp_path):
    from gptray.checkpoint.files import TrainingState, check_compatible

    config = load_config(None, [f"out_dir={tmp_path}", "data.tokenizer=gpt2"])  # the 50,257 tokens it records
    check_compatible(TrainingState(dataset_fingerprint="f", model=OLD_STATE_MODEL), config, "f", "old")
