"""Any world size trains the same run: each rank's share of the global batch, and the token-weighted loss."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from gptray.config import load_config
from gptray.core.errors import ConfigError
from gptray.core.shares import lockstep_batches, share, share_bounds
from gptray.data.rank_shares import batch_digest, micro_batch_sizes, rank_sample_batches
from gptray.train.engine import TrainingEngine
from gptray.train.optim import set_learning_rates

TOKENS = np.tile(np.arange(97, dtype=np.uint16), 300)  # a stream a tiny model learns (each token predicts the next)
SMALL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.vocab_size=128", "model.block_size=32",
         "optimizer.lr=3e-3", "schedule.warmup_steps=2", "train.eval_windows=2", "train.batch_size=8",
         "train.micro_batch_size=2", "train.max_steps=20"]


def test_shares_cover_the_global_batch_once_at_every_world_size():
    for batch in range(1, 13):
        for world in range(1, batch + 1):
            samples = [rank_sample_batches(3, r, world, batch, 2) for r in range(world)]
            read = np.concatenate([np.concatenate(s) for s in samples])
            assert read.tolist() == list(range(3 * batch, 4 * batch)), (batch, world)  # in order, once each
            sizes = [share_bounds(batch, world, r)[1] for r in range(world)]
            assert max(sizes) - min(sizes) <= 1 and min(sizes) >= 1
            config = load_config(None, [f"train.batch_size={batch}", "train.micro_batch_size=2",
                                        f"ray.num_workers={world}"])
            assert max(len(s) for s in samples) == config.train.grad_accum_steps(world)
    assert micro_batch_sizes(5, 2) == [2, 2, 1] and micro_batch_sizes(4, 2) == [2, 2]


def test_any_work_splits_into_contiguous_shares_and_every_rank_runs_the_largest_shares_batches():
    for count in range(12):
        for world_size in (1, 2, 3, 5):
            items = list(range(count))
            shares = [share(items, rank, world_size) for rank in range(world_size)]
            assert sum(shares, []) == items  # each item once, in order
            sizes = [len(s) for s in shares]
            assert max(sizes) - min(sizes) <= 1
            assert sum(share_bounds(count, world_size, world_size - 1)) == count
            for batch in (1, 2, 3):
                assert lockstep_batches(count, world_size, batch) == max(-(-size // batch) for size in sizes)


def test_a_world_size_larger_than_the_batch_is_refused_naming_the_numbers():
    with pytest.raises(ConfigError) as refused:
        load_config(None, ["train.batch_size=4", "train.micro_batch_size=2", "ray.num_workers=[2, 6]"])
    assert "4 windows cannot be shared by 6 workers" in str(refused.value)
    assert load_config(None, ["train.batch_size=8", "ray.num_workers=3"]).ray.num_workers == 3  # 3 ∤ 8 is fine
    elastic = load_config(None, ["train.batch_size=8", "ray.num_workers=[1, 3]"]).ray
    assert (elastic.elastic, elastic.min_workers, elastic.max_workers) == (True, 1, 3)
    for bad in ("[0, 2]", "[3, 2]", "[1, 2, 3]"):
        with pytest.raises(ConfigError, match="ray.num_workers"):
            load_config(None, [f"ray.num_workers={bad}", "train.batch_size=8"])


def _engine(rank: int, world: int, mask: np.ndarray | None, *overrides: str) -> TrainingEngine:
    config = load_config(None, [*SMALL, f"ray.num_workers={world}", *overrides])
    return TrainingEngine(config, torch.device("cpu"), rank=rank, world_size=world, train_data=TOKENS,
                          val_tokens=TOKENS, train_loss_mask=mask)


def _as_ddp_would(world: int, mask: np.ndarray | None) -> tuple[float, list[torch.Tensor]]:
    """Step 0 of a run of `world` ranks, each rank's engine in this process: (the loss the ranks log, the
    gradients DDP would leave on every rank: the ranks' average)."""
    losses, grads = [], []
    for rank in range(world):
        e = _engine(rank, world, mask)
        loss, _, _ = e.accumulate_gradients(0)
        losses.append(loss.item())
        grads.append([p.grad.clone() for p in e.module.parameters()])
    return sum(losses) / world, [sum(g) / world for g in zip(*grads)]


