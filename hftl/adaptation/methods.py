"""Adaptation methods as config nodes: ``method: {_component_: hftl.adaptation.DANN, trade_off: 1.0}``.

Each method wraps one loss of :mod:`hftl.losses` behind the same call, so the adapt recipe switches
DANN → CORAL → MCC with a one-line override. ``in_features`` (pooled feature width) and
``num_classes`` are passed by the recipe at run time.

The contract: :meth:`AdaptationMethod.training_step` returns the step's :class:`StepLosses`, a ``base``
term (the source cross-entropy) and the method's *unscaled* ``transfer`` term, and the training loop
minimises (:class:`hftl.adaptation.training.AdaptationLoss`, the one place ``trade_off`` is applied)::

    base + weight(p) * transfer.loss,   weight(p) = trade_off            (warmup: none)
                                         weight(p) = trade_off * (2 / (1 + exp(-10 p)) - 1)   (warmup: ganin)

with ``p`` the share of training done; ``ganin`` is the default of the adversarial methods (DANN, CDAN, MDD).

Methods with a schedule of their own override ``training_step`` (two-stage ADDA, :mod:`hftl.adaptation.adda`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Literal, NamedTuple

import torch
from torch import nn

from hftl.errors import ConfigError
from hftl.losses import (
    AdversarialClassifier,
    ConditionalDomainAdversarialLoss,
    ConfidenceThresholdSelfTraining,
    CorrelationAlignmentLoss,
    DomainAdversarialLoss,
    DomainDiscriminator,
    JointMultipleKernelMaximumMeanDiscrepancy,
    LossOutput,
    MarginDisparityDiscrepancy,
    MinimumClassConfusionLoss,
    MultipleKernelMaximumMeanDiscrepancy,
    gaussian_kernels,
    grl_coefficient,
)
from hftl.training.engine import Progress


@dataclass
class AdaptBatch:
    """One training batch of adaptation: labelled source inputs and, for methods that read it, target inputs.

    Attributes:
        source: model inputs of the source examples (no ``labels`` key).
        labels: their labels.
        target: model inputs of the target examples, without labels; ``None`` for methods that train on
            one domain (``source_only``, ``target_oracle``: then ``source`` holds that domain).
    """

    source: dict[str, torch.Tensor]
    labels: torch.Tensor
    target: dict[str, torch.Tensor] | None = None

    @classmethod
    def from_loader(cls, batch: dict | tuple[dict, dict]) -> AdaptBatch:
        """From a :class:`~hftl.data.paired.PairedLoader` pair ``(source, target)`` or a plain batch.

        Target labels, when the data has them, are dropped here: no method can read them.
        """
        source, target = batch if isinstance(batch, tuple) else (batch, None)
        source = dict(source)
        labels = source.pop("labels")
        if target is not None:
            target = {k: v for k, v in target.items() if k != "labels"}
        return cls(source=source, labels=labels, target=target)


class StepLosses(NamedTuple):
    """The losses of one adaptation step; the loop minimises ``base + trade_off * transfer.loss``."""

    base: torch.Tensor  # at weight 1: the source cross-entropy (ADDA's stage 2: its discriminator's loss)
    transfer: LossOutput | None  # the method's term, unscaled; None when the step has none


class AdaptationMethod(nn.Module):
    """Base class. ``forward`` returns the transfer loss (without ``trade_off``) and side metrics.

    Class attributes tell the recipe what a method needs: ``uses_target`` (an unlabelled target batch
    per step), ``uses_target_labels`` (only the ``target_oracle`` baseline) and ``two_stage`` (a schedule
    of its own in :meth:`training_step`, which needs the full model: not available on cached features).
    """

    name: ClassVar[str] = "method"
    uses_target: ClassVar[bool] = True
    uses_target_labels: ClassVar[bool] = False
    two_stage: ClassVar[bool] = False

    def __init__(self, *, trade_off: float = 1.0, warmup: Literal["none", "ganin"] = "none"):
        super().__init__()
        if trade_off < 0:
            raise ConfigError(f"`method.trade_off` must be >= 0; got {trade_off}")
        if warmup not in ("none", "ganin"):
            raise ConfigError(f"`method.warmup` must be 'none' or 'ganin'; got {warmup!r}")
        self.trade_off, self.warmup = trade_off, warmup

    def weight(self, progress: float) -> float:
        """The transfer term's weight at ``progress`` ∈ [0, 1): ``trade_off`` (× Ganin's ramp with ``warmup: ganin``).

        Ganin et al. (JMLR 2016) ramp a weight from 0 to 1 as ``2 / (1 + exp(-10 p)) - 1`` (0.46 at 5 % of
        training, 0.96 at 40 %): early batches, when features and discriminator are random, cannot drag the
        encoder away from the source task.

        Example:
            >>> m = AdaptationMethod(trade_off=0.5, warmup="ganin")
            >>> m.weight(0.0), round(m.weight(0.1), 4), round(m.weight(0.9), 4)
            (0.0, 0.2311, 0.4999)
        """
        if self.warmup == "none":
            return self.trade_off
        return self.trade_off * grl_coefficient(progress, alpha=10.0, high=1.0)

    def attach(self, classifier: nn.Module) -> None:
        """Called once with the classifier being adapted, before its optimizer is built. Default: nothing."""

    def training_step(self, model: nn.Module, batch: AdaptBatch, progress: Progress) -> StepLosses:
        """The losses of one batch: cross-entropy on the source, plus this method's term on both domains.

        Args:
            model: the (prepared) model; ``model(**inputs)`` gives ``.features`` and ``.logits``.
            batch: the step's batch.
            progress: where training stands (``progress.fraction`` drives warm-up schedules).
        """
        out_s = model(**batch.source)
        out_t = None if batch.target is None else model(**batch.target)
        return self.step_losses(out_s, out_t, batch.labels, progress)

    def step_losses(
        self, out_s: Any, out_t: Any | None, labels: torch.Tensor, progress: Progress
    ) -> StepLosses:
        """:meth:`training_step`'s losses from the model's outputs on the source and target rows (each with
        ``.features`` and ``.logits``; ``out_t`` None: source only)."""
        loss = nn.functional.cross_entropy(out_s.logits, labels)
        if out_t is None:
            return StepLosses(loss, None)
        transfer = self(
            f_s=out_s.features, f_t=out_t.features, logits_s=out_s.logits, logits_t=out_t.logits,
            progress=progress.fraction,
        )  # fmt: skip
        return StepLosses(loss, transfer)

    def forward(
        self,
        *,
        f_s: torch.Tensor,
        f_t: torch.Tensor,
        logits_s: torch.Tensor,
        logits_t: torch.Tensor,
        progress: float,
    ) -> LossOutput:
        raise NotImplementedError


class SourceOnly(AdaptationMethod):
    """No adaptation: train on labelled source data only (the lower baseline)."""

    name = "source_only"
    uses_target = False

    def __init__(self, *, in_features: int = 0, num_classes: int = 0):
        super().__init__(trade_off=0.0)


class TargetOracle(SourceOnly):
    """Train on *labelled* target data: the upper bound no unsupervised method should beat."""

    name = "target_oracle"
    uses_target_labels = True


class _Adversarial(AdaptationMethod):
    """Adversarial methods: the gradient-reversal coefficient λ(p) (:meth:`coeff`) scales the reversed gradient
    that reaches the encoder; ``warmup: ganin`` (their default) also ramps the loss weight, so in the first
    steps neither the discriminator nor the encoder is pushed by the adversarial term."""

    def __init__(
        self,
        *,
        trade_off: float,
        grl_alpha: float,
        grl_max: float,
        warmup: Literal["none", "ganin"] = "ganin",
    ):
        super().__init__(trade_off=trade_off, warmup=warmup)
        self.grl_alpha, self.grl_max = grl_alpha, grl_max

    def coeff(self, progress: float) -> float:
        return grl_coefficient(progress, alpha=self.grl_alpha, high=self.grl_max)


class DANN(_Adversarial):
    """Domain-adversarial training (Ganin et al., JMLR 2016) with the λ warm-up schedule.

    Args:
        in_features: pooled feature width (set by the recipe).
        num_classes: number of classes (set by the recipe; unused).
        trade_off: weight of the adversarial loss.
        hidden_features: width of the discriminator MLP.
        grl_alpha: steepness of λ(p) = 2 / (1 + exp(-α p)) − 1.
        grl_max: λ at the end of training.
        warmup: ``ganin`` (default) ramps the loss weight from 0 to ``trade_off`` on the same schedule
            (:meth:`AdaptationMethod.weight`); ``none`` keeps it at ``trade_off`` from the first step.
    """

    name = "dann"

    def __init__(
        self, *, in_features: int, num_classes: int, trade_off: float = 1.0, hidden_features: int = 1024,
        grl_alpha: float = 10.0, grl_max: float = 1.0, warmup: Literal["none", "ganin"] = "ganin",
    ):  # fmt: skip
        super().__init__(trade_off=trade_off, grl_alpha=grl_alpha, grl_max=grl_max, warmup=warmup)
        self.loss = DomainAdversarialLoss(DomainDiscriminator(in_features, hidden_features=hidden_features))

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        return self.loss(f_s, f_t, coeff=self.coeff(progress))


class CDAN(_Adversarial):
    """Conditional adversarial adaptation (Long et al., NeurIPS 2018); ``entropy: true`` gives CDAN+E.

    Args:
        randomized: use the randomized multilinear map (for large ``in_features × num_classes``).
        randomized_dim: output width of the randomized map.
    """

    name = "cdan"

    def __init__(
        self, *, in_features: int, num_classes: int, trade_off: float = 1.0, hidden_features: int = 1024,
        entropy: bool = False, randomized: bool = False, randomized_dim: int = 1024, grl_alpha: float = 10.0,
        grl_max: float = 1.0, warmup: Literal["none", "ganin"] = "ganin",
    ):  # fmt: skip
        super().__init__(trade_off=trade_off, grl_alpha=grl_alpha, grl_max=grl_max, warmup=warmup)
        width = ConditionalDomainAdversarialLoss.discriminator_in_features(
            num_classes=num_classes,
            features_dim=in_features,
            randomized=randomized,
            randomized_dim=randomized_dim,
        )
        self.loss = ConditionalDomainAdversarialLoss(
            DomainDiscriminator(width, hidden_features=hidden_features), num_classes=num_classes,
            features_dim=in_features, entropy_conditioning=entropy, randomized=randomized, randomized_dim=randomized_dim,
        )  # fmt: skip

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        return self.loss(logits_s, f_s, logits_t, f_t, coeff=self.coeff(progress))


class MDD(_Adversarial):
    """Margin disparity discrepancy (Zhang et al., ICML 2019) with its own adversarial classifier.

    Args:
        margin: the margin γ (4 in the paper for most benchmarks).
        hidden_features: width of the adversarial head's hidden layer.
    """

    name = "mdd"

    def __init__(
        self, *, in_features: int, num_classes: int, trade_off: float = 1.0, margin: float = 4.0,
        hidden_features: int = 1024, grl_alpha: float = 10.0, grl_max: float = 0.1,
        warmup: Literal["none", "ganin"] = "ganin",
    ):  # fmt: skip
        super().__init__(trade_off=trade_off, grl_alpha=grl_alpha, grl_max=grl_max, warmup=warmup)
        self.adv_head = AdversarialClassifier(in_features, num_classes, hidden_features=hidden_features)
        self.loss = MarginDisparityDiscrepancy(margin=margin)

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        coeff = self.coeff(progress)
        return self.loss(logits_s, self.adv_head(f_s, coeff), logits_t, self.adv_head(f_t, coeff))


class MCC(AdaptationMethod):
    """Minimum class confusion on target predictions (Jin et al., ECCV 2020)."""

    name = "mcc"

    def __init__(
        self, *, in_features: int, num_classes: int, trade_off: float = 1.0, temperature: float = 2.5
    ):
        super().__init__(trade_off=trade_off)
        self.loss = MinimumClassConfusionLoss(temperature=temperature)

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        return self.loss(logits_t)


class DAN(AdaptationMethod):
    """Multi-kernel MMD between source and target features (Long et al., ICML 2015).

    Args:
        kernel_alphas: Gaussian kernel bandwidths as multiples of the mean squared distance.
        linear: the linear-time estimator instead of the quadratic one.
    """

    name = "dan"

    def __init__(
        self, *, in_features: int, num_classes: int, trade_off: float = 1.0,
        kernel_alphas: list[float] | None = None, linear: bool = False,
    ):  # fmt: skip
        super().__init__(trade_off=trade_off)
        alphas = kernel_alphas or [2.0**k for k in range(-3, 2)]
        self.loss = MultipleKernelMaximumMeanDiscrepancy(gaussian_kernels(alphas), linear=linear)

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        n = min(len(f_s), len(f_t))  # the estimator pairs examples: equal batch sizes
        return self.loss(f_s[:n], f_t[:n])


class JAN(AdaptationMethod):
    """Joint MMD over features and predictions (Long et al., ICML 2017)."""

    name = "jan"

    def __init__(self, *, in_features: int, num_classes: int, trade_off: float = 1.0, linear: bool = False):
        super().__init__(trade_off=trade_off)
        kernels = [gaussian_kernels([2.0**k for k in range(-3, 2)]), gaussian_kernels([1.0])]
        self.loss = JointMultipleKernelMaximumMeanDiscrepancy(kernels, linear=linear)

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        n = min(len(f_s), len(f_t))
        return self.loss((f_s[:n], logits_s[:n].softmax(-1)), (f_t[:n], logits_t[:n].softmax(-1)))


class CORAL(AdaptationMethod):
    """Deep CORAL: align second-order statistics of source and target features (Sun & Saenko, 2016)."""

    name = "coral"

    def __init__(self, *, in_features: int, num_classes: int, trade_off: float = 1.0):
        super().__init__(trade_off=trade_off)
        self.loss = CorrelationAlignmentLoss()

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        return self.loss(f_s, f_t)


class SelfTraining(AdaptationMethod):
    """Pseudo-labels on confident target predictions (threshold on the max softmax probability)."""

    name = "self_training"

    def __init__(self, *, in_features: int, num_classes: int, trade_off: float = 1.0, threshold: float = 0.9):
        super().__init__(trade_off=trade_off)
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"`method.threshold` must be in (0, 1]; got {threshold}")
        self.loss = ConfidenceThresholdSelfTraining(threshold=threshold)

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        return self.loss(logits_t)
