"""The per-worker training loop Ray Train runs on every rank: DDP, accumulation, eval, checkpoints."""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from dataclasses import asdict

import numpy as np
import torch
import torch.distributed as dist

from gptray.config import ExperimentConfig
from gptray.data.manifest import Manifest
from gptray.data.windows import WindowSampler, eval_starts, gather_windows, open_split_tokens
from gptray.model import GPT
from gptray.runtime import configure_logging
from gptray.train.checkpoint import (
    TrainingState,
    check_compatible,
    checkpoint_dir_name,
    load_tensors,
    read_state,
    save_checkpoint,
)
from gptray.train.optim import build_optimizer, learning_rate

log = logging.getLogger(__name__)

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def step_seed(seed: int, step: int, rank: int) -> int:
    """The RNG seed of one rank at one step: dropout masks are a pure function of the step too."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def to_device(array: np.ndarray, device: torch.device) -> torch.Tensor:
    return torch.from_numpy(array).to(device, non_blocking=device.type == "cuda")


@torch.no_grad()
def evaluate(model: GPT, tokens: np.ndarray, starts: np.ndarray, seq_len: int, micro_batch: int,
             device: torch.device, autocast) -> float:
    """Mean loss over every rank's validation windows (each rank passes its own share)."""
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (sum of window losses, windows)
    for i in range(0, len(starts), micro_batch):
        x, y = gather_windows(tokens, starts[i : i + micro_batch], seq_len)
        with autocast():
            _, loss = model(to_device(x, device), to_device(y, device))
        totals[0] += loss.double() * len(x)
        totals[1] += len(x)
    all_reduce_sum(totals)
    model.train()
    return (totals[0] / totals[1]).item() if totals[1] > 0 else float("nan")


