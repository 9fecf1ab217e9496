"""Nothing a sharded checkpoint holds runs when it is loaded: a planted `.metadata` or non-tensor item
is refused with CheckpointRefused, and the code it carries never runs."""

from __future__ import annotations

import io
import json
import os
import pickle
import shutil
from pathlib import Path

import pytest
import torch
from test_checkpoints import BATCH, scrambled, write_sharded
from test_engine import engine, losses

from gptray.checkpoint.sharded import load_sharded
from gptray.core.errors import CheckpointRefused
from gptray.generation.loading import load_model
from gptray.train.consolidate import consolidate_checkpoint


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An engine after 3 steps and its sharded checkpoint, as in test_checkpoints."""
    e = engine(BATCH)
    losses(e, range(3))
    return e, write_sharded(e, tmp_path_factory.mktemp("run") / "checkpoint_00000003", 3)


class Planted:
    """A pickle that, when loaded, creates the marker file: what an attacker would put in a checkpoint."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def copy_of(directory: Path, tmp_path: Path) -> Path:
    target = tmp_path / "checkpoint_00000003"
    shutil.copytree(directory, target)
    return target


def relisted(checkpoint: Path) -> None:
    """state.json listing the planted files' sizes, as an attacker who can write the directory would."""
    state = json.loads((checkpoint / "state.json").read_text())
    state["files"] = {name: (checkpoint / name).stat().st_size for name in state["files"]}
    (checkpoint / "state.json").write_text(json.dumps(state))


def test_a_planted_dcp_metadata_is_refused_and_never_runs(trained, tmp_path):
    _, directory = trained
    checkpoint, marker = copy_of(directory, tmp_path), tmp_path / "ran"
    (checkpoint / ".metadata").write_bytes(pickle.dumps(Planted(marker)))
    relisted(checkpoint)
    with pytest.raises(CheckpointRefused, match=r"posix\.mkdir.*not one of DCP's metadata types"):
        scrambled(engine(BATCH)).load_sharded(checkpoint)
    with pytest.raises(CheckpointRefused):
        load_model(checkpoint)  # generate, eval and export read it this way
    assert not marker.exists()


def test_a_planted_non_tensor_item_is_refused_and_never_runs(trained, tmp_path):
    """DCP stores non-tensor state (optimizer hyperparameters) as torch.save bytes: replace one's bytes,
    at its offset, with a pickle that runs code."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.metadata import BytesStorageMetadata

    _, directory = trained
    checkpoint, marker = copy_of(directory, tmp_path), tmp_path / "ran"
    metadata = dcp.FileSystemReader(str(checkpoint)).read_metadata()  # torch's own reader, on a file we wrote
    fqn = next(k for k, v in metadata.state_dict_metadata.items() if isinstance(v, BytesStorageMetadata))
    info = next(v for k, v in metadata.storage_data.items() if k.fqn == fqn)
    planted = io.BytesIO()
    torch.save(Planted(marker), planted)
    data = (checkpoint / info.relative_path).read_bytes()
    (checkpoint / info.relative_path).write_bytes(data[:info.offset] + planted.getvalue() + data[info.offset:])
    info.length = len(planted.getvalue())
    for other in metadata.storage_data.values():  # everything after it in that file moved
        if other.relative_path == info.relative_path and other.offset > info.offset:
            other.offset += len(planted.getvalue())
    with open(checkpoint / ".metadata", "wb") as f:
        pickle.dump(metadata, f)
    relisted(checkpoint)
    with pytest.raises(CheckpointRefused, match=rf"{fqn} is not plain data"):
        scrambled(engine(BATCH)).load_sharded(checkpoint)
    with pytest.raises(CheckpointRefused):
        consolidate_checkpoint(checkpoint, tmp_path / "whole", optimizer=True)
    assert not marker.exists()


def test_an_untouched_sharded_checkpoint_still_loads_through_the_safe_reader(trained):
    first, directory = trained
    template = {k: torch.zeros_like(v) for k, v in first.module.state_dict().items() if k != "lm_head.weight"}
    loaded = load_sharded(directory, {"model": template})["model"]
    resumed = scrambled(engine(BATCH))
    resumed.load_sharded(directory)  # the optimizer's non-tensor items too
    assert torch.equal(loaded["transformer.wte.weight"], resumed.module.state_dict()["transformer.wte.weight"])
    assert losses(first, range(3, 4)) == losses(resumed, range(3, 4))
