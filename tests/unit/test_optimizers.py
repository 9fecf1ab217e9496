"""The recipe axes in one process (and one 2-rank gloo group): Muon, the schedules (cosine, linear, WSD and
its continuation), z-loss; each trains, resumes exactly, and Muon agrees across world sizes and FSDP."""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_checkpoints import scrambled, write_sharded
from test_engine import through_a_file

from gptray.checkpoint.files import (
    TrainingState,
    check_compatible,
    latest_checkpoint,
    read_state,
    save_checkpoint,
)
from gptray.config import load_config
from gptray.core.errors import CheckpointError, ConfigError
from gptray.core.storage import Storage
from gptray.data.train_windows import DataOrder
from gptray.model.gpt import cross_entropy_and_z_loss
from gptray.train.checkpoint_manager import CheckpointManager, check_schedule
from gptray.train.engine import TrainingEngine
from gptray.train.optim import (
    LrSchedule,
    decay_start,
    first_schedule_difference,
    hidden_matrices,
    learning_rate,
    set_learning_rates,
)

# A stream a small model learns in a few steps (each token predicts the next), over a 128-token vocabulary:
# each step costs milliseconds, not the 50,257-wide head's tenths of a second.
TOKENS = np.tile(np.arange(97, dtype=np.uint16), 300)
SMALL = ["model.n_layer=2", "model.n_head=2", "model.n_embd=64", "model.vocab_size=128", "optimizer.lr=3e-3",
         "schedule.warmup_steps=2", "train.eval_windows=7", "ray.num_workers=1", "train.batch_size=4",
         "train.max_steps=20"]
OPTIONS = {"muon": ["optimizer.name=muon"], "wsd": ["schedule.name=wsd", "schedule.wsd_decay_fraction=0.5"],
           "linear": ["schedule.name=linear"], "z_loss": ["train.z_loss=1e-2"]}


def engine(*overrides: str, rank: int = 0, world_size: int = 1) -> TrainingEngine:
    config = load_config(None, [*SMALL, *overrides])
    return TrainingEngine(config, torch.device("cpu"), rank=rank, world_size=world_size, train_data=TOKENS,
                          val_tokens=TOKENS)


def run(e: TrainingEngine, steps: range) -> list[tuple[float, float | None]]:
    """(cross-entropy, z-loss term) of each step."""
    results = [e.train_step(step) for step in steps]
    return [(r.loss.item(), None if r.z_loss is None else r.z_loss.item()) for r in results]


# --- Muon ------------------------------------------------------------------------------------------


def test_muon_takes_the_hidden_matrices_and_adamw_the_rest():
    e = engine("optimizer.name=muon")
    adamw, muon = e.optimizers
    names = {id(p): n for n, p in e.module.named_parameters()}
    in_muon = {names[id(p)] for group in muon.param_groups for p in group["params"]}
    assert in_muon == {n for n, p in e.module.named_parameters() if n.startswith("transformer.h.") and p.dim() == 2}
    assert {n.rsplit(".", 2)[-2] for n in in_muon} == {"c_attn", "c_proj", "c_fc"}
    in_adamw = {names[id(p)] for group in adamw.param_groups for p in group["params"]}
    assert in_adamw == set(names.values()) - in_muon and "transformer.wte.weight" in in_adamw  # the tied head too
    assert (muon.defaults["lr"], muon.defaults["momentum"], muon.defaults["nesterov"], muon.defaults["ns_steps"],
            muon.defaults["weight_decay"]) == (0.02, 0.95, True, 5, 0.01)
    assert len(engine().optimizers) == 1  # adamw: one AdamW, as before


