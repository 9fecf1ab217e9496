"""Compare runs from MLflow: group trials by their axis values, statistics across seeds, tables, exports.

A group's value is the chosen metric of each of its finished runs (one per seed): mean, sample
standard deviation, a 95% confidence interval (Student t), and the difference to the baseline
group with Welch's unequal-variance t-test.
"""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field

import numpy as np

from gptray.core.errors import ConfigError, DataError
from gptray.core.tables import text_table

# name → (MLflow metric key, how to reduce its history). val/bpb is bits per byte (gptray/data/token_bytes.py):
# unlike the loss per token, it compares runs with different tokenizers.
METRICS = {
    "best_val_loss": ("val/loss", "min"),
    "final_val_loss": ("val/loss", "last"),
    "best_val_bpb": ("val/bpb", "min"),
    "final_val_bpb": ("val/bpb", "last"),
    "final_train_loss": ("train/loss", "last"),
    "best_train_loss": ("train/loss", "min"),
}
EVALUATION_PREFIX = "eval/"  # any evaluation metric (eval/<task>/<measure>, its last value) is also comparable
CONFIDENCE = 0.95


def is_metric(name: str) -> bool:
    """A metric runs can be compared by: one of METRICS, or an evaluation's eval/<task>/<measure>."""
    return name in METRICS or (name.startswith(EVALUATION_PREFIX) and name.count("/") >= 2)


def check_metric(name: str, key: str) -> None:
    if not is_metric(name):
        raise ConfigError(key, f"unknown metric {name!r}; choose from {', '.join(METRICS)}, or an evaluation's "
                               f"eval/<task>/<measure> (eval/lm_eval/arc_easy/acc)")


@dataclass
class RunRecord:
    run_id: str
    name: str
    label: str  # its group
    seed: int | None
    status: str  # MLflow's: FINISHED, FAILED, RUNNING, KILLED
    values: dict = field(default_factory=dict)  # axis key → value
    metrics: dict = field(default_factory=dict)  # metric name → value (None when never logged)
    steps: int | None = None
    error: str = ""
    stopped_early: bool = False  # stopped by the sweep's scheduler (ASHA), not by a failure or an interrupt


@dataclass
class GroupSummary:
    label: str
    n: int  # finished runs with the metric
    failed: int  # runs that ended in an error
    mean: float
    std: float
    ci_low: float
    ci_high: float
    diff: float | None  # mean − baseline mean
    p_value: float | None  # Welch's t-test against the baseline
    is_baseline: bool
    values: list[float] = field(default_factory=list)
    unfinished: int = 0  # runs interrupted (or stopped early) before their last step: a relaunch resumes them
    not_started: int = 0  # the sweep's trials of this group that never ran


def outcome(record: RunRecord) -> str:
    """finished, failed, stopped (early, by ASHA) or interrupted: what became of a run, from MLflow."""
    if record.status == "FINISHED":
        return "finished"
    if record.status == "FAILED":
        return "failed"
    return "stopped" if record.stopped_early else "interrupted"


def metric_value(history: list, reduce: str) -> float | None:
    if not history:
        return None
    ordered = [m.value for m in sorted(history, key=lambda m: (m.step, m.timestamp))]
    return min(ordered) if reduce == "min" else ordered[-1]


def find_sweep_parent(client, sweep: str, experiment: str | None = None):
    """A sweep's parent run, by run id or by sweep name (newest first)."""
    try:
        return client.get_run(sweep)
    except Exception:
        pass
    experiments = [e.experiment_id for e in client.search_experiments()] if experiment is None else \
        [_experiment_id(client, experiment)]
    runs = client.search_runs(experiments, f"tags.`gptray.sweep.role` = 'parent' and tags.`mlflow.runName` = '{sweep}'",
                              order_by=["attributes.start_time DESC"], max_results=1)
    if not runs:
        raise DataError(f"no sweep {sweep!r} in the MLflow store (neither a parent run id nor a sweep name)")
    return runs[0]


