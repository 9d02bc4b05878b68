"""The learning-rate schedule of a run: ``train.lr_scheduler`` (a name), or an ``lr_scheduler:`` component.

Without an ``lr_scheduler:`` node a recipe uses ``train.lr_scheduler`` with linear warm-up over
``train.warmup_ratio`` of the steps (transformers' named schedules), as it always has. With one, the node
is built like the optimizer: any registered scheduler, e.g. ::

    lr_scheduler:
      _component_: torch.optim.lr_scheduler.OneCycleLR
      max_lr: 3.0e-4
      total_steps: 1000          # optimizer steps, also with several processes

    lr_scheduler:
      _component_: hftl.training.WarmupSchedule   # transformers' schedules with their own options
      name: cosine_with_restarts
      warmup_ratio: 0.1
      options: {num_cycles: 2}

The recipe passes ``optimizer`` and, when the scheduler takes them, ``num_training_steps`` (the run's
optimizer steps) and ``num_warmup_steps`` (``train.warmup_ratio`` of them). A component schedule advances
once per optimizer step in any number of processes, so every step count in the node means optimizer steps
(:func:`hftl.training.builders.build_lr_scheduler`).
"""

from __future__ import annotations

from typing import Any

import torch
from torch.optim.lr_scheduler import LambdaLR

from hftl.errors import ConfigError

__all__ = ["SCHEDULER_RUNTIME_ARGS", "WarmupSchedule"]

# What a recipe passes an `lr_scheduler:` component (RUNTIME_ARGS: a config must not set them).
SCHEDULER_RUNTIME_ARGS = {"optimizer", "num_training_steps", "num_warmup_steps"}


class WarmupSchedule(LambdaLR):
    """A transformers schedule (``transformers.get_scheduler``) with linear warm-up, as a config component.

    Args:
        optimizer: set by the recipe.
        num_training_steps: set by the recipe (the run's optimizer steps).
        name: the schedule: ``linear``, ``cosine``, ``cosine_with_restarts``, ``polynomial``, ``constant``,
            ``constant_with_warmup``, ``inverse_sqrt``, ``warmup_stable_decay``, ... (transformers' names).
        warmup_ratio: fraction of the steps with linear warm-up.
        options: the schedule's own options (transformers' ``scheduler_specific_kwargs``), e.g.
            ``{num_cycles: 2}`` for ``cosine_with_restarts``, ``power`` and ``lr_end`` for ``polynomial``.

    Example:
        >>> opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        >>> schedule = WarmupSchedule(opt, num_training_steps=10, name="linear", warmup_ratio=0.2)
        >>> [round(schedule.lr_lambdas[0](s), 2) for s in (0, 1, 2, 6, 10)]
        [0.0, 0.5, 1.0, 0.5, 0.0]
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        *,
        num_training_steps: int,
        name: str = "linear",
        warmup_ratio: float = 0.06,
        options: dict[str, Any] | None = None,
    ):
        from transformers import get_scheduler

        if not 0.0 <= warmup_ratio < 1.0:
            raise ConfigError(f"`lr_scheduler.warmup_ratio` must be in [0, 1); got {warmup_ratio}")
        try:
            made = get_scheduler(
                name,
                optimizer,
                num_warmup_steps=round(warmup_ratio * num_training_steps),
                num_training_steps=num_training_steps,
                scheduler_specific_kwargs=options or None,
            )
        except (TypeError, ValueError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise ConfigError(
                f"`lr_scheduler`: transformers' schedule {name!r} refuses it: {reason}"
            ) from None
        if not isinstance(made, LambdaLR):
            raise ConfigError(
                f"`lr_scheduler.name` = {name!r} is not a step schedule (transformers builds a "
                f"{type(made).__name__}); use linear, cosine, cosine_with_restarts, polynomial, constant, ..."
            )
        super().__init__(optimizer, made.lr_lambdas)
