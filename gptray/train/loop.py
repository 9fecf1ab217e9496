"""The per-worker loop Ray Train runs on every rank: resume, step, log, evaluate, sample, checkpoint."""

from __future__ import annotations

import contextlib
import logging
import math
import tempfile
import time
from dataclasses import asdict

import torch

from gptray.base.errors import TrainingError
from gptray.base.runtime import configure_logging
from gptray.base.storage import Storage
from gptray.checkpoint.files import (
    TrainingState,
    check_compatible,
    checkpoint_dir_name,
    latest_stored_checkpoint,
    load_tensors,
    optional_tensors,
    read_state,
    save_checkpoint,
)
from gptray.config import ExperimentConfig
from gptray.data.manifest import Manifest
from gptray.data.windows import open_split_loss_mask, open_split_tokens
from gptray.eval.training import TrainingEvaluator
from gptray.tracking import MlflowTracker
from gptray.train.engine import TrainingEngine

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    """Entry point of each Ray Train worker.

    `loop_config` holds the resolved config, the MLflow run to log to, and (for periodic
    samples) the tokenizer, which pickles by value so workers need no tiktoken cache.
    """
    import ray.train
    import ray.train.torch

    configure_logging()
    config = ExperimentConfig.from_dict(loop_config["config"])
    train = config.train
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)

    # The dataset and run directory as the driver resolved them: an object store's endpoint and
    # region travel with them, so workers need only credentials in their environment.
    dataset, run = loop_config["dataset"], loop_config["run"]
    manifest = Manifest.load(dataset)
    train_tokens = open_split_tokens(dataset, manifest, "train", config.data.cache_dir)
    val_tokens = open_split_tokens(dataset, manifest, "val", config.data.cache_dir)
    masks = [open_split_loss_mask(dataset, manifest, split, config.data.cache_dir) for split in ("train", "val")]
    engine = TrainingEngine(config, device, rank, world_size, train_tokens, val_tokens, *masks)
    state = TrainingState(dataset_fingerprint=manifest.fingerprint, model=asdict(config.model), world_size=world_size)

    with _resume_directory(ray.train.get_checkpoint(), run) as (directory, where):
        if directory is not None:
            saved = read_state(directory)
            check_compatible(saved, config, manifest.fingerprint, where)
            engine.load_state(load_tensors(directory, "model.pt"), load_tensors(directory, "optimizer.pt"),
                              optional_tensors(directory, "scaler.pt"))
            state = saved
            state.world_size = world_size
            if rank == 0:
                log.info("resumed from checkpoint at step %d (%s tokens seen)", state.step, f"{state.tokens_seen:,}")
        elif loop_config.get("init_checkpoint"):  # fine-tuning's first launch: the base's weights, a fresh optimizer
            base = loop_config["init_checkpoint"]
            with _local_directory(base) as base_directory:
                engine.load_model_weights(load_tensors(base_directory, "model.pt"))
            if rank == 0:
                log.info("starting from the weights of %s", base.uri())

    evaluator = None  # eval.train_tasks (HellaSwag, perplexity), prepared by the driver
    if loop_config.get("eval_tasks"):

        evaluator = TrainingEvaluator(loop_config["eval_tasks"], rank, world_size)

    tracker = None
    if rank == 0 and loop_config.get("mlflow_run_id"):

        tracker = MlflowTracker(loop_config["tracking_uri"], loop_config["mlflow_run_id"],
                                retry_seconds=config.tracking.retry_seconds)
    if rank == 0:
        _log_start(engine, config, state)

    interval_start, interval_steps, data_seconds = time.perf_counter(), 0, 0.0
    while state.step < train.max_steps:
        result = engine.train_step(state.step)
        state.step += 1
        state.tokens_seen += engine.tokens_per_step
        interval_steps += 1
        data_seconds += result.data_seconds

        last = state.step == train.max_steps
        log_due = state.step % train.log_interval == 0 or last or state.step == 1
        eval_due = engine.has_validation() and (state.step % train.eval_interval == 0 or last)
        sample_due = train.sample_interval > 0 and state.step % train.sample_interval == 0
        checkpoint_due = state.step % train.checkpoint_interval == 0 or last
        tasks_due = evaluator is not None and evaluator.due(state.step, last)
        if not (log_due or eval_due or sample_due or checkpoint_due or tasks_due):
            continue

        # Every rank reaches here at the same steps, so the collectives below pair up.
        metrics = {"train/loss": engine.global_mean(result.loss), "train/lr": result.lr}
        if not math.isfinite(metrics["train/loss"]):  # every rank sees the same mean, so all stop together
            raise TrainingError(f"the loss is {metrics['train/loss']} at step {state.step}: training diverged "
                                f"(lower train.lr, or raise train.warmup_steps)")
        if log_due:
            elapsed = time.perf_counter() - interval_start
            tokens_per_second = engine.tokens_per_step * interval_steps / elapsed
            metrics.update({
                "train/tokens_per_s": tokens_per_second,
                "train/step_seconds": elapsed / interval_steps,
                "train/data_wait_fraction": data_seconds / elapsed,
                "train/grad_norm": float(_full(result.grad_norm)),
                "train/epoch": engine.sampler.epoch_of(state.step, train.batch_size),
            })
            mfu = engine.mfu(tokens_per_second)
            if mfu is not None:
                metrics["train/mfu"] = mfu
            if engine.scaler is not None:
                metrics["train/loss_scale"] = engine.scaler.get_scale()
            interval_start, interval_steps, data_seconds = time.perf_counter(), 0, 0.0
        if eval_due:
            metrics["val/loss"] = engine.evaluate()
            if state.best_val_loss is None or metrics["val/loss"] < state.best_val_loss:
                state.best_val_loss = metrics["val/loss"]
        if tasks_due:
            metrics.update(evaluator.run(engine))  # a collective, like evaluate()
        if rank == 0:
            _log_progress(state.step, train.max_steps, metrics)
            if tracker is not None:
                tracker.log_metrics(metrics, step=state.step)
        if sample_due:
            text = engine.sample(loop_config["tokenizer"], config.generate)
            if tracker is not None and text is not None:
                tracker.log_text(config.generate.prompt + text, f"samples/step_{state.step:08d}.txt")
        if checkpoint_due:
            _report_checkpoint(engine, state, metrics, config, rank)
        # evaluation, sampling and checkpointing are not training time
        if eval_due or sample_due or checkpoint_due or tasks_due:
            interval_start = time.perf_counter()

    if tracker is not None:
        tracker.save_outbox(run)  # what the server never got waits for the driver or the next launch


