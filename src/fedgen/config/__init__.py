"""Experiment configuration: the schema (typed sections with the paper's defaults) and its loader.

Plain data: nothing here imports the registry, a task or an algorithm. The names in a config
(task, algorithm) are checked against the registry by
:func:`fedgen.experiment.registry.check_config` when an experiment is built.
"""

from fedgen.config.load import apply_overrides, config_from_dict, load_config, save_config
from fedgen.config.schema import (
    AdapterConfig,
    AlgorithmConfig,
    Config,
    DataConfig,
    DevicesConfig,
    DeviceTier,
    DPConfig,
    EvalConfig,
    FLConfig,
    FlowerConfig,
    ImageConfig,
    ModelConfig,
    OutputConfig,
    PersonalizeConfig,
    PretrainConfig,
    SecAggConfig,
    clients_per_round,
)

__all__ = [
    "AdapterConfig",
    "AlgorithmConfig",
    "Config",
    "DPConfig",
    "DataConfig",
    "DeviceTier",
    "DevicesConfig",
    "EvalConfig",
    "FLConfig",
    "FlowerConfig",
    "ImageConfig",
    "ModelConfig",
    "OutputConfig",
    "PersonalizeConfig",
    "PretrainConfig",
    "SecAggConfig",
    "apply_overrides",
    "clients_per_round",
    "config_from_dict",
    "load_config",
    "save_config",
]
