"""The Ray Train glue of a run: its TorchTrainer (workers, resources, storage) and fitting it."""

from __future__ import annotations

import threading
from pathlib import Path

from gptray.config import ExperimentConfig
from gptray.core.errors import CheckpointError, ConfigError, DataError, TrainingError
from gptray.core.paths import is_uri
from gptray.core.storage import Storage
from gptray.eval.harness_validation import validation_config
from gptray.train.loop import train_loop_per_worker
from gptray.train.placement import WorkerPlan, controller_retries
from gptray.train.worker_inputs import WorkerInputs


def build_trainer(config: ExperimentConfig, plan: WorkerPlan | None, inputs: WorkerInputs,
                  callbacks: list | None = None):
    """Ray Train's TorchTrainer for this run: the workers' inputs, their resources (`plan`; None in local
    mode), where checkpoints go."""
    from ray.train import CheckpointConfig, FailureConfig, LoggingConfig, RunConfig, ScalingConfig  # heavy

    ray_config = config.ray
    # [min, max] is Ray Train's elastic group: it starts at what fits (at least min) and resizes toward max
    workers = (ray_config.min_workers, ray_config.max_workers) if ray_config.elastic else ray_config.num_workers
    scaling = ScalingConfig(num_workers=0) if plan is None else ScalingConfig(
        num_workers=workers, use_gpu=ray_config.use_gpu, resources_per_worker=plan.resources,
        accelerator_type=ray_config.accelerator_type, elastic_resize_monitor_interval_s=ray_config.resize_interval_s)
    return _torch_trainer_class()(
        train_loop_per_worker,
        train_loop_config=inputs.as_loop_config(),
        scaling_config=scaling,
        run_config=RunConfig(
            name=config.name,
            **_ray_storage(config.out_dir),
            # Ray deletes the older checkpoints it registered; the driver deletes orphans after the fit.
            checkpoint_config=CheckpointConfig(num_to_keep=config.checkpoint.keep),
            failure_config=FailureConfig(max_failures=config.ray.max_failures,
                                         controller_failure_limit=controller_retries(config.ray)),
            logging_config=LoggingConfig(log_level="WARNING"),
            callbacks=callbacks,
        ),
        validation_config=validation_config(config, inputs.tracking_uri, inputs.mlflow_run_id),  # eval.train_async
    )


def fit(trainer, config: ExperimentConfig):
    """trainer.fit(), with a worker's own data or checkpoint error raised as itself, any other failure as
    TrainingError, and Ctrl-C as KeyboardInterrupt."""
    try:
        # Local mode trains in this thread: a debugger's breakpoint stops there, and Ctrl-C arrives as it is.
        return trainer.fit() if config.ray.local_mode else _fit_interruptibly(trainer)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        cause = _root_cause(exc)
        if isinstance(cause, (CheckpointError, DataError, TrainingError)):  # a worker's own, said as it is
            raise cause from exc
        if type(cause).__name__ == "WorkerGroupStartupTimeoutError":  # only with ray.wait_timeout_s
            raise ConfigError("ray.wait_timeout_s", f"run {config.name}: no worker group after waiting "
                                                    f"{config.ray.wait_timeout_s:g} s for the cluster to grow "
                                                    f"({cause})") from exc
        raise TrainingError(f"training run {config.name} failed: {type(cause).__name__}: {cause}") from exc


def checkpoints_kept(fitted) -> set[str]:
    """The names of the checkpoints Ray keeps registered after a fit (checkpoint.keep of them)."""
    return {Path(c.path.rstrip("/")).name for c, _ in fitted.best_checkpoints or []}


def _torch_trainer_class():
    """Ray Train's TorchTrainer, less the Ray Data plumbing a run without Ray Datasets never uses.

    gptray's workers read their windows themselves (the data order is a pure function of the step), so
    no run passes `datasets=`. Ray Train still gives every run a DatasetManager actor and sends each
    worker the driver's Ray Data context, which costs a process start and the import of Ray Data in
    every worker: ~2 CPU s a run, for nothing. With datasets given, or a Ray without that callback,
    this is TorchTrainer as it is.
    """
    from ray.train.torch import TorchTrainer  # heavy

    try:
        from ray.train.v2._internal.callbacks import DatasetsCallback
    except ImportError:  # Ray Train's internals moved: keep its defaults
        return TorchTrainer

    class GptrayTorchTrainer(TorchTrainer):
        def _create_default_callbacks(self):
            callbacks = super()._create_default_callbacks()
            if self.datasets:
                return callbacks
            return [c for c in callbacks if not isinstance(c, DatasetsCallback)]

    return GptrayTorchTrainer


def _fit_interruptibly(trainer):
    """trainer.fit() in a thread of its own when this is the main thread, so that Ctrl-C reaches us as
    KeyboardInterrupt: Ray Train's own SIGINT handler (installed only in the main thread) exits the process
    without a word. The workers end with this process, which owns their controller; the checkpoints
    they completed stay."""
    if threading.current_thread() is not threading.main_thread():
        return trainer.fit()
    outcome: dict = {}

    def fit_in_thread() -> None:
        try:
            outcome["result"] = trainer.fit()
        except BaseException as exc:  # raised again in the main thread
            outcome["error"] = exc

    thread = threading.Thread(target=fit_in_thread, name="gptray-fit", daemon=True)
    thread.start()
    while thread.is_alive():
        thread.join(0.5)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def _ray_storage(out_dir: str) -> dict:
    """RunConfig's storage settings: Ray's run directory is out_dir/name, as ours is.

    On an object store the filesystem is resolved here and handed to Ray, so its controller and
    workers use the endpoint and region this process found (AWS_ENDPOINT_URL, the URI's query),
    whatever the environment they were started with.
    """
    if not is_uri(out_dir):
        return {"storage_path": out_dir}
    out = Storage(out_dir)
    return {"storage_path": out.base, "storage_filesystem": out.fs}


def _root_cause(exc: BaseException) -> BaseException:
    """The worker's own exception inside Ray's wrappers (TrainingFailedError → WorkerGroupError → …)."""
    seen = set()
    while id(exc) not in seen:
        seen.add(id(exc))
        inner = getattr(exc, "worker_failures", None)
        if isinstance(inner, dict) and inner:
            exc = next(iter(inner.values()))
            continue
        if exc.__cause__ is not None:
            exc = exc.__cause__
            continue
        break
    return exc
