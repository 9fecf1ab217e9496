"""train.epochs resolved to train.max_steps from the dataset, once, before anything follows the steps.

An epoch is one pass over the train split's windows as the run's data order counts them, so
`epochs × windows / batch_size` steps (rounded up) reach exactly that many epochs of the order's
`epoch` metric. The resolved config sets max_steps and clears epochs: the schedule, the cadence,
checkpoints and the saved config.yaml all see plain steps, and a relaunch resolves to the same
steps from the same manifest, so a resumed run keeps them.
"""

from __future__ import annotations

import copy
import logging
import math

from gptray.config import ExperimentConfig
from gptray.config.training import resolve_training
from gptray.data.manifest import Manifest
from gptray.data.train_windows import DataOrder

log = logging.getLogger(__name__)


def steps_for_epochs(epochs: float, windows_per_epoch: int, batch_size: int) -> int:
    """Optimizer steps that read `epochs` passes over `windows_per_epoch` windows, `batch_size` a step."""
    return max(1, math.ceil(epochs * windows_per_epoch / batch_size))


def resolve_epochs(config: ExperimentConfig, manifest: Manifest | None = None,
                   order: DataOrder | None = None) -> ExperimentConfig:
    """`config` with train.epochs turned into train.max_steps (unchanged when it sets max_steps)."""
    train = config.train
    if train.epochs is None:
        return config
    manifest = manifest if manifest is not None else Manifest.load(config.data.dataset_dir)
    order = order if order is not None else DataOrder.for_run(config, manifest)
    windows = order.windows_per_epoch(config, manifest)
    steps = steps_for_epochs(train.epochs, windows, train.batch_size)
    resolved = copy.deepcopy(config)
    resolved.train.max_steps, resolved.train.epochs = steps, None
    # What follows max_steps and was left waiting for it (a warmup that is a share of the steps).
    resolve_training(resolved.train, resolved.optimizer, resolved.schedule, resolved.model)
    resolved.validate()
    log.info("train.epochs=%g: train.max_steps=%s (%s train windows of %d tokens an epoch, %d a step)",
             train.epochs, f"{steps:,}", f"{windows:,}", train.effective_seq_len(config.model), train.batch_size)
    return resolved
