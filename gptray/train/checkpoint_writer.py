"""Writing checkpoints from the worker loop: each rank's files written locally, then reported to Ray Train.

Ray Train merges the ranks' local directories into checkpoint_NNNNNNNN in the run directory and,
with checkpoint.upload=async, uploads in a background thread (training waits only for the
local write). A sharded checkpoint under async goes further: DCP's async_save stages each rank's
shard to CPU memory, and a background thread writes the files, so training waits only for the
copy. The checkpoint is reported once every rank's write has finished: while one is in flight,
the ranks agree after each step whether all are done (one small all-reduce), so they report at
the same step. Until it is reported a checkpoint is only on local disk, as with any write; until
Ray's upload of every rank's files is done it is incomplete in the run directory (`settle` waits
for both, for a rewind that must load the newest).
"""

from __future__ import annotations

import copy
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gptray.checkpoint.files import (
    TrainingState,
    checkpoint_dir_name,
    keep_newest,
    local_files,
    save_checkpoint,
    write_state,
)
from gptray.checkpoint.sharded import SHARDED, save_sharded, start_sharded_save
from gptray.config import ExperimentConfig
from gptray.core.devices import PeakMemory
from gptray.core.storage import Storage
from gptray.train.cadence import validates_at
from gptray.train.engine import TrainingEngine


@dataclass
class Written:
    """A checkpoint reported to Ray: its step, the seconds training waited for it, and the memory its
    write took above training's own (bytes; None where unmeasurable)."""

    step: int
    blocked_seconds: float
    extra_bytes: int | None


@dataclass
class _InFlight:
    """A sharded checkpoint whose files a background thread is writing."""

    future: object  # concurrent.futures.Future of DCP's save
    directory: Path
    state: TrainingState  # as of its step
    report: dict
    blocked_seconds: float
    extra_bytes: int | None


