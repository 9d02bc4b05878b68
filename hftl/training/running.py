"""The running means of the training loss and logs that the Engine reads at log steps only."""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

# Scalar logs of one batch: detached tensors (kept on the device until a log step) or python numbers.
Logs = Mapping[str, torch.Tensor | float]


class RunningMeans:
    """The training loss and the loss function's logs since the last log step, summed on the device.

    Adding never reads a value back to the host; :meth:`read` does, in one transfer, when the Engine logs.
    A log that is ``nan`` for a batch (nothing to measure there, e.g. no same-class pair) or missing from
    it (e.g. another task's loss) is left out of that log's mean.

    Example:
        >>> running = RunningMeans(torch.device("cpu"))
        >>> running.add(torch.tensor(2.0), {"acc": torch.tensor(0.5), "pos": torch.tensor(float("nan"))})
        >>> running.add(torch.tensor(4.0), {"acc": torch.tensor(1.0), "pos": torch.tensor(3.0), "ce": 1.0})
        >>> running.read()
        (3.0, {'acc': 0.75, 'pos': 3.0, 'ce': 1.0})
    """

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.loss, self.count = torch.zeros((), device=self.device), 0
        self.sums: dict[str, torch.Tensor | float] = {}
        self.counts: dict[str, torch.Tensor | int] = {}

    def add(self, loss: torch.Tensor, logs: Logs) -> None:
        self.loss += loss  # stays on the device: no host sync per step
        self.count += 1
        for key, value in logs.items():
            if isinstance(value, torch.Tensor):  # summed where it is
                value = value.detach().float()
                seen = ~value.isnan()
                value = torch.where(seen, value, 0.0)
            else:  # a python number stays on the host (copying it to the device would wait)
                value, seen = float(value), not math.isnan(value)
                value = value if seen else 0.0
            self.sums[key] = self.sums.get(key, 0.0) + value
            self.counts[key] = self.counts.get(key, 0) + seen

    def mean_loss(self) -> torch.Tensor:
        """The mean loss as a device tensor (``.item()`` it to check it)."""
        return self.loss / max(self.count, 1)

    def read(self) -> tuple[float, dict[str, float]]:
        """``(mean loss, {log: mean})`` since the last reset, read to the host in one transfer."""
        means = [self.mean_loss().float()]
        for key in self.sums:
            total, count = (
                torch.as_tensor(x, dtype=torch.float32, device=self.device)
                for x in (self.sums[key], self.counts[key])
            )
            means.append(total / count)  # 0 / 0 = nan: never measured since the last log step
        loss, *logs = torch.stack(means).tolist()
        return loss, {k: v for k, v in zip(self.sums, logs, strict=True) if not math.isnan(v)}