@pytest.mark.parametrize("shape", [(192, 64), (64, 256)])  # tall (c_attn's, out × in) and wide (the MLP's c_proj)
def test_muons_update_of_a_matrix_is_orthogonal(shape):
    """One Muon step on a gradient whose singular values span a factor 100 moves the matrix by a
    (semi-)orthogonal matrix times the step size: every singular value ~1 (Newton–Schulz's quintic lands
    them in about [0.7, 1.2], not exactly 1), and the direction is the gradient's polar factor."""
    e = engine("optimizer.name=muon", "optimizer.muon_weight_decay=0")
    _, muon = e.optimizers
    target = next(p for p in hidden_matrices(e.module) if tuple(p.shape) == shape)
    rows, cols = shape
    k = min(shape)
    generator = torch.Generator().manual_seed(0)
    u, _ = torch.linalg.qr(torch.randn(rows, k, generator=generator))
    v, _ = torch.linalg.qr(torch.randn(cols, k, generator=generator))
    gradient = u @ torch.diag(torch.logspace(-2, 0, k)) @ v.T
    for p in hidden_matrices(e.module):
        p.grad = gradient.clone() if p is target else torch.zeros_like(p)
    before = target.detach().clone()
    set_learning_rates(e.optimizers, 5, e.lr_schedule)  # past the warmup: muon_lr itself
    muon.step()
    update = (before - target.detach()) / (0.02 * math.sqrt(max(1, rows / cols)))  # torch's per-shape scaling
    singular = torch.linalg.svdvals(update)
    assert len(singular) == k and singular.min() > 0.6 and singular.max() < 1.25, singular
    polar = u @ v.T
    assert (update * polar).sum() / (update.norm() * polar.norm()) > 0.97
    assert torch.linalg.svdvals(gradient)[[0, -1]].tolist() == pytest.approx([1.0, 0.01], rel=1e-3)


# --- schedules -------------------------------------------------------------------------------------


def test_wsd_holds_the_peak_then_decays_by_its_shape():
    train = LrSchedule(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=110, name="wsd",
                       wsd_decay_fraction=0.2)  # decays over the last 22 steps: 88 → 110
    assert decay_start(train) == 88
    assert learning_rate(0, train) == pytest.approx(1e-4)
    assert {learning_rate(s, train) for s in range(10, 88)} == {1e-3}  # the stable phase
    assert learning_rate(99, train) == pytest.approx(1e-4 + (1 - math.sqrt(0.5)) * 9e-4)  # 1-sqrt, halfway
    assert learning_rate(110, train) == pytest.approx(1e-4)
    lrs = [learning_rate(s, train) for s in range(88, 111)]
    assert all(a > b for a, b in zip(lrs, lrs[1:]))
    for shape, halfway in (("linear", 0.5), ("cosine", 0.5)):
        shaped = dataclasses.replace(train, wsd_decay_shape=shape)
        assert learning_rate(99, shaped) == pytest.approx(1e-4 + halfway * 9e-4)
    stable = dataclasses.replace(train, wsd_decay_fraction=0.0)  # a stable phase only
    assert {learning_rate(s, stable) for s in range(10, 500)} == {1e-3}


def test_linear_decays_evenly_and_muon_follows_the_same_schedule_at_its_own_scale():
    train = LrSchedule(lr=1e-3, min_lr=1e-4, warmup_steps=10, decay_steps=110, name="linear")
    assert learning_rate(60, train) == pytest.approx(5.5e-4)
    assert learning_rate(35, train) == pytest.approx(1e-4 + 0.75 * 9e-4)
    e = engine("optimizer.name=muon", "optimizer.lr=1e-3", "schedule.min_lr=1e-4", "schedule.warmup_steps=10",
               "train.max_steps=110", "schedule.name=linear", "optimizer.muon_lr=0.05")
    assert set_learning_rates(e.optimizers, 35, e.lr_schedule) == pytest.approx(1e-4 + 0.75 * 9e-4)
    adamw, muon = e.optimizers
    assert [g["lr"] for g in adamw.param_groups] == pytest.approx([1e-4 + 0.75 * 9e-4] * 2)
    assert muon.param_groups[0]["lr"] == pytest.approx(50 * (1e-4 + 0.75 * 9e-4))


