"""Rewinding past a loss spike (train.spike.rewind): back to the latest checkpoint, skipping through the spike."""

from __future__ import annotations

import dataclasses
import logging

from gptray.checkpoint.files import TrainingState
from gptray.core.storage import Storage
from gptray.train.checkpoint_manager import CheckpointManager
from gptray.train.numerics import StepGuard

log = logging.getLogger(__name__)


def rewind(checkpoints: CheckpointManager, target: Storage | None, guard: StepGuard,
           state: TrainingState) -> StepGuard | None:
    """After a spike at step state.step under train.spike.rewind, on every rank alike: `target` (the run's
    newest complete checkpoint, CheckpointManager.rewind_point: the same on every rank) loaded into the engine
    (each rank its own shard under FSDP) and into `state`, and the guard that skips from the step after it
    through the spike; None where the run has no checkpoint yet (the spike's step is then only skipped)."""
    spike = state.step
    if target is None:
        log.warning("a loss spike at step %d and no checkpoint to rewind to: only step %d is skipped", spike, spike)
        return None
    loaded = checkpoints.load_checkpoint(target)
    for name in (f.name for f in dataclasses.fields(state)):
        setattr(state, name, getattr(loaded, name))
    guard, (first, last) = guard.after_rewind(state.skips, spike, state.step + 1)
    if checkpoints.engine.rank == 0:
        log.warning("a loss spike at step %d: rewound to the checkpoint at step %d; steps %d…%d are skipped "
                    "(train.spike.rewind)", spike, state.step, first, last)
    return guard