class CheckpointWriter:
    """Writes a run's checkpoints from every rank and reports them to Ray Train, which stores them in the run
    directory; in local mode (ray.num_workers=0), where Ray stores nothing, it stores them itself."""

    def __init__(self, engine: TrainingEngine, config: ExperimentConfig, run: Storage):
        self.engine, self.config, self.run = engine, config, run
        self.sharded = config.checkpoint.effective_format(config.train.parallelism) == SHARDED
        self.in_background = self.sharded and config.checkpoint.upload == "async"
        self.in_flight: _InFlight | None = None
        self._group = None  # DCP's background collectives need a process group of their own

    def save(self, state: TrainingState, metrics: dict, urgent: bool = False) -> list[Written]:
        """Checkpoint at state.step (every rank calls it at the same step); the checkpoints reported by it.
        `urgent` (a node about to be preempted): written, stored and reported before this returns, whatever
        checkpoint.upload says, since a background write on a node that goes is lost."""
        written = self.finish()  # one write in flight at a time, so they are reported in order
        start = time.perf_counter()
        report = {"step": state.step, "tokens_seen": state.tokens_seen,
                  **{k.replace("/", "_"): v for k, v in metrics.items()}}
        state.metrics = report
        directory = Path(tempfile.mkdtemp(prefix="gptray-ckpt-"))
        try:
            with PeakMemory(self.engine.device) as memory:
                if self.in_background and not urgent:  # staged now, written by DCP's thread, reported when all are done
                    future = start_sharded_save(directory, self.engine.sharded_state(), self._process_group())
                    self._save_scaler(directory)
                    self.in_flight = _InFlight(future, directory, copy.deepcopy(state), report,
                                               time.perf_counter() - start, None)
                elif self.sharded:
                    save_sharded(directory, self.engine.sharded_state())
                    self._save_scaler(directory)
                    self._list_files(state, directory)
                else:
                    self._write_whole(state, directory)
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        if self.in_flight is not None:
            self.in_flight.extra_bytes = memory.extra_bytes
            return written
        wrote = any(directory.iterdir())
        if not wrote:  # a whole checkpoint's other ranks
            shutil.rmtree(directory, ignore_errors=True)
        self._report(state.step, report, directory if wrote else None, sync=urgent)
        return written + [Written(state.step, time.perf_counter() - start, memory.extra_bytes)]

    def poll(self) -> list[Written]:
        """After a step: report the checkpoint in flight if every rank has written it (a collective while
        one is in flight, nothing otherwise)."""
        if self.in_flight is None:
            return []
        done = torch.tensor([1.0 if self.in_flight.future.done() else 0.0], device=self.engine.device)
        if dist.is_available() and dist.is_initialized():
            # training's group, from this thread: the checkpoint's own group is busy in DCP's thread
            dist.all_reduce(done, op=dist.ReduceOp.MIN)
        return self.finish() if done.item() == 1.0 else []

    def finish(self) -> list[Written]:
        """Wait for the checkpoint in flight, if any, and report it."""
        if self.in_flight is None:
            return []
        flight, self.in_flight = self.in_flight, None
        start = time.perf_counter()
        try:
            flight.future.result()  # raises what the background write raised
            self._list_files(flight.state, flight.directory)
        except BaseException:
            shutil.rmtree(flight.directory, ignore_errors=True)
            raise
        self._report(flight.state.step, flight.report, flight.directory)
        return [Written(flight.state.step, flight.blocked_seconds + time.perf_counter() - start,
                        flight.extra_bytes)]

    def settle(self) -> list[Written]:
        """Wait until every checkpoint this run reported is whole in the run directory: the write in flight
        finished and reported, and Ray's uploads of every rank's files (checkpoint.upload=async) done and
        committed (a collective, in effect: Ray commits a report once every rank's upload is done)."""
        written = self.finish()
        if not self.config.ray.local_mode:  # local mode stores its checkpoints itself, synchronously
            import ray.train  # heavy, and only in Ray Train workers

            ray.train.get_all_reported_checkpoints(consistency_mode=ray.train.CheckpointConsistencyMode.COMMITTED)
        return written

    def _process_group(self):
        """A gloo group for DCP's collectives in its background thread, apart from training's."""
        if self._group is None and dist.is_available() and dist.is_initialized():
            self._group = dist.new_group(backend="gloo")  # a collective: every rank, at the same step
        return self._group

    def _save_scaler(self, directory: Path) -> None:
        if self.engine.rank == 0 and self.engine.scaler is not None:
            torch.save(self.engine.scaler.state_dict(), directory / "scaler.pt")

    def _write_whole(self, state: TrainingState, directory: Path) -> None:
        """Rank 0 writes the whole state (gathered first under FSDP, a collective)."""
        model_state, optimizer_state, scaler_state = self.engine.full_state()
        if self.engine.rank == 0:
            save_checkpoint(directory, model_state, optimizer_state, state, self.config, scaler_state)

    def _list_files(self, state: TrainingState, directory: Path) -> None:
        """Rank 0 writes state.json (and the config), listing every rank's files with their sizes, so that a
        checkpoint missing one is incomplete (a collective: the names and sizes, a few bytes a rank)."""
        engine = self.engine
        files = [local_files(directory)]
        if dist.is_available() and dist.is_initialized():
            files = [None] * engine.world_size
            dist.all_gather_object(files, local_files(directory))
        if engine.rank == 0:
            state.format = SHARDED
            write_state(directory, state, self.config,
                        {name: size for rank_files in files for name, size in rank_files.items()})

    def _report(self, step: int, report: dict, directory: Path | None, sync: bool = False) -> None:
        if self.config.ray.local_mode:
            self._store(step, directory)
            return
        import ray.train  # heavy, and only in Ray Train workers
        from ray.train import Checkpoint
        from ray.train.v2.api.report_config import CheckpointUploadMode

        upload = CheckpointUploadMode.ASYNC if self.config.checkpoint.upload == "async" and not sync \
            else CheckpointUploadMode.SYNC
        ray.train.report(report, checkpoint=Checkpoint.from_directory(str(directory)) if directory else None,
                         checkpoint_dir_name=checkpoint_dir_name(step), checkpoint_upload_mode=upload,
                         delete_local_checkpoint_after_upload=True,
                         validation=directory is not None and validates_at(self.config, step))  # eval.train_async

    def _store(self, step: int, directory: Path) -> None:
        """Local mode: the checkpoint into the run directory (state.json lists every file's size, so a copy cut
        short is incomplete), then only the newest checkpoint.keep of them kept, as Ray keeps them."""
        name = checkpoint_dir_name(step)
        try:
            self.run.make_dirs(name)
            self.run.child(name).upload(directory)
        finally:
            shutil.rmtree(directory, ignore_errors=True)
        keep_newest(self.run, self.config.checkpoint.keep)
