"""Progress bars with an ETA for long work, on a terminal only: in a log file or CI, the plain log lines stay."""

from __future__ import annotations

import contextlib
import logging
import sys

from tqdm import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


def on_terminal(stream=None) -> bool:
    """Whether the console is a person's terminal (stderr, where gptray's log lines go), not a file or a pipe."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def progress_bar(total: int, description: str, unit: str, stream=None, initial: int = 0) -> tqdm | None:
    """A bar of `total` `unit`s with its rate and ETA, or None where the console is not a terminal (the caller
    then logs plain lines as it always has). `initial`: units done before (a resumed run's steps)."""
    if not on_terminal(stream):
        return None
    return tqdm(total=total, desc=description, unit=unit, file=stream or sys.stderr, dynamic_ncols=True,
                leave=True, mininterval=0.5, initial=initial)


def ray_worker_bar(total: int, description: str, unit: str, initial: int = 0):
    """The same bar for work done in a Ray worker, drawn by the driver (Ray forwards its state with the
    worker's output and draws it there, clearing it around the forwarded log lines). Only for a driver on a
    terminal: the driver draws it whatever its console is."""
    from ray.experimental.tqdm_ray import tqdm as ray_tqdm  # Ray workers only

    bar = ray_tqdm(total=total, desc=description, unit=unit)
    bar.n = initial
    return bar


def logs_above(bar: tqdm | None):
    """A context in which gptray's log lines print above `bar` (a tqdm bar of this process) instead of
    through it; with no bar, nothing changes."""
    if bar is None:
        return contextlib.nullcontext()
    return logging_redirect_tqdm(loggers=[logging.getLogger("gptray")], tqdm_class=type(bar))
