"""Sharded checkpoints: each rank writes the state it holds with torch.distributed.checkpoint (DCP).

A sharded checkpoint directory holds DCP's `.metadata` (written by rank 0) and one
`__<rank>_0.distcp` file per rank, beside the usual `state.json` and `config.yaml`. Each rank
writes its files into a local directory of its own; Ray Train merges the ranks' directories into
one checkpoint in the run directory. DCP records every tensor by parameter name and global
shape, so a load reshards: a checkpoint written by 2 FSDP ranks loads into 1 DDP rank, 4 FSDP
ranks, or one process that wants the weights alone. DCP reads tensors into the state dict it is
given, in place, and only the pieces that state dict holds. It is read through safe_dcp.py: nothing a
checkpoint holds runs code when loaded.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import pyarrow.fs as pafs
import torch

from gptray.checkpoint.safe_dcp import safe_planner, safe_reader
from gptray.core.errors import CheckpointError, CheckpointRefused
from gptray.core.storage import Location, Storage, join

WHOLE = "whole"  # model.pt and optimizer.pt, written by rank 0: loadable with torch.load(weights_only=True)
SHARDED = "sharded"  # DCP files, one per rank
DCP_METADATA = ".metadata"


def _storage_key(tensor) -> tuple | None:
    """What two names of one tensor share (a tied head and its embedding): the memory they view."""
    local = tensor.to_local() if hasattr(tensor, "to_local") else tensor  # an FSDP DTensor: this rank's shard
    if not isinstance(local, torch.Tensor) or local.numel() == 0:
        return None
    return local.untyped_storage().data_ptr(), local.storage_offset(), tuple(local.shape), local.dtype


def _without_aliases(model_state: dict) -> dict:
    """The model state with each tensor once: DCP would store a tied head beside its embedding, where
    torch.save keeps one copy of a shared tensor. Loading the kept name fills the alias too (in place)."""
    seen, kept = set(), {}
    for name, tensor in model_state.items():
        key = _storage_key(tensor)
        if key is None or key not in seen:
            kept[name] = tensor
        if key is not None:
            seen.add(key)
    return kept


def _dcp_view(state: dict) -> dict:
    return {**state, "model": _without_aliases(state["model"])} if "model" in state else state


def save_sharded(directory: str | Path, state: dict) -> None:
    """Write this rank's part of `state` (a collective when a process group is up: every rank calls it)."""
    import torch.distributed.checkpoint as dcp

    dcp.save(_dcp_view(state), storage_writer=dcp.FileSystemWriter(str(directory)))


def start_sharded_save(directory: str | Path, state: dict, process_group=None):
    """Stage this rank's part of `state` to CPU memory and write it in a background thread (DCP's
    async_save; a collective). Returns a Future done when the files are written. `process_group`: a
    group of its own (gloo), so that the thread's collectives never meet training's."""
    import torch.distributed as dist
    import torch.distributed.checkpoint as dcp

    response = dcp.async_save(_dcp_view(state), storage_writer=dcp.FileSystemWriter(str(directory)),
                              process_group=process_group, no_dist=not (dist.is_available() and dist.is_initialized()))
    return getattr(response, "upload_completion", response)  # an AsyncSaveResponse in some versions


def load_sharded(directory: Location, state: dict) -> dict:
    """Fill `state` in place from a sharded checkpoint: whatever keys and shards it holds, nothing more
    (a tied head is filled through its embedding, which it shares memory with). `directory` may be on
    an object store: each rank then reads only the byte ranges of the pieces it holds."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.api import CheckpointException

    store = Storage.of(directory)
    if not store.exists(DCP_METADATA):
        raise CheckpointError(f"checkpoint {store.uri()} is sharded but lacks DCP's {DCP_METADATA}")
    reader = safe_reader(store.path()) if store.is_local else _storage_reader(store)
    planner = safe_planner()
    try:
        with warnings.catch_warnings():  # without a process group DCP loads in one process, as meant here
            warnings.filterwarnings("ignore", "torch.distributed is disabled", UserWarning)
            dcp.load(_dcp_view(state), storage_reader=reader, planner=planner)
    except CheckpointRefused as exc:
        raise CheckpointRefused(f"checkpoint {store.uri()}: {exc}") from None
    except (CheckpointException, RuntimeError, KeyError, ValueError) as exc:  # CheckpointException: a BaseException
        refused = reader.refused or planner.refused  # DCP wraps what its reader and planner raise
        if refused is not None:
            raise CheckpointRefused(f"checkpoint {store.uri()}: {refused}") from None
        raise CheckpointError(f"cannot load {', '.join(state)} from sharded checkpoint {store.uri()}: "
                              f"{str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}") from None
    return state


def _storage_reader(store: Storage):
    """DCP's file reader over a Storage: every tensor it loads is a range read of the file holding it."""
    from torch.distributed.checkpoint.filesystem import FileSystemBase

    class StorageFiles(FileSystemBase):
        """The read half of DCP's filesystem interface, on the checkpoint's pyarrow filesystem."""

        @contextlib.contextmanager
        def create_stream(self, path, mode):
            if mode != "rb":
                raise CheckpointError(f"a stored checkpoint is read here, not written ({path}, mode {mode})")
            with store.fs.open_input_file(str(path)) as file:  # seekable: reads become range requests
                yield file

        def concat_path(self, path, suffix):
            return join(str(path), suffix)

        def init_path(self, path):
            return str(path)

        def exists(self, path) -> bool:
            return store.fs.get_file_info(str(path)).type == pafs.FileType.File

        @classmethod
        def validate_checkpoint_id(cls, checkpoint_id) -> bool:
            return True

        def rename(self, path, new_path):
            raise CheckpointError("a stored checkpoint is read here, not renamed")

        def mkdir(self, path):
            raise CheckpointError("a stored checkpoint is read here, not written")

        def rm_file(self, path):
            raise CheckpointError("a stored checkpoint is read here, not deleted")

    reader = safe_reader(store.path())
    reader.fs = StorageFiles()
    reader.path = store.path()
    return reader


def load_sharded_model(directory: str | Path, template: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model weights of a sharded checkpoint, read into `template` (a model's own state dict, whose
    tensors give the shapes): one process, no process group, and no optimizer state read."""
    return load_sharded(directory, {"model": template})["model"]
