"""The tokenize job's progress where the console is not a terminal: a line every half minute, from the tasks' records.

On a terminal Ray Data draws its progress bars. In a log file, CI or `ray job submit`, Ray Data would log
a block of progress lines every 10 s instead (its LoggingExecutionProgressManager); the job turns those off
(job_context.py) and logs these: read tasks finished, tokens, rate and time left. They come from the records
each read task saves after its shards (progress.py), so the driver lists one directory and reads each new
record once: no Ray Data internals, and a cost a 64-node job's driver does not notice.
"""

from __future__ import annotations

import logging
import threading
import time

from gptray.core.errors import GptrayError
from gptray.core.storage import Storage
from gptray.data.progress import RECORDS_DIR, TaskRecord, record_task

log = logging.getLogger(__name__)

PROGRESS_LINE_INTERVAL_S = 30.0  # often enough to show a job is alive, rare enough to read a log file by


class ProgressLines:
    """A context that logs a progress line every `interval` seconds while the job inside it runs."""

    def __init__(self, store: Storage, task_count: int, interval: float = PROGRESS_LINE_INTERVAL_S,
                 clock=time.monotonic):
        self.store, self.task_count, self.interval, self.clock = store, task_count, interval, clock
        self.started = clock()
        # Records already there belong to an earlier run: kept (their tokens are not this run's work) or redone.
        self.earlier = set(self._names())
        self.tokens: dict[str, int] = {}  # records this run wrote: their tokens, each read once
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _names(self) -> list[str]:
        return [name for name in self.store.list(RECORDS_DIR) if record_task(name) is not None]

    def line(self) -> str:
        """Where the job is now, in one line."""
        names = set(self._names())
        for name in sorted(names - self.earlier - self.tokens.keys()):
            record = TaskRecord.load(self.store, record_task(name))
            if record is not None:  # not yet whole on an object store: counted at the next line
                self.tokens[name] = record.stats.tokens
        elapsed = max(self.clock() - self.started, 1e-9)
        done, new = len(names), len(self.tokens)
        tokens = sum(self.tokens.values())
        kept = f" ({len(names & self.earlier)} from an earlier run)" if names & self.earlier else ""
        left = f", about {_duration((self.task_count - done) * elapsed / new)} left" if new and done < self.task_count \
            else ""
        return (f"tokenize: {done}/{self.task_count} read tasks finished{kept}, {tokens:,} tokens in "
                f"{_duration(elapsed)} ({tokens / elapsed / 1e6:.2f} M tokens/s){left}")

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                log.info("%s", self.line())
            except GptrayError as exc:  # a listing that failed: progress is not worth stopping the job for
                log.debug("no progress line: %s", exc)

    def __enter__(self) -> ProgressLines:
        self._thread = threading.Thread(target=self._run, name="gptray-tokenize-progress", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _duration(seconds: float) -> str:
    """1h02m, 3m05s or 42s."""
    seconds = int(round(seconds))
    if seconds >= 3600:
        return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
    if seconds >= 60:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds}s"
