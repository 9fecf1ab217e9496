"""Checkpoints: the complete training state as tensors and JSON, loadable with `weights_only=True`.

Checkpoints live in a run directory on local disk or on an object store (s3://, gs://); their
metadata is read where they are, and tensors are loaded from a local directory (a downloaded copy).

A checkpoint directory holds `state.json` (step, tokens seen, model shape, dataset fingerprint,
format, and the size of every other file) and `config.yaml` (the resolved run config), and the
tensors in one of two formats (`state.format`): whole, `model.pt` and `optimizer.pt` state dicts
written by rank 0; or sharded, one DCP file per rank (gptray/checkpoint/sharded.py).
Randomness needs no saved state: every step reseeds from (seed, step, rank), so a resumed
run draws the same dropout masks as an uninterrupted one.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import yaml

from gptray.checkpoint.sharded import SHARDED, WHOLE, load_sharded_model
from gptray.config import ExperimentConfig
from gptray.config.model import ModelConfig
from gptray.core.errors import CheckpointError
from gptray.core.paths import cache_home, is_uri
from gptray.core.storage import Location, Storage

log = logging.getLogger(__name__)

STATE_FILE = "state.json"  # written last, with the size of every other file (see is_complete)
CHECKPOINT_DIR = re.compile(r"^checkpoint_(\d+)$")


@dataclass
class TrainingState:
    step: int = 0  # optimizer steps completed
    tokens_seen: int = 0
    dataset_fingerprint: str = ""
    model: dict = field(default_factory=dict)  # the resolved model config
    world_size: int = 1
    best_val_loss: float | None = None
    best_val_bpb: float | None = None  # validation's lowest bits per byte (checkpoints before it: None)
    metrics: dict = field(default_factory=dict)  # what was reported with this checkpoint
    files: dict = field(default_factory=dict)  # name → bytes of every file beside state.json
    format: str = WHOLE  # how the tensors are stored: WHOLE or SHARDED (checkpoints before it are whole)
    # The order of training windows (train_windows.data_order); empty in checkpoints from before the block order
    data_order: dict = field(default_factory=dict)
    optimizer: str = "adamw"  # optimizer.name, whose state the checkpoint holds (checkpoints before it: adamw)
    # Which steps the run did not apply (gptray.train.numerics.StepGuard.record): the train.skip_steps
    # ranges in force, the spike detector's loss history, the skips by reason; empty before it
    skips: dict = field(default_factory=dict)


def checkpoint_dir_name(step: int) -> str:
    return f"checkpoint_{step:08d}"


def save_checkpoint(directory: str | Path, model_state: dict, optimizer_state: dict | None,
                    state: TrainingState, config: ExperimentConfig, scaler_state: dict | None = None) -> Path:
    """Write a whole checkpoint from whole (unsharded) state dicts keyed by parameter name."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    torch.save(model_state, directory / "model.pt")
    if optimizer_state is not None:
        torch.save(optimizer_state, directory / "optimizer.pt")
    if scaler_state is not None:
        torch.save(scaler_state, directory / "scaler.pt")
    state.format = WHOLE
    write_state(directory, state, config)
    return directory


def local_files(directory: str | Path) -> dict[str, int]:
    """name → bytes of the files a checkpoint directory holds so far (state.json aside)."""
    return {f.name: f.stat().st_size for f in sorted(Path(directory).iterdir())
            if f.is_file() and not f.name.startswith(STATE_FILE)}


def write_state(directory: str | Path, state: TrainingState, config: ExperimentConfig,
                elsewhere: dict[str, int] | None = None) -> None:
    """config.yaml, then state.json listing every file the checkpoint must hold: those in `directory`
    and `elsewhere` (other ranks' shards, which reach the stored checkpoint by their own uploads)."""
    directory = Path(directory)
    (directory / "config.yaml").write_text(yaml.safe_dump(config.to_dict(), sort_keys=False))
    # Copies to storage (Ray's upload, an rsync) do not keep our write order, and each rank uploads
    # its own files: the sizes let a reader tell a complete checkpoint from one cut short.
    state.files = dict(sorted({**(elsewhere or {}), **local_files(directory)}.items()))
    tmp = directory / f"{STATE_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(state), indent=2))
    os.replace(tmp, directory / STATE_FILE)


def read_state(directory: Location) -> TrainingState:
    """A checkpoint's state.json, from a local directory or an object store."""
    store = Storage.of(directory)
    if not store.exists(STATE_FILE):
        raise CheckpointError(f"{store.uri()} is not a complete gptray checkpoint (no {STATE_FILE})")
    try:
        return TrainingState(**json.loads(store.read_bytes(STATE_FILE)))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError) as exc:
        raise CheckpointError(f"{store.uri(STATE_FILE)} is malformed: {exc}") from None


