"""A run's token dataset as an MLflow dataset input: the runs table's Dataset column, by manifest fingerprint."""

from __future__ import annotations

import json

from gptray.data.manifest import Manifest

CONTEXT = "training"  # MLflow's mlflow.data.context tag: what the run did with the dataset
SOURCE_TYPE = "gptray-token-dataset"


def dataset_entity(manifest: Manifest, dataset_dir: str):
    """An mlflow.entities.Dataset for a token dataset: named by its directory, digested by its fingerprint."""
    from mlflow.entities import Dataset

    name = str(dataset_dir).rstrip("/").rsplit("/", 1)[-1] or str(dataset_dir)
    profile = {"tokens": manifest.tokens, "documents": manifest.documents,
               **{f"{split}_tokens": info.tokens for split, info in sorted(manifest.splits.items())},
               "tokenizer": manifest.tokenizer.get("name"), "vocab_size": manifest.tokenizer.get("vocab_size")}
    return Dataset(name=name, digest=manifest.fingerprint[:36],  # MLflow keeps at most 36 characters of a digest
                   source_type=SOURCE_TYPE, source=json.dumps({"uri": str(dataset_dir)}),
                   profile=json.dumps(profile))


def log_dataset_input(client, run_id: str, manifest: Manifest, dataset_dir: str) -> None:
    """Log the dataset as the run's training input (MLflow shows it in the runs table's Dataset column)."""
    from mlflow.entities import DatasetInput, InputTag
    from mlflow.utils.mlflow_tags import MLFLOW_DATASET_CONTEXT

    entity = dataset_entity(manifest, dataset_dir)
    client.log_inputs(run_id, datasets=[DatasetInput(entity, tags=[InputTag(MLFLOW_DATASET_CONTEXT, CONTEXT)])])