def _experiment_id(client, name: str) -> str:
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        raise DataError(f"no MLflow experiment named {name!r}")
    return experiment.experiment_id


def load_runs(client, *, sweep: str | None = None, experiment: str | None = None,
              run_ids: list[str] | None = None) -> tuple[list[RunRecord], dict]:
    """The runs to compare and what the sweep says about them (baseline, metric, group order)."""
    info: dict = {}
    if sweep is not None:
        parent = find_sweep_parent(client, sweep, experiment)
        tags = parent.data.tags
        info = {"parent_run_id": parent.info.run_id, "baseline": tags.get("gptray.sweep.baseline"),
                "metric": tags.get("gptray.sweep.metric"), "labels": tags.get("gptray.sweep.labels", "").split("\n"),
                "seeds": json.loads(parent.data.params.get("sweep.seeds", "[]"))}
        runs = client.search_runs([parent.info.experiment_id],
                                  f"tags.`mlflow.parentRunId` = '{parent.info.run_id}'", max_results=10000)
    elif run_ids:
        runs = [client.get_run(run_id) for run_id in run_ids]
    elif experiment is not None:
        # Sweep parents and tokenize jobs' runs (gptray.job: tokenize) are left out here, in Python: MLflow's
        # `tags.x != 'parent'` also leaves out every run without the tag (trials and single runs), which is all of them.
        runs = client.search_runs([_experiment_id(client, experiment)], max_results=10000)
        runs = [r for r in runs if r.data.tags.get("gptray.sweep.role") != "parent"
                and r.data.tags.get("gptray.job") != "tokenize"]
    else:
        raise ConfigError("--sweep", "name a sweep, an experiment or run ids to compare")
    if not runs:
        raise DataError("no runs to compare")
    records = [_record(client, run) for run in runs]
    records.sort(key=lambda r: (_order(info, r.label), r.seed if r.seed is not None else -1, r.name))
    return records, info


def _order(info: dict, label: str):
    labels = info.get("labels") or []
    return (labels.index(label), "") if label in labels else (len(labels), label)


def _record(client, run) -> RunRecord:
    tags = run.data.tags
    values = {k.removeprefix("gptray.sweep.axis."): json.loads(v) for k, v in tags.items()
              if k.startswith("gptray.sweep.axis.")}
    metrics = {}
    steps = None
    histories = {}
    for name, (key, reduce) in METRICS.items():
        if key not in histories:
            histories[key] = client.get_metric_history(run.info.run_id, key) if key in run.data.metrics else []
        metrics[name] = metric_value(histories[key], reduce)
    # evaluations (gptray eval, harness tasks): the latest value MLflow keeps of each
    metrics.update({k: v for k, v in run.data.metrics.items() if k.startswith(EVALUATION_PREFIX)})
    if histories.get("train/loss"):
        steps = max(m.step for m in histories["train/loss"])
    seed = tags.get("gptray.sweep.seed")
    return RunRecord(
        run_id=run.info.run_id, name=run.info.run_name or run.info.run_id,
        label=tags.get("gptray.sweep.label", run.info.run_name or run.info.run_id),
        seed=int(seed) if seed is not None else None, status=run.info.status, values=values, metrics=metrics,
        steps=steps, error=tags.get("gptray.error", ""), stopped_early=tags.get("gptray.sweep.stopped_early") == "true",
    )


