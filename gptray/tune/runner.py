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

from gptray.checkpoint.files import latest_checkpoint, read_state
from gptray.config import ExperimentConfig
from gptray.core.cluster import DRIVER_RESOURCE, DRIVER_SHARE, Cluster, live_cluster
from gptray.core.errors import ConfigError
from gptray.core.paths import is_uri
from gptray.core.runtime import configure_logging, init_ray, use_ray_tune_settings
from gptray.tracking import MlflowTracker
from gptray.tracking.run_tracking import check_tracking_store
from gptray.train.epochs import resolve_epochs
from gptray.train.placement import plan_workers
from gptray.train.pretrain import pretrain
from gptray.tune.prepare import prepare_sweep_data
from gptray.tune.progress import sweep_console
from gptray.tune.spec import Sweep

log = logging.getLogger(__name__)

@dataclass
class TrialOutcome:
    name: str
    label: str
    seed: int
    status: str  # "finished", "failed", "stopped" (early, by ASHA), "interrupted" or "not started"
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

    def count(self, status: str) -> int:
        return sum(t.status == status for t in self.trials)

    @property
    def interrupted(self) -> bool:
        """Whether the sweep was stopped (Ctrl-C) before every trial ran: launching it again resumes."""
        return any(t.status in ("interrupted", "not started") for t in self.trials)


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


def trial_driver(cluster: Cluster) -> dict[str, float]:
    """What a trial's own process asks for: a share of the driver resource where the cluster has one (the
    head in cluster/*.yaml, so trial drivers and their Ray Train controllers stay off GPU nodes), else
    a sliver of a CPU (Tune needs a request above zero)."""
    if cluster.total(DRIVER_RESOURCE) > 0:
        return {DRIVER_RESOURCE: DRIVER_SHARE}
    return {"CPU": DRIVER_SHARE}


def concurrency(sweep: Sweep, cluster: Cluster, driver: dict[str, float]) -> tuple[int, float]:
    """(trials at a time, CPUs per worker). A cluster that can grow gets every trial at once: their pending
    worker groups are what makes the autoscaler add nodes, up to its max_workers. A fixed one runs as
    many as fit; with ray.cpus_per_worker auto, one at a time unless sweep.max_concurrent_trials says more."""
    base, spec = sweep.base, sweep.spec
    if cluster.can_grow:
        return spec.max_concurrent_trials or len(sweep.trials), plan_workers(base.ray, cluster, "a trial").cpus
    if base.ray.cpus_per_worker == "auto":
        concurrent = spec.max_concurrent_trials or 1
        return concurrent, plan_workers(base.ray, cluster, "a trial", driver, concurrent).cpus
    plan = plan_workers(base.ray, cluster, "a trial", driver)  # refuses a trial that can never fit
    fits = min(math.floor(cluster.total(r) / plan.demand.total(r)) for r in plan.demand.bundle if plan.demand.total(r))
    return spec.max_concurrent_trials or max(1, fits), plan.cpus


