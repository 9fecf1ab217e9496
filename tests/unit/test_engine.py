"""The training engine in one process: accumulation, precision, compile, state round trips, eval, FLOPs."""

from __future__ import annotations

import io
import math

import numpy as np
import pytest
import torch

from gptray.config import ModelConfig, load_config
from gptray.model import count_parameters
from gptray.train.engine import TrainingEngine
from gptray.train.flops import flops_per_token

TOKENS = np.random.default_rng(0).integers(0, 50257, 30_000).astype(np.uint16)
SMALL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "optimizer.lr=3e-3", "schedule.warmup_steps=2",
         "train.eval_windows=7", "ray.num_workers=1"]


def engine(*overrides: str) -> TrainingEngine:
    config = load_config(None, [*SMALL, *overrides])
    return TrainingEngine(config, torch.device("cpu"), rank=0, world_size=1, train_data=TOKENS, val_tokens=TOKENS)


def losses(e: TrainingEngine, steps: range) -> list[float]:
    return [e.train_step(step).loss.item() for step in steps]


def test_gradient_accumulation_equals_one_big_batch():
    one = engine("train.batch_size=4", "train.micro_batch_size=4")
    four = engine("train.batch_size=4", "train.micro_batch_size=1")
    assert one.micro_steps == 1 and four.micro_steps == 4
    for step in range(3):
        big, accumulated = one.train_step(step), four.train_step(step)
        assert big.loss.item() == pytest.approx(accumulated.loss.item(), abs=1e-5)
        # Adam cannot tell a gradient from a multiple of it: the norm shows the micro-batches are averaged.
        assert big.grad_norm.item() == pytest.approx(accumulated.grad_norm.item(), rel=1e-5)
    # Summation order differs (one batch of 4 against four of 1), and Adam divides each weight's step by
    # its own gradient's size, so float rounding of ~1e-7 in a tiny gradient moves a weight by up to
    # ~2e-5 here (a 3e-3 learning rate) on some CPUs. A wrong accumulation moves them by ~lr.
    for a, b in zip(one.module.parameters(), four.module.parameters()):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def through_a_file(state):
    """What a checkpoint does to state: torch.save, then torch.load(weights_only=True)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    return torch.load(buffer, weights_only=True)


def test_state_round_trip_continues_identically():
    first = engine("train.batch_size=4")
    losses(first, range(3))
    model_state, optimizer_state = through_a_file(first.full_state()[:2])
    second = engine("train.batch_size=4")
    with torch.no_grad():  # other weights, so only the loaded state can make the runs agree
        for p in second.module.parameters():
            p.normal_()
    second.load_full_state(model_state, optimizer_state)
    assert losses(first, range(3, 5)) == losses(second, range(3, 5))


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_trains(precision):
    e = engine(f"train.precision={precision}", "train.batch_size=2", "train.micro_batch_size=2",
               "train.seq_len=32", "optimizer.lr=1e-2")
    assert (e.scaler is not None) == (precision == "fp16")
    reference = engine("train.batch_size=2", "train.micro_batch_size=2", "train.seq_len=32", "optimizer.lr=1e-2")
    low, full = losses(e, range(3)), losses(reference, range(3))
    assert all(math.isfinite(x) for x in low)
    assert low[0] == pytest.approx(full[0], abs=0.05)  # same data and weights, lower precision
    _, optimizer_state, scaler_state = e.full_state()
    assert (scaler_state is not None) == (precision == "fp16")


@pytest.mark.slow
def test_compiled_model_matches_eager():
    compiled = engine("train.compile=true", "model.n_layer=1", "train.batch_size=2", "train.micro_batch_size=2",
                      "train.seq_len=32")
    eager = engine("model.n_layer=1", "train.batch_size=2", "train.micro_batch_size=2", "train.seq_len=32")
    assert compiled.training_model is not compiled.module  # really wrapped by torch.compile
    assert losses(compiled, range(2)) == pytest.approx(losses(eager, range(2)), abs=1e-4)


def test_evaluation_is_the_mean_over_windows_with_a_ragged_last_batch():
    e = engine("train.micro_batch_size=4")  # 7 windows: batches of 4 and 3 (padded)
    assert len(e.val_starts) == 7
    expected = []
    e.module.eval()
    with torch.no_grad():
        for start in e.val_starts:
            x = torch.from_numpy(TOKENS[start : start + 64].astype(np.int64))[None]
            y = torch.from_numpy(TOKENS[start + 1 : start + 65].astype(np.int64))[None]
            expected.append(e.module(x, y)[1].item())
    validation = e.evaluate()
    assert validation.loss == pytest.approx(sum(expected) / len(expected), rel=1e-6)
    assert validation.bpb is None  # no byte table: no bits per byte
    assert e.module.training  # evaluation leaves the model in training mode


def test_bits_per_byte_is_the_summed_nats_over_the_bytes_of_the_counted_targets():
    """Real text (documents ending in <|endoftext|>, which count with 0 bytes), a loss mask leaving out
    some targets, a vocabulary padded past the tokenizer's, and a ragged last batch; checked against
    per-token losses and the bytes of the targets' decoded text."""
    import torch.nn.functional as F

    from gptray.data.tiktoken_tokenizer import TiktokenTokenizer
    from gptray.data.token_bytes import byte_table
    from helpers import SHAKESPEARE

    tokenizer = TiktokenTokenizer("gpt2")
    documents = SHAKESPEARE.read_text().split("\n\n")[:400]
    tokens = np.concatenate(tokenizer.encode_documents(documents))
    mask = (np.random.default_rng(1).random(len(tokens)) < 0.8).astype(np.uint8)  # 0: a prompt token, left out
    config = load_config(None, [*SMALL, "train.micro_batch_size=4", "model.vocab_size=50304"])
    e = TrainingEngine(config, torch.device("cpu"), rank=0, world_size=1, train_data=tokens, val_tokens=tokens,
                       val_loss_mask=mask, token_bytes=byte_table(tokenizer))
    assert len(e.val_starts) == 7
    nats, num_bytes, counted, ends = 0.0, 0, 0, 0
    e.module.eval()
    with torch.no_grad():
        for start in e.val_starts:
            x = torch.from_numpy(tokens[start : start + 64].astype(np.int64))[None]
            y = tokens[start + 1 : start + 65].astype(np.int64)
            keep = mask[start + 1 : start + 65].astype(bool)
            per_token = F.cross_entropy(e.module(x)[0][0].double(), torch.from_numpy(y), reduction="none")
            nats += per_token[torch.from_numpy(keep)].sum().item()
            text = [int(t) for t in y[keep] if t != tokenizer.eot_token]
            num_bytes += len(tokenizer.decode(text).encode("utf-8"))  # tinyshakespeare is ASCII: exact
            counted += int(keep.sum())
            ends += int((y[keep] == tokenizer.eot_token).sum())
    assert ends > 0 and counted < 7 * 64  # both cases are really there
    validation = e.evaluate()
    assert validation.loss == pytest.approx(nats / counted, rel=1e-5)
    assert validation.bpb == pytest.approx(nats / (math.log(2) * num_bytes), rel=1e-5)


