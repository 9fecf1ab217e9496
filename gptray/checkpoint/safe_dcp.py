"""Loading DCP files without running what they hold: DCP's metadata through an unpickler that knows
only DCP's own metadata types, and non-tensor items with torch.load(weights_only=True).

torch's FileSystemReader unpickles `.metadata` with plain `pickle.load`, and its default planner loads
non-tensor items with `weights_only=False`: either would run code planted in a checkpoint on shared
storage, on every worker that loads it. The reader and planner here are the same classes with those
two loads replaced.
"""

from __future__ import annotations

import functools
import io
import pickle

import torch

from gptray.core.errors import CheckpointRefused

_DCP = "torch.distributed.checkpoint"
# Every class DCP 2.13 pickles into `.metadata` (metadata.py, filesystem.py, planner.py), and torch's
# value types they hold. Anything else in a metadata file was not written by DCP.
_METADATA_CLASSES = {
    (f"{_DCP}.metadata", name) for name in (
        "Metadata", "TensorStorageMetadata", "BytesStorageMetadata", "ChunkStorageMetadata",
        "TensorProperties", "StorageMeta", "MetadataIndex", "_MEM_FORMAT_ENCODING")
} | {
    (f"{_DCP}.filesystem", "_StorageInfo"),
    ("torch", "Size"),
    ("torch.serialization", "_get_layout"),  # how torch pickles a layout: a lookup by its name
    ("pathlib", "PosixPath"), ("pathlib", "PurePosixPath"),  # StorageMeta.checkpoint_id, where it was saved
}
_TORCH_DTYPES = {name for name in dir(torch) if isinstance(getattr(torch, name, None), torch.dtype)}


class _MetadataUnpickler(pickle.Unpickler):
    """Unpickles DCP metadata and nothing else: any other global is refused before it is looked up."""

    def find_class(self, module: str, name: str):
        if (module, name) in _METADATA_CLASSES or (module == "torch" and name in _TORCH_DTYPES):
            return super().find_class(module, name)
        raise CheckpointRefused(f"its DCP metadata names {module}.{name}, which is not one of DCP's metadata "
                                "types: the file was not written by torch.distributed.checkpoint, and is not loaded")


def read_dcp_metadata(stream):
    """DCP's `Metadata` from an open `.metadata` file, or CheckpointRefused."""
    from torch.distributed.checkpoint.metadata import Metadata

    try:
        metadata = _MetadataUnpickler(stream).load()
    except CheckpointRefused:
        raise
    except (pickle.UnpicklingError, EOFError, AttributeError, TypeError, ValueError, IndexError) as exc:
        raise CheckpointRefused(f"its DCP metadata cannot be read: {exc}") from None
    if not isinstance(metadata, Metadata):
        raise CheckpointRefused(f"its DCP metadata holds a {type(metadata).__name__}, not DCP's Metadata")
    return metadata


def safe_reader(path: str):
    """DCP's FileSystemReader for `path`, reading `.metadata` with the restricted unpickler."""
    return _classes()[0](path)


def safe_planner():
    """DCP's DefaultLoadPlanner, loading non-tensor items with torch.load(weights_only=True)."""
    return _classes()[1]()


@functools.cache
def _classes():
    """The two subclasses, made on first use: importing torch.distributed.checkpoint takes seconds."""
    from torch.distributed.checkpoint import DefaultLoadPlanner, FileSystemReader
    from torch.distributed.checkpoint._traverse import set_element
    from torch.distributed.checkpoint.metadata import StorageMeta

    class SafeFileSystemReader(FileSystemReader):
        """DCP's file reader with a restricted `.metadata` load. A refusal is kept in `refused` too: DCP
        wraps errors raised inside a load in its own exception."""

        refused: CheckpointRefused | None = None

        def read_metadata(self, *args, **kwargs):
            path = self._get_metadata_path(kwargs.get("rank"))
            with self.fs.create_stream(path, "rb") as stream:
                try:
                    metadata = read_dcp_metadata(stream)
                except CheckpointRefused as exc:
                    self.refused = exc
                    raise
            if getattr(metadata, "storage_meta", None) is None:
                metadata.storage_meta = StorageMeta()
            metadata.storage_meta.load_id = self.load_id
            return metadata

    class SafeLoadPlanner(DefaultLoadPlanner):
        """DCP's default load planner, loading non-tensor items (step counts, optimizer hyperparameters)
        with torch.load(weights_only=True): plain values, containers and tensors only."""

        refused: CheckpointRefused | None = None

        def load_bytes(self, read_item, value: io.BytesIO) -> None:
            try:
                loaded = torch.load(value, weights_only=True)
            except pickle.UnpicklingError as exc:
                self.refused = CheckpointRefused(
                    f"its item {read_item.dest_index.fqn} is not plain data (torch.load with weights_only "
                    f"refused it: {str(exc).strip().splitlines()[0]})")
                raise self.refused from None
            # what DefaultLoadPlanner.load_bytes does with the value it loads
            if self.flatten_state_dict:
                set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], loaded)
            else:
                self.state_dict[read_item.dest_index.fqn] = loaded

    return SafeFileSystemReader, SafeLoadPlanner