def run_sweep(sweep: Sweep) -> SweepOutcome:
    use_ray_tune_settings()
    from ray import tune

    base, spec = sweep.base, sweep.spec
    if base.ray.local_mode:
        raise ConfigError("ray.num_workers", "is 0 (local mode: one run in the launching process); a sweep's "
                                             "trials train on Ray Train workers: set it to 1 or more")
    if is_uri(sweep.directory):
        # Tune's own state and restore (tune.Tuner.restore) go through a local path here.
        raise ConfigError("out_dir", f"a sweep needs a local or shared-filesystem out_dir, not {base.out_dir}; "
                                     "object-store URIs work for single runs (gptray pretrain)")
    init_ray(base.ray.address, base.ray.num_cpus)
    sweep = prepare_sweep_data(sweep)  # tokenizers and datasets the trials need, before any trial starts
    cluster = live_cluster(base.ray.autoscaling)
    driver = trial_driver(cluster)
    concurrent, cpus = concurrency(sweep, cluster, driver)
    for trial in sweep.trials:  # each trial's own workers and settings, checked before anything starts
        plan_workers(_with_cpus(trial.config, cpus).ray, cluster, f"trial {trial.name}", driver, concurrent)
        check_tracking_store(trial.config, cluster)
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
                      "config": _with_cpus(t.config, cpus).to_dict()} for t in sweep.trials}
    trainable = tune.with_resources(
        functools.partial(run_trial, trials=specs, parent_run_id=parent.run_id if parent else None),
        tune.PlacementGroupFactory([driver]),
    )
    tune_dir = str(Path(sweep.directory) / "tune")
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
                # Every trial asks for the same driver resources, so a finished trial's process runs the
                # next one: a fresh one costs a process start and the imports of torch, MLflow and Ray
                # Train (~3-5 CPU s each on 2 cores). run_trial keeps no state between trials; Tune
                # starts a fresh actor where the last trial's thread does not end (e.g. stopped by ASHA).
                reuse_actors=True,
                trial_name_creator=lambda t: t.config["trial"], trial_dirname_creator=lambda t: t.config["trial"],
            ),
            # A trial whose driver's node is lost is tried again (from its checkpoints), as often as
            # Ray Train restarts a lost worker group: ray.max_failures.
            run_config=tune.RunConfig(name="tune", storage_path=sweep.directory,
                                      failure_config=tune.FailureConfig(max_failures=base.ray.max_failures),
                                      **sweep_console(len(sweep.trials))),
        )
    log.info("sweep %s: %d trial(s) (%s × %d seed(s)), up to %d at a time", base.name, len(sweep.trials),
             " × ".join(f"{k}[{len(v)}]" for k, v in spec.axes.items()), len(spec.seeds), concurrent)
    grid = tuner.fit()

    outcome = SweepOutcome(sweep.directory, parent.run_id if parent else None, base.tracking_uri(),
                           _outcomes(sweep, grid))
    if parent is not None:
        stopped = _close_unfinished_trials(parent, interrupted=outcome.interrupted)
        for trial in outcome.trials:
            if trial.name in stopped and trial.status == "finished":
                trial.status = "stopped"
        parent.set_tags({"gptray.sweep.failed_trials": str(outcome.count("failed")),
                         "gptray.sweep.unfinished_trials": str(outcome.count("interrupted") +
                                                               outcome.count("not started"))})
        parent.finish("KILLED" if outcome.interrupted else "FINISHED")
    return outcome


def _with_cpus(config: ExperimentConfig, cpus: float) -> ExperimentConfig:
    """The trial's config with ray.cpus_per_worker: auto made the number the sweep decided."""
    if config.ray.cpus_per_worker != "auto":
        return config
    return dataclasses.replace(config, ray=dataclasses.replace(config.ray, cpus_per_worker=cpus))


def _outcomes(sweep: Sweep, grid) -> list[TrialOutcome]:
    """Every trial of the sweep, in its order, with what became of it. Tune's results hold only the trials
    it started; a trial with no result, or one Tune left running when it was stopped, did not finish."""
    results = {result.config["trial"]: result for result in grid}
    states = {t.config["trial"]: t.status for t in getattr(getattr(grid, "_experiment_analysis", None), "trials", [])}
    outcomes = []
    for trial in sweep.trials:
        result = results.get(trial.name)
        latest = latest_checkpoint(trial.config.run_dir)
        if result is not None and result.error:
            status = "failed"
        elif latest is not None and read_state(latest).step >= resolve_epochs(trial.config).train.max_steps:
            status = "finished"
        elif result is not None and sweep.spec.scheduler == "asha" and states.get(trial.name) == "TERMINATED":
            status = "finished"  # stopped early by ASHA: told apart by its MLflow run, which is still open
        elif latest is not None or Path(trial.config.run_dir, "config.yaml").is_file():
            status = "interrupted"
        else:
            status = "not started"
        outcomes.append(TrialOutcome(trial.name, trial.label, trial.seed, status,
                                     _describe(result.error) if result is not None else "",
                                     dict(result.metrics or {}) if result is not None else {}))
    return outcomes


def _describe(error: BaseException | None) -> str:
    """The trial's own exception, not Ray's wrapper around it (RayTaskError names the actor)."""
    if error is None:
        return ""
    cause = getattr(error, "cause", None) or error
    return f"{type(cause).__name__}: {cause}".splitlines()[0][:500]


def _close_unfinished_trials(parent, interrupted: bool) -> set[str]:
    """Close the trials' MLflow runs Tune left open: stopped early by ASHA (KILLED, tagged so), or, when the
    sweep itself was interrupted, KILLED and tagged interrupted (a relaunch reopens them)."""
    client = parent.client
    running = client.search_runs([parent.experiment_id] if parent.experiment_id else
                                 [client.get_run(parent.run_id).info.experiment_id],
                                 f"tags.`mlflow.parentRunId` = '{parent.run_id}' and attributes.status = 'RUNNING'")
    for run in running:
        client.set_tag(run.info.run_id, "gptray.sweep.interrupted" if interrupted else "gptray.sweep.stopped_early",
                       "true")
        client.set_terminated(run.info.run_id, "KILLED")
    return set() if interrupted else {run.info.run_name for run in running}


def _flat_spec(spec) -> dict:
    return {k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in dataclasses.asdict(spec).items()}
