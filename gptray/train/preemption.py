"""Ray Train's notice that a node of the run is about to be preempted: when to write checkpoints before it goes."""

from __future__ import annotations

import logging
import time

log = logging.getLogger(__name__)


class PreemptionNotice:
    """Asks Ray Train (`ray.train.get_preemption_info`) whether a node of this worker group is about to be
    reclaimed, every `every` steps (checkpoint.preemption_check_interval; 0: never).

    Once a notice has come, every check step is a checkpoint step until the group ends. Ray Train keeps the
    group training until the node's deadline (30 s to 2 min of a spot reclaim's notice) and then restarts it
    without the node from the latest checkpoint: a single checkpoint at the notice would lose all the steps
    trained after it, so the run checkpoints again at each check (each one synchronous, so that it is stored
    before the node goes) and a reclaim costs at most `every` steps and one save.

    Ray's call broadcasts rank 0's view to every rank (a collective): every rank must ask at the same steps,
    so the checks are a pure function of the step. Outside Ray Train (local mode) there is never a notice.
    """

    def __init__(self, every: int, ask=None):
        self.every = every
        self._ask = ask or _preemption_info  # () -> ray.train.PreemptionInfo | None
        self._seen: set[tuple] = set()
        self.pending = None  # the latest notice (a ray.train.PreemptionInfo), once one has come

    def checkpoint_now(self, step: int) -> bool:
        """Whether to checkpoint at `step` because a node is about to be preempted (a collective at every
        check step, whatever else is due there)."""
        if not self.every or step % self.every:
            return False
        info = self._ask()
        if info is None:
            return self.pending is not None  # Ray's answer does not go back to None within a group
        key = (info.deadline_ms, tuple(info.preempted_node_ids))
        if key not in self._seen:
            self._seen.add(key)
            log.warning("step %d: node(s) %s (ranks %s) are about to be preempted (%s): checkpointing now and at "
                        "every check (checkpoint.preemption_check_interval=%d) until the group restarts without them",
                        step, ", ".join(info.preempted_node_ids), info.preempted_ranks,
                        describe_deadline(info.deadline_ms), self.every)
        self.pending = info
        return True


def describe_deadline(deadline_ms: int | None, now: float | None = None) -> str:
    """'deadline in 95 s' (Ray's deadline is epoch milliseconds; none: Ray Train waits 120 s)."""
    if not deadline_ms:
        return "no deadline given"
    left = deadline_ms / 1000 - (time.time() if now is None else now)
    return f"deadline in {left:.0f} s" if left >= 0 else f"deadline passed {-left:.0f} s ago"


def _preemption_info():
    import ray.train  # heavy, and only in Ray Train workers

    return ray.train.get_preemption_info()
