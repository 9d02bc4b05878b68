"""What the adapt recipe trains: the classifier with its method's modules, and the Engine's loss function."""

from __future__ import annotations

from collections.abc import Mapping
from types import SimpleNamespace
from typing import Literal

import numpy as np
import torch
from torch import nn

from hftl.adaptation.methods import AdaptationMethod, AdaptBatch, StepLosses
from hftl.errors import ConfigError
from hftl.training.acceleration import PAD_VALUES
from hftl.training.engine import Progress

ConcatMode = Literal["auto", "on", "off"]


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

    With ``concat_domains`` the source and target batches go through the model in one forward over their
    concatenation (text padded to the longer batch) instead of two: half the kernel launches, which is what
    bounds a small encoder's step on a GPU. The losses are those of two forwards (up to float rounding;
    dropout draws other masks). It applies only to methods that use the base
    :meth:`~hftl.adaptation.AdaptationMethod.training_step` and never to a classifier with BatchNorm, whose
    batch statistics would mix the domains (:func:`concat_applies`).

    Args:
        method: the method being trained (the module inside the prepared model).
        concat_domains: ``auto`` (one forward on CUDA devices, two elsewhere, so CPU results are unchanged),
            ``on`` (wherever it applies) or ``off`` (``train.concat_domains``).

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

    def __init__(self, method: AdaptationMethod, *, concat_domains: ConcatMode = "auto"):
        if concat_domains not in ("auto", "on", "off"):
            raise ConfigError(f"`train.concat_domains` must be auto, on or off; got {concat_domains!r}")
        self.method, self.concat_domains = method, concat_domains
        self._metrics: dict[str, list[torch.Tensor]] = {}
        self._concat: bool | None = None  # decided at the first batch (device and model known)

    def __call__(
        self, model: nn.Module, batch: dict | tuple[dict, dict], progress: Progress
    ) -> tuple[torch.Tensor, Mapping[str, torch.Tensor]]:
        batch = AdaptBatch.from_loader(batch)
        if self._concat is None:
            self._concat = concat_applies(self.concat_domains, self.method, model, batch.labels.device)
        inputs = concatenated(batch) if self._concat and batch.target is not None else None
        if inputs is None:
            step = self.method.training_step(model, batch, progress)
        else:
            step = self._concatenated_step(model, inputs, batch.labels, progress)
        if step.transfer is None:
            return step.base, {}
        for key, value in step.transfer.metrics.items():
            self._metrics.setdefault(key, []).append(value)
        return step.base + self.method.weight(progress.fraction) * step.transfer.loss, step.transfer.metrics

    def _concatenated_step(
        self, model: nn.Module, inputs: dict[str, torch.Tensor], labels: torch.Tensor, progress: Progress
    ) -> StepLosses:
        """:meth:`AdaptationMethod.training_step <hftl.adaptation.AdaptationMethod.training_step>` with one
        forward over ``source + target`` rows (the first ``len(labels)`` rows are the source)."""
        out, n = model(**inputs), len(labels)
        out_s = SimpleNamespace(logits=out.logits[:n], features=out.features[:n])
        out_t = SimpleNamespace(logits=out.logits[n:], features=out.features[n:])
        return self.method.step_losses(out_s, out_t, labels, progress)

    def pop_means(self) -> dict[str, float]:
        """``{"train_<metric>": mean}`` over the steps since the last call (one host read per metric)."""
        means = {}
        for key, values in self._metrics.items():
            if values:  # float64 mean of the float32 values, as numpy takes it
                means[f"train_{key}"] = float(np.mean(torch.stack(values).cpu().double().numpy()))
            values.clear()
        return means


def concat_applies(
    mode: ConcatMode, method: AdaptationMethod, model: nn.Module, device: torch.device
) -> bool:
    """Whether the adapt step runs one concatenated source + target forward (see :class:`AdaptationLoss`).

    Never for methods with their own training step (ADDA, consistency, ...) or one domain per batch, nor
    for a classifier holding BatchNorm layers (the method's own modules, e.g. a discriminator, may have
    them: they see the features, not the concatenated inputs).

    Raises:
        ConfigError: ``on`` for a classifier with BatchNorm.
    """
    if mode == "off" or not method.uses_target or method.uses_target_labels:
        return False
    if type(method).training_step is not AdaptationMethod.training_step:
        return False
    if mode == "auto" and device.type != "cuda":
        return False
    from accelerate.utils import extract_model_from_parallel

    classifier = getattr(extract_model_from_parallel(model), "classifier", model)
    if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in classifier.modules()):
        if mode == "on":
            raise ConfigError(
                "`train.concat_domains=on`: the classifier has BatchNorm layers, whose batch statistics would "
                "mix source and target rows in one forward. Fix: `train.concat_domains=auto` (two forwards)."
            )
        return False
    return True


def concatenated(batch: AdaptBatch) -> dict[str, torch.Tensor] | None:
    """``source`` rows then ``target`` rows as one input dict, or None when they cannot be stacked.

    Tensors of equal trailing shape are concatenated as they are; token tensors of text batches
    (``input_ids``, ``attention_mask``, ``token_type_ids``) of different lengths are first padded on the
    right to the longer one, masked as a collator pads them. Anything else (audio clips of different
    lengths, other keys) gives None: two forwards.
    """
    source, target = batch.source, batch.target
    if target is None or source.keys() != target.keys():
        return None
    joined = {}
    for key, s in source.items():
        t = target[key]
        if not isinstance(s, torch.Tensor) or s.dim() != t.dim():
            return None
        if s.shape[1:] != t.shape[1:]:
            if s.dim() != 2 or key not in PAD_VALUES or key == "labels":
                return None
            width = max(s.shape[1], t.shape[1])
            s, t = (nn.functional.pad(x, (0, width - x.shape[1]), value=PAD_VALUES[key]) for x in (s, t))
        joined[key] = torch.cat([s, t])
    return joined
