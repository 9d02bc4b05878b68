"""Information maximization (SHOT's objective) as an adaptation method, with optional pseudo-label refinement."""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

from hftl.adaptation.methods import AdaptationMethod
from hftl.errors import ConfigError
from hftl.losses import InformationMaximizationLoss, LossOutput, shot_pseudo_labels


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
    model as it trains and needs no extra pass over the data. Unlike SHOT the source stays in the loop
    (``base`` = source cross-entropy), so this is SHOT's objective without the source-free constraint.

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

    Raises:
        ConfigError: a negative weight, a prior that is not a probability vector over ``num_classes``
            classes, or ``bank_size`` < 1.

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
    ):  # fmt: skip
        super().__init__(trade_off=trade_off, warmup=warmup)
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
