"""One place for a run's checkpoints: what it resumes from, loading either format, saving, pruning.

The driver asks the manager once what a run resumes from (`resume_point`: checkpoint.resume_from adopted on
the first launch, the latest complete checkpoint checked against the config, the dataset and the data
order); every worker asks it to load (`load`: the newer of Ray's registered checkpoint and the run
directory's, or a fine-tuning base's weights) and to save (`save`, `poll`, `finish`, through
checkpoint_writer.py); after the fit the driver asks it to prune what Ray did not keep. The format
itself (state.json, whole and sharded files, completeness) is gptray/checkpoint/.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

from gptray.checkpoint.files import (
    TrainingState,
    check_compatible,
    checkpoint_dir_name,
    copy_checkpoint,
    find_checkpoint,
    latest_stored_checkpoint,
    load_tensors,
    optional_tensors,
    prune_orphans,
    read_config,
    read_state,
)
from gptray.checkpoint.sharded import SHARDED
from gptray.config import ExperimentConfig
from gptray.core.devices import broadcast_object
from gptray.core.storage import Storage
from gptray.data.train_windows import DataOrder
from gptray.train.checkpoint_writer import CheckpointWriter, Written
from gptray.train.engine import TrainingEngine
from gptray.train.optim import LrSchedule, first_schedule_difference

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ResumePoint:
    """Where a launch starts: the run's latest checkpoint (None: from scratch) and its step."""

    checkpoint: Storage | None
    step: int


class CheckpointManager:
    """A run's checkpoints, as the driver and each worker see them (`engine`: a worker's, else None)."""

    def __init__(self, config: ExperimentConfig, run: Storage, dataset_fingerprint: str, order: DataOrder,
                 engine: TrainingEngine | None = None):
        self.config, self.run, self.fingerprint, self.order = config, run, dataset_fingerprint, order
        self.engine = engine
        self._writer = CheckpointWriter(engine, config, run) if engine is not None else None

    # The driver's side.

    def resume_point(self) -> ResumePoint:
        """The run's latest checkpoint, checked against this config, dataset and order (checkpoint.resume_from
        is copied in first on the run's first launch); step 0 without one."""
        self._adopt_resume_from()
        latest = self.latest()
        if latest is None:
            return ResumePoint(None, 0)
        state = read_state(latest)
        self.check(state, latest.uri())
        log.info("run %s has a checkpoint at step %d: resuming from it", self.config.name, state.step)
        check_schedule(read_config(latest), self.config, state.step, latest.uri())
        return ResumePoint(latest, state.step)

    def latest(self) -> Storage | None:
        """The run's newest complete checkpoint."""
        return latest_stored_checkpoint(self.run)

    def latest_step(self) -> int:
        latest = self.latest()
        return read_state(latest).step if latest is not None else 0

    def check(self, state: TrainingState, where: str) -> None:
        """Refuse a checkpoint of another model shape, optimizer, dataset or data order (CheckpointError)."""
        check_compatible(state, self.config, self.fingerprint, where, self.order.record())

    def prune(self, kept_by_ray: set[str]) -> list[str]:
        """After the fit (no upload in flight): delete the checkpoints Ray never registered that are older
        than the ones it keeps (checkpoint.keep; Ray deletes its own older ones); their names."""
        doomed = prune_orphans(self.run, kept_by_ray)
        for name in doomed:
            log.info("deleted %s: a checkpoint Ray never registered, older than the ones it keeps",
                     self.run.uri(name))
        return doomed

    def _adopt_resume_from(self) -> None:
        """checkpoint.resume_from, on the run's first launch: that checkpoint, checked, is copied into the run
        directory, where the resume finds it as the run's own (later launches ignore the setting)."""
        if not self.config.checkpoint.resume_from or self.latest() is not None:
            return
        source = find_checkpoint(self.config.checkpoint.resume_from)
        self.check(read_state(source), str(source))
        name = copy_checkpoint(source, self.run)
        log.info("run %s starts from %s (checkpoint.resume_from), copied to %s", self.config.name, source,
                 self.run.uri(name))

    # A worker's side.

    def load(self, registered=None, init_from: Storage | None = None) -> TrainingState:
        """Load the run's state into the engine: from the newer of Ray's registered checkpoint
        (`registered`: ray.train.get_checkpoint()) and the run directory's latest, else a fresh state
        with a fine-tuning base's weights (`init_from`) or none."""
        engine = self.engine
        chosen = _newest(self.latest(), _as_storage(registered))
        if chosen is not None:
            state = self.load_checkpoint(chosen)
            if engine.rank == 0:
                log.info("resumed from checkpoint at step %d (%s tokens seen)", state.step, f"{state.tokens_seen:,}")
            return state
        if init_from is not None:  # fine-tuning's first launch: the base's weights, a fresh optimizer
            self._load_into_engine(init_from, read_state(init_from).format, with_optimizer=False)
            if engine.rank == 0:
                log.info("starting from the weights of %s", init_from.uri())
        return TrainingState(dataset_fingerprint=self.fingerprint, model=asdict(self.config.model),
                             world_size=engine.world_size, data_order=self.order.record(),
                             optimizer=self.config.optimizer.name)

    def load_checkpoint(self, checkpoint: Storage) -> TrainingState:
        """Load `checkpoint` (checked against the run) into the engine, optimizer included; its state."""
        state = read_state(checkpoint)
        self.check(state, checkpoint.uri())
        self._load_into_engine(checkpoint, state.format, with_optimizer=True)
        state.world_size = self.engine.world_size
        return state

    def rewind_point(self) -> tuple[Storage | None, list[Written]]:
        """For a rewind, on every rank at the same step: the run's newest complete checkpoint once every write
        and upload in flight is done (never an older one because the newest was still uploading, never a
        partial one), rank 0's choice on every rank; and the checkpoints reported meanwhile."""
        written = self._writer.settle()
        latest = self.latest() if self.engine.rank == 0 else None
        step = broadcast_object(read_state(latest).step if latest is not None else None)  # one choice
        return (self.run.child(checkpoint_dir_name(step)) if step is not None else None), written

    def save(self, state: TrainingState, metrics: dict, urgent: bool = False) -> list[Written]:
        """Checkpoint at state.step (every rank, the same step); the checkpoints reported by now. `urgent`: stored
        and reported before it returns (a node is about to be preempted)."""
        return self._writer.save(state, metrics, urgent)

    def poll(self) -> list[Written]:
        """After a step: report a checkpoint written in the background once every rank is done."""
        return self._writer.poll()

    def finish(self) -> list[Written]:
        """Wait for a checkpoint still being written and report it."""
        return self._writer.finish()

    def _load_into_engine(self, checkpoint: Storage, checkpoint_format: str, with_optimizer: bool) -> None:
        engine = self.engine
        if checkpoint_format == SHARDED:
            # each rank reads its own pieces, whatever world size wrote them, where they are stored:
            # from an object store by range requests, never the whole checkpoint
            engine.load_sharded(checkpoint, with_optimizer=with_optimizer)
        else:
            with _local_directory(checkpoint) as directory:
                engine.load_full_state(load_tensors(directory, "model.pt"),
                                       load_tensors(directory, "optimizer.pt") if with_optimizer else None)
        if with_optimizer:
            engine.load_scaler(optional_tensors(checkpoint, "scaler.pt"))


