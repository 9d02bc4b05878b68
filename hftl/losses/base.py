"""The record every hftl loss returns, and small helpers shared by the losses."""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass, field

import torch


@dataclass
class LossOutput:
    """A scalar loss to minimise plus side metrics for logging.

    Losses never keep metrics on ``self`` (that breaks under ``torch.compile``, DDP and re-entrant calls);
    they return them here instead. Metrics are detached 0-dim float tensors on the loss's device: reading
    one to the host (``.item()``) waits for the device, so the training loop sums them where they are and
    reads them once per log step (:class:`hftl.training.engine.RunningMeans`). A metric with nothing to
    measure in a batch is ``nan`` and left out of the mean.

    Attributes:
        loss: the scalar to minimise (it carries the graph).
        metrics: detached scalar tensors for logging, e.g. ``{"domain_acc": tensor(0.73)}``.

    Example:
        >>> out = LossOutput(loss=torch.tensor(0.5), metrics={"domain_acc": torch.tensor(0.75)})
        >>> out.metrics["domain_acc"].item()
        0.75
    """

    loss: torch.Tensor
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)


def binary_accuracy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Share of rows where ``logits > 0`` matches ``targets == 1``, a detached 0-dim float tensor.

    Shape:
        - logits, targets: :math:`(N, 1)` or :math:`(N,)`, the same shape.

    Example:
        >>> binary_accuracy(torch.tensor([2.0, -1.0, 3.0, 0.5]), torch.tensor([1.0, 0.0, 0.0, 0.0]))
        tensor(0.5000)
    """
    with torch.no_grad():
        return ((logits > 0) == (targets > 0.5)).float().mean()


def check_pair(
    name_s: str, x_s: torch.Tensor, name_t: str, x_t: torch.Tensor, *, same_rows: bool = False, hint: str = ""
) -> None:
    """Raise ``ValueError`` unless two 2-D tensors have the same width (and row count if ``same_rows``)."""
    if x_s.dim() != 2 or x_t.dim() != 2:
        raise ValueError(
            f"`{name_s}` and `{name_t}` must be 2-D (batch, features); got shapes "
            f"{tuple(x_s.shape)} and {tuple(x_t.shape)}. Pool or flatten the features first."
        )
    if x_s.shape[1] != x_t.shape[1] or (same_rows and x_s.shape[0] != x_t.shape[0]):
        what = "shape" if same_rows else "feature width"
        raise ValueError(
            f"`{name_s}` and `{name_t}` must have the same {what}; got {tuple(x_s.shape)} and "
            f"{tuple(x_t.shape)}.{hint}"
        )


def at_least_float32(x: torch.Tensor) -> torch.Tensor:
    """``x`` in float32 if it is float16/bfloat16, else unchanged (float64 stays float64)."""
    return x.float() if x.dtype in (torch.float16, torch.bfloat16) else x


def no_autocast(x: torch.Tensor) -> AbstractContextManager:
    """Switch autocast off on ``x``'s device: statistics such as covariances need full precision matmuls."""
    return torch.autocast(device_type=x.device.type, enabled=False)
