"""Progress bars with an ETA for long work, on a terminal only: in a log file or CI, the plain log lines stay."""

from __future__ import annotations

import sys

from tqdm import tqdm


def on_terminal(stream=None) -> bool:
    """Whether the console is a person's terminal (stderr, where gptray's log lines go), not a file or a pipe."""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # replaced by an object without it, or closed
        return False


def progress_bar(total: int, description: str, unit: str, stream=None) -> tqdm | None:
    """A bar of `total` `unit`s with its rate and ETA, or None where the console is not a terminal (the caller
    then logs plain lines as it always has)."""
    if not on_terminal(stream):
        return None
    return tqdm(total=total, desc=description, unit=unit, file=stream or sys.stderr, dynamic_ncols=True,
                leave=True, mininterval=0.5)