def test_flops_per_token_follows_6n_plus_attention():
    gpt2 = ModelConfig(preset="gpt2").resolved()
    n = count_parameters(gpt2)
    expected = 6 * (n - 1024 * 768) + 12 * 12 * 12 * 64 * 1024
    assert flops_per_token(gpt2, n, 1024) == expected
    assert expected == pytest.approx(0.85e9, rel=0.02)  # nanoGPT's ~0.85 GFLOP/token (incl. attention)


def test_mfu_uses_the_configured_peak():
    e = engine("train.peak_tflops=1.0")
    assert e.mfu(1000.0) == pytest.approx(e.flops_per_token * 1000 / 1e12)
    assert engine().mfu(1000.0) is None  # no known peak for a CPU


def test_activation_checkpointing_switch_changes_nothing_but_memory():
    plain = engine("train.batch_size=2", "train.micro_batch_size=2", "train.seq_len=32")
    checkpointed = engine("train.batch_size=2", "train.micro_batch_size=2", "train.seq_len=32",
                          "train.activation_checkpointing=true")
    assert losses(plain, range(3)) == losses(checkpointed, range(3))


def test_flops_use_the_real_head_width():
    xl = ModelConfig(preset="gpt3-xl").resolved()  # 24 heads of 128 on a 2048-wide model
    n = count_parameters(xl)
    assert flops_per_token(xl, n, 2048) == 6 * (n - 2048 * 2048) + 12 * 24 * 24 * 128 * 2048
    rope = ModelConfig(preset="nano", position="rope").resolved()  # no position parameters to leave out
    assert flops_per_token(rope, 1000, 64) == 6 * 1000 + 12 * 4 * 4 * 32 * 64


def test_a_checkpoint_cut_short_is_not_taken_for_complete(tmp_path):
    from gptray.checkpoint.files import TrainingState, is_complete, latest_checkpoint, save_checkpoint

    e = engine("train.batch_size=4")
    model_state, optimizer_state, _ = e.full_state()
    for step in (5, 10):
        save_checkpoint(tmp_path / f"checkpoint_{step:08d}", model_state, optimizer_state,
                        TrainingState(step=step), e.config)
    assert latest_checkpoint(tmp_path).name == "checkpoint_00000010"
    newest = tmp_path / "checkpoint_00000010" / "optimizer.pt"
    newest.write_bytes(newest.read_bytes()[: newest.stat().st_size // 2])  # an upload stopped halfway
    assert not is_complete(tmp_path / "checkpoint_00000010")
    assert latest_checkpoint(tmp_path).name == "checkpoint_00000005"
