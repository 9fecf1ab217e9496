"""Progress bars with an ETA on a terminal; plain log lines in a file, a pipe or CI."""

from __future__ import annotations

import io
import logging

import pytest

from gptray.core.progress_bar import on_terminal, progress_bar
from gptray.data.progress import TaskRecord
from gptray.data.tokenize_job import _Meter


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def _record(task: int, tokens: int) -> TaskRecord:
    record = TaskRecord(task=task, source=0, task_digest="t", request_digest="r")
    record.stats.tokens, record.stats.documents = tokens, 1
    return record


@pytest.fixture
def logged(caplog):
    """caplog, seeing gptray's records even after configure_logging stopped them propagating to the root."""
    logger = logging.getLogger("gptray")
    logger.addHandler(caplog.handler)
    with caplog.at_level(logging.INFO, logger="gptray"):
        yield caplog
    logger.removeHandler(caplog.handler)


def test_a_bar_only_on_a_terminal():
    assert on_terminal(Terminal()) and not on_terminal(io.StringIO())
    assert progress_bar(3, "work", "item", io.StringIO()) is None
    bar = progress_bar(3, "work", "item", Terminal())
    bar.update(1)
    bar.close()
    assert "work" in bar.fp.getvalue() and "1/3" in bar.fp.getvalue()


def test_tokenize_shows_a_bar_with_an_eta_on_a_terminal(logged, monkeypatch):
    import gptray.data.tokenize_job as tokenize_job

    monkeypatch.setattr(tokenize_job, "PROGRESS_SECONDS", 0.0)
    terminal = Terminal()
    meter = _Meter([object()] * 4, stream=terminal)
    meter.done(_record(0, 1000))
    meter.done(_record(1, 2000))
    meter.tick(running=2)
    meter.close()
    shown = terminal.getvalue()
    assert "tokenize" in shown and "2/4" in shown and "3,000 tokens" in shown
    assert "<" in shown  # tqdm's "elapsed<remaining": the ETA
    assert not [r for r in logged.records if "to go" in r.getMessage()]  # the bar replaces the periodic lines


def test_tokenize_logs_plain_lines_elsewhere(logged, monkeypatch):
    import gptray.data.tokenize_job as tokenize_job

    monkeypatch.setattr(tokenize_job, "PROGRESS_SECONDS", 0.0)
    meter = _Meter([object()] * 2, stream=io.StringIO())
    assert meter.bar is None
    meter.done(_record(0, 1000))
    meter.tick(running=1)
    meter.done(_record(1, 500))
    meter.finish()
    lines = [r.getMessage() for r in logged.records]
    assert any("read tasks 1/2 finished, 1 to go" in line for line in lines)
    assert any("read tasks 2/2 finished, done" in line and "1,500 tokens" in line for line in lines)