@pytest.mark.parametrize("masked", [False, True], ids=["plain", "prompt-masked"])
def test_world_sizes_1_2_and_3_compute_the_same_update(masked):
    """A global batch of 8 windows on 1, 2 and 3 ranks (3 does not divide 8: shares of 3, 3 and 2, the last
    rank padding its second micro-batch): the same loss and the same averaged gradient, to fp32 rounding.
    With a loss mask the windows count different numbers of targets, so weighting each micro-batch's mean
    by its counted targets is what makes them agree (a mean of the micro-batches' means would not)."""
    mask = None
    if masked:  # about half the targets left out, unevenly over the windows
        mask = (np.random.default_rng(0).random(len(TOKENS)) < np.linspace(0.1, 0.9, len(TOKENS))).astype(np.uint8)
    one_loss, one_grads = _as_ddp_would(1, mask)
    for world in (2, 3):
        loss, grads = _as_ddp_would(world, mask)
        assert loss == pytest.approx(one_loss, rel=1e-5), world
        for a, b in zip(grads, one_grads):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_an_uneven_world_size_trains_the_same_losses_as_one_rank():
    """Whole steps on 1 rank and, emulated, on 3 (each rank's engine here; the ranks' gradients averaged as
    DDP does, then each rank's own optimizer step): the same losses and weights after 2 steps."""
    one = _engine(0, 1, None, "optimizer.grad_clip=0")
    three = [_engine(r, 3, None, "optimizer.grad_clip=0") for r in range(3)]
    for step in range(2):
        expected = one.train_step(step).loss.item()
        parts = []
        for e in three:
            set_learning_rates(e.optimizers, step, e.lr_schedule)
            parts.append(e.accumulate_gradients(step)[0].item())
        assert sum(parts) / 3 == pytest.approx(expected, rel=1e-5), step
        with torch.no_grad():
            for params in zip(*(e.module.parameters() for e in three)):
                mean = sum(p.grad for p in params) / 3
                for p in params:
                    p.grad = mean.clone()
        for e in three:
            for optimizer in e.optimizers:
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
    for a, b in zip(one.module.parameters(), three[2].module.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_batch_digest_is_the_global_batchs_not_the_ranks():
    e = _engine(0, 1, None)
    digests = [e.train_data.batch_digest(step) for step in range(4)]
    assert len(set(digests)) == 4
    assert digests == [_engine(1, 3, None).train_data.batch_digest(step) for step in range(4)]
    starts = e.train_data.sampler.starts(np.arange(8, 16))
    assert digests[1] == batch_digest(starts)


def test_a_preemption_notice_makes_every_check_step_a_checkpoint_until_the_group_ends():
    from ray.train import PreemptionInfo

    from gptray.train.preemption import PreemptionNotice

    answers = iter([None, PreemptionInfo(deadline_ms=5, preempted_node_to_ranks={"n1": [1]}), None,
                    PreemptionInfo(deadline_ms=9, preempted_node_to_ranks={"n2": [0]})])
    asked = []

    def ask():
        asked.append(True)
        return next(answers)

    notice = PreemptionNotice(4, ask)
    assert not notice.checkpoint_now(3) and not asked  # not a check step: Ray is not asked (a collective)
    assert not notice.checkpoint_now(4) and notice.pending is None  # no notice
    assert not notice.checkpoint_now(6) and len(asked) == 1
    assert notice.checkpoint_now(8)  # a notice: checkpoint now
    # Ray keeps the group training until the node's deadline, and restarts it from the latest checkpoint:
    # every check until then checkpoints again, so a reclaim costs at most 4 steps
    assert not notice.checkpoint_now(9) and notice.checkpoint_now(12)
    assert notice.checkpoint_now(16) and notice.pending.preempted_node_ids == ["n2"]  # another node's notice
    assert len(asked) == 4
    never = PreemptionNotice(0, ask)  # checkpoint.preemption_check_interval=0: Ray is never asked
    assert not any(never.checkpoint_now(step) for step in range(1, 30)) and len(asked) == 4


def test_the_preemption_check_interval_is_a_checkpoint_setting_refused_below_zero():
    from gptray.train.preemption import describe_deadline

    assert load_config(None, []).checkpoint.preemption_check_interval == 10
    assert load_config(None, ["checkpoint.preemption_check_interval=0"]).checkpoint.preemption_check_interval == 0
    with pytest.raises(ConfigError, match=r"checkpoint.preemption_check_interval.*got -1"):
        load_config(None, ["checkpoint.preemption_check_interval=-1"])
    assert describe_deadline(95_000, now=0.0) == "deadline in 95 s"
    assert describe_deadline(None) == describe_deadline(0) == "no deadline given"
