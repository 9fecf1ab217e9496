"""Experiment tracking (MLflow)."""

from gptray.tracking.mlflow_tracker import MlflowTracker

__all__ = ["MlflowTracker"]
