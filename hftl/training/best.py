"""The best validation point of a run: which step it was, early stopping, and its weights.

One tracker for every training loop: :class:`~hftl.training.Engine` keeps the best weights in a file next to
its checkpoints (so a resumed run can still restore them), the cached-feature loop of
:mod:`hftl.embeddings.train` keeps them in memory (heads are small). Both record the same three numbers in
their own state (:class:`BestRecord`): the Engine's is checkpointed, the feature loop's is returned.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import torch
from accelerate import Accelerator
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from hftl.outputs import record_output, writing
from hftl.training.checkpoint_manifest import sha256_file
from hftl.training.checkpoint_weights import kept_names

logger = logging.getLogger(__name__)


@dataclass
class BestRecord:
    """Where a run's best validation point is; part of the state a loop saves or returns."""

    best_metric: float | None = None
    best_step: int | None = None
    bad_evals: int = 0  # evaluations since the best one (early stopping counts them)
    best_sha256: str | None = None  # of the best-weights file (WeightsFile), checked before it is restored


class BestWeights(Protocol):
    """Keeps the weights of the best step: ``save`` when a step improves, ``restore`` at the end."""

    def save(self, record: BestRecord) -> None: ...

    def restore(self, record: BestRecord) -> bool: ...


class BestTracker:
    """Compares each evaluation with the best so far, counts non-improving ones and keeps the best weights.

    Args:
        weights: where the best weights go (:class:`WeightsFile` or :class:`WeightsInMemory`).
        higher_is_better: direction of the metric (``False`` for a loss).
        patience: evaluations without improvement before early stopping; ``None`` never stops.
        log: prints the restore message (e.g. ``accelerator.print``).

    Example:
        >>> model = nn.Linear(2, 1)
        >>> tracker, record = BestTracker(WeightsInMemory(model), higher_is_better=True, patience=2), BestRecord()
        >>> [tracker.update(record, value, step=step) for step, value in enumerate([0.5, 0.7, 0.6, 0.6], 1)]
        [False, False, False, True]
        >>> record.best_metric, record.best_step, record.bad_evals
        (0.7, 2, 2)
    """

    def __init__(
        self, weights: BestWeights, *, higher_is_better: bool, patience: int | None, log: Callable = print
    ):
        self.weights, self.higher_is_better, self.patience, self.log = (
            weights,
            higher_is_better,
            patience,
            log,
        )

    def improves(self, value: float, record: BestRecord) -> bool:
        best = record.best_metric
        return best is None or (value > best if self.higher_is_better else value < best)

    def update(self, record: BestRecord, value: float, *, step: int, selectable: bool = True) -> bool:
        """Records the evaluation of ``step``; returns True when early stopping triggers. An evaluation that
        is not ``selectable`` (e.g. a collapsed adaptation run) counts as one without improvement."""
        if selectable and self.improves(value, record):
            record.best_metric, record.best_step, record.bad_evals = value, step, 0
            self.weights.save(record)
        else:
            record.bad_evals += 1
        return self.exhausted(record)

    def exhausted(self, record: BestRecord) -> bool:
        """``patience`` evaluations in a row did not improve (also true for a resumed, early-stopped run)."""
        return self.patience is not None and record.bad_evals >= self.patience

    def restore(self, record: BestRecord, *, final_step: int, metric: str) -> None:
        """Loads the best weights unless the final step is the best one (or nothing was evaluated)."""
        if record.best_step is None or record.best_step == final_step:
            return
        if self.weights.restore(record):
            self.log(
                f"Restoring the best validation weights (step {record.best_step}, {metric} {record.best_metric:.4f})"
            )


class WeightsInMemory:
    """Best weights as a copy of ``model.state_dict()`` (small models: heads on cached features)."""

    def __init__(self, model: nn.Module):
        self.model, self.state = model, None

    def save(self, record: BestRecord) -> None:
        self.state = copy.deepcopy(self.model.state_dict())

    def restore(self, record: BestRecord) -> bool:
        if self.state is None:
            return False
        self.model.load_state_dict(self.state)
        return True


class WeightsFile:
    """Best weights in a safetensors file (what the optimizer may change, and buffers), checked before restore.

    The file records the step it holds, and ``record.best_sha256`` its hash: a file another run wrote, or
    one changed since, is not restored (a warning says why and the final weights are kept). Every process
    hashes the file, so all agree on whether it is restored.

    Args:
        accelerator: the run's Accelerator (the main process writes; all wait).
        model: the prepared model.
        optimizer: its optimizer; parameters it holds are saved even while frozen (gradual unfreezing).
        path: the file, e.g. ``checkpoints/best_trainable.safetensors``.
    """

    def __init__(
        self, accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, path: Path
    ):
        self.acc, self.model, self.optimizer, self.path = accelerator, model, optimizer, Path(path)

    def _trainable_state(self) -> dict[str, torch.Tensor]:
        model = self.acc.unwrap_model(self.model)
        optimized = {id(p) for g in self.optimizer.param_groups for p in g["params"]}
        names, state = kept_names(model, optimized)  # buffers too: BatchNorm statistics of the best step
        kept, seen = {}, set()
        for name, tensor in state.items():  # one name per tensor: tied weights are saved once (safetensors)
            if name in names and id(tensor) not in seen:
                seen.add(id(tensor))
                kept[name] = tensor.detach().cpu().contiguous()
        return kept

    def save(self, record: BestRecord) -> None:
        if self.acc.is_main_process:
            with writing("the best weights", self.path):
                self.path.parent.mkdir(parents=True, exist_ok=True)
                record_output(self.path.parent)
                tmp = self.path.with_suffix(".tmp")
                save_file(self._trainable_state(), str(tmp), metadata={"step": str(record.best_step)})
                tmp.replace(self.path)  # atomic: resume never sees half a file
        self.acc.wait_for_everyone()
        record.best_sha256 = sha256_file(self.path)

    def restore(self, record: BestRecord) -> bool:
        if not self.path.exists():
            logger.warning(
                "Cannot restore the best weights: %s is missing; keeping the final weights.", self.path
            )
            return False
        if record.best_sha256 is not None and sha256_file(self.path) != record.best_sha256:
            logger.warning(
                "Not restoring %s: its content does not match the sha256 recorded when it was saved (changed "
                "or corrupt); keeping the final weights.", self.path,
            )  # fmt: skip
            return False
        with safe_open(str(self.path), framework="pt") as f:
            written_at = (f.metadata() or {}).get("step")
        if written_at != str(record.best_step):
            # e.g. a later run wrote it, then this one resumed from an older checkpoint and never beat it
            logger.warning(
                "Not restoring %s: it holds step %s, but the best validation step is %s; keeping the final weights.",
                self.path, written_at, record.best_step,
            )  # fmt: skip
            return False
        self.acc.unwrap_model(self.model).load_state_dict(load_file(str(self.path)), strict=False)
        return True
