"""Sweep files: a base run config plus a `sweep:` section, expanded into validated trial configs.

    base: ../quickstart.yaml          # optional: the config this file starts from (relative to it)
    name: ablate-norm                  # any run-config keys: they change the base
    train: {max_steps: 300}
    sweep:
      axes: {model.norm: [layernorm, rmsnorm]}
      seeds: [0, 1, 2]
      budget_tokens: 2000000           # data-matched: every trial trains this many tokens
      # or budget_flops: 3.0e13        # compute-matched: every trial trains this many FLOPs (6N + attention
                                       # per token, N with the trial's vocabulary: a tokenizer ablation's axis)

An axis is a config key with a list of values, or any name with named bundles of overrides,
for variants that differ in several keys at once:

      axes:
        architecture:
          gpt2: {model.preset: gpt2, train.recipe: gpt2}
          gpt3: {model.preset: gpt3-small, model.attention: alternating, train.recipe: gpt3}

Every trial's config is built and validated before anything runs. A trial whose tokenizer or token
dataset does not exist yet gets it before the first trial starts (gptray/tune/prepare.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gptray.config import ExperimentConfig, apply_overrides, read_yaml
from gptray.config.loader import build, deep_merge, parse_override
from gptray.config.model import ModelConfig
from gptray.core.errors import ConfigError
from gptray.model.gpt import count_parameters
from gptray.tracking.compare import check_metric
from gptray.train.finetune import base_model_reader, load_run_config
from gptray.train.flops import flops_per_token


@dataclass
class SweepConfig:
    """A sweep file's `sweep:` section: the axes, the seeds, the budget every trial trains, and how Tune runs them."""

    axes: dict[str, list | dict] = field(default_factory=dict)  # key → values, or name → {label: overrides}
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])  # every axis value trains once per seed
    seed_key: str = "train.seed"  # the config key each seed goes to (init and data order)
    budget_tokens: int | None = None  # every trial trains this many tokens (its max_steps follows)
    # every trial trains this many FLOPs (its max_steps follows, once its dataset sets its vocabulary)
    budget_flops: float | None = None
    baseline: str | None = None  # the group other groups are compared with; default: the first
    # what `gptray compare` ranks by (gptray/tracking/compare.py), or eval/<task>/<measure> of `gptray eval`
    metric: str = "best_val_loss"
    scheduler: Literal["none", "asha"] = "none"  # asha: stop poor trials early (searches, not ablations)
    asha_metric: str = "train_loss"  # a metric reported with each checkpoint
    asha_grace_reports: int = 2  # checkpoint reports every trial gets before ASHA may stop it
    max_concurrent_trials: int | None = None  # default: as many as the cluster's CPUs/GPUs hold


@dataclass
class Trial:
    name: str  # its run name and directory, e.g. "rmsnorm-seed1"
    label: str  # its group (the axis values), e.g. "rmsnorm" or "norm=rmsnorm,mlp=swiglu"
    values: dict[str, Any]
    seed: int
    config: ExperimentConfig
    overrides: list[str] = field(default_factory=list)  # what makes its config from the sweep's (Sweep.data)

    def tags(self, sweep: str) -> dict[str, str]:
        """MLflow tags of the trial's run: what `gptray compare` groups and labels by."""
        tags = {"gptray.sweep": sweep, "gptray.sweep.label": self.label, "gptray.sweep.seed": str(self.seed)}
        tags.update({f"gptray.sweep.axis.{key}": json.dumps(value) for key, value in self.values.items()})
        return tags


@dataclass
class Sweep:
    base: ExperimentConfig  # name = the sweep's name; trials live in out_dir/name
    spec: SweepConfig
    trials: list[Trial]
    data: dict = field(default_factory=dict)  # the base config as a dict, before the trials' overrides

    @property
    def directory(self) -> str:
        return self.base.run_dir

    def labels(self) -> list[str]:
        return list(dict.fromkeys(t.label for t in self.trials))

    def baseline(self) -> str:
        return self.spec.baseline or self.labels()[0]


