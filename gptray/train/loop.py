"""The per-worker loop Ray Train runs on every rank: resume, step, log, evaluate, sample, checkpoint."""

from __future__ import annotations

import dataclasses
import logging
import math
import time
from pathlib import Path

import torch

from gptray.checkpoint.files import TrainingState
from gptray.config import ExperimentConfig
from gptray.core.devices import PeakMemory
from gptray.core.runtime import configure_logging
from gptray.core.storage import Storage
from gptray.data.manifest import Manifest
from gptray.data.train_windows import DataOrder, open_train_windows, open_val_windows
from gptray.eval.training import TrainingEvaluator, progress_parts
from gptray.tracking import MlflowTracker
from gptray.tracking.history import MetricHistory
from gptray.tracking.system_metrics import SystemMetrics, start_system_metrics
from gptray.train.cadence import Cadence
from gptray.train.checkpoint_manager import CheckpointManager
from gptray.train.checkpoint_writer import Written
from gptray.train.engine import StepResult, TrainingEngine
from gptray.train.numerics import StepGuard, describe_skip, global_batch_windows
from gptray.train.preemption import PreemptionNotice, describe_deadline
from gptray.train.progress import StepBar
from gptray.train.rewind import rewind
from gptray.train.worker_inputs import WorkerInputs

log = logging.getLogger(__name__)


def train_loop_per_worker(loop_config: dict) -> None:
    """Entry point of each Ray Train worker: `loop_config` holds the driver's WorkerInputs."""
    import ray.train  # heavy, and only in Ray Train workers
    import ray.train.torch

    configure_logging()
    inputs = WorkerInputs.of_loop_config(loop_config)
    config = inputs.config
    context = ray.train.get_context()
    rank, world_size = context.get_world_rank(), context.get_world_size()
    device = ray.train.torch.get_device()
    if device.type == "cuda":
        torch.cuda.set_device(device)

    engine, manifest = _open_engine(config, inputs.dataset, inputs.order, device, rank, world_size,
                                    inputs.token_bytes)
    checkpoints = CheckpointManager(config, inputs.run, manifest.fingerprint, inputs.order, engine)
    with PeakMemory(device) as loading:
        state = checkpoints.load(ray.train.get_checkpoint(), inputs.init_checkpoint)
    evaluator = TrainingEvaluator(inputs.eval_tasks, rank, world_size) if inputs.eval_tasks \
        else None  # eval.train_tasks (gptray's own, prepared by the driver; harness tasks)
    tracker, history = None, None
    if rank == 0:
        history = MetricHistory(inputs.run)
        history.discard_after(state.step)
        if inputs.mlflow_run_id:
            tracker = MlflowTracker(inputs.tracking_uri, inputs.mlflow_run_id,
                                    retry_seconds=config.tracking.retry_seconds)
        _log_start(engine, config, state)
        if tracker is not None and state.step > 0 and loading.extra_bytes is not None:
            # what loading the checkpoint took above the model and optimizer already built (rank 0's)
            tracker.log_metrics({"train/resume_peak_extra_mb": loading.extra_bytes / 1e6}, step=state.step)
    cadence = Cadence.of(config, engine.has_validation(), evaluator.interval if evaluator else None)
    system = _system_metrics(inputs, context)
    bar = StepBar.open(inputs.progress_bar and rank == 0, state.step, config.train.max_steps,
                       in_ray_worker=not config.ray.local_mode)
    try:
        _train(engine, state, config, cadence, checkpoints, evaluator, tracker, history, inputs.tokenizer,
               PreemptionNotice(config.checkpoint.preemption_check_interval), bar)
        bar.close()  # done before the final sample's generation
        if inputs.final_sample and state.step >= config.train.max_steps:
            _final_sample(engine, state, config, inputs.tokenizer, inputs.run)
    finally:
        bar.close()
        system.stop()
        engine.train_data.close()
    if tracker is not None:
        tracker.save_outbox(inputs.run)  # what the server never got waits for the driver or the next launch


