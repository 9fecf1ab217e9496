"""The per-worker loop Ray Train runs on every rank: resume, step, log, evaluate, sample, checkpoint."""

from __future__ import annotations

import contextlib
import logging
import math
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

from gptray.base.devices import PeakMemory
from gptray.base.errors import TrainingError
from gptray.base.runtime import configure_logging
from gptray.base.storage import Storage
from gptray.checkpoint.files import (
    TrainingState,
    check_compatible,
    checkpoint_dir_name,
    latest_stored_checkpoint,
    load_tensors,
    local_files,
    optional_tensors,
    read_state,
    save_checkpoint,
    write_state,
)
from gptray.checkpoint.sharded import SHARDED, save_sharded
from gptray.config import ExperimentConfig
from gptray.data.manifest import Manifest
from gptray.data.windows import open_split_loss_mask, open_split_tokens
from gptray.eval.training import TrainingEvaluator
from gptray.tracking import MlflowTracker
from gptray.tracking.history import MetricHistory
from gptray.tracking.system_metrics import SystemMetrics, start_system_metrics
from gptray.train.cadence import Cadence
from gptray.train.engine import TrainingEngine

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    """Entry point of each Ray Train worker.

    `loop_config` holds the resolved config, the MLflow run to log to, and (for periodic
    samples) the tokenizer, which pickles by value so workers need no tiktoken cache.
    """
    import ray.train  # heavy, and only in Ray Train workers
    import ray.train.torch

    configure_logging()
    config = ExperimentConfig.from_dict(loop_config["config"])
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)

    # The dataset and run directory as the driver resolved them: an object store's endpoint and
    # region travel with them, so workers need only credentials in their environment.
    run = loop_config["run"]
    engine, manifest = _open_engine(config, loop_config["dataset"], device, rank, world_size)
    with PeakMemory(device) as loading:
        state = _resume(engine, config, manifest, ray.train.get_checkpoint(), run, loop_config.get("init_checkpoint"))
    evaluator = TrainingEvaluator(loop_config["eval_tasks"], rank, world_size) if loop_config.get("eval_tasks") \
        else None  # eval.train_tasks (HellaSwag, perplexity), prepared by the driver
    tracker, history = None, None
    if rank == 0:
        history = MetricHistory(run)
        history.discard_after(state.step)
        if loop_config.get("mlflow_run_id"):
            tracker = MlflowTracker(loop_config["tracking_uri"], loop_config["mlflow_run_id"],
                                    retry_seconds=config.tracking.retry_seconds)
        _log_start(engine, config, state)
        if tracker is not None and state.step > 0 and loading.extra_bytes is not None:
            # what loading the checkpoint took above the model and optimizer already built (rank 0's)
            tracker.log_metrics({"train/resume_peak_extra_mb": loading.extra_bytes / 1e6}, step=state.step)
    cadence = Cadence.of(config.train, engine.has_validation(), evaluator.interval if evaluator else None)
    system = _system_metrics(loop_config, context)
    try:
        _train(engine, state, config, cadence, evaluator, tracker, history, loop_config["tokenizer"])
        if loop_config.get("final_sample") and state.step >= config.train.max_steps:
            _final_sample(engine, state, config, loop_config["tokenizer"], run)
    finally:
        system.stop()
    if tracker is not None:
        tracker.save_outbox(run)  # what the server never got waits for the driver or the next launch


def _system_metrics(loop_config: dict, context) -> SystemMetrics:
    """MLflow's system metrics of this node (CPU, memory; GPUs where it has them), from its local rank 0
    only, as system/node<N>/… in the run: one series per node, however many ranks it holds."""
    if not loop_config.get("mlflow_run_id") or context.get_local_rank() != 0:
        return SystemMetrics()
    return start_system_metrics(loop_config["tracking_uri"], loop_config["mlflow_run_id"],
                                f"node{context.get_node_rank()}")


def _open_engine(config: ExperimentConfig, dataset: Storage, device: torch.device, rank: int,
                 world_size: int) -> tuple[TrainingEngine, Manifest]:
    """This rank's engine over the token dataset (decoded into the node's cache once)."""
    manifest = Manifest.load(dataset)
    splits = [open_split_tokens(dataset, manifest, split, config.data.cache_dir) for split in ("train", "val")]
    masks = [open_split_loss_mask(dataset, manifest, split, config.data.cache_dir) for split in ("train", "val")]
    return TrainingEngine(config, device, rank, world_size, *splits, *masks), manifest


