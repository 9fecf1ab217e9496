"""Masks as a research axis: masks that replace the pattern, prefix-LM and bidirectional attention, and
FlexAttention block masks equal to the dense masks.

Reference masks are written out with Python loops from each pattern's definition, independently of the
rule the model renders. On this CPU (torch 2.13) FlexAttention runs forward only: the forward passes
are compared here, and flex's backward is compared with SDPA's where a CUDA device exists (on CPU
that test asserts the typed refusal instead).
"""

from __future__ import annotations

import math

import pytest
import torch

from gptray.config import ModelConfig, load_config
from gptray.core.errors import ConfigError
from gptray.model import GPT, KVCache
from gptray.model.attention import document_ids
from gptray.model.masks import block_mask, dense_mask, pattern_rule, with_user_mask

T, B, H, VOCAB, EOT = 12, 2, 2, 32, 7


def config_for(**overrides) -> ModelConfig:
    return ModelConfig(**{"preset": None, "n_layer": 2, "n_head": H, "n_embd": 16, "block_size": T,
                          "vocab_size": VOCAB, **overrides}).resolved()


def token_batch() -> torch.Tensor:
    idx = torch.randint(8, VOCAB, (B, T), generator=torch.Generator().manual_seed(0))
    idx[0, [3, 8]] = EOT
    idx[1, [0, 5, 6]] = EOT
    return idx


def loop_mask(kind: str, idx: torch.Tensor, window: int | None = None, documents: bool = False,
              prefix: list[int] | None = None) -> torch.Tensor:
    """(B, T, T) bool from the definitions, one entry at a time."""
    docs = document_ids(idx, EOT).tolist()
    mask = torch.zeros(B, T, T, dtype=torch.bool)
    for b in range(B):
        for i in range(T):
            for j in range(T):
                if kind == "bidirectional":
                    ok = True
                else:
                    ok = j <= i and (window is None or i - j < window)
                    if kind == "prefix":
                        ok = ok or j < prefix[b]
                if documents:
                    ok = ok and docs[b][i] == docs[b][j]
                mask[b, i, j] = ok
    return mask