def test_the_recipe_settings_are_checked_up_front():
    for override, key in (("optimizer.name=sgd", "optimizer.name"), ("schedule.name=step", "schedule.name"),
                          ("schedule.wsd_decay_fraction=1.5", "schedule.wsd_decay_fraction"),
                          ("schedule.wsd_decay_shape=exp", "schedule.wsd_decay_shape"),
                          ("train.z_loss=-1", "train.z_loss"), ("optimizer.muon_lr=0", "optimizer.muon_lr"),
                          ("optimizer.muon_momentum=1", "optimizer.muon_momentum"),
                          ("optimizer.muon_weight_decay=-0.1", "optimizer.muon_weight_decay")):
        with pytest.raises(ConfigError) as raised:
            load_config(None, [override])
        assert raised.value.key == key
    with pytest.raises(ConfigError) as raised:  # a whole training state, or a base's weights: not both
        load_config(None, ["train.init_from=runs/a", "checkpoint.resume_from=runs/b"],
                    read_base=lambda c: c.model.resolved())
    assert raised.value.key == "checkpoint.resume_from"


# --- every option trains, and resumes exactly -------------------------------------------------------


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_a_short_run_with_each_option_trains(option):
    losses = [loss for loss, _ in run(engine(*OPTIONS[option]), range(20))]
    assert losses[0] == pytest.approx(math.log(128), abs=0.3)
    assert sum(losses[-3:]) / 3 < losses[0] - 1.5


def test_z_loss_is_logged_apart_from_the_cross_entropy_and_pulls_log_z_to_zero():
    plain, pulled = engine(), engine("train.z_loss=0.1")
    plain_steps, pulled_steps = run(plain, range(15)), run(pulled, range(15))
    assert plain_steps[0][0] == pulled_steps[0][0]  # the same cross-entropy: the same weights and batch
    assert plain_steps[0][1] is None and pulled_steps[0][1] > 0
    x = torch.from_numpy(TOKENS[:4 * 64].astype(np.int64)).view(4, 64)
    with torch.no_grad():
        log_z = {name: torch.logsumexp(e.module(x)[0], -1).square().mean().item()
                 for name, e in (("plain", plain), ("pulled", pulled))}
    assert log_z["pulled"] < log_z["plain"] - 1.0, log_z  # log² Z starts at ln²(128) = 23.5


def test_cross_entropy_and_z_loss_agree_with_their_definitions():
    generator = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 11, generator=generator) * 3
    targets = torch.randint(0, 11, (2, 5), generator=generator)
    targets[1, 2:] = -100  # not counted: prompt tokens, a padded window
    cross_entropy, z_loss = cross_entropy_and_z_loss(logits, targets, 1e-3)
    assert cross_entropy.item() == pytest.approx(F.cross_entropy(logits.reshape(-1, 11), targets.reshape(-1)).item())
    counted = targets.reshape(-1) != -100
    log_z = torch.logsumexp(logits.reshape(-1, 11), -1)[counted]
    assert z_loss.item() == pytest.approx(1e-3 * log_z.square().mean().item())


@pytest.mark.parametrize("option", sorted(OPTIONS))
def test_each_option_resumes_exactly_from_a_whole_checkpoint(option):
    """State after 4 steps, through a file, into a fresh engine with other weights: the next steps are
    identical (WSD's decay starts at step 10 of 20, so these are its stable and decaying steps both)."""
    first = engine(*OPTIONS[option], "train.max_steps=12")
    run(first, range(4))
    model_state, optimizer_state = through_a_file(first.full_state()[:2])
    second = scrambled(engine(*OPTIONS[option], "train.max_steps=12"))
    second.load_full_state(model_state, optimizer_state)
    assert run(first, range(4, 8)) == run(second, range(4, 8))


def test_muon_resumes_exactly_from_a_sharded_checkpoint_and_from_its_consolidated_copy(tmp_path):
    from gptray.checkpoint.files import load_tensors
    from gptray.train.consolidate import consolidate_checkpoint

    first = engine("optimizer.name=muon")
    run(first, range(3))
    directory = write_sharded(first, tmp_path / "run" / "checkpoint_00000003", 3)
    whole = consolidate_checkpoint(directory, tmp_path / "whole", optimizer=True).out  # both optimizers' state
    second = scrambled(engine("optimizer.name=muon"))
    second.load_sharded(directory)
    third = scrambled(engine("optimizer.name=muon"))
    third.load_full_state(load_tensors(whole, "model.pt"), load_tensors(whole, "optimizer.pt"))
    expected = run(first, range(3, 6))
    assert run(second, range(3, 6)) == expected and run(third, range(3, 6)) == expected


