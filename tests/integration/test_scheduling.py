"""The tokenize job's quicker Ray Data cadence: set only while a job runs, Ray's own values back after."""

from __future__ import annotations

import json

import pytest

from gptray.base.errors import DataError
from gptray.data import scheduling
from gptray.data.tokenize_job import tokenize_corpus
from helpers import make_config


def current() -> tuple[float, float]:
    from ray.data._internal.execution import resource_manager, streaming_executor_state

    return (streaming_executor_state.WAIT_FOR_TASK_COMPLETION_TIMEOUT_S,
            resource_manager.ResourceManager.GLOBAL_LIMITS_UPDATE_INTERVAL_S)


def test_installed_ray_still_has_both_intervals():
    # A Ray upgrade that moves them would silently cost the tokenize job 10-15% of its throughput.
    assert scheduling.knobs_available()
    assert current() != (scheduling.POLL_S, scheduling.LIMITS_REFRESH_S)


def test_intervals_are_set_inside_and_restored_after_nesting_and_errors():
    before = current()
    with pytest.raises(RuntimeError):
        with scheduling.quick_scheduling():
            assert current() == (scheduling.POLL_S, scheduling.LIMITS_REFRESH_S)
            with scheduling.quick_scheduling():
                assert current() == (scheduling.POLL_S, scheduling.LIMITS_REFRESH_S)
            assert current() == (scheduling.POLL_S, scheduling.LIMITS_REFRESH_S)  # the outer job still runs
            raise RuntimeError("the job failed")
    assert current() == before


def test_a_finished_and_a_failed_job_leave_ray_data_as_they_found_it(ray_session, tmp_path):
    before = current()
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"text": f"document {i}"}) + "\n" for i in range(50)), encoding="utf-8")
    tokenize_corpus(make_config(tmp_path / "ok", f"data.sources=[{{path: {good}}}]"))
    assert current() == before

    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "fine"}\n{broken\n', encoding="utf-8")
    with pytest.raises(DataError, match="--strict"):
        tokenize_corpus(make_config(tmp_path / "strict", f"data.sources=[{{path: {bad}}}]"), strict=True)
    assert current() == before
