"""Generation: the KV cache against plain forward passes for every variant, sampling filters, beam search,
stopping, seeds, batches of prompts, and the `gptray generate` command (its --interactive loop on stdin)."""

from __future__ import annotations

import dataclasses
import itertools
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
import torch

from gptray.checkpoint.files import TrainingState, save_checkpoint
from gptray.cli.main import main
from gptray.config import DataConfig, ExperimentConfig, GenerateConfig, ModelConfig
from gptray.core.errors import ConfigError
from gptray.data.tiktoken_tokenizer import TiktokenTokenizer
from gptray.generation import StopCondition, beam_search, generate, generate_texts
from gptray.generation.sampling import apply_repetition_penalty, top_k_filter, top_p_filter
from gptray.model import GPT, KVCache

BLOCK = 16
VARIANTS = {
    "learned": {},
    "rope": {"position": "rope"},
    "no-positions": {"position": "none"},
    "sliding-window": {"attention": "sliding_window", "attention_window": 4},
    "alternating": {"attention": "alternating", "attention_window": 3},
    "document-mask": {"document_mask": True, "eot_token": 5},
    "everything-matmul": {"position": "rope", "attention": "alternating", "attention_window": 5, "document_mask": True,
                          "eot_token": 5, "norm": "rmsnorm", "mlp": "swiglu", "attention_impl": "matmul"},
}


def tiny(seed: int = 0, vocab: int = 32, **overrides) -> GPT:
    torch.manual_seed(seed)
    config = ModelConfig(**{"preset": None, "n_layer": 3, "n_head": 2, "n_embd": 32, "block_size": BLOCK,
                            "vocab_size": vocab, **overrides}).resolved()
    model = GPT(config).eval()
    with torch.no_grad():  # larger weights than GPT-2's init: sharper, more varied next-token distributions
        for p in model.parameters():
            p.mul_(4.0)
    return model


def greedy(max_new_tokens: int, **overrides) -> GenerateConfig:
    return GenerateConfig(temperature=0.0, max_new_tokens=max_new_tokens, **overrides)