def _resume(engine: TrainingEngine, config: ExperimentConfig, manifest: Manifest, registered, run: Storage,
            init_checkpoint: Storage | None) -> TrainingState:
    """The run's state: from its latest checkpoint, else fresh (with a fine-tuning base's weights)."""
    state = TrainingState(dataset_fingerprint=manifest.fingerprint, model=asdict(config.model),
                          world_size=engine.world_size, optimizer=config.train.optimizer)
    with _resume_directory(registered, run) as (directory, where):
        if directory is not None:
            state = read_state(directory)
            check_compatible(state, config, manifest.fingerprint, where)
            if state.format == SHARDED:  # each rank reads its own pieces, whatever world size wrote them
                engine.load_sharded(directory)
                if engine.scaler is not None and (scaler := optional_tensors(directory, "scaler.pt")) is not None:
                    engine.scaler.load_state_dict(scaler)
            else:
                engine.load_state(load_tensors(directory, "model.pt"), load_tensors(directory, "optimizer.pt"),
                                  optional_tensors(directory, "scaler.pt"))
            state.world_size = engine.world_size
            if engine.rank == 0:
                log.info("resumed from checkpoint at step %d (%s tokens seen)", state.step, f"{state.tokens_seen:,}")
        elif init_checkpoint is not None:  # fine-tuning's first launch: the base's weights, a fresh optimizer
            with _local_directory(init_checkpoint) as base_directory:
                if read_state(base_directory).format == SHARDED:
                    engine.load_sharded(base_directory, with_optimizer=False)
                else:
                    engine.load_model_weights(load_tensors(base_directory, "model.pt"))
            if engine.rank == 0:
                log.info("starting from the weights of %s", init_checkpoint.uri())
    return state


class _Throughput:
    """Tokens per second of training alone, over the steps since the last log."""

    def __init__(self):
        self.restart()

    def restart(self) -> None:
        self.start, self.steps, self.data_seconds = time.perf_counter(), 0, 0.0

    def add(self, data_seconds: float) -> None:
        self.steps += 1
        self.data_seconds += data_seconds

    def metrics(self, engine: TrainingEngine) -> dict[str, float]:
        elapsed = time.perf_counter() - self.start
        tokens_per_second = engine.tokens_per_step * self.steps / elapsed
        metrics = {"train/tokens_per_s": tokens_per_second, "train/step_seconds": elapsed / self.steps,
                   "train/data_wait_fraction": self.data_seconds / elapsed}
        mfu = engine.mfu(tokens_per_second)
        if mfu is not None:
            metrics["train/mfu"] = mfu
        return metrics


def _train(engine: TrainingEngine, state: TrainingState, config: ExperimentConfig, cadence: Cadence,
           evaluator: TrainingEvaluator | None, tracker: MlflowTracker | None, history: MetricHistory | None,
           tokenizer) -> None:
    """Optimizer steps to train.max_steps, with whatever each step makes due."""
    throughput = _Throughput()
    while state.step < config.train.max_steps:
        result = engine.train_step(state.step)
        state.step += 1
        state.tokens_seen += engine.tokens_per_step
        throughput.add(result.data_seconds)
        due = cadence.at(state.step)
        if not due.anything:
            continue
        # Every rank reaches here at the same steps, so the collectives below pair up.
        metrics = {"train/loss": engine.global_mean(result.loss), "train/lr": result.lr}
        if result.z_loss is not None:  # the term train.z_loss adds to the objective; train/loss is the cross-entropy
            metrics["train/z_loss"] = engine.global_mean(result.z_loss)
        if not math.isfinite(metrics["train/loss"]):  # every rank sees the same mean, so all stop together
            raise TrainingError(f"the loss is {metrics['train/loss']} at step {state.step}: training diverged "
                                f"(lower train.lr, or raise train.warmup_steps)")
        if due.log:
            metrics.update(throughput.metrics(engine))
            metrics["train/grad_norm"] = float(_full(result.grad_norm))
            metrics["train/epoch"] = engine.sampler.epoch_of(state.step, config.train.batch_size)
            if engine.scaler is not None:
                metrics["train/loss_scale"] = engine.scaler.get_scale()
            throughput.restart()
        if due.eval:
            metrics["val/loss"] = engine.evaluate()
            if state.best_val_loss is None or metrics["val/loss"] < state.best_val_loss:
                state.best_val_loss = metrics["val/loss"]
        if due.tasks:
            metrics.update(evaluator.run(engine))  # a collective, like evaluate()
        if engine.rank == 0:
            _log_progress(state.step, config.train.max_steps, metrics)
            history.add(state.step, metrics)
            if tracker is not None:
                tracker.log_metrics(metrics, step=state.step)
        if due.sample:
            text = engine.sample(tokenizer, config.generate)
            if tracker is not None and text is not None:
                tracker.log_text(config.generate.prompt + text, f"samples/step_{state.step:08d}.txt")
        if due.checkpoint:
            if history is not None:
                history.write()  # before the checkpoint: see gptray.tracking.history
            blocked, extra = _report_checkpoint(engine, state, metrics, config)
            if tracker is not None:  # the step's other metrics went before the checkpoint
                saved = {"train/checkpoint_blocked_s": blocked}
                if extra is not None:  # rank 0's: under a whole checkpoint, the rank that holds the most
                    saved["train/checkpoint_peak_extra_mb"] = extra / 1e6
                tracker.log_metrics(saved, step=state.step)
        if due.pauses_training:  # evaluation, sampling and checkpointing are not training time
            throughput.restart()


