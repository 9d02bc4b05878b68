"""Information maximization (SHOT's objective) as an adaptation method, with optional pseudo-label refinement."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from hftl.adaptation.methods import AdaptationMethod, AdaptBatch, StepLosses
from hftl.errors import ConfigError
from hftl.losses import InformationMaximizationLoss, LossOutput, shot_pseudo_labels
from hftl.training.engine import Progress


class InformationMaximization(AdaptationMethod):
    r"""Confident and diverse target predictions (SHOT, Liang et al., ICML 2020), trained jointly with the source.

    The transfer term is :class:`~hftl.losses.InformationMaximizationLoss` on the target logits,

    .. math::
        \mathcal{L}_{\text{IM}} = \alpha\,\frac1B \sum_i H(p_i) + \beta\,\mathrm{KL}(\bar p \,\|\, \pi)
            \;+\; \gamma\,\frac1B \sum_i \mathrm{CE}(g_i, \hat y_i)

    where the last term (``pseudo_label_weight`` γ > 0) is SHOT's self-supervised pseudo-labelling: the
    nearest class centroid in cosine distance (:func:`~hftl.losses.shot_pseudo_labels`). SHOT computes the
    centroids over the whole target set once per epoch; here they come from a bank of the last
    ``bank_size`` target features and predictions (detached, this batch included), which follows the
    model as it trains and needs no extra pass over the data.

    By default (``source_fraction: 0``) the source cross-entropy stays in the loop from the first step: SHOT's
    objective trained jointly with the source. SHOT's own schedule is two stages, set with three fields:
    ``source_fraction`` (the first share of the optimizer steps trains on source labels only: the source
    model), ``freeze_head`` (then the classifier head, SHOT's *source hypothesis*, stops training and only the
    encoder adapts, so the target features move to fit the source classifier) and ``source_free`` (the
    adaptation stage reads no source batch: SHOT's source-free setting; without it the source cross-entropy
    stays as ``base``). ``{source_fraction: 0.5, freeze_head: true, source_free: true}`` is SHOT.

    Args:
        in_features: pooled feature width (set by the recipe).
        num_classes: number of classes (set by the recipe).
        trade_off: weight of the whole IM term.
        warmup: ``ganin`` (default: ramp the weight from 0, :meth:`AdaptationMethod.weight`; SHOT starts from
            a source-trained model, and entropy minimisation on a random one would lock in its guesses) or
            ``none``.
        entropy_weight: α.
        diversity_weight: β (SHOT: 1).
        class_prior: π, the expected target class shares (``None``: uniform).
        pseudo_label_weight: γ (default SHOT's 0.3; 0 switches pseudo-labels off).
        bank_size: target rows the centroids are computed over.
        source_fraction: share of the run's optimizer steps, in ``[0, 1)``, trained on source labels only
            before the IM term starts (0: joint from the first step).
        freeze_head: in the adaptation stage, train the encoder only (the head keeps its source weights).
        source_free: in the adaptation stage, no source cross-entropy (needs ``source_fraction`` > 0: the
            head must have been trained on the source first).

    Raises:
        ConfigError: a negative weight, a prior that is not a probability vector over ``num_classes``
            classes, ``bank_size`` < 1, ``source_fraction`` outside ``[0, 1)``, or ``source_free`` or
            ``freeze_head`` without a source stage.

    Shape:
        - logits_t: :math:`(B, C)`; f_t: :math:`(B, F)`. Logs ``entropy``, ``diversity`` and, with
          pseudo-labels, ``pseudo_ce``.

    Example:
        >>> m = InformationMaximization(in_features=3, num_classes=2, pseudo_label_weight=0.0)
        >>> logits = torch.tensor([[9.0, -9.0], [-9.0, 9.0]])  # confident and diverse: IM = 0
        >>> out = m(f_s=None, f_t=torch.randn(2, 3), logits_s=None, logits_t=logits, progress=0.5)
        >>> round(out.loss.item(), 4)
        0.0
    """

    name = "information_maximization"

    def __init__(
        self, *, in_features: int, num_classes: int, trade_off: float = 1.0,
        warmup: Literal["none", "ganin"] = "ganin", entropy_weight: float = 1.0, diversity_weight: float = 1.0,
        class_prior: list[float] | None = None, pseudo_label_weight: float = 0.3, bank_size: int = 1024,
        source_fraction: float = 0.0, freeze_head: bool = False, source_free: bool = False,
    ):  # fmt: skip
        super().__init__(trade_off=trade_off, warmup=warmup)
        if not 0.0 <= source_fraction < 1.0:
            raise ConfigError(f"`method.source_fraction` must be in [0, 1); got {source_fraction}")
        for field, on in (("freeze_head", freeze_head), ("source_free", source_free)):
            if on and source_fraction == 0:
                raise ConfigError(
                    f"`method.{field}: true` needs a source stage to train the head first; "
                    "set `method.source_fraction` > 0 (SHOT: 0.5)"
                )
        self.source_fraction, self.freeze_head, self.source_free = source_fraction, freeze_head, source_free
        # a schedule of its own (training_step): needs the full model, not cached features
        self.two_stage = source_fraction > 0
        self._classifier: tuple[nn.Module, ...] = ()
        if class_prior is not None and len(class_prior) != num_classes:
            raise ConfigError(
                f"`method.class_prior` has {len(class_prior)} entries; the data has {num_classes} classes"
            )
        if pseudo_label_weight < 0:
            raise ConfigError(f"`method.pseudo_label_weight` must be >= 0; got {pseudo_label_weight}")
        if bank_size < 1:
            raise ConfigError(f"`method.bank_size` must be >= 1; got {bank_size}")
        try:
            self.loss = InformationMaximizationLoss(
                entropy_weight=entropy_weight, diversity_weight=diversity_weight, class_prior=class_prior
            )
        except ValueError as e:
            raise ConfigError(f"`method`: {e}") from None
        self.pseudo_label_weight, self.bank_size = pseudo_label_weight, bank_size
        self.register_buffer("bank_features", torch.zeros(0, in_features), persistent=False)
        self.register_buffer("bank_logits", torch.zeros(0, num_classes), persistent=False)

    def attach(self, classifier: nn.Module) -> None:
        """Keeps the classifier whose head ``freeze_head`` freezes (a tuple: the model registers it, not this)."""
        self._classifier = (classifier,)

    def training_step(self, model: nn.Module, batch: AdaptBatch, progress: Progress) -> StepLosses:
        """Source cross-entropy only during the source stage; then the IM term (head frozen, source dropped
        when asked). Without a source stage: :meth:`AdaptationMethod.training_step`, joint from step 0."""
        if self.source_fraction == 0 or batch.target is None:
            return super().training_step(model, batch, progress)
        if progress.step < round(self.source_fraction * progress.total_steps):
            return StepLosses(F.cross_entropy(model(**batch.source).logits, batch.labels), None)
        if self.freeze_head:  # idempotent; re-applied after a resume
            if not self._classifier:
                raise RuntimeError("attach(classifier) must be called before training (AdaptModel does it)")
            self._classifier[0].head.requires_grad_(False)
        out_t = model(**batch.target)
        if self.source_free:
            base, f_s, logits_s = out_t.logits.new_zeros(()), None, None
        else:
            out_s = model(**batch.source)
            base, f_s, logits_s = F.cross_entropy(out_s.logits, batch.labels), out_s.features, out_s.logits
        transfer = self(
            f_s=f_s, f_t=out_t.features, logits_s=logits_s, logits_t=out_t.logits, progress=progress.fraction
        )
        return StepLosses(base, transfer)

    def _pseudo_labels(self, f_t: torch.Tensor, logits_t: torch.Tensor) -> torch.Tensor:
        """SHOT's nearest-centroid labels of this batch, centroids over the bank plus this batch."""
        f, g = f_t.detach().float(), logits_t.detach().float()
        features = torch.cat([f, self.bank_features.to(f)])
        logits = torch.cat([g, self.bank_logits.to(g)])
        self.bank_features, self.bank_logits = features[: self.bank_size], logits[: self.bank_size]
        return shot_pseudo_labels(features, logits)[: len(f)]

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress) -> LossOutput:
        out = self.loss(logits_t)
        if self.pseudo_label_weight == 0:
            return out
        pseudo_ce = F.cross_entropy(logits_t, self._pseudo_labels(f_t, logits_t))
        metrics = {**out.metrics, "pseudo_ce": pseudo_ce.detach()}
        return LossOutput(loss=out.loss + self.pseudo_label_weight * pseudo_ce, metrics=metrics)