@torch.no_grad()
def reference_greedy(model: GPT, prompt: list[int], steps: int) -> list[int]:
    """Greedy decoding by definition: the whole (last block_size tokens of the) context, every step."""
    tokens = list(prompt)
    for _ in range(steps):
        logits, _ = model(torch.tensor([tokens[-BLOCK:]]))
        tokens.append(int(logits[0, -1].argmax()))
    return tokens[len(prompt):]


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
@torch.no_grad()
def test_incremental_forward_equals_the_full_forward(variant):
    model = tiny(**VARIANTS[variant])
    idx = torch.randint(0, 8, (2, BLOCK), generator=torch.Generator().manual_seed(1))  # many 5s: documents
    full, _ = model(idx)
    cache = KVCache(model.config, batch=2)
    chunks = [model(idx[:, :5], cache=cache)[0], model(idx[:, 5:9], cache=cache)[0]]
    chunks += [model(idx[:, t : t + 1], cache=cache)[0] for t in range(9, BLOCK)]
    torch.testing.assert_close(torch.cat(chunks, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
@torch.no_grad()
def test_a_left_padded_sequence_computes_what_it_computes_alone(variant):
    model = tiny(**VARIANTS[variant])
    long, short = torch.randint(0, 8, (2, 12), generator=torch.Generator().manual_seed(2)).tolist()
    short = short[:7]
    padded = torch.tensor([long, [5] * 5 + short])  # pad with the EOT id on purpose: it must not count
    cache = KVCache(model.config, batch=2, padding=[0, 5])
    logits = torch.cat([model(padded[:, :9], cache=cache)[0], model(padded[:, 9:], cache=cache)[0]], dim=1)
    torch.testing.assert_close(logits[0], model(torch.tensor([long]))[0][0], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits[1, 5:], model(torch.tensor([short]))[0][0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("variant", VARIANTS, ids=list(VARIANTS))
def test_cached_greedy_decoding_equals_uncached_token_for_token(variant):
    """Past block_size too, where the context slides and the cache falls back to recomputing."""
    model = tiny(**VARIANTS[variant])
    prompt = [1, 5, 2, 3, 7, 5, 4]
    steps = 2 * BLOCK
    expected = reference_greedy(model, prompt, steps)
    cached = generate(model, [prompt], greedy(steps))[0]
    uncached = generate(model, [prompt], greedy(steps, use_cache=False))[0]
    assert cached.tokens == expected
    assert uncached.tokens == expected
    assert cached.finish_reason == "length"


def test_a_prompt_longer_than_the_context_keeps_its_last_block_size_tokens():
    model = tiny()
    prompt = [(3 * i) % 32 for i in range(BLOCK + 9)]
    assert generate(model, [prompt], greedy(5))[0].tokens == reference_greedy(model, prompt, 5)


def test_a_batch_of_prompts_of_different_lengths_decodes_each_as_alone():
    model = tiny(position="rope", document_mask=True, eot_token=5)
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9, 10, 11], [12]]
    together = generate(model, prompts, greedy(20))
    assert [c.tokens for c in together] == [reference_greedy(model, p, 20) for p in prompts]


def test_top_k_and_top_p_filters_keep_exactly_their_sets():
    logits = torch.tensor([[2.0, 1.0, 0.5, -1.0, 3.0]])
    assert torch.isfinite(top_k_filter(logits, 2)).tolist() == [[True, False, False, False, True]]
    probs = torch.tensor([[0.05, 0.5, 0.15, 0.3]])
    kept = lambda p: torch.isfinite(top_p_filter(probs.log(), p)).tolist()[0]  # noqa: E731
    assert kept(0.5) == [False, True, False, False]  # the most likely alone holds 0.5
    assert kept(0.79) == [False, True, False, True]  # 0.5 + 0.3 ≥ 0.79
    assert kept(0.81) == [False, True, True, True]
    assert kept(1.0) == [True, True, True, True]
    assert kept(0.01) == [False, True, False, False]  # never empty


def allowed_set(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None) -> set[int]:
    """The tokens top-k then top-p allow, from their definitions: rank by probability, take a prefix."""
    probs = torch.softmax(logits / temperature, dim=-1)
    order = sorted(range(len(probs)), key=lambda t: -float(probs[t]))
    if top_k is not None:
        order = order[:top_k]
        probs = torch.softmax((logits / temperature)[order], dim=-1)  # renormalized over the survivors
        mass, keep = 0.0, []
        for rank, token in enumerate(order):
            if top_p is not None and mass >= top_p:
                break
            keep.append(token)
            mass += float(probs[rank])
        return set(keep)
    return set(order)


@pytest.mark.parametrize("top_k, top_p", [(3, None), (None, 0.6), (5, 0.5), (1, None)])
@torch.no_grad()
def test_sampling_never_emits_a_token_outside_the_allowed_set(top_k, top_p):
    model = tiny(vocab=24)
    settings = GenerateConfig(temperature=1.3, top_k=top_k, top_p=top_p, max_new_tokens=25, seed=7)
    prompts = [[1, 2], [3, 4, 5, 6]]
    for prompt, completion in zip(prompts, generate(model, prompts, settings)):
        context = list(prompt)
        for token in completion.tokens:
            logits, _ = model(torch.tensor([context[-BLOCK:]]))
            allowed = allowed_set(logits[0, -1], 1.3, top_k if top_k is not None else 24, top_p)
            assert token in allowed
            context.append(token)


def test_seeds_make_samples_reproducible_and_a_sequence_independent_of_its_batch():
    model = tiny()
    settings = GenerateConfig(temperature=1.0, top_k=None, max_new_tokens=12, seed=3)
    batch = generate(model, [[1, 2], [1, 2], [7]], settings)
    assert [c.tokens for c in batch] == [c.tokens for c in generate(model, [[1, 2], [1, 2], [7]], settings)]
    assert batch[0].tokens != batch[1].tokens  # seeds 3 and 4
    alone = generate(model, [[1, 2]], dataclasses.replace(settings, seed=4))[0]
    assert alone.tokens == batch[1].tokens


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens():
    logits = torch.tensor([[2.0, -1.0, 0.5, 4.0], [1.0, 1.0, 1.0, 1.0]])
    out = apply_repetition_penalty(logits, [[0, 1, 1], [3]], 2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 4.0], [1.0, 1.0, 1.0, 0.5]]
    model = tiny()
    plain = generate(model, [[1, 2, 3]], greedy(20))[0].tokens
    penalized = generate(model, [[1, 2, 3]], greedy(20, repetition_penalty=1e6))[0].tokens
    assert len(set(penalized)) > len(set(plain))  # this model repeats itself; the penalty breaks loops


def test_beam_search_with_one_beam_is_greedy():
    for variant in ("learned", "document-mask"):
        model = tiny(**VARIANTS[variant])
        for prompt in ([1, 2, 3], [9]):
            for stop in (StopCondition(), StopCondition(stop_tokens=frozenset({5}))):
                settings = greedy(BLOCK + 3, num_beams=1)  # past block_size too: windows slide
                expected = generate(model, [prompt], settings, stop)[0]
                found = beam_search(model, prompt, settings, stop)
                assert (found.tokens, found.finish_reason) == (expected.tokens, expected.finish_reason)


@torch.no_grad()
def test_beam_search_with_enough_beams_finds_the_most_likely_continuation():
    model = tiny(vocab=5)
    prompt, steps = [1, 2], 3
    best, best_log_prob = None, float("-inf")
    for tail in itertools.product(range(5), repeat=steps):  # every continuation, scored by the model
        logits, _ = model(torch.tensor([prompt + list(tail)]))
        log_probs = torch.log_softmax(logits[0, len(prompt) - 1 : -1], dim=-1)
        total = float(sum(log_probs[i, t] for i, t in enumerate(tail)))
        if total > best_log_prob:
            best, best_log_prob = list(tail), total
    found = beam_search(model, prompt, greedy(steps, num_beams=25))
    assert found.tokens == best
    assert found.score == pytest.approx(best_log_prob / steps, abs=1e-5)
    assert beam_search(model, prompt, greedy(steps, num_beams=25, use_cache=False)).tokens == best


def test_stop_token_ends_a_sequence_and_others_go_on():
    model = tiny()
    free = generate(model, [[1, 2, 3], [4]], greedy(12))
    stop_token = free[0].tokens[3]
    first = free[0].tokens.index(stop_token)
    stopped = generate(model, [[1, 2, 3], [4]], greedy(12), StopCondition(stop_tokens=frozenset({stop_token})))
    assert stopped[0].tokens == free[0].tokens[: first + 1] and stopped[0].finish_reason == "eot"
    if stop_token not in free[1].tokens:
        assert stopped[1].tokens == free[1].tokens and stopped[1].finish_reason == "length"


def test_stop_strings_and_eot_cut_the_text():
    tokenizer = TiktokenTokenizer("gpt2")
    model = tiny(vocab=50257, n_embd=16, n_layer=1, n_head=1)
    free = generate_texts(model, tokenizer, greedy(10), ["Hello"])[0]
    stop_string = free.text[4:6]
    cut = generate_texts(model, tokenizer, greedy(10, stop=[stop_string]), ["Hello"])[0]
    assert cut.finish_reason == "stop"
    assert cut.text == free.text[: free.text.index(stop_string)]
    assert len(cut.tokens) < len(free.tokens)
    eot = tokenizer.eot_token
    assert StopCondition(frozenset({eot}), decode=tokenizer.decode).text([32, 33, eot], "eot") == "AB"


def test_a_prompt_outside_the_vocabulary_is_a_clear_error():
    tokenizer = TiktokenTokenizer("gpt2")
    model = tiny(vocab=96)
    with pytest.raises(ConfigError, match="outside the model's vocabulary of 96 tokens"):
        generate_texts(model, tokenizer, greedy(3), ["Hello world"])
    with pytest.raises(ConfigError, match="50256"):  # the empty prompt is <|endoftext|>
        generate_texts(model, tokenizer, greedy(3), [""])
    with pytest.raises(ValueError, match="outside the model's vocabulary"):
        generate(model, [[3, 200]], greedy(3))
    assert generate_texts(model, tokenizer, greedy(3), ["A"])[0].tokens  # "A" is id 32


def test_generation_never_emits_ids_the_tokenizer_cannot_decode():
    tokenizer = TiktokenTokenizer("gpt2")
    model = tiny(vocab=50304, n_embd=16, n_layer=1, n_head=1)  # padded to a multiple of 64, as is common
    with torch.no_grad():
        model.lm_head.weight[50257:] = 0.0
        model.transformer.ln_f.bias.fill_(0.0)
        model.lm_head.weight[50300] = 10.0 * model.transformer.ln_f.weight.sign()  # always the favourite
    assert max(generate_texts(model, tokenizer, greedy(5), ["Hi"])[0].tokens) < 50257


def write_checkpoint(path, model: GPT) -> None:
    save_checkpoint(path, model.state_dict(), None, TrainingState(model=asdict(model.config)),
                    ExperimentConfig(model=model.config, data=DataConfig(tokenizer="gpt2")))


def test_cli_generates_a_batch_of_prompts_with_beam_search_and_sampling(tmp_path, capsys):
    write_checkpoint(tmp_path / "ckpt", tiny(vocab=96))
    base = ["generate", "--checkpoint", str(tmp_path / "ckpt")]
    settings = [f"out_dir={tmp_path}", "generate.max_new_tokens=6"]
    assert main([*base, "--prompt", "A", "--prompt", "B", "--num-samples", "2", *settings, "generate.top_p=0.9"]) == 0
    out = capsys.readouterr().out
    assert "--- prompt 2, sample 2, seed 1340 ---\nB" in out
    assert main([*base, "--prompt", "A", *settings, "generate.num_beams=3"]) == 0
    assert capsys.readouterr().out.startswith("A")
    assert main([*base, "--prompt", "Hello", *settings]) == 2
    assert "outside the model's vocabulary of 96 tokens" in capsys.readouterr().err
    assert main([*base, *settings, "generate.top_p=1.5"]) == 2
    assert "generate.top_p" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_interactive_reads_prompts_from_stdin(tmp_path):
    model = tiny(vocab=96)
    write_checkpoint(tmp_path / "ckpt", model)
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    run = subprocess.run(
        [sys.executable, "-m", "gptray", "generate", "--checkpoint", str(tmp_path / "ckpt"), "--interactive",
         f"out_dir={tmp_path}", "generate.temperature=0", "generate.max_new_tokens=5"],
        input="A\nHello\n\nC\n:quit\nD\n", capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path,
    )
    assert run.returncode == 0, run.stderr
    tokenizer = TiktokenTokenizer("gpt2")
    expected = [prompt + tokenizer.decode(generate(model, [tokenizer.encode(prompt)], greedy(5))[0].tokens)
                for prompt in ("A", "C")]
    assert run.stdout.splitlines() == expected  # "Hello" is outside the vocabulary; ":quit" ends before "D"
    assert "outside the model's vocabulary" in run.stderr
    assert "2 prompt(s) answered" in run.stderr


def test_decoding_imported_gpt2_weights_matches_transformers(tmp_path):
    """Greedy and beam search over imported Hugging Face weights give what transformers' generate gives."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from gptray.interop.huggingface import load_hf_gpt2

    torch.manual_seed(0)
    hf = GPT2LMHeadModel(GPT2Config(n_layer=2, n_head=4, n_embd=32, n_positions=24, vocab_size=96)).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.normal_(std=0.2)
    hf.save_pretrained(tmp_path / "hf")
    model = load_hf_gpt2(tmp_path / "hf").model
    prompt = [5, 17, 42]
    for beams in (1, 3):
        expected = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, 3, dtype=torch.long),
                               max_new_tokens=12, do_sample=False, num_beams=beams, pad_token_id=0,
                               eos_token_id=None)[0, len(prompt):].tolist()
        settings = greedy(12, num_beams=beams)
        found = generate(model, [prompt], settings)[0] if beams == 1 else beam_search(model, prompt, settings)
        assert found.tokens == expected