def train_loop_per_worker(loop_config: dict) -> None:
    """Entry point of each Ray Train worker. `loop_config` holds the resolved config and tracking ids."""
    import ray.train
    import ray.train.torch
    from ray.train import Checkpoint

    configure_logging()
    config = ExperimentConfig.from_dict(loop_config["config"])
    train = config.train
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    seq_len = train.effective_seq_len(config.model)

    manifest = Manifest.load(config.data.dataset_dir)
    train_tokens = open_split_tokens(config.data.dataset_dir, manifest, "train", config.data.cache_dir)
    val_tokens = open_split_tokens(config.data.dataset_dir, manifest, "val", config.data.cache_dir)
    sampler = WindowSampler(len(train_tokens), seq_len, train.seed)
    my_val_starts = eval_starts(len(val_tokens), seq_len, train.eval_windows)[rank::world_size]
    has_val = len(val_tokens) > seq_len and train.eval_windows > 0

    torch.manual_seed(train.seed)  # identical initial weights on every rank
    model = GPT(config.model).to(device)
    optimizer = build_optimizer(model, train, device)
    scaler = torch.amp.GradScaler(device.type) if train.precision == "fp16" else None
    state = TrainingState(dataset_fingerprint=manifest.fingerprint, model=asdict(config.model), world_size=world_size)

    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            saved = read_state(directory)
            check_compatible(saved, config, manifest.fingerprint, directory)
            model.load_state_dict(load_tensors(directory, "model.pt", device))
            optimizer.load_state_dict(load_tensors(directory, "optimizer.pt", device))
            if scaler is not None:
                scaler.load_state_dict(load_tensors(directory, "scaler.pt"))
        state = saved
        state.world_size = world_size
        if rank == 0:
            log.info("resumed from checkpoint at step %d (%s tokens seen)", state.step, f"{state.tokens_seen:,}")

    ddp_model = ray.train.torch.prepare_model(model, move_to_device=False)
    is_ddp = ddp_model is not model
    amp_dtype = AMP_DTYPES.get(train.precision)

    def autocast():
        if amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=device.type, dtype=amp_dtype)

    tracker = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        from gptray.tracking import MlflowTracker

        tracker = MlflowTracker(loop_config["tracking_uri"], loop_config["mlflow_run_id"])

    accum = train.grad_accum_steps(world_size)
    tokens_per_step = train.batch_size * seq_len
    if rank == 0:
        log.info(
            "training %s (%s parameters) on %s train tokens (%s windows of %d): global batch %d × %d = %s "
            "tokens/step, %d worker(s) × %d micro-batch(es) of %d, %s, to step %d",
            config.model.preset or "custom", f"{model.num_parameters():,}", f"{len(train_tokens):,}",
            f"{sampler.num_windows:,}", seq_len, train.batch_size, seq_len, f"{tokens_per_step:,}", world_size,
            accum, train.micro_batch_size, train.precision, train.max_steps,
        )
        if state.step >= train.max_steps:
            log.info("already trained to step %d (train.max_steps=%d): nothing to do", state.step, train.max_steps)

    interval_start, interval_steps = time.perf_counter(), 0
    data_seconds = 0.0
    while state.step < train.max_steps:
        step = state.step
        torch.manual_seed(step_seed(train.seed, step, rank))
        lr = learning_rate(step, train)
        for group in optimizer.param_groups:
            group["lr"] = lr

        loss_sum = torch.zeros((), device=device)
        micro_batches = sampler.rank_micro_batches(step, rank, world_size, train.batch_size, train.micro_batch_size)
        for i, starts in enumerate(micro_batches):
            data_start = time.perf_counter()
            x, y = gather_windows(train_tokens, starts, seq_len)
            x, y = to_device(x, device), to_device(y, device)
            data_seconds += time.perf_counter() - data_start
            last_micro = i == len(micro_batches) - 1
            # Gradients are all-reduced once per optimizer step, on the last micro-batch.
            sync = contextlib.nullcontext() if (last_micro or not is_ddp) else ddp_model.no_sync()
            with sync:
                with autocast():
                    _, loss = ddp_model(x, y)
                loss_sum += loss.detach()
                scaled = loss / len(micro_batches)
                (scaler.scale(scaled) if scaler is not None else scaled).backward()
        if scaler is not None:
            scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), train.grad_clip or math.inf)
        if scaler is not None:
            scaler.step(optimizer)
            scaler.update()
        else:
            optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        state.step += 1
        state.tokens_seen += tokens_per_step
        interval_steps += 1

        last = state.step == train.max_steps
        log_due = state.step % train.log_interval == 0 or last or state.step == 1
        eval_due = has_val and (state.step % train.eval_interval == 0 or last)
        checkpoint_due = state.step % train.checkpoint_interval == 0 or last
        if not (log_due or eval_due or checkpoint_due):
            continue

        # Every rank reaches here at the same steps, so the collectives below line up.
        train_loss = (all_reduce_sum(loss_sum / len(micro_batches)) / world_size).item()
        metrics = {"train/loss": train_loss, "train/lr": lr}
        if log_due:
            elapsed = time.perf_counter() - interval_start
            metrics.update({
                "train/tokens_per_s": tokens_per_step * interval_steps / elapsed,
                "train/grad_norm": grad_norm.item(),
                "train/data_wait_fraction": data_seconds / elapsed,
                "train/epoch": sampler.epoch_of(state.step, train.batch_size),
            })
            if scaler is not None:
                metrics["train/loss_scale"] = scaler.get_scale()
            interval_start, interval_steps, data_seconds = time.perf_counter(), 0, 0.0
        if eval_due:
            val_loss = evaluate(model, val_tokens, my_val_starts, seq_len, train.micro_batch_size, device, autocast)
            metrics["val/loss"] = val_loss
            if state.best_val_loss is None or val_loss < state.best_val_loss:
                state.best_val_loss = val_loss
        if rank == 0:
            _log_progress(state.step, train.max_steps, metrics)
            if tracker is not None:
                tracker.log_metrics(metrics, step=state.step)
        if checkpoint_due:
            _report_checkpoint(state, metrics, model, optimizer, scaler, config, rank, Checkpoint)
        # the interval clock restarts after evaluation and checkpointing, which are not training time
        if eval_due or checkpoint_due:
            interval_start = time.perf_counter()

    if tracker is not None:
        tracker.log_metrics({}, step=state.step)  # deliver anything kept while the server was away


def _report_checkpoint(state, metrics, model, optimizer, scaler, config, rank, Checkpoint) -> None:
    import ray.train

    report = {"step": state.step, "tokens_seen": state.tokens_seen,
              **{k.replace("/", "_"): v for k, v in metrics.items()}}
    state.metrics = report
    with tempfile.TemporaryDirectory(prefix="gptray-ckpt-") as directory:
        checkpoint = None
        if rank == 0:  # one copy of the (replicated) DDP state is enough
            save_checkpoint(directory, model, optimizer, state, config, scaler)
            checkpoint = Checkpoint.from_directory(directory)
        ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(state.step))


def _log_progress(step: int, max_steps: int, metrics: dict) -> None:
    parts = [f"step {step}/{max_steps}", f"loss {metrics['train/loss']:.4f}"]
    if "val/loss" in metrics:
        parts.append(f"val {metrics['val/loss']:.4f}")
    parts.append(f"lr {metrics['train/lr']:.2e}")
    if "train/tokens_per_s" in metrics:
        parts.append(f"{metrics['train/tokens_per_s']:,.0f} tok/s")
        parts.append(f"grad norm {metrics['train/grad_norm']:.2f}")
    log.info(" | ".join(parts))