def value_label(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def group_label(values: dict[str, Any]) -> str:
    if len(values) == 1:
        return value_label(next(iter(values.values())))
    return ",".join(f"{axis_name(key)}={value_label(v)}" for key, v in values.items())


def axis_name(key: str) -> str:
    """How a label names an axis: its key's last part (model.norm → norm), or the section that a `name`
    key names (optimizer.name → optimizer, schedule.name → schedule)."""
    parts = key.split(".")
    return parts[-2] if parts[-1] == "name" and len(parts) > 1 else parts[-1]


def run_name(label: str, seed: int) -> str:
    return re.sub(r"[^A-Za-z0-9._=,+-]+", "_", label) + f"-seed{seed}"


def load_sweep(path: str | Path, overrides: list[str] | None = None) -> Sweep:
    """Read a sweep file, apply overrides (`sweep.seeds=[0,1]` reaches the sweep section), expand trials."""
    path = Path(path)
    raw = read_yaml(path)
    sweep_raw = raw.pop("sweep", None)
    if not isinstance(sweep_raw, dict):
        raise ConfigError("sweep", f"{path} needs a `sweep:` section with at least `axes`")
    data = ExperimentConfig().to_dict()
    base_ref = raw.pop("base", None)
    if base_ref is not None:
        data = deep_merge(data, read_yaml(path.parent / base_ref))
    data = deep_merge(data, raw)
    run_overrides, sweep_overrides = [], []
    for text in overrides or []:
        key, _ = parse_override(text)
        (sweep_overrides if key.split(".")[0] == "sweep" else run_overrides).append(text)
    apply_overrides(data, run_overrides)
    sweep_raw = apply_overrides({"sweep": sweep_raw}, sweep_overrides)["sweep"]
    base = ExperimentConfig.from_dict(data).resolved(base_model_reader())
    spec = build(SweepConfig, sweep_raw, "sweep")
    _validate(spec)
    trials = _expand(data, base, spec)
    sweep = Sweep(base, spec, trials, data)
    if spec.baseline is not None and spec.baseline not in sweep.labels():
        raise ConfigError("sweep.baseline", f"{spec.baseline!r} is none of the groups: {', '.join(sweep.labels())}")
    return sweep


def run_or_sweep_config(path: str | Path | None, overrides: list[str] | None = None,
                        ) -> tuple[ExperimentConfig, str | None]:
    """What `gptray compare --config` names: a sweep file's base config and sweep name, or a run
    config and None."""
    if path is not None and "sweep" in read_yaml(path):
        sweep = load_sweep(path, overrides)
        return sweep.base, sweep.base.name
    return load_run_config(path, overrides), None


def _validate(spec: SweepConfig) -> None:
    if not spec.axes:
        raise ConfigError("sweep.axes", "name at least one config key and its values, e.g. {model.norm: [a, b]}")
    for key, values in spec.axes.items():
        if not values:
            raise ConfigError(f"sweep.axes.{key}", "needs at least one value")
        if isinstance(values, dict):
            for label, bundle in values.items():
                if not isinstance(bundle, dict) or not bundle:
                    raise ConfigError(f"sweep.axes.{key}.{label}",
                                      "a named variant is a mapping of config keys to values")
        elif len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise ConfigError(f"sweep.axes.{key}", f"has repeated values: {values}")
    if not spec.seeds or len(set(spec.seeds)) != len(spec.seeds):
        raise ConfigError("sweep.seeds", f"needs distinct seeds (got {spec.seeds})")
    if spec.budget_tokens is not None and spec.budget_tokens <= 0:
        raise ConfigError("sweep.budget_tokens", f"must be positive (got {spec.budget_tokens})")
    if spec.budget_flops is not None and not (math.isfinite(spec.budget_flops) and spec.budget_flops > 0):
        raise ConfigError("sweep.budget_flops", f"must be a positive number (got {spec.budget_flops})")
    if spec.budget_flops is not None and spec.budget_tokens is not None:
        raise ConfigError("sweep.budget_flops", "set either budget_tokens (equal data) or budget_flops (equal "
                                                "compute), not both")
    if spec.max_concurrent_trials is not None and spec.max_concurrent_trials < 1:
        raise ConfigError("sweep.max_concurrent_trials", f"must be >= 1 (got {spec.max_concurrent_trials})")
    check_metric(spec.metric, "sweep.metric")
    if spec.asha_grace_reports < 1:
        raise ConfigError("sweep.asha_grace_reports", f"must be >= 1 (got {spec.asha_grace_reports})")


def _expand(data: dict, base: ExperimentConfig, spec: SweepConfig) -> list[Trial]:
    sweep_dir = base.run_dir
    keys = list(spec.axes)
    trials = []
    for combination in itertools.product(*(spec.axes[k] for k in keys)):
        values = dict(zip(keys, combination))  # for a named-variant axis, the variant's name
        label = group_label(values)
        settings = {}
        for key, value in values.items():
            if isinstance(spec.axes[key], dict):
                settings.update(spec.axes[key][value])
            else:
                settings[key] = value
        for seed in spec.seeds:
            name = run_name(label, seed)
            overrides = [f"{k}={json.dumps(v)}" for k, v in settings.items()] + [
                f"{spec.seed_key}={seed}", f"name={name}", f"out_dir={sweep_dir}",
                f"tracking.uri={base.tracking_uri()}",  # every trial logs where the sweep's parent run is
            ]
            config = _trial_config(data, overrides, values, spec)
            steps = budget_steps(config.model, config, spec)
            if steps is not None:
                overrides = [*overrides, *steps_overrides(steps)]
                config = _trial_config(data, overrides, values, spec)
            trials.append(Trial(name, label, values, seed, config, overrides))
    return trials


def budget_steps(model: ModelConfig, config: ExperimentConfig, spec: SweepConfig) -> int | None:
    """The steps a trial trains to spend the sweep's budget (`model`: its model, vocabulary known); None
    without a budget, or with a FLOPs budget while the model's vocabulary waits for its dataset."""
    tokens_per_step = config.train.batch_size * config.train.effective_seq_len(config.model)
    if spec.budget_tokens is not None:
        return math.ceil(spec.budget_tokens / tokens_per_step)
    if spec.budget_flops is None or model.vocab_size is None:
        return None
    seq_len = config.train.effective_seq_len(model)
    per_step = flops_per_token(model, count_parameters(model), seq_len) * tokens_per_step
    return max(1, math.ceil(spec.budget_flops / per_step))


def steps_overrides(steps: int) -> list[str]:
    """A trial's length as steps, whether its base config gives steps or epochs (a budget decides it)."""
    return [f"train.max_steps={steps}", "train.epochs=null"]


def with_steps(sweep: Sweep, trial: Trial, steps: int) -> Trial:
    """The trial trained to `steps` (its config rebuilt, so everything that follows max_steps does)."""
    overrides = [*trial.overrides, *steps_overrides(steps)]
    config = _trial_config(sweep.data, overrides, trial.values, sweep.spec)
    return dataclasses.replace(trial, config=config, overrides=overrides)


def _trial_config(data: dict, overrides: list[str], values: dict, spec: SweepConfig) -> ExperimentConfig:
    try:
        return ExperimentConfig.from_dict(apply_overrides(json.loads(json.dumps(data)), overrides)).resolved(
            base_model_reader())
    except ConfigError as exc:
        where = exc.key
        for axis, value in values.items():
            keys = spec.axes[axis][value] if isinstance(spec.axes[axis], dict) else [axis]
            if any(exc.key == k or exc.key.startswith(k + ".") for k in keys):
                where = f"sweep.axes.{axis}" + (f".{value}" if isinstance(spec.axes[axis], dict) else "")
                break
        raise ConfigError(where, f"the trial {group_label(values)} is invalid: "
                                 f"{exc if where != exc.key else exc.message}") from None
