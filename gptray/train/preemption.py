"""Ray Train's notice that a node of the run is about to be preempted: the moment to write a checkpoint."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

CHECK_EVERY_STEPS = 10  # Ray's answer is a collective (a round trip through Ray): not every step


class PreemptionNotice:
    """Asks Ray Train (`ray.train.get_preemption_info`) whether a node of this worker group is about to be
    reclaimed, and says so once per notice, so that the loop checkpoints at once and the group restarted
    without that node resumes there instead of at the last scheduled checkpoint.

    Ray's call broadcasts rank 0's view to every rank (a collective): every rank must ask at the same steps,
    so it asks every CHECK_EVERY_STEPS steps, a pure function of the step. Outside Ray Train (local mode)
    there is never a notice.
    """

    def __init__(self, ask=None):
        self._ask = ask or _preemption_info  # () -> ray.train.PreemptionInfo | None
        self._answered: set[tuple] = set()

    def checkpoint_now(self, step: int) -> bool:
        """Whether a notice arrived that this run has not yet checkpointed for (a collective at every
        CHECK_EVERY_STEPS-th step)."""
        if step % CHECK_EVERY_STEPS:
            return False
        info = self._ask()
        if info is None:
            return False
        key = (info.deadline_ms, tuple(info.preempted_node_ids))
        if key in self._answered:
            return False
        self._answered.add(key)
        log.warning("step %d: node(s) %s (ranks %s) are about to be preempted (deadline %s ms): checkpointing now",
                    step, ", ".join(info.preempted_node_ids), info.preempted_ranks, info.deadline_ms)
        return True


def _preemption_info():
    import ray.train  # heavy, and only in Ray Train workers

    return ray.train.get_preemption_info()