def check_schedule(saved: ExperimentConfig, config: ExperimentConfig, step: int, where: str) -> None:
    """Say so where the learning rates this config gives the steps before the checkpoint are not those the
    checkpoint was trained with: the run then does not continue as one uninterrupted run would (a WSD
    continuation must start before its new decay does)."""
    differs = first_schedule_difference(LrSchedule.of(saved), LrSchedule.of(config), step)
    if differs is not None:
        at, before, now = differs
        log.warning("the learning rate schedule differs from the one checkpoint %s was trained with: step %d had "
                    "lr %.3g, this config gives it %.3g. Training goes on from step %d with this config's schedule, "
                    "not as one run with it would have.", where, at, before, now, step)


def _newest(*candidates: Storage | None) -> Storage | None:
    """The checkpoint with the highest step. A job stopped while a checkpoint was being reported can leave
    it complete in the run directory but unregistered with Ray; resuming from it loses nothing and agrees
    with what the driver found."""
    found = [c for c in candidates if c is not None]
    return max(found, key=lambda c: read_state(c).step) if found else None


def _as_storage(checkpoint) -> Storage | None:
    """Ray's registered checkpoint (path and filesystem) as a Storage; None if there is none."""
    if checkpoint is None:
        return None
    return Storage.on(checkpoint.filesystem, checkpoint.path)


def _local_directory(checkpoint: Storage) -> contextlib.AbstractContextManager[Path]:
    """A checkpoint as a local directory: itself on a local filesystem, a temporary download otherwise."""
    if checkpoint.is_local:
        return contextlib.nullcontext(Path(checkpoint.path()))
    from ray.train import Checkpoint  # heavy, and only in Ray Train workers

    return Checkpoint(path=checkpoint.base, filesystem=checkpoint.fs).as_directory()
