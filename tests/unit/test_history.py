"""A run's own metric history: parts written before checkpoints, discarded past the step a relaunch resumes from."""

from __future__ import annotations

from gptray.core.storage import Storage
from gptray.tracking.history import MetricHistory, read_history


def _log(history: MetricHistory, steps: range, offset: float = 0.0) -> None:
    for step in steps:
        history.add(step, {"train/loss": 10.0 - step / 10 + offset})


def test_parts_written_at_checkpoints_read_back_in_step_order(tmp_path):
    run = Storage(str(tmp_path))
    history = MetricHistory(run)
    _log(history, range(1, 13))
    history.write()
    _log(history, range(13, 25))
    history.add(24, {"val/loss": 9.5})
    history.write()
    history.write()  # nothing pending: no empty part
    assert sorted(p.name for p in (tmp_path / "metrics").iterdir()) == ["00000001-00000012.jsonl",
                                                                       "00000013-00000024.jsonl"]
    read = read_history(run)
    assert sorted(read["train/loss"]) == list(range(1, 25)) and read["val/loss"] == {24: 9.5}
    assert read["train/loss"][7] == 10.0 - 0.7


def test_a_relaunch_discards_what_came_after_its_checkpoint(tmp_path):
    """A launch that wrote steps 13-24 but died before checkpoint 24 completed: the relaunch resumes
    at 12, and only its own values for 13-24 remain, whatever interval it now writes at."""
    run = Storage(str(tmp_path))
    first = MetricHistory(run)
    _log(first, range(1, 13))
    first.write()
    _log(first, range(13, 25), offset=100.0)  # the launch that did not reach its checkpoint
    first.write()
    second = MetricHistory(run)
    second.discard_after(12)
    _log(second, range(13, 19))
    second.write()
    read = read_history(run)["train/loss"]
    assert sorted(read) == list(range(1, 19))
    assert all(value < 100 for value in read.values())
