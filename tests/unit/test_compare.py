"""gptray compare's statistics across seeds: mean, sample std, t-interval, Welch's test, and what is counted."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from gptray.tracking.compare import RunRecord, summarize

BASE = [3.10, 3.02, 3.07]
RMS = [2.95, 3.01, 2.90]


def record(label: str, seed: int, value: float | None, status: str = "FINISHED") -> RunRecord:
    return RunRecord(run_id=f"{label}{seed}", name=f"{label}-seed{seed}", label=label, seed=seed, status=status,
                     metrics={"best_val_loss": value})


def test_group_statistics_equal_scipys_and_only_finished_runs_count():
    records = [record("layernorm", s, v) for s, v in enumerate(BASE)]
    records += [record("rmsnorm", s, v) for s, v in enumerate(RMS)]
    records += [record("rmsnorm", 3, 2.0, "FAILED"), record("rmsnorm", 4, 1.0, "KILLED")]  # values never counted
    base, rms = summarize(records, "best_val_loss", seeds=6)
    assert base.is_baseline and not rms.is_baseline
    for group, values in ((base, BASE), (rms, RMS)):
        assert sorted(group.values) == sorted(values)
        assert group.mean == pytest.approx(np.mean(values))
        assert group.std == pytest.approx(np.std(values, ddof=1))
        half = stats.t.ppf(0.975, len(values) - 1) * np.std(values, ddof=1) / math.sqrt(len(values))
        assert (group.ci_low, group.ci_high) == pytest.approx((np.mean(values) - half, np.mean(values) + half))
    assert rms.diff == pytest.approx(np.mean(RMS) - np.mean(BASE))
    assert rms.p_value == pytest.approx(stats.ttest_ind(RMS, BASE, equal_var=False).pvalue)
    assert (base.n, base.failed, base.unfinished, base.not_started) == (3, 0, 0, 3)
    assert (rms.n, rms.failed, rms.unfinished, rms.not_started) == (3, 1, 1, 1)


def test_one_run_a_group_has_a_mean_and_a_difference_but_no_spread():
    base, rms = summarize([record("layernorm", 0, 3.1), record("rmsnorm", 0, 3.0)], "best_val_loss",
                          baseline="layernorm")
    assert rms.diff == pytest.approx(-0.1) and rms.p_value is None
    assert all(math.isnan(x) for x in (rms.std, rms.ci_low, rms.ci_high))


def test_bits_per_byte_metrics_rank_groups_from_real_mlflow_runs(tmp_path):
    """Runs in a real (SQLite) MLflow store whose val/bpb orders the groups otherwise than val/loss does,
    as runs with different tokenizers can: best_val_bpb and final_val_bpb read val/bpb's history. (By
    experiment, which takes every run but a sweep's parent, tagged or not.)"""
    from mlflow.tracking import MlflowClient

    from gptray.core.errors import ConfigError
    from gptray.tracking.report import compare

    uri = f"sqlite:///{tmp_path}/mlflow.db"
    client = MlflowClient(uri)
    experiment = client.create_experiment("bpb")
    # group → per seed: (val/loss history, val/bpb history) at steps 10, 20, 30
    runs = {"small-vocab": [([3.0, 2.5, 2.6], [1.50, 1.20, 1.25]), ([3.1, 2.6, 2.7], [1.55, 1.22, 1.30])],
            "large-vocab": [([4.0, 3.5, 3.4], [1.40, 1.10, 1.15]), ([4.2, 3.6, 3.5], [1.45, 1.12, 1.18])]}
    for label, seeds in runs.items():
        for seed, (losses, bpbs) in enumerate(seeds):
            run = client.create_run(experiment, run_name=f"{label}-seed{seed}",
                                    tags={"gptray.sweep.label": label, "gptray.sweep.seed": str(seed)})
            for step, loss, bpb in zip((10, 20, 30), losses, bpbs):
                client.log_metric(run.info.run_id, "val/loss", loss, step=step)
                client.log_metric(run.info.run_id, "val/bpb", bpb, step=step)
                client.log_metric(run.info.run_id, "train/loss", loss + 0.1, step=step)
            client.set_terminated(run.info.run_id, "FINISHED")
    client.create_run(experiment, run_name="a-sweep", tags={"gptray.sweep.role": "parent"})  # not compared
    client.create_run(experiment, run_name="tokenize shakespeare", tags={"gptray.job": "tokenize"})  # nor a dataset's

    by_loss = {s.label: s for s in compare(uri, experiment="bpb", metric="best_val_loss",
                                           baseline="small-vocab").summaries}
    best = {s.label: s for s in compare(uri, experiment="bpb", metric="best_val_bpb",
                                        baseline="small-vocab").summaries}
    final = {s.label: s for s in compare(uri, experiment="bpb", metric="final_val_bpb",
                                         baseline="small-vocab").summaries}
    assert set(by_loss) == set(runs)
    assert by_loss["large-vocab"].diff == pytest.approx(np.mean([3.4, 3.5]) - np.mean([2.5, 2.6]))  # worse per token
    for label, seeds in runs.items():
        assert sorted(best[label].values) == sorted(min(b) for _, b in seeds)
        assert sorted(final[label].values) == sorted(b[-1] for _, b in seeds)
    assert best["large-vocab"].diff == pytest.approx(np.mean([1.10, 1.12]) - np.mean([1.20, 1.22]))  # better per byte
    assert final["large-vocab"].diff == pytest.approx(np.mean([1.15, 1.18]) - np.mean([1.25, 1.30]))
    with pytest.raises(ConfigError, match="best_val_bpb"):  # the choices are named, before MLflow is asked
        compare(uri, experiment="bpb", metric="val_bpb")
