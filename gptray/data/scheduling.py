"""A quicker Ray Data scheduler cadence for the tokenize job's short, CPU-bound read tasks.

Ray Data 2.60's streaming executor notices a finished task only when its scheduling loop next
polls, and that loop waits up to 0.1 s per round for *all* running tasks. A read task (one 8 MB
chunk, about a second of tiktoken) so ended 0.12–0.19 s before the next one started on its
worker: 10–15% of a 2-core machine left idle. Its resource limits are also refreshed only once a
second, and they read zero until Ray Data's autoscaling coordinator first answers, so the first
task ran alone for its first second. BENCHMARKS.md has the timelines and the A/B.

Neither interval is public, so this module sets the two constants for the length of one job and
puts them back. Ray Data's memory backpressure (the reservation allocator) stays on: only how
often it looks changes. If a Ray upgrade renames them, the job runs at Ray's own cadence and
logs that once; tests/integration/test_scheduling.py fails on such an upgrade so it is noticed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager

log = logging.getLogger(__name__)

POLL_S = 0.02  # the loop's wait for finished tasks; 0.005 cost the driver 8% more CPU for no gain
LIMITS_REFRESH_S = 0.1  # how often cluster-size limits are re-read (an asynchronous actor call)

_lock = threading.Lock()
_active = 0  # jobs inside quick_scheduling(); the last one out restores Ray's values
_saved: dict[str, float] = {}
_warned = False


def _knobs() -> dict[str, tuple[object, str]] | None:
    """Where the two intervals live in the installed Ray, or None if they moved."""
    try:
        from ray.data._internal.execution import resource_manager, streaming_executor_state
    except ImportError:
        return None
    knobs = {"poll": (streaming_executor_state, "WAIT_FOR_TASK_COMPLETION_TIMEOUT_S"),
             "limits": (resource_manager.ResourceManager, "GLOBAL_LIMITS_UPDATE_INTERVAL_S")}
    if not all(isinstance(getattr(owner, name, None), (int, float)) for owner, name in knobs.values()):
        return None
    return knobs


def knobs_available() -> bool:
    """Whether this Ray still has both intervals where this module sets them."""
    return _knobs() is not None


@contextmanager
def quick_scheduling() -> Iterator[None]:
    """Within this block, Ray Data in this process polls for finished tasks every POLL_S seconds and
    re-reads the cluster's size every LIMITS_REFRESH_S seconds. Nested and concurrent uses share one
    setting; Ray's values come back when the last one ends."""
    global _active, _warned
    knobs = _knobs()
    if knobs is None:
        if not _warned:
            log.info("this Ray version's data scheduler intervals were not found; using its own cadence")
            _warned = True
        yield
        return
    with _lock:
        if _active == 0:
            for key, (owner, name) in knobs.items():
                _saved[key] = getattr(owner, name)
            setattr(*knobs["poll"], POLL_S)
            setattr(*knobs["limits"], LIMITS_REFRESH_S)
        _active += 1
    try:
        yield
    finally:
        with _lock:
            _active -= 1
            if _active == 0:
                for key, (owner, name) in knobs.items():
                    setattr(owner, name, _saved.pop(key))
