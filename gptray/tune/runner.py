"""Run a sweep with Ray Tune: each trial a Tune function trainable that runs a TorchTrainer (pretrain).

MLflow gets one parent run for the sweep and a nested child run per trial. A trial that fails is
recorded as failed (with its error) and the others go on. Launching the same sweep again
restores Tune's state; each trial also resumes from its own checkpoints, so finished trials
cost nothing and interrupted ones continue where they stopped.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import traceback
from dataclasses import dataclass, field
from pathlib import Path

from gptray.base.errors import ConfigError
from gptray.base.paths import is_uri
from gptray.base.runtime import configure_logging, init_ray
from gptray.config import ExperimentConfig
from gptray.tracking import MlflowTracker
from gptray.train.pretrain import pretrain
from gptray.tune.spec import Sweep

log = logging.getLogger(__name__)

TRIAL_CPU = 0.01  # the trainable itself only waits on its TorchTrainer; Tune needs a request > 0


@dataclass
class TrialOutcome:
    name: str
    label: str
    seed: int
    status: str  # "finished", "failed", or "stopped" (early, by ASHA)
    error: str = ""
    metrics: dict = field(default_factory=dict)


@dataclass
class SweepOutcome:
    directory: str
    parent_run_id: str | None
    tracking_uri: str
    trials: list[TrialOutcome]

    def failed(self) -> list[TrialOutcome]:
        return [t for t in self.trials if t.status == "failed"]


def run_trial(params: dict, trials: dict[str, dict], parent_run_id: str | None) -> None:
    """The Tune trainable: one pretrain run, tracked as a child of the sweep's run.

    Tune's search space holds only the trial's name (so its tables stay readable); the trial's
    config and tags come from `trials`, bound to the trainable.
    """
    from ray.tune.integration.ray_train import TuneReportCallback

    configure_logging()
    trial = trials[params["trial"]]
    config = ExperimentConfig.from_dict(trial["config"])
    tracker = None
    if config.tracking.enabled:
        try:
            tracker = MlflowTracker.start(config, parent_run_id=parent_run_id, tags=trial["tags"])
        except Exception as exc:  # tracking never takes a trial down
            log.warning("MLflow tracking unavailable for trial %s (%s); training without it", trial["name"], exc)
    try:
        pretrain(config, sample=False, tracker=tracker, callbacks=[TuneReportCallback()])
    except BaseException as exc:
        if tracker is not None:
            tracker.set_tags({"gptray.error": f"{type(exc).__name__}: {exc}"[:5000]})
            tracker.log_text(traceback.format_exc(), "error.txt")
            tracker.finish("FAILED")
        raise


def max_concurrent_trials(base: ExperimentConfig) -> int:
    """How many trials the cluster runs at once without one trial's workers waiting on another's."""
    import ray

    resources = ray.cluster_resources()
    per_trial_cpu = base.ray.num_workers * base.ray.cpus_per_worker + TRIAL_CPU
    fits = math.floor(resources.get("CPU", 0) / per_trial_cpu)
    if base.ray.use_gpu:
        fits = min(fits, math.floor(resources.get("GPU", 0) / base.ray.num_workers))
    if fits < 1:
        log.warning("one trial needs %.2f CPUs%s; the cluster has %s now: trials wait for an autoscaler",
                    per_trial_cpu, f" and {base.ray.num_workers} GPUs" if base.ray.use_gpu else "", resources)
    return max(fits, 1)


def run_sweep(sweep: Sweep) -> SweepOutcome:
    from ray import tune

    base, spec = sweep.base, sweep.spec
    if is_uri(sweep.directory):
        # Tune's own state and restore (tune.Tuner.restore) go through a local path here.
        raise ConfigError("out_dir", f"a sweep needs a local or shared-filesystem out_dir, not {base.out_dir}; "
                                     "object-store URIs work for single runs (gptray pretrain)")
    init_ray(base.ray.address, base.ray.num_cpus)
    Path(sweep.directory).mkdir(parents=True, exist_ok=True)
    parent = None
    if base.tracking.enabled:
        try:
            parent = MlflowTracker.start(base, tags={
                "gptray.sweep.role": "parent", "gptray.sweep.axes": ",".join(spec.axes),
                "gptray.sweep.baseline": sweep.baseline(), "gptray.sweep.metric": spec.metric,
                "gptray.sweep.labels": "\n".join(sweep.labels()),
            })
            parent.log_params({f"sweep.{k}": v for k, v in _flat_spec(spec).items()})
        except Exception as exc:
            log.warning("MLflow tracking unavailable at %s (%s); the sweep runs without it", base.tracking_uri(), exc)

    specs = {t.name: {"name": t.name, "label": t.label, "seed": t.seed, "tags": t.tags(base.name),
                      "config": t.config.to_dict()} for t in sweep.trials}
    trainable = tune.with_resources(
        functools.partial(run_trial, trials=specs, parent_run_id=parent.run_id if parent else None),
        {"cpu": TRIAL_CPU},
    )
    tune_dir = str(Path(sweep.directory) / "tune")
    concurrent = spec.max_concurrent_trials or max_concurrent_trials(base)
    if tune.Tuner.can_restore(tune_dir):
        log.info("sweep %s: restoring Tune's state from %s", base.name, tune_dir)
        tuner = tune.Tuner.restore(tune_dir, trainable=trainable, resume_unfinished=True, resume_errored=True)
    else:
        scheduler = None
        if spec.scheduler == "asha":
            scheduler = tune.schedulers.ASHAScheduler(metric=spec.asha_metric, mode="min",
                                                      time_attr="training_iteration",
                                                      grace_period=spec.asha_grace_reports)
        tuner = tune.Tuner(
            trainable,
            param_space={"trial": tune.grid_search(list(specs))},
            tune_config=tune.TuneConfig(
                max_concurrent_trials=concurrent, scheduler=scheduler,
                trial_name_creator=lambda t: t.config["trial"], trial_dirname_creator=lambda t: t.config["trial"],
            ),
            run_config=tune.RunConfig(name="tune", storage_path=sweep.directory,
                                      failure_config=tune.FailureConfig(max_failures=0)),
        )
    log.info("sweep %s: %d trial(s) (%s × %d seed(s)), up to %d at a time", base.name, len(sweep.trials),
             " × ".join(f"{k}[{len(v)}]" for k, v in spec.axes.items()), len(spec.seeds), concurrent)
    grid = tuner.fit()

    outcomes = []
    for result in grid:
        trial = specs[result.config["trial"]]
        outcomes.append(TrialOutcome(trial["name"], trial["label"], trial["seed"],
                                     "failed" if result.error else "finished", _describe(result.error),
                                     dict(result.metrics or {})))
    outcomes.sort(key=lambda t: [x.name for x in sweep.trials].index(t.name))
    if parent is not None:
        stopped = _close_stopped_trials(parent)
        for outcome in outcomes:
            if outcome.name in stopped and outcome.status == "finished":
                outcome.status = "stopped"
        parent.set_tags({"gptray.sweep.failed_trials": str(sum(t.status != "finished" for t in outcomes))})
        parent.finish("FINISHED")
    return SweepOutcome(sweep.directory, parent.run_id if parent else None, base.tracking_uri(), outcomes)


def _describe(error: BaseException | None) -> str:
    """The trial's own exception, not Ray's wrapper around it (RayTaskError names the actor)."""
    if error is None:
        return ""
    cause = getattr(error, "cause", None) or error
    return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]


def _close_stopped_trials(parent) -> set[str]:
    """Trials Tune stopped early (ASHA) never finished their MLflow run: close them as KILLED."""
    client = parent.client
    running = client.search_runs([parent.experiment_id] if parent.experiment_id else
                                 [client.get_run(parent.run_id).info.experiment_id],
                                 f"tags.`mlflow.parentRunId` = '{parent.run_id}' and attributes.status = 'RUNNING'")
    for run in running:
        client.set_tag(run.info.run_id, "gptray.sweep.stopped_early", "true")
        client.set_terminated(run.info.run_id, "KILLED")
    return {run.info.run_name for run in running}


def _flat_spec(spec) -> dict:
    return {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in dataclasses.asdict(spec).items()}
