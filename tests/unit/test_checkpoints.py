"""Checkpoint formats in one process: sharded (DCP) round trips, consolidation into whole files, pruning."""

from __future__ import annotations

from dataclasses import asdict

import pytest
import torch
from test_engine import engine, losses

from gptray.checkpoint.files import (
    TrainingState,
    is_complete,
    load_tensors,
    prune_orphans,
    read_state,
    save_checkpoint,
    write_state,
)
from gptray.checkpoint.sharded import SHARDED, save_sharded
from gptray.cli.main import main as cli
from gptray.generation.loading import load_model
from gptray.train.consolidate import consolidate_checkpoint

BATCH = "train.batch_size=4"


def scrambled(e):
    with torch.no_grad():  # other weights, so only the loaded state can make runs agree
        for p in e.module.parameters():
            p.normal_()
    return e


def write_sharded(e, directory, step: int):
    """What the training loop writes at world size 1: DCP files, then config.yaml and state.json."""
    directory.mkdir(parents=True)
    save_sharded(directory, e.sharded_state())
    write_state(directory, TrainingState(step=step, model=asdict(e.config.model), format=SHARDED), e.config)
    return directory


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """An engine after 3 steps and its sharded checkpoint."""
    e = engine(BATCH)
    losses(e, range(3))
    return e, write_sharded(e, tmp_path_factory.mktemp("run") / "checkpoint_00000003", 3)


def test_a_sharded_checkpoint_continues_identically(trained):
    first, directory = trained
    assert {".metadata", "__0_0.distcp", "config.yaml"} == set(read_state(directory).files)
    assert is_complete(directory)
    import torch.distributed.checkpoint as dcp

    stored = dcp.FileSystemReader(str(directory)).read_metadata().state_dict_metadata
    assert "model.transformer.wte.weight" in stored and "model.lm_head.weight" not in stored  # tied: once
    second = scrambled(engine(BATCH))
    second.load_sharded(directory)
    assert losses(first, range(3, 5)) == losses(second, range(3, 5))


def test_a_sharded_base_gives_its_weights_and_no_optimizer_state(trained):
    """Fine-tuning's init_from: the base's weights, a fresh optimizer."""
    _, directory = trained
    tuned = scrambled(engine(BATCH))
    tuned.load_sharded(directory, with_optimizer=False)
    saved, _ = load_model(directory)
    for (name, a), b in zip(saved.state_dict().items(), tuned.module.state_dict().values()):
        assert torch.equal(a, b), name
    assert not any(optimizer.state for optimizer in tuned.optimizers)


def test_consolidating_gives_whole_files_that_load_and_resume_like_the_sharded_one(trained, tmp_path):
    first, directory = trained
    out = consolidate_checkpoint(directory, tmp_path / "whole", optimizer=True)
    assert out.step == 3 and set(out.files) == {"model.pt", "optimizer.pt", "config.yaml"}
    assert read_state(out.out).format == "whole" and is_complete(out.out)
    model_state, optimizer_state = (load_tensors(out.out, name) for name in ("model.pt", "optimizer.pt"))
    sharded = scrambled(engine(BATCH))
    sharded.load_sharded(directory)
    whole = scrambled(engine(BATCH))
    whole.load_full_state(model_state, optimizer_state)
    assert losses(sharded, range(3, 5)) == losses(whole, range(3, 5))
    # generation (and export, eval) read either format into the same weights
    from_sharded, _ = load_model(directory)
    from_whole, _ = load_model(out.out)
    for (name, a), b in zip(from_sharded.state_dict().items(), from_whole.state_dict().values()):
        assert torch.equal(a, b), name


