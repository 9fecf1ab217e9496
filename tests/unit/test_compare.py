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