def _system_metrics(inputs: WorkerInputs, context) -> SystemMetrics:
    """MLflow's system metrics of this node (CPU, memory; GPUs where it has them), from its local rank 0
    only, as system/node<N>/… in the run: one series per node, however many ranks it holds."""
    if not inputs.mlflow_run_id or context.get_local_rank() != 0:
        return SystemMetrics()
    return start_system_metrics(inputs.tracking_uri, inputs.mlflow_run_id, f"node{context.get_node_rank()}")


def _open_engine(config: ExperimentConfig, dataset: Storage, order: DataOrder, device: torch.device, rank: int,
                 world_size: int, token_bytes=None) -> tuple[TrainingEngine, Manifest]:
    """This rank's engine over the token dataset, in the run's order (train_windows.py)."""
    manifest = Manifest.load(dataset)
    train_data = open_train_windows(config, dataset, manifest, order, rank)
    try:
        val_tokens, val_mask, val_starts = open_val_windows(config, dataset, manifest, order)
        engine = TrainingEngine(config, device, rank, world_size, train_data, val_tokens,
                                val_loss_mask=val_mask, val_starts=val_starts, token_bytes=token_bytes)
    except BaseException:
        train_data.close()
        raise
    return engine, manifest


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
           checkpoints: CheckpointManager, evaluator: TrainingEvaluator | None, tracker: MlflowTracker | None,
           history: MetricHistory | None, tokenizer, preemption: PreemptionNotice | None = None,
           bar: StepBar | None = None) -> None:
    """Optimizer steps to train.max_steps, with whatever each step makes due."""
    bar = bar or StepBar()
    throughput = _Throughput()
    guard = StepGuard(config.train, state.skips)  # which steps are applied (numerics.py)
    largest = _LargestGradNorm()
    while state.step < config.train.max_steps:
        if _held(config.train.test_hold_file, state.step):  # tests only
            _log_written(checkpoints.finish(), tracker)  # reported to Ray: what a restarted group resumes from
            if engine.rank == 0:  # the test sees where the run waits
                Path(config.train.test_hold_file + ".at").write_text(str(state.step))
            while _held(config.train.test_hold_file, state.step):
                time.sleep(0.05)
        result = engine.train_step(state.step, guard)
        state.step += 1
        state.tokens_seen += engine.tokens_per_step
        bar.at(state.step)
        throughput.add(result.data_seconds)
        largest.add(result)
        if not result.verdict.apply and engine.rank == 0:
            _log_skip(state.step, result, config.train.batch_size, tracker)
        if result.verdict.rewind:  # every rank has the same verdict: it is judged from all-reduced numbers
            # the newest checkpoint, once its write and upload are done (one still in flight included)
            target, written = checkpoints.rewind_point()
            _log_written(written, tracker)
            rewound = rewind(checkpoints, target, guard, state)  # the checkpoint's state into `state`, in place
            if rewound is not None:
                guard = rewound
                if history is not None:
                    history.discard_after(state.step)
                if tracker is not None:  # the ranges in force now, as tags (a run's params cannot change)
                    tracker.set_tags(guard.tags())
                throughput.restart()
                continue
        if history is not None:  # which windows this step read, at this world size: the same in every run
            history.add(state.step, {"data/batch_digest": engine.train_data.batch_digest(state.step - 1),
                                     "train/world_size": engine.world_size, "train/time": time.time()})
        _log_written(checkpoints.poll(), tracker)  # a checkpoint written in the background, once all ranks are done
        due = cadence.at(state.step)
        preempting = preemption is not None and preemption.checkpoint_now(state.step)  # a collective at its steps
        if preempting:
            due = dataclasses.replace(due, checkpoint=True)  # a node is about to go: the restart resumes here
        if not due.anything:
            continue
        # Every rank reaches here at the same steps, so the collectives below pair up.
        metrics = {"train/lr": result.lr, **guard.metrics()}
        if preempting:
            metrics["train/preemption_checkpoint"] = 1.0
        if result.global_loss is not None and math.isfinite(result.global_loss):  # a skipped step may have none
            metrics["train/loss"] = result.global_loss
        if result.z_loss is not None:  # the term train.z_loss adds to the objective; train/loss is the cross-entropy
            metrics["train/z_loss"] = engine.global_mean(result.z_loss)
        if due.log:
            metrics.update(throughput.metrics(engine))
            if result.grad_norm_value is not None and math.isfinite(result.grad_norm_value):
                metrics["train/grad_norm"] = result.grad_norm_value
            metrics.update(largest.take())
            metrics["train/epoch"] = engine.train_data.epoch_of(state.step)
            if engine.scaler is not None:
                metrics["train/loss_scale"] = engine.scaler.get_scale()
                metrics["train/overflow_steps"] = largest.overflows
            throughput.restart()
        if due.eval:
            validation = engine.evaluate()
            metrics["val/loss"] = validation.loss
            if state.best_val_loss is None or validation.loss < state.best_val_loss:
                state.best_val_loss = validation.loss
            if validation.bpb is not None:
                metrics["val/bpb"] = validation.bpb
                if state.best_val_bpb is None or validation.bpb < state.best_val_bpb:
                    state.best_val_bpb = validation.bpb
        if due.tasks:
            metrics.update(evaluator.run(engine))  # a collective, like evaluate()
        if engine.rank == 0:
            log.info(progress_line(state.step, config.train.max_steps, metrics))
            history.add(state.step, metrics)
            if tracker is not None:
                tracker.log_metrics(metrics, step=state.step)
        if due.sample:
            text = engine.sample(tokenizer, config.generate)
            if tracker is not None and text is not None:
                tracker.log_text(config.generate.prompt + text, f"samples/step_{state.step:08d}.txt")
        if due.checkpoint:
            state.skips = guard.record()
            if history is not None:
                history.write()  # before the checkpoint: see gptray.tracking.history
            written = checkpoints.save(state, metrics, urgent=preempting)
            _log_written(written, tracker)
            if preempting and engine.rank == 0:
                _log_preemption_checkpoint(state.step, written, preemption)
        if due.pauses_training:  # evaluation, sampling and checkpointing are not training time
            throughput.restart()
    _log_written(checkpoints.finish(), tracker)  # the last one, if its write is still in flight