def test_consolidate_refuses_a_whole_checkpoint_and_an_occupied_output(trained, tmp_path, capsys):
    first, directory = trained
    whole = tmp_path / "checkpoint_00000001"
    save_checkpoint(whole, *first.full_state()[:2], TrainingState(step=1, model=asdict(first.config.model)),
                    first.config)
    assert cli(["checkpoint", "consolidate", str(whole)]) == 4
    assert "already whole" in capsys.readouterr().err
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    assert cli(["checkpoint", "consolidate", str(directory), "--out", str(tmp_path / "taken")]) == 2
    assert "--overwrite" in capsys.readouterr().err and (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    assert cli(["checkpoint", "consolidate", str(directory.parent), "--out", str(tmp_path / "new")]) == 0
    assert "model.pt" in capsys.readouterr().out and not (tmp_path / "new" / "optimizer.pt").exists()
    # --overwrite replaces a checkpoint's files and nothing else: a directory holding others is refused
    assert cli(["checkpoint", "consolidate", str(directory), "--out", str(tmp_path / "taken"), "--overwrite"]) == 2
    assert "holds files a checkpoint does not (keep.txt)" in capsys.readouterr().err
    assert (tmp_path / "taken" / "keep.txt").read_text() == "mine" and not (tmp_path / "taken" / "model.pt").exists()
    (tmp_path / "new" / "optimizer.pt").write_bytes(b"stale")  # a checkpoint's own file: replaced (here: removed)
    assert cli(["checkpoint", "consolidate", str(directory), "--out", str(tmp_path / "new"), "--overwrite"]) == 0
    assert read_state(tmp_path / "new").files.keys() == {"model.pt", "config.yaml"} and is_complete(tmp_path / "new")


def test_pruning_deletes_orphans_older_than_what_ray_keeps_and_nothing_ray_keeps(trained, tmp_path):
    from gptray.core.storage import Storage

    e, _ = trained
    model_state, optimizer_state, _ = e.full_state()
    for step in (3, 6, 9, 12, 15):
        save_checkpoint(tmp_path / f"checkpoint_{step:08d}", model_state, None, TrainingState(step=step), e.config)
    for step in (6, 15):  # 6: an upload cut short long ago; 15: a newer one Ray never registered
        (tmp_path / f"checkpoint_{step:08d}" / "model.pt").write_bytes(b"partial")
    (tmp_path / "metrics").mkdir()
    kept = {"checkpoint_00000009", "checkpoint_00000012"}  # what Ray keeps (checkpoint.keep=2)
    assert prune_orphans(Storage(str(tmp_path)), set()) == []  # nothing registered: no reference point
    assert prune_orphans(Storage(str(tmp_path)), kept) == ["checkpoint_00000003", "checkpoint_00000006"]
    assert sorted(p.name for p in tmp_path.iterdir()) == \
        ["checkpoint_00000009", "checkpoint_00000012", "checkpoint_00000015", "metrics"]


def test_peak_memory_sees_what_a_block_held_and_let_go():
    # In a fresh process: in this one, memory an earlier test freed but the process kept resident could
    # hold the block without the resident set growing.
    import subprocess
    import sys

    code = ("import torch; from gptray.core.devices import PeakMemory\n"
            "with PeakMemory(torch.device('cpu')) as memory:\n"
            "    held = torch.ones(50_000_000)  # 200 MB, written, so resident\n"
            "    del held\n"
            "print(memory.extra_bytes)")
    extra = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert int(extra.strip().splitlines()[-1]) >= 150e6


def test_a_checkpoint_resumes_only_in_the_order_of_training_windows_it_was_trained_in():
    from gptray.checkpoint.files import TrainingState, check_compatible
    from gptray.config import load_config
    from gptray.core.errors import CheckpointError

    config = load_config(None, ["data.tokenizer=gpt2"])  # the 50,257 tokens the old state records
    block = {"shuffle": "block", "block_shards": 16, "global_batch": 8}
    state = TrainingState(dataset_fingerprint="f", model=asdict(config.model), data_order=block)
    check_compatible(state, config, "f", "ckpt", dict(block))
    with pytest.raises(CheckpointError, match="shuffle block, block_shards 16, global_batch 8.*shuffle global"):
        check_compatible(state, config, "f", "ckpt", {"shuffle": "global"})
    with pytest.raises(CheckpointError, match="another order"):
        check_compatible(state, config, "f", "ckpt", {**block, "block_shards": 8})
    state.data_order = {}  # written before the block order existed: it was the global order
    check_compatible(state, config, "f", "ckpt", {"shuffle": "global"})
    with pytest.raises(CheckpointError, match="another order"):
        check_compatible(state, config, "f", "ckpt", block)
