"""What the adapt recipe trains: the classifier with its method's modules, and the Engine's loss function."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from torch import nn

from hftl.adaptation.methods import AdaptationMethod, AdaptBatch
from hftl.training.engine import Progress


class AdaptModel(nn.Module):
    """The classifier plus the method's own modules (discriminator, adversarial head, ADDA's source encoder),
    trained and checkpointed together; ``forward`` is the classifier's.

    Args:
        classifier: the model being adapted (``hftl.models.Classifier``: encoder + head).
        method: the adaptation method; :meth:`~hftl.adaptation.AdaptationMethod.attach` is called here.
    """

    def __init__(self, classifier: nn.Module, method: AdaptationMethod):
        super().__init__()
        self.classifier, self.method = classifier, method
        method.attach(classifier)

    def forward(self, **inputs: torch.Tensor):
        return self.classifier(**inputs)


class AdaptationLoss:
    """The Engine's loss function for adaptation: ``base + weight(p) * transfer.loss``.

    The one place ``trade_off`` (with its warm-up, :meth:`~hftl.adaptation.AdaptationMethod.weight`) is
    applied: methods return their transfer term unscaled (:meth:`~hftl.adaptation.AdaptationMethod.training_step`). The transfer term's metrics (detached tensors)
    go to the Engine's logs and are kept per step until :meth:`pop_means` averages them for an evaluation.

    Args:
        method: the method being trained (the module inside the prepared model).

    Example:
        >>> from hftl.adaptation import CORAL
        >>> from types import SimpleNamespace
        >>> method = CORAL(in_features=2, num_classes=2, trade_off=0.5)
        >>> model = lambda x: SimpleNamespace(features=x, logits=x)
        >>> batch = ({"x": torch.eye(2), "labels": torch.tensor([0, 1])}, {"x": torch.eye(2).flip(0)})
        >>> loss, logs = AdaptationLoss(method)(model, batch, Progress(step=0, total_steps=10))
        >>> loss.shape, logs
        (torch.Size([]), {})
    """

    def __init__(self, method: AdaptationMethod):
        self.method = method
        self._metrics: dict[str, list[torch.Tensor]] = {}

    def __call__(
        self, model: nn.Module, batch: dict | tuple[dict, dict], progress: Progress
    ) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        step = self.method.training_step(model, AdaptBatch.from_loader(batch), progress)
        if step.transfer is None:
            return step.base, {}
        for key, value in step.transfer.metrics.items():
            self._metrics.setdefault(key, []).append(value)
        return step.base + self.method.weight(progress.fraction) * step.transfer.loss, step.transfer.metrics

    def pop_means(self) -> dict[str, float]:
        """``{"train_<metric>": mean}`` over the steps since the last call (one host read per metric)."""
        means = {}
        for key, values in self._metrics.items():
            if values:  # float64 mean of the float32 values, as numpy takes it
                means[f"train_{key}"] = float(np.mean(torch.stack(values).cpu().double().numpy()))
            values.clear()
        return means