def _held(path: str | None, step: int) -> bool:
    """train.test_hold_file (tests only): whether the file names a step at or before `step`."""
    if not path:
        return False
    try:
        return step >= int(Path(path).read_text().strip() or step)
    except OSError:  # no file: no hold
        return False


class _LargestGradNorm:
    """The largest finite gradient norm since the last log, and fp16's overflowed steps since the launch."""

    def __init__(self):
        self.largest, self.overflows = None, 0

    def add(self, result: StepResult) -> None:
        self.overflows += result.overflowed
        norm = result.grad_norm_value
        if norm is not None and math.isfinite(norm) and (self.largest is None or norm > self.largest):
            self.largest = norm

    def take(self) -> dict[str, float]:
        largest, self.largest = self.largest, None
        return {"train/grad_norm_max": largest} if largest is not None else {}


def _log_skip(step: int, result: StepResult, batch_size: int, tracker: MlflowTracker | None) -> None:
    """A step whose update was not applied: a warning naming its global batch's windows, and an MLflow
    metric at its step (train/skip_nonfinite, train/skip_spike or train/skip_configured)."""
    loss = result.global_loss if result.global_loss is not None else math.nan
    log.warning(describe_skip(step, result.verdict, loss, global_batch_windows(step, batch_size)))
    if tracker is not None:
        tracker.log_metrics({f"train/skip_{result.verdict.reason}": 1.0}, step=step)


