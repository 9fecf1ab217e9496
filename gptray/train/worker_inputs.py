"""What the pretrain driver hands every Ray Train worker, as one typed value."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gptray.config import ExperimentConfig
from gptray.core.storage import Storage
from gptray.data.train_windows import DataOrder


@dataclass
class WorkerInputs:
    """Everything a worker needs besides Ray Train's own context, resolved once on the driver. Storages are
    resolved there too: an object store's endpoint and region travel with them, so workers need only
    credentials in their environment."""

    config: ExperimentConfig  # resolved, with the dataset's vocabulary
    dataset: Storage  # the token dataset
    run: Storage  # the run directory
    order: DataOrder  # the order of training windows: every rank uses the same
    # The UTF-8 bytes of each id of the dataset's tokenizer, padded to the model's vocabulary, for
    # validation's bits per byte (val/bpb); None: no val/bpb.
    token_bytes: np.ndarray | None = None
    tokenizer: object | None = None  # by value, for samples: workers need no tiktoken cache or tokenizer file
    final_sample: bool = False  # rank 0 generates it: the driver (on the head) never loads the model
    eval_tasks: dict | None = None  # eval.train_tasks, tokenized by the driver: workers need no download
    init_checkpoint: Storage | None = None  # fine-tuning's base, on the run's first launch
    mlflow_run_id: str | None = None  # the MLflow run rank 0 logs to; None: no tracking
    tracking_uri: str | None = None
    progress_bar: bool = False  # the driver is on a terminal: rank 0 shows a bar of steps there (train/progress.py)

    def as_loop_config(self) -> dict:
        """Ray Train's train_loop_config: one key, this value."""
        return {"inputs": self}

    @staticmethod
    def of_loop_config(loop_config: dict) -> WorkerInputs:
        return loop_config["inputs"]