def reference_attention(attn, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Textbook attention of one layer with a (B, T, T) boolean mask; a query that sees nothing outputs 0."""
    q, k, v = (x @ attn.c_attn.weight.T + attn.c_attn.bias).split(attn.inner, dim=2)
    q, k, v = (t.reshape(B, T, H, attn.head_dim).transpose(1, 2) for t in (q, k, v))
    scores = (q @ k.transpose(-2, -1) / math.sqrt(attn.head_dim)).masked_fill(~allowed[:, None], float("-inf"))
    weights = torch.nan_to_num(torch.softmax(scores, dim=-1))
    y = (weights @ v).transpose(1, 2).reshape(B, T, attn.inner)
    return y @ attn.c_proj.weight.T + attn.c_proj.bias


def layer_outputs(model: GPT, idx: torch.Tensor, **kwargs) -> list:
    seen = []
    hooks = [block.attn.register_forward_hook(lambda m, args, out: seen.append((m, args[0], out)))
             for block in model.transformer.h]
    model(idx, **kwargs)
    for hook in hooks:
        hook.remove()
    return seen


def seeded(config: ModelConfig) -> GPT:
    torch.manual_seed(0)
    return GPT(config).eval()


# --- masks that replace ------------------------------------------------------------------------------

SYMMETRIC_WINDOW = (torch.arange(T)[:, None] - torch.arange(T)[None, :]).abs() < 3


@pytest.mark.parametrize("impl", ["sdpa", "matmul", "flex"])
@pytest.mark.parametrize("name, mask", [("bidirectional", torch.ones(T, T, dtype=torch.bool)),
                                        ("symmetric_window", SYMMETRIC_WINDOW)])
def test_a_replacing_mask_is_the_whole_pattern_in_every_layer(impl, name, mask):
    # A document-masked sliding-window model: under "replace" none of that applies, only the mask given.
    model = seeded(config_for(attention_impl=impl, attention="alternating", attention_window=2,
                              document_mask=True, eot_token=EOT))
    idx = token_batch()
    with torch.no_grad():
        seen = layer_outputs(model, idx, attn_mask=mask, mask_mode="replace")
        for attn, x, out in seen:
            torch.testing.assert_close(out, reference_attention(attn, x, mask.expand(B, T, T)), atol=1e-5, rtol=1e-5)
        restricted, _ = model(idx, attn_mask=mask)
        replaced, _ = model(idx, attn_mask=mask, mask_mode="replace")
    assert not torch.allclose(restricted, replaced, atol=1e-3)  # restrict keeps the causal documents


def test_replace_needs_a_mask_and_a_known_mode():
    model = seeded(config_for())
    with pytest.raises(ValueError, match="needs an attn_mask"):
        model(token_batch(), mask_mode="replace")
    with pytest.raises(ValueError, match="mask_mode must be one of"):
        model(token_batch(), mask_mode="swap")


# --- prefix-LM ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("impl", ["sdpa", "matmul", "flex"])
@pytest.mark.parametrize("documents", [False, True])
def test_prefix_layers_equal_the_explicit_masked_softmax(impl, documents):
    config = config_for(attention="prefix", prefix_fraction=0.4, attention_impl=impl, document_mask=documents,
                        eot_token=EOT)
    model, idx = seeded(config), token_batch()
    for prefix_len, prefix in [(None, [5, 5]), (torch.tensor([3, 9]), [3, 9])]:  # 0.4 × 12 rounds to 5
        with torch.no_grad():
            seen = layer_outputs(model, idx, prefix_len=prefix_len)
        allowed = loop_mask("prefix", idx, documents=documents, prefix=prefix)
        for attn, x, out in seen:
            torch.testing.assert_close(out, reference_attention(attn, x, allowed), atol=1e-5, rtol=1e-5)


def test_prefix_loss_counts_only_targets_the_prefix_hides():
    model, idx = seeded(config_for(attention="prefix", prefix_fraction=0.5)), token_batch()
    targets = torch.roll(idx, -1, dims=1)
    logits, loss = model(idx, targets)
    expected = torch.nn.functional.cross_entropy(logits[:, 5:].reshape(-1, VOCAB), targets[:, 5:].reshape(-1))
    torch.testing.assert_close(loss, expected)  # P = 6: positions 0..4 predict tokens of the prefix
    # Position 5 predicts token 6, the first after the prefix: no counted target's token reaches its query.
    x = model.transformer.wte(idx).detach().requires_grad_(True)
    model.transformer.drop.register_forward_hook(lambda m, args, out: x)  # the embeddings become a leaf
    logits, _ = model(idx)
    for t in range(5, T - 1):
        (grad,) = torch.autograd.grad(logits[:, t].sum(), x, retain_graph=True)
        assert torch.all(grad[:, t + 1:] == 0), f"position {t} saw its target"
        assert torch.all(grad[:, :6].abs().sum(dim=-1) > 0)  # while the whole prefix reaches it


def test_prefix_cached_generation_equals_uncached():
    config = config_for(attention="prefix", prefix_fraction=0.5, position="rope", n_layer=2)
    model = seeded(config)
    prompts = [[9, 10, 11, 12, 13], [14, 15, 16]]
    width = max(map(len, prompts))
    cache = KVCache(config, len(prompts), padding=[width - len(p) for p in prompts])
    rows = torch.tensor([[p[0]] * (width - len(p)) + p for p in prompts])
    contexts = [list(p) for p in prompts]
    with torch.no_grad():
        logits, _ = model(rows, cache=cache)
        for _ in range(5):
            nxt = logits[:, -1].argmax(dim=-1)
            for b, context in enumerate(contexts):
                alone, _ = model(torch.tensor([context]), prefix_len=len(prompts[b]))  # uncached, prompt = prefix
                torch.testing.assert_close(logits[b, -1], alone[0, -1], atol=1e-5, rtol=1e-5)
                context.append(int(nxt[b]))
            logits, _ = model(nxt[:, None], cache=cache)
    # And the prefix made a difference: the causal reading of the same prompt differs.
    with torch.no_grad():
        causal, _ = model(torch.tensor([prompts[0]]), prefix_len=0)
        prefixed, _ = model(torch.tensor([prompts[0]]), prefix_len=len(prompts[0]))
    assert not torch.allclose(causal[0, -1], prefixed[0, -1], atol=1e-4)


def test_prefix_generation_cached_and_uncached_equal_the_definition():
    """generate() reads the prompt as the prefix, with and without a cache, past block_size too (where the
    window slides and only the prompt tokens still in it stay the prefix)."""
    from gptray.config import GenerateConfig
    from gptray.generation import generate

    model = seeded(config_for(attention="prefix", prefix_fraction=0.5, n_layer=3, n_embd=32))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)  # sharper next-token distributions than the init's, so greedy choices differ
    prompts = [[9, 10, 11, 12, 13], [14, 15]]
    steps = 2 * T
    expected = []
    with torch.no_grad():
        for prompt in prompts:
            context = list(prompt)
            for _ in range(steps):
                window = context[-T:]
                prefix = max(0, len(prompt) - (len(context) - len(window)))
                logits, _ = model(torch.tensor([window]), prefix_len=prefix)
                context.append(int(logits[0, -1].argmax()))
            expected.append(context[len(prompt):])
    for use_cache in (True, False):
        done = generate(model, prompts, GenerateConfig(temperature=0.0, max_new_tokens=steps, use_cache=use_cache))
        assert [c.tokens for c in done] == expected, f"use_cache={use_cache}"
    causal = seeded(config_for(n_layer=3, n_embd=32))
    causal.load_state_dict(model.state_dict())
    plain = generate(causal, prompts, GenerateConfig(temperature=0.0, max_new_tokens=steps))
    assert [c.tokens for c in plain] != expected  # the prefix changed what was generated


def test_scoring_reads_the_context_as_the_prefix():
    # Evaluations compute their own losses: the prefix they pass ends at the first scored target's query.
    model = seeded(config_for(attention="prefix", prefix_fraction=0.5))
    targets = torch.full((B, T), -100)
    targets[0, 4:] = 1
    targets[1, 9] = 1
    assert model.scoring_prefix(targets).tolist() == [5, 10]
    assert seeded(config_for()).scoring_prefix(targets) is None


def test_prefix_len_is_for_prefix_models_only():
    with pytest.raises(ValueError, match="prefix_len is for model.attention=prefix"):
        seeded(config_for())(token_batch(), prefix_len=3)
    with pytest.raises(ValueError, match=r"prefix_len must be in \[0, 12\]"):
        seeded(config_for(attention="prefix", prefix_fraction=0.5))(token_batch(), prefix_len=13)


# --- bidirectional -----------------------------------------------------------------------------------

def test_bidirectional_is_refused_for_next_token_training():
    with pytest.raises(ConfigError, match="each target .the next token. is visible") as info:
        load_config(None, ["model.preset=nano", "model.attention=bidirectional"])
    assert info.value.key == "model.attention"


def test_bidirectional_forward_refuses_visible_targets_and_takes_hidden_ones():
    model, idx = seeded(config_for(attention="bidirectional")), token_batch()
    targets = torch.roll(idx, -1, dims=1)
    with pytest.raises(ValueError, match="visible to the queries that predict them"):
        model(idx, targets)
    hidden = torch.full_like(targets, -100)
    hidden[:, -1] = 3  # the token after the window is in no input
    _, loss = model(idx, hidden)
    assert torch.isfinite(loss)
    with torch.no_grad():
        for attn, x, out in layer_outputs(model, idx):
            torch.testing.assert_close(out, reference_attention(attn, x, loop_mask("bidirectional", idx)),
                                       atol=1e-5, rtol=1e-5)
    # With document masks, a target across an end-of-text is hidden too.
    documents = seeded(config_for(attention="bidirectional", document_mask=True, eot_token=EOT))
    across = torch.full_like(targets, -100)
    across[0, 3] = targets[0, 3]  # idx[0, 3] is EOT: the next token starts another document
    documents(idx, across)
    with pytest.raises(ValueError, match="visible"):
        model(idx, across)
    with pytest.raises(ValueError, match="KV cache cannot serve bidirectional"):
        model(idx, cache=KVCache(model.config, B))


# --- config ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, key, message", [
    (dict(attention="prefix"), "model.prefix_fraction", "must be in"),
    (dict(attention="prefix", prefix_fraction=1.0), "model.prefix_fraction", "must be in"),
    (dict(attention_impl="flex", dropout=0.1), "model.dropout", "no dropout"),
])
def test_mask_settings_are_validated(overrides, key, message):
    with pytest.raises(ConfigError, match=message) as info:
        config_for(**overrides)
    assert info.value.key == key


# --- FlexAttention block masks ------------------------------------------------------------------------

PATTERNS = {  # name: (config overrides, the loop mask of dense layers, of banded layers)
    "causal": (dict(), lambda idx: loop_mask("causal", idx), None),
    "sliding_window": (dict(attention="sliding_window", attention_window=3), None,
                       lambda idx: loop_mask("causal", idx, window=3)),
    "alternating": (dict(attention="alternating", attention_window=3), lambda idx: loop_mask("causal", idx),
                    lambda idx: loop_mask("causal", idx, window=3)),
    "document": (dict(document_mask=True, eot_token=EOT), lambda idx: loop_mask("causal", idx, documents=True),
                 None),
    "document_alternating": (dict(document_mask=True, eot_token=EOT, attention="alternating", attention_window=4),
                             lambda idx: loop_mask("causal", idx, documents=True),
                             lambda idx: loop_mask("causal", idx, window=4, documents=True)),
    "prefix": (dict(attention="prefix", prefix_fraction=0.5), lambda idx: loop_mask("prefix", idx, prefix=[6, 6]),
               None),
    "document_prefix": (dict(attention="prefix", prefix_fraction=0.5, document_mask=True, eot_token=EOT),
                        lambda idx: loop_mask("prefix", idx, documents=True, prefix=[6, 6]), None),
}


@pytest.mark.parametrize("name", PATTERNS)
def test_block_masks_equal_the_dense_masks(name):
    overrides, dense_ref, local_ref = PATTERNS[name]
    idx = token_batch()
    dense_model = seeded(config_for(**overrides))
    flex_model = seeded(config_for(attention_impl="flex", **overrides))
    pos = torch.arange(T)
    prefix = dense_model._prefix(None, B, T, idx.device) if overrides.get("attention") == "prefix" else None
    sdpa_masks = dense_model.layer_masks(idx, pos, None, prefix=prefix)
    flex_masks = flex_model.layer_masks(idx, pos, None, prefix=prefix)
    for reference, sdpa, flex in zip((dense_ref, local_ref), sdpa_masks, flex_masks):
        if reference is None:
            continue
        expected = reference(idx)
        if sdpa.mask is not None:
            torch.testing.assert_close(sdpa.mask[:, 0].expand(B, T, T), expected)
        else:
            assert sdpa.is_causal and torch.equal(expected, loop_mask("causal", idx))
        # The BlockMask's own mask_mod, evaluated everywhere, is the same mask; and its block
        # layout marks every block holding an allowed entry (nothing allowed is skipped).
        blocks = flex.block_mask
        rendered = dense_mask(lambda b, q, k, blocks=blocks: blocks.mask_mod(b, torch.zeros_like(b), q, k),
                              B, T, T, True, "cpu")
        torch.testing.assert_close(rendered[:, 0], expected)
        assert blocks.to_dense().bool().all()  # one 128-token block, which every sequence attends in
    # And the models agree, forward: flex runs eagerly (forward only) on this CPU.
    with torch.no_grad():
        torch.testing.assert_close(flex_model(idx)[0], dense_model(idx)[0], atol=1e-5, rtol=1e-5)


def test_block_masks_are_built_once_per_batch_not_per_layer():
    model = seeded(config_for(attention_impl="flex", attention="alternating", attention_window=3, n_layer=4,
                              document_mask=True, eot_token=EOT))
    seen = []
    hooks = [block.attn.register_forward_hook(lambda m, args, out: seen.append(args[1].block_mask))
             for block in model.transformer.h]
    with torch.no_grad():
        model(token_batch())
    for hook in hooks:
        hook.remove()
    assert seen[0] is seen[2] and seen[1] is seen[3] and seen[0] is not seen[1]  # one per pattern, shared


def test_a_block_mask_skips_blocks_nothing_attends_to():
    # 512 tokens in 128-token blocks: a window of 64 leaves, per query block, only it and the one before.
    rule = pattern_rule("causal", window=64)
    blocks = block_mask(with_user_mask(rule, None), None, None, 512, 512, "cpu")
    layout = blocks.to_dense()[0, 0].bool()
    expected = torch.zeros(4, 4, dtype=torch.bool)
    for i in range(4):
        expected[i, max(0, i - 1): i + 1] = True
    assert torch.equal(layout, expected)


@pytest.mark.parametrize("user", ["shared", "per_sequence_head"])
def test_flex_restricts_with_a_boolean_user_mask_and_refuses_an_additive_one(user):
    g = torch.Generator().manual_seed(1)
    mask = torch.rand(T, T, generator=g) > 0.3 if user == "shared" else torch.rand(B, H, T, T, generator=g) > 0.3
    overrides = dict(document_mask=True, eot_token=EOT, attention="alternating", attention_window=4)
    dense, flex, idx = seeded(config_for(**overrides)), seeded(config_for(attention_impl="flex", **overrides)), \
        token_batch()
    with torch.no_grad():
        torch.testing.assert_close(flex(idx, attn_mask=mask)[0], dense(idx, attn_mask=mask)[0], atol=1e-5, rtol=1e-5)
        with pytest.raises(ValueError, match="boolean attention masks"):
            flex(idx, attn_mask=torch.zeros(T, T))


def test_flex_cached_generation_equals_sdpa():
    overrides = dict(attention="prefix", prefix_fraction=0.5, document_mask=True, eot_token=EOT)
    dense, flex = seeded(config_for(**overrides)), seeded(config_for(attention_impl="flex", **overrides))
    idx = token_batch()
    with torch.no_grad():
        caches = [KVCache(m.config, B) for m in (dense, flex)]
        for chunk in (idx[:, :6], idx[:, 6:7], idx[:, 7:8]):
            a, _ = dense(chunk, cache=caches[0])
            b, _ = flex(chunk, cache=caches[1])
            torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["document_alternating", "document_prefix"])
def test_flex_backward_equals_sdpa_or_is_refused_on_cpu(name):
    overrides = PATTERNS[name][0]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dense = seeded(config_for(**overrides)).to(device).train()
    flex = seeded(config_for(attention_impl="flex", **overrides)).to(device).train()
    idx = token_batch().to(device)
    targets = torch.roll(idx, -1, dims=1)
    if device == "cpu":  # torch 2.13 has no FlexAttention backward on CPU: a typed error says so
        with pytest.raises(ConfigError, match="no FlexAttention backward pass for CPU") as info:
            flex(idx, targets)
        assert info.value.key == "model.attention_impl"
        return
    dense(idx, targets)[1].backward()
    flex(idx, targets)[1].backward()
    for (name_, a), b in zip(dense.named_parameters(), flex.parameters()):
        torch.testing.assert_close(b.grad, a.grad, atol=1e-4, rtol=1e-3, msg=name_)


def test_the_mask_benchmark_measures_dense_and_flex_steps():
    # benchmarks/attention_masks.py's measure, as its --smoke run and gpu_check's mask_flex section call it.
    import importlib.util

    from helpers import REPO

    spec = importlib.util.spec_from_file_location("attention_masks", REPO / "benchmarks" / "attention_masks.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    tokens = bench.document_tokens(100, 99, 2, 64)
    assert (tokens == 99).any() and tokens.max() <= 99
    assert bench.plan(torch.device("cpu")) == [("sdpa", "train"), ("sdpa", "forward"), ("flex", "forward")]
    for impl, mode in [("sdpa", "train"), ("flex", "forward")]:
        row = bench.measure("nano", 64, impl, mode, batch=2, steps=2, warmup=1, device=torch.device("cpu"),
                            vocab=128)
        assert row["min_s"] <= row["median_s"] <= row["max_s"] and row["tokens_per_s"] > 0
        assert row["peak_mib"] >= 0


# --- training ----------------------------------------------------------------------------------------

def small_engine(*overrides: str):
    import numpy as np

    from gptray.train.engine import TrainingEngine

    tokens = np.random.default_rng(0).integers(0, 256, 4_000).astype(np.uint16)
    config = load_config(None, ["model.n_layer=1", "model.n_head=2", "model.n_embd=32", "model.block_size=16",
                                "model.vocab_size=256", "model.eot_token=255", "train.batch_size=2",
                                "train.micro_batch_size=2", "schedule.warmup_steps=1", "train.eval_windows=2",
                                "ray.num_workers=1", *overrides])
    return TrainingEngine(config, torch.device("cpu"), rank=0, world_size=1, train_data=tokens, val_tokens=tokens)


def test_a_prefix_lm_trains_on_the_targets_after_its_prefix_with_and_without_z_loss():
    plain, z = small_engine("model.attention=prefix", "model.prefix_fraction=0.5"), \
        small_engine("model.attention=prefix", "model.prefix_fraction=0.5", "train.z_loss=1e-4")
    x, y = plain.train_data.gather(plain.train_data.rank_micro_batches(0, 0, 1, 2)[0])
    x, y = torch.from_numpy(x), torch.from_numpy(y)
    with torch.no_grad():
        logits, loss = plain.training_model(x, y)
        counted = torch.nn.functional.cross_entropy(logits[:, 7:].reshape(-1, 256), y[:, 7:].reshape(-1))
        _, z_cross_entropy, _ = z._losses(x, y)
    torch.testing.assert_close(loss, counted)  # prefix 8 of 16: targets from position 7 on
    torch.testing.assert_close(z_cross_entropy, counted)  # the z-loss path drops the same targets
    assert math.isfinite(plain.train_step(0).loss.item()) and math.isfinite(plain.evaluate().loss)


def test_flex_training_on_cpu_is_refused_before_any_step():
    with pytest.raises(ConfigError, match="flex cannot train on CPU") as info:
        small_engine("model.attention_impl=flex")
    assert info.value.key == "model.attention_impl"


def test_perplexity_reads_a_prefix_lms_context_bidirectionally():
    from gptray.eval.perplexity import score

    model = seeded(config_for(attention="prefix", prefix_fraction=0.5))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(8)  # larger weights than the init's, so what attention sees moves the losses
    tokens = token_batch()[0].tolist() + [9]  # 13 tokens: 12 inputs, the last 4 targets scored
    (result,) = score(model, [{"tokens": tokens, "scored": 4, "source": 0, "begin": 0}], torch.device("cpu"))
    with torch.no_grad():
        logits, _ = model(torch.tensor([tokens[:-1]]), prefix_len=9)  # inputs 0..8 hide targets 9..12
    expected = torch.nn.functional.cross_entropy(logits[0, 8:], torch.tensor(tokens[9:]), reduction="sum")
    assert result["nll"] == pytest.approx(expected.item(), rel=1e-5)
    with torch.no_grad():
        causal, _ = model(torch.tensor([tokens[:-1]]), prefix_len=0)
    assert result["nll"] != pytest.approx(torch.nn.functional.cross_entropy(
        causal[0, 8:], torch.tensor(tokens[9:]), reduction="sum").item(), rel=1e-3)