def read_config(directory: Location) -> ExperimentConfig:
    store = Storage.of(directory)
    if not store.exists("config.yaml"):
        raise CheckpointError(f"{store.uri()} has no config.yaml")
    return ExperimentConfig.from_saved(yaml.safe_load(store.read_bytes("config.yaml")))


def load_tensors(directory: Location, name: str, device: torch.device | str = "cpu"):
    """A tensor file of a checkpoint in a local directory or on an object store (read whole)."""
    store = Storage.of(directory)
    if not store.exists(name):
        raise CheckpointError(f"checkpoint {store.uri()} lacks {name}")
    # weights_only: a checkpoint can never run code when loaded.
    source = store.path(name) if store.is_local else io.BytesIO(store.read_bytes(name))
    return torch.load(source, map_location=device, weights_only=True)


def has_weights(directory: str | Path) -> bool:
    """Whether a local checkpoint holds model weights in either format."""
    directory = Path(directory)
    return (directory / "model.pt").is_file() or read_state(directory).format == SHARDED


def load_model_state(directory: str | Path, template: dict[str, torch.Tensor],
                     device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    """A local checkpoint's model weights keyed by parameter name, whole or sharded. `template` is the
    model's own state dict: a sharded checkpoint is read into it (its tensors give the shapes)."""
    if read_state(directory).format == SHARDED:
        return {k: v.to(device) for k, v in load_sharded_model(directory, template).items()}
    return load_tensors(directory, "model.pt", device)


def optional_tensors(directory: Location, name: str, device: torch.device | str = "cpu"):
    """Like load_tensors, but None when the checkpoint has no such file (e.g. no scaler in fp32)."""
    return load_tensors(directory, name, device) if Storage.of(directory).exists(name) else None


def check_compatible(state: TrainingState, config: ExperimentConfig, dataset_fingerprint: str, where: str,
                     data_order: dict | None = None) -> None:
    """Refuse to resume a checkpoint into a different model shape, optimizer, dataset or order of training
    windows (`data_order`: the run's, as train_windows.data_order gives it; None: not checked)."""
    expected = config.model.shape()
    # from_saved: a checkpoint written before a model field existed gets the value it was trained with.
    saved = ModelConfig.from_saved(state.model).shape()
    if saved != expected:
        diff = ", ".join(
            f"{k}: checkpoint {saved[k]} vs config {expected[k]}" for k in expected if saved[k] != expected[k]
        )
        raise CheckpointError(
            f"checkpoint {where} has a different model shape ({diff}). Use a new run name to start afresh."
        )
    if state.optimizer != config.optimizer.name:
        raise CheckpointError(
            f"checkpoint {where} holds the state of optimizer.name={state.optimizer}, not "
            f"{config.optimizer.name}: resume it with optimizer.name={state.optimizer}, or start a new run "
            "(train.init_from takes a checkpoint's weights alone)."
        )
    if state.dataset_fingerprint != dataset_fingerprint:
        raise CheckpointError(
            f"checkpoint {where} was trained on a different token dataset (fingerprint "
            f"{state.dataset_fingerprint[:12]}… vs {dataset_fingerprint[:12]}… now in {config.data.dataset_dir}). "
            "Resuming would change the data order; use a new run name to start afresh."
        )
    saved_order = state.data_order or {"shuffle": "global"}
    if data_order is not None and saved_order != data_order:
        raise CheckpointError(
            f"checkpoint {where} was trained in another order of training windows ({_order_text(saved_order)}) "
            f"than this config gives ({_order_text(data_order)}). Resuming would change the data order: set "
            "data.shuffle, data.shuffle_block_shards and train.batch_size as they were, or use a new run name")


def _order_text(order: dict) -> str:
    return ", ".join(f"{key} {value}" for key, value in order.items())


def latest_checkpoint(run_dir: str | Path) -> Path | str | None:
    """The complete checkpoint with the highest step in a run directory, if any.

    A local run directory gives a Path; one on an object store (s3://…) gives a URI.
    """
    latest = latest_stored_checkpoint(Storage.of(run_dir))
    if latest is None:
        return None
    return latest.location if is_uri(str(run_dir)) else Path(run_dir) / Path(latest.base).name


def latest_stored_checkpoint(run: Storage) -> Storage | None:
    """latest_checkpoint for a run directory given as a Storage (e.g. one a Ray worker got from the driver)."""
    found = [(int(m.group(1)), name) for name in run.list_dirs() if (m := CHECKPOINT_DIR.match(name))]
    for _, name in sorted(found, reverse=True):  # newest first: usually only the newest is read
        if is_complete(run.child(name)):
            return run.child(name)
    return None


def prune_orphans(run: Storage, registered: set[str]) -> list[str]:
    """Delete the checkpoints Ray does not keep that are older than the newest one it does; their names.

    `registered`: the names of the checkpoints Ray keeps (checkpoint.keep of them; Ray deletes
    the older ones it registered itself). What else is there is an orphan nothing else removes: an
    upload cut short, or one that finished but was never registered (a crash between the two). Ray
    is never asked about a directory deleted here: it refuses to start a run whose record names a
    checkpoint that is gone.
    """
    found = [(int(m.group(1)), name) for name in run.list_dirs() if (m := CHECKPOINT_DIR.match(name))]
    newest = max((step for step, name in found if name in registered), default=None)
    if newest is None:
        return []
    doomed = [name for step, name in sorted(found) if step < newest and name not in registered]
    for name in doomed:
        run.delete_dir(name)
    return doomed


def keep_newest(run: Storage, keep: int) -> list[str]:
    """Delete every checkpoint of a run but its `keep` newest complete ones (what Ray Train's num_to_keep does
    for the checkpoints it registers, for a run that registers none: local mode); their names."""
    found = sorted(((int(m.group(1)), name) for name in run.list_dirs() if (m := CHECKPOINT_DIR.match(name))),
                   reverse=True)
    newest = [name for _, name in found if is_complete(run.child(name))][:keep]
    return prune_orphans(run, set(newest))


def copy_checkpoint(source: Location, run: Storage) -> str:
    """Copy a complete checkpoint into a run directory under its step's name (which it returns), where the
    run's resume finds it as one of its own. A copy cut short is no checkpoint: state.json lists every
    file's size (is_complete), whatever order the files arrive in."""
    source = Storage.of(source)
    name = checkpoint_dir_name(read_state(source).step)
    run.make_dirs(name)
    source.copy_to(run.child(name))
    if problems := missing_files(run.child(name)):
        raise CheckpointError(f"the copy of {source.uri()} in {run.uri(name)} is incomplete: {', '.join(problems)}")
    return name


def missing_files(directory: Location) -> list[str]:
    """What keeps a checkpoint from being complete: state.json, or files it lists absent or cut short."""
    store = Storage.of(directory)
    try:
        state = read_state(store)
    except CheckpointError:
        return [STATE_FILE]
    problems = []
    for name, size in state.files.items():
        found = store.size(name)
        if found is None:
            problems.append(f"{name} (missing)")
        elif found != size:
            problems.append(f"{name} ({found} of {size} bytes)")
    return problems


def is_complete(directory: Location) -> bool:
    """A checkpoint whose state.json and every file it lists are there, at their recorded sizes."""
    return not missing_files(directory)


def find_checkpoint(path: str | Path) -> Path | str:
    """The complete checkpoint a path names: itself, or a run directory's latest. A Path for a local
    one, a URI for one on an object store (nothing is downloaded)."""
    store = Storage.of(path)
    if store.exists(STATE_FILE):
        if problems := missing_files(store):
            raise CheckpointError(f"checkpoint {store.uri()} is incomplete: {', '.join(problems)} "
                                  "(a copy or upload cut short?)")
        return str(path) if is_uri(str(path)) else Path(path)
    latest = latest_checkpoint(path)
    if latest is None:
        raise CheckpointError(f"no checkpoint at {store.uri()} (neither a checkpoint nor a run directory holding one)")
    return latest


def resolve_checkpoint(path: str | Path) -> Path:
    """A local checkpoint directory for a checkpoint or run directory (→ its latest checkpoint), local or
    on an object store: one on an object store is downloaded once into the local cache.
    """
    return local_checkpoint(find_checkpoint(path))


def local_checkpoint(found: Path | str) -> Path:
    """What find_checkpoint found, on local disk: itself, or the cached copy of one on an object store."""
    return local_copy(Storage(found)) if isinstance(found, str) else found


def local_copy(checkpoint: Storage, cache_dir: str | Path | None = None) -> Path:
    """A local copy of a complete checkpoint on an object store, kept in the cache and reused.

    A copy is reused only while its state.json matches the stored one byte for byte (a run
    started afresh under the same name rewrites checkpoints under the same names).
    """
    cache = Path(cache_dir) if cache_dir else default_checkpoint_cache()
    scheme = checkpoint.location.split("://", 1)[0]
    target = cache / scheme / checkpoint.base.lstrip("/")
    stored_state = checkpoint.read_bytes(STATE_FILE)
    if (target / STATE_FILE).is_file() and (target / STATE_FILE).read_bytes() == stored_state and is_complete(target):
        return target
    log.info("downloading checkpoint %s to %s", checkpoint.uri(), target)
    partial = target.with_name(f"{target.name}.{os.getpid()}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    checkpoint.download(partial)
    if problems := missing_files(partial):
        shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(f"checkpoint {checkpoint.uri()} changed while it was downloaded: {', '.join(problems)}")
    shutil.rmtree(target, ignore_errors=True)
    try:
        os.replace(partial, target)
    except OSError:  # another process put its copy there first
        shutil.rmtree(partial, ignore_errors=True)
        if (target / STATE_FILE).read_bytes() != stored_state or not is_complete(target):
            raise
    return target


def default_checkpoint_cache() -> Path:
    return cache_home("checkpoints")
