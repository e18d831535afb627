"""The thin trainer: configuration, training loop, evaluation, checkpoints."""

from atlas_fast.train.config import ConfigError, TrainConfig
from atlas_fast.train.run import train
from atlas_fast.train.trainer import Trainer

__all__ = ["ConfigError", "TrainConfig", "Trainer", "train"]