@contextlib.contextmanager
def _resume_directory(registered, run: Storage):
    """The checkpoint to resume from, as a local directory and the name to report it by.

    The newer of Ray's latest registered checkpoint and the newest complete one in the run
    directory: a job stopped while a checkpoint was being reported can leave that checkpoint
    complete but unregistered with Ray; resuming from it loses nothing and agrees with what the
    driver found (gptray.checkpoint.files.latest_checkpoint). Only the chosen one is downloaded.
    """
    candidates = [c for c in (latest_stored_checkpoint(run), _stored(registered)) if c is not None]
    if not candidates:
        yield None, None
        return
    chosen = max(candidates, key=lambda c: read_state(c).step)
    with _local_directory(chosen) as directory:
        yield directory, chosen.uri()


def _local_directory(checkpoint: Storage):
    """A checkpoint as a local directory: itself on a local filesystem, a temporary download otherwise."""
    from ray.train import Checkpoint

    return Checkpoint(path=checkpoint.base, filesystem=checkpoint.fs).as_directory()


def _stored(checkpoint) -> Storage | None:
    """Ray's registered checkpoint (path and filesystem) as a Storage; None if there is none."""
    if checkpoint is None:
        return None
    return Storage.on(checkpoint.filesystem, checkpoint.path)


def _full(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from what FSDP may hand back as a DTensor."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def _report_checkpoint(engine: TrainingEngine, state: TrainingState, metrics: dict, config: ExperimentConfig,
                       rank: int) -> None:
    import ray.train
    from ray.train import Checkpoint

    report = {"step": state.step, "tokens_seen": state.tokens_seen,
              **{k.replace("/", "_"): v for k, v in metrics.items()}}
    state.metrics = report
    model_state, optimizer_state, scaler_state = engine.full_state()  # a collective under FSDP
    with tempfile.TemporaryDirectory(prefix="gptray-ckpt-") as directory:
        checkpoint = None
        if rank == 0:  # the whole state is on rank 0: one copy is the checkpoint
            save_checkpoint(directory, model_state, optimizer_state, state, config, scaler_state)
            checkpoint = Checkpoint.from_directory(directory)
        ray.train.report(report, checkpoint=checkpoint, checkpoint_dir_name=checkpoint_dir_name(state.step))


def _log_start(engine: TrainingEngine, config: ExperimentConfig, state: TrainingState) -> None:
    train = config.train
    log.info(
        "training %s (%s parameters, %.2f GFLOP/token) on %s train tokens (%s windows of %d): global batch %d × %d"
        " = %s tokens/step, %d worker(s) × %d micro-batch(es) of %d, %s, %s%s, to step %d",
        config.model.preset or "custom", f"{engine.num_parameters:,}", engine.flops_per_token / 1e9,
        f"{len(engine.train_tokens):,}", f"{engine.sampler.num_windows:,}", engine.seq_len, train.batch_size,
        engine.seq_len, f"{engine.tokens_per_step:,}", engine.world_size, engine.micro_steps,
        train.micro_batch_size, train.precision, train.parallelism, ", compiled" if train.compile else "",
        train.max_steps,
    )
    if state.step >= train.max_steps:
        log.info("already trained to step %d (train.max_steps=%d): nothing to do", state.step, train.max_steps)


def _log_progress(step: int, max_steps: int, metrics: dict) -> None:
    parts = [f"step {step}/{max_steps}", f"loss {metrics['train/loss']:.4f}"]
    if "val/loss" in metrics:
        parts.append(f"val {metrics['val/loss']:.4f}")
    parts += [f"{k.split('/')[1]} {k.split('/')[2]} {v:.4f}" for k, v in metrics.items()
              if k.startswith("eval/") and k.endswith(("/acc_norm", "/ppl"))]
    parts.append(f"lr {metrics['train/lr']:.2e}")
    if "train/tokens_per_s" in metrics:
        parts.append(f"{metrics['train/tokens_per_s']:,.0f} tok/s")
        if "train/mfu" in metrics:
            parts.append(f"MFU {metrics['train/mfu']:.1%}")
        parts.append(f"grad norm {metrics['train/grad_norm']:.2f}")
    log.info(" | ".join(parts))
