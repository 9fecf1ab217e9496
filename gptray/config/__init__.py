"""Experiment configuration: typed dataclasses, YAML files and dotted overrides."""

from gptray.config.loader import apply_overrides, flatten, parse_override, read_yaml
from gptray.config.schema import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    GenerateConfig,
    RayConfig,
    SourceConfig,
    TrackingConfig,
    TrainConfig,
    absolute_path,
    is_uri,
    join_path,
    load_config,
)
from gptray.model.config import ModelConfig

__all__ = [
    "DataConfig", "EvalConfig", "ExperimentConfig", "GenerateConfig", "ModelConfig", "RayConfig", "SourceConfig",
    "TrackingConfig", "TrainConfig", "absolute_path", "apply_overrides", "flatten", "is_uri",
    "join_path", "load_config", "parse_override", "read_yaml",
]
