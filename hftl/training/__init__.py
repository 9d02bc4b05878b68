"""Training on Accelerate: the loop, its config section, checkpoints, the best-checkpoint tracker."""

from hftl.training.best import BestRecord, BestTracker, WeightsFile, WeightsInMemory
from hftl.training.config import LayerwiseConfig, TrainConfig
from hftl.training.engine import Engine, Progress, TrainState, cross_entropy_step, steps_for
from hftl.training.schedules import WarmupSchedule

__all__ = [
    "BestRecord",
    "BestTracker",
    "Engine",
    "LayerwiseConfig",
    "Progress",
    "TrainConfig",
    "TrainState",
    "WeightsFile",
    "WarmupSchedule",
    "WeightsInMemory",
    "cross_entropy_step",
    "steps_for",
]
