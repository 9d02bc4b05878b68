"""Training on Accelerate: the loop, its config section, checkpoints."""

from hftl.training.config import LayerwiseConfig, TrainConfig
from hftl.training.engine import Engine, TrainState, cross_entropy_step, steps_for

__all__ = ["Engine", "LayerwiseConfig", "TrainConfig", "TrainState", "cross_entropy_step", "steps_for"]