def _log_written(written: list[Written], tracker: MlflowTracker | None) -> None:
    """What each checkpoint cost, at its step (rank 0's figures; under a whole checkpoint, the rank that
    holds the most)."""
    for checkpoint in written if tracker is not None else []:
        saved = {"train/checkpoint_blocked_s": checkpoint.blocked_seconds}
        if checkpoint.extra_bytes is not None:
            saved["train/checkpoint_peak_extra_mb"] = checkpoint.extra_bytes / 1e6
        tracker.log_metrics(saved, step=checkpoint.step)


def _log_preemption_checkpoint(step: int, written: list[Written], preemption: PreemptionNotice) -> None:
    """Rank 0's line for a checkpoint written because a node is about to be preempted. The step's metrics (its
    MLflow metrics and the run's history) carry train/preemption_checkpoint = 1; no MLflow call is made here,
    which could block training while the node's time runs out."""
    seconds = sum(w.blocked_seconds for w in written if w.step == step)
    log.warning("step %d: preemption checkpoint stored in %.1f s (%s): the group Ray restarts without the node "
                "resumes from the latest", step, seconds, describe_deadline(preemption.pending.deadline_ms))


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


def _log_start(engine: TrainingEngine, config: ExperimentConfig, state: TrainingState) -> None:
    train = engine.train_config  # precision and compile as resolved on this device
    log.info(
        "training %s (%s parameters, %.2f GFLOP/token) on %s train tokens (%s windows of %d): global batch %d × %d"
        " = %s tokens/step, %d worker(s) × %d micro-batch(es) of %d, %s, %s%s, %s order, to step %d",
        config.model.preset or "custom", f"{engine.num_parameters:,}", engine.flops_per_token / 1e9,
        f"{engine.train_data.num_tokens:,}", f"{engine.train_data.num_windows:,}", engine.seq_len, train.batch_size,
        engine.seq_len, f"{engine.tokens_per_step:,}", engine.world_size, engine.micro_steps,
        train.micro_batch_size, train.precision, train.parallelism, ", compiled" if train.compile else "",
        engine.train_data.order_kind, train.max_steps,
    )
    if state.step >= train.max_steps:
        log.info("already trained to step %d (train.max_steps=%d): nothing to do", state.step, train.max_steps)


def progress_line(step: int, max_steps: int, metrics: dict) -> str:
    """The progress line of a logged step: loss, validation, lr, throughput, gradient norms, skips, rewinds."""
    parts = [f"step {step}/{max_steps}",
             f"loss {metrics['train/loss']:.4f}" if "train/loss" in metrics else "loss -"]
    if "val/loss" in metrics:
        parts.append(f"val {metrics['val/loss']:.4f}")
    if "val/bpb" in metrics:
        parts.append(f"val bpb {metrics['val/bpb']:.4f}")
    parts += progress_parts(metrics)  # eval.train_tasks: each task's headline measure
    parts.append(f"lr {metrics['train/lr']:.2e}")
    if "train/tokens_per_s" in metrics:
        parts.append(f"{metrics['train/tokens_per_s']:,.0f} tok/s")
        if "train/mfu" in metrics:
            parts.append(f"MFU {metrics['train/mfu']:.1%}")
        if "train/grad_norm" in metrics:
            parts.append(f"grad norm {metrics['train/grad_norm']:.2f}")
        if "train/grad_norm_max" in metrics:
            parts.append(f"max {metrics['train/grad_norm_max']:.2f}")
    if metrics.get("train/skipped_steps"):
        parts.append(f"skipped {metrics['train/skipped_steps']:.0f} (non-finite {metrics['train/nonfinite_steps']:.0f}"
                     f", spikes {metrics['train/spike_steps']:.0f})")
    if metrics.get("train/rewinds"):
        parts.append(f"rewinds {metrics['train/rewinds']:.0f}")
    return " | ".join(parts)