def summarize(records: list[RunRecord], metric: str, baseline: str | None = None, labels: list[str] | None = None,
              seeds: int = 0) -> list[GroupSummary]:
    """Per-group statistics of `metric` across seeds, with the difference to the baseline group. `labels`
    and `seeds`: a sweep's groups and its seeds per group, so that trials that never ran are counted."""
    from scipy import stats

    check_metric(metric, "--metric")
    groups: dict[str, list[RunRecord]] = {label: [] for label in labels or [] if label}
    for record in records:
        groups.setdefault(record.label, []).append(record)
    groups = {label: members for label, members in groups.items() if members or seeds}
    baseline = baseline if baseline is not None else next(iter(groups))
    if baseline not in groups:
        raise ConfigError("--baseline", f"{baseline!r} is none of the groups: {', '.join(groups)}")

    def values_of(label: str) -> list[float]:
        return [r.metrics[metric] for r in groups[label]
                if r.status == "FINISHED" and r.metrics.get(metric) is not None]

    base_values = values_of(baseline)
    summaries = []
    for label, members in groups.items():
        values = values_of(label)
        n = len(values)
        mean = float(np.mean(values)) if n else math.nan
        std = float(np.std(values, ddof=1)) if n > 1 else math.nan
        half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, n - 1) * std / math.sqrt(n)) if n > 1 else math.nan
        diff = p_value = None
        if label != baseline and n and base_values:
            diff = mean - float(np.mean(base_values))
            if n > 1 and len(base_values) > 1:
                p_value = float(stats.ttest_ind(values, base_values, equal_var=False).pvalue)
        outcomes = [outcome(r) for r in members]
        summaries.append(GroupSummary(label, n, outcomes.count("failed"), mean, std, mean - half, mean + half, diff,
                                      p_value, label == baseline, values,
                                      unfinished=outcomes.count("interrupted") + outcomes.count("stopped"),
                                      not_started=max(seeds - len(members), 0)))
    return summaries


def _fmt(x: float | None, digits: int = 4) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def format_summary(summaries: list[GroupSummary], metric: str, fmt: str) -> str:
    """table (aligned text), markdown, csv or json."""
    if fmt == "json":
        return json.dumps({"metric": metric, "confidence": CONFIDENCE,
                           "groups": [_json_safe(asdict(s)) for s in summaries]}, indent=2)
    header = ["group", "n", "failed", "unfinished", "not started", f"mean {metric}", "std", "95% CI",
              "Δ vs baseline", "p (Welch)"]
    rows = [[s.label + (" (baseline)" if s.is_baseline else ""), str(s.n), str(s.failed), str(s.unfinished),
             str(s.not_started), _fmt(s.mean),
             _fmt(s.std), f"[{_fmt(s.ci_low)}, {_fmt(s.ci_high)}]",
             "—" if s.is_baseline else _fmt(s.diff, 4) if s.diff is None else f"{s.diff:+.4f}",
             "—" if s.is_baseline else _fmt(s.p_value, 3)] for s in summaries]
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out)
        writer.writerow(["group", "n", "failed", "unfinished", "not_started", "mean", "std", "ci_low", "ci_high",
                         "diff", "p_value", "baseline"])
        for s in summaries:
            writer.writerow([s.label, s.n, s.failed, s.unfinished, s.not_started, s.mean, s.std, s.ci_low, s.ci_high,
                             "" if s.diff is None else s.diff, "" if s.p_value is None else s.p_value, s.is_baseline])
        return out.getvalue()
    return text_table(header, rows, markdown=fmt == "markdown") + "\n"


def _json_safe(data):
    if isinstance(data, float) and math.isnan(data):
        return None
    if isinstance(data, dict):
        return {k: _json_safe(v) for k, v in data.items()}
    if isinstance(data, list):
        return [_json_safe(v) for v in data]
    return data


def export_rows(records: list[RunRecord]) -> list[dict]:
    """One flat row per run (results.jsonl / results.csv)."""
    rows = []
    for r in records:
        row = {"run_id": r.run_id, "name": r.name, "group": r.label, "seed": r.seed, "status": r.status,
               "steps": r.steps, "error": r.error}
        row.update({f"axis.{k}": v for k, v in r.values.items()})
        row.update(r.metrics)
        rows.append(row)
    return rows


def write_export(records: list[RunRecord], path: str) -> None:
    rows = export_rows(records)
    if path.endswith(".jsonl"):
        with open(path, "w") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")
    elif path.endswith(".csv"):
        columns = list(dict.fromkeys(k for row in rows for k in row))
        with open(path, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=columns)
            writer.writeheader()
            for row in rows:
                writer.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in row.items()})
    else:
        raise ConfigError("--export", f"{path}: use a .jsonl or .csv file name")
