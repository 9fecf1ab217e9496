"""Experiment configuration: typed dataclasses, YAML files and dotted overrides."""

from gptray.config.loader import apply_overrides, flatten, parse_override, read_yaml
from gptray.config.model import ModelConfig
from gptray.config.schema import (
    DataConfig,
    EvalConfig,
    ExperimentConfig,
    GenerateConfig,
    RayConfig,
    SourceConfig,
    TrackingConfig,
    load_config,
)
from gptray.config.training import CheckpointConfig, OptimizerConfig, ScheduleConfig, TrainConfig

__all__ = [
    "CheckpointConfig", "OptimizerConfig", "ScheduleConfig",
    "DataConfig", "EvalConfig", "ExperimentConfig", "GenerateConfig", "ModelConfig", "RayConfig", "SourceConfig",
    "TrackingConfig", "TrainConfig", "apply_overrides", "flatten",
    "load_config", "parse_override", "read_yaml",
]