def test_a_muon_checkpoint_is_refused_by_an_adamw_run_and_the_other_way_round():
    muon = load_config(None, [*SMALL, "optimizer.name=muon"])
    adamw = load_config(None, SMALL)
    check_compatible(TrainingState(optimizer="muon", model=asdict(muon.model)), muon, "", "c")
    with pytest.raises(CheckpointError, match="optimizer.name=muon, not adamw"):
        check_compatible(TrainingState(optimizer="muon", model=asdict(adamw.model)), adamw, "", "c")
    with pytest.raises(CheckpointError, match="optimizer.name=adamw, not muon"):
        check_compatible(TrainingState(model=asdict(muon.model)), muon, "", "c")  # written before the option


# --- WSD: a stable-phase checkpoint continued with a decay to a new max_steps ------------------------


def test_a_wsd_stable_phase_checkpoint_continues_into_a_decay_exactly_as_one_run(tmp_path, caplog):
    """A 16-step WSD run decays over steps 12 → 16. A long run's checkpoint at step 12, still in its stable
    phase, continued with max_steps=16 (what checkpoint.resume_from does: the checkpoint copied into the new run,
    its state loaded) gives the 16-step run's losses exactly."""
    wsd = ["schedule.name=wsd", "schedule.wsd_decay_fraction=0.25", "optimizer.name=muon"]
    short = engine(*wsd, "train.max_steps=16")
    assert decay_start(short.lr_schedule) == 12
    reference = run(short, range(16))

    long = engine(*wsd, "train.max_steps=1000")  # stable until step 750
    assert run(long, range(12)) == reference[:12]
    model_state, optimizer_state, _ = long.full_state()
    stable = save_checkpoint(tmp_path / "long" / "checkpoint_00000012", model_state, optimizer_state,
                             TrainingState(step=12, model=asdict(long.config.model), optimizer="muon"), long.config)
    # the new run's first launch: the driver copies the checkpoint in (from a run directory: its latest)
    continued = scrambled(engine(*wsd, "train.max_steps=16", f"out_dir={tmp_path}", "name=decay16",
                                 f"checkpoint.resume_from={tmp_path / 'long'}"))
    run_dir = Storage(continued.config.run_dir)

    def launch(run: Storage, fingerprint: str = ""):
        return CheckpointManager(continued.config, run, fingerprint, DataOrder("global")).resume_point()

    assert launch(run_dir).step == 12
    copied = latest_checkpoint(run_dir.base)
    assert read_state(copied).step == 12 and sorted(p.name for p in copied.iterdir()) == \
        sorted(p.name for p in stable.iterdir())
    launch(run_dir)  # a later launch resumes from the run's own checkpoints
    assert [p.name for p in Path(run_dir.base).iterdir()] == ["checkpoint_00000012"]
    with pytest.raises(CheckpointError, match="different token dataset"):  # checked as a resume is
        launch(Storage(str(tmp_path / "elsewhere")), "another")

    continued.load_full_state(torch.load(copied / "model.pt", weights_only=True),
                              torch.load(copied / "optimizer.pt", weights_only=True))
    assert run(continued, range(12, 16)) == reference[12:]
    # the driver says where the new schedule gives the steps before a checkpoint other rates than it had
    assert first_schedule_difference(long.lr_schedule, continued.lr_schedule, 12) is None
    # step 12 is the decay's first, at peak
    assert first_schedule_difference(long.lr_schedule, continued.lr_schedule, 13) is None
    at, before, now = first_schedule_difference(long.lr_schedule, continued.lr_schedule, 14)
    assert at == 13 and before > now
    caplog.clear()  # what the launches logged above (at INFO where an earlier test set gptray's level)
    with caplog.at_level("WARNING", logger="gptray.train.checkpoint_manager"):
        check_schedule(long.config, continued.config, 12, "ok")
        check_schedule(long.config, continued.config, 14, "late")
    warned = [r for r in caplog.records if r.levelname == "WARNING"]
    assert len(warned) == 1 and "step 13 had lr" in caplog.text and "late" in caplog.text


