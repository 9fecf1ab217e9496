"""Progress bars with an ETA on a terminal; plain log lines in a file, a pipe or CI."""

from __future__ import annotations

import io
import logging

import pytest

from gptray.core.progress_bar import on_terminal, progress_bar
from gptray.data.progress import TaskRecord
from gptray.data.tokenize_job import _log_summary


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


def test_tokenize_ends_with_one_summary_line_of_the_work_done_now(logged):
    """Ray Data's progress bars show the job while it runs; the driver logs what the records say once, at the end."""
    kept = _record(1, 2000)
    kept.kept = True
    _log_summary([_record(0, 1000), kept, _record(2, 500)], seconds=1.0)
    lines = [r.getMessage() for r in logged.records]
    assert any("read tasks 3/3 finished (1 kept from an earlier run)" in line and "1,500 tokens" in line
               and "0.00 M tokens/s" in line for line in lines)
