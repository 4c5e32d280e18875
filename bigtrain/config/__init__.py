"""Typed run configuration: schema, YAML recipes with dotted overrides, validation."""

from bigtrain.config.load import ConfigError, dump_yaml, load_config, to_dict
from bigtrain.config.schema import (CheckpointConfig, Config, DataConfig, EvalConfig, LogConfig, ModelConfig,
                                    ParallelConfig, RunConfig, TrainConfig)
from bigtrain.config.validate import validate

__all__ = ["CheckpointConfig", "Config", "ConfigError", "DataConfig", "EvalConfig", "LogConfig", "ModelConfig",
           "ParallelConfig", "RunConfig", "TrainConfig", "dump_yaml", "load_config", "to_dict",
           "validate"]