# --- world size 1 against 2 (DDP and FSDP) with Muon, in a gloo process group -----------------------


def _rank(rank: int, store: str, parallelism: str, sharded_dir: str, results) -> None:
    """One rank of a 2-rank group: 4 Muon steps, a sharded checkpoint after the first 2."""
    import torch.distributed as dist

    from gptray.checkpoint.sharded import save_sharded

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=2)
    try:
        e = engine("optimizer.name=muon", f"train.parallelism={parallelism}", "ray.num_workers=2",
                   "train.micro_batch_size=1", rank=rank, world_size=2)
        losses = []
        for step in range(4):
            losses.append(e.global_mean(e.train_step(step).loss))
            if step == 1 and sharded_dir:
                save_sharded(sharded_dir, e.sharded_state())
        weights = {name: (value.full_tensor() if hasattr(value, "full_tensor") else value).detach().numpy().copy()
                   for name, value in e.module.state_dict().items()}
        from torch.distributed.tensor.debug import CommDebugMode

        for p in hidden_matrices(e.module):
            p.grad = torch.ones_like(p)
        with CommDebugMode() as comms:  # what one Muon step sends
            e.optimizers[1].step()
        if rank == 0:
            results.put((losses, weights, {str(op): n for op, n in comms.get_comm_counts().items()}))
    finally:
        dist.destroy_process_group()


def test_muon_on_two_ranks_matches_one_under_ddp_and_fsdp(tmp_path):
    """The same 4 global batches on 1 rank and on 2 (DDP, then FSDP, whose Muon gathers each matrix for its
    Newton–Schulz): the losses agree to 1e-4. torch's Newton–Schulz runs in bf16 (as modded-nanogpt's), which
    turns the fp32 summation-order differences of the ranks' gradient reduction (~1e-7) into ~1-3% of a
    matrix's update in some elements: the weights agree to 5% of how far they moved (a wrong shard, lr or
    missing step is off by 100%). Under FSDP a Muon step costs one all-gather per matrix (torch's Muon left
    to DTensor would pass the rest too, at ~13 collectives a matrix). FSDP's 2-rank sharded checkpoint at
    step 2 resumes on 1 rank (Muon's sharded momentum resharded) along the same curve."""
    import torch.multiprocessing as mp

    initial = {name: value.clone() for name, value in engine("optimizer.name=muon").module.state_dict().items()}
    one = engine("optimizer.name=muon", "train.micro_batch_size=1")
    reference = [one.train_step(step).loss.item() for step in range(4)]
    context = mp.get_context("spawn")
    for parallelism in ("ddp", "fsdp"):
        results = context.Queue()
        sharded = str(tmp_path / "sharded") if parallelism == "fsdp" else ""
        store = str(tmp_path / f"store-{parallelism}")
        ranks = [context.Process(target=_rank, args=(r, store, parallelism, sharded, results)) for r in range(2)]
        for process in ranks:
            process.start()
        losses, weights, comms = results.get(timeout=240)
        for process in ranks:
            process.join(timeout=60)
            assert process.exitcode == 0, parallelism
        assert losses == pytest.approx(reference, abs=1e-4), parallelism
        # DDP's ranks orthogonalize their own whole copies; FSDP's gather each of the 8 matrices once
        assert comms == ({} if parallelism == "ddp" else {"c10d_functional.all_gather_into_tensor": 8}), comms
        for name, value in one.module.state_dict().items():
            moved, apart = (value - initial[name]).norm(), (torch.from_numpy(weights[name]) - value).norm()
            assert apart <= 0.05 * moved, f"{parallelism}: {name} is {apart:.2e} from 1 rank's, which moved {moved:.2e}"
    resumed = scrambled(engine("optimizer.name=muon", "train.micro_batch_size=1"))
    resumed.load_sharded(tmp_path / "sharded")
    assert [resumed.train_step(step).loss.item() for step in (2, 3)] == pytest.approx(reference[2:], abs=1e-4)
    assert os.path.isfile(tmp_path / "sharded" / "__1_0.distcp")  # written by both ranks