def final_sample_name(step: int) -> str:
    """Where rank 0 keeps the final model's sample, in the run directory (and in the MLflow run)."""
    return f"samples/step_{step:08d}.txt"


def _final_sample(engine: TrainingEngine, state: TrainingState, config: ExperimentConfig, tokenizer,
                  run: Storage) -> None:
    """The trained model's sample, generated here on the workers (all ranks under FSDP) and kept in the run
    directory for the driver to print: the driver never loads the model or its optimizer state."""
    text = engine.sample(tokenizer, config.generate)
    if text is not None:
        run.make_dirs("samples")
        run.write_bytes(final_sample_name(state.step), text.encode())


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
    from ray.train import Checkpoint  # heavy, and only in Ray Train workers

    return Checkpoint(path=checkpoint.base, filesystem=checkpoint.fs).as_directory()


def _stored(checkpoint) -> Storage | None:
    """Ray's registered checkpoint (path and filesystem) as a Storage; None if there is none."""
    if checkpoint is None:
        return None
    return Storage.on(checkpoint.filesystem, checkpoint.path)


def _full(value: torch.Tensor) -> torch.Tensor:
    """A plain tensor from what FSDP may hand back as a DTensor."""
    return value.full_tensor() if hasattr(value, "full_tensor") else value


def _report_checkpoint(engine: TrainingEngine, state: TrainingState, metrics: dict,
                       config: ExperimentConfig) -> tuple[float, int | None]:
    """Write this rank's checkpoint files to a local directory and report them to Ray Train, which merges
    the ranks' directories into checkpoint_NNNNNNNN in the run directory. Returns the seconds training
    waited, and the memory the write took above what training holds (bytes; None where unmeasurable).

    With train.checkpoint_upload=async, Ray uploads in a background thread (one at a time, in order)
    and deletes the local copy after: training waits only for the local write.
    """
    import ray.train  # heavy, and only in Ray Train workers
    from ray.train import Checkpoint
    from ray.train.v2.api.report_config import CheckpointUploadMode

    start = time.perf_counter()
    report = {"step": state.step, "tokens_seen": state.tokens_seen,
              **{k.replace("/", "_"): v for k, v in metrics.items()}}
    state.metrics = report
    directory = Path(tempfile.mkdtemp(prefix="gptray-ckpt-"))
    try:
        with PeakMemory(engine.device) as memory:
            if config.train.effective_checkpoint_format() == SHARDED:
                wrote = _write_sharded(engine, state, config, directory)
            else:
                wrote = _write_whole(engine, state, config, directory)
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    if not wrote:
        shutil.rmtree(directory, ignore_errors=True)
    upload = CheckpointUploadMode.ASYNC if config.train.checkpoint_upload == "async" else CheckpointUploadMode.SYNC
    ray.train.report(report, checkpoint=Checkpoint.from_directory(str(directory)) if wrote else None,
                     checkpoint_dir_name=checkpoint_dir_name(state.step), checkpoint_upload_mode=upload,
                     delete_local_checkpoint_after_upload=True)
    return time.perf_counter() - start, memory.extra_bytes


def _write_whole(engine: TrainingEngine, state: TrainingState, config: ExperimentConfig, directory: Path) -> bool:
    """Rank 0 writes the whole state (gathered first under FSDP, a collective); whether this rank wrote."""
    model_state, optimizer_state, scaler_state = engine.full_state()
    if engine.rank != 0:
        return False
    save_checkpoint(directory, model_state, optimizer_state, state, config, scaler_state)
    return True


def _write_sharded(engine: TrainingEngine, state: TrainingState, config: ExperimentConfig, directory: Path) -> bool:
    """Every rank writes the part of the state it holds (DCP: a collective); rank 0 adds the scaler, the
    config and state.json, which lists every rank's files so that a checkpoint missing one is incomplete."""
    import torch.distributed as dist

    save_sharded(directory, engine.sharded_state())
    if engine.rank == 0 and engine.scaler is not None:
        torch.save(engine.scaler.state_dict(), directory / "scaler.pt")
    files = [local_files(directory)]
    if dist.is_available() and dist.is_initialized():
        files = [None] * engine.world_size
        dist.all_gather_object(files, local_files(directory))  # names and sizes only, a few bytes a rank
    if engine.rank == 0:
        state.format = SHARDED
        write_state(directory, state, config, {name: size for rank_files in files for name, size in rank_files.items()})
    return True


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
