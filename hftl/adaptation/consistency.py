"""Consistency self-training (FixMatch / AdaMatch) as an adaptation method."""

from __future__ import annotations

from typing import Any, Literal

import torch
from torch import nn

from hftl.adaptation.augmentation import StrongViewConfig, TokenIds, strong_view
from hftl.adaptation.methods import AdaptationMethod, AdaptBatch, StepLosses
from hftl.errors import ConfigError
from hftl.losses import ConsistencyLoss
from hftl.training.engine import Progress


class Consistency(AdaptationMethod):
    r"""Pseudo-labels from the weak view of a target batch, cross-entropy on its strong view.

    FixMatch (Sohn et al., NeurIPS 2020) and AdaMatch (Berthelot et al., ICLR 2022). Per step: the source
    cross-entropy, the target batch as collated (weak view, no gradient) and a strong view built here
    from its tensors (:mod:`hftl.adaptation.augmentation`: masked tokens, noise + delay, SpecAugment, affine +
    Cutout). With weak-view probabilities :math:`p_i`, aligned to the source class prior
    (``distribution_alignment``: :math:`\tilde p_i \propto p_i \odot \pi_s / \bar p_t`, with running means of
    the source labels and the target predictions),

    .. math::
        \mathcal{L}_{\text{transfer}} = \frac1B \sum_i \mathbb{1}[\max_c \tilde p_{ic} \ge \tau]\,
            \mathrm{CE}(h(\mathcal{A}_{\text{strong}}(x^t_i)), \arg\max_c \tilde p_{ic})

    where :math:`\tau` is ``threshold``, or with ``relative_threshold`` ``threshold`` × the mean confidence of
    the source batch (AdaMatch). No target label is read.

    Args:
        in_features: pooled feature width (set by the recipe; unused).
        num_classes: number of classes (set by the recipe).
        trade_off: weight of the consistency term.
        warmup: ``none`` or ``ganin`` (ramp the weight from 0, :meth:`AdaptationMethod.weight`).
        threshold: confidence threshold :math:`\tau_0 \in (0, 1]` (FixMatch 0.95).
        relative_threshold: AdaMatch's threshold relative to the source confidence.
        distribution_alignment: align the weak predictions to the source label distribution.
        momentum: of the running means that distribution alignment uses, in ``[0, 1)``.
        strong: the strong view (:class:`~hftl.adaptation.augmentation.StrongViewConfig` fields, e.g.
            ``{token_mask_prob: 0.3}``).

    Raises:
        ConfigError: a value out of range, an unknown ``strong`` key, or (at the first step) a batch of a
            modality without a strong view.

    Shape:
        The step reads ``batch.source`` / ``batch.target`` as collated; logs ``pseudo_ratio`` (share of
        target rows above the threshold) and ``threshold``.

    Example:
        >>> m = Consistency(in_features=4, num_classes=2, threshold=0.9, strong={"erase_prob": 0.0})
        >>> m.strong.erase_prob, m.loss.threshold
        (0.0, 0.9)
    """

    name = "consistency"

    def __init__(
        self, *, in_features: int, num_classes: int, trade_off: float = 1.0,
        warmup: Literal["none", "ganin"] = "none", threshold: float = 0.95, relative_threshold: bool = False,
        distribution_alignment: bool = True, momentum: float = 0.99, strong: dict[str, Any] | None = None,
    ):  # fmt: skip
        super().__init__(trade_off=trade_off, warmup=warmup)
        if not 0.0 < threshold <= 1.0:
            raise ConfigError(f"`method.threshold` must be in (0, 1]; got {threshold}")
        if not 0.0 <= momentum < 1.0:
            raise ConfigError(f"`method.momentum` must be in [0, 1); got {momentum}")
        self.strong = StrongViewConfig.of(strong)
        self.momentum = momentum
        self.loss = ConsistencyLoss(
            threshold=threshold,
            relative_threshold=relative_threshold,
            distribution_alignment=distribution_alignment,
        )
        uniform = torch.full((num_classes,), 1.0 / num_classes)
        self.register_buffer("source_prior", uniform.clone())  # running mean of one-hot source labels
        self.register_buffer("target_mean", uniform.clone())  # running mean of weak target predictions
        self._token_ids: TokenIds | None = None

    def attach(self, classifier: nn.Module) -> None:
        """Reads the mask/unknown and special token ids when the encoder has a tokenizer."""
        tokenizer = getattr(getattr(classifier, "encoder", None), "processor", None)
        if tokenizer is not None and hasattr(tokenizer, "all_special_ids"):
            self._token_ids = TokenIds.of(tokenizer)

    @torch.no_grad()
    def _update_means(self, labels: torch.Tensor, probs_t: torch.Tensor) -> None:
        m = self.momentum
        counts = torch.bincount(labels, minlength=self.source_prior.numel()).to(self.source_prior)
        self.source_prior.mul_(m).add_(counts / counts.sum(), alpha=1 - m)
        self.target_mean.mul_(m).add_(probs_t.mean(dim=0).to(self.target_mean), alpha=1 - m)

    def training_step(self, model: nn.Module, batch: AdaptBatch, progress: Progress) -> StepLosses:
        out_s = model(**batch.source)
        loss = nn.functional.cross_entropy(out_s.logits, batch.labels)
        if batch.target is None:
            return StepLosses(loss, None)
        with torch.no_grad():
            weak = model(**batch.target).logits
        self._update_means(batch.labels, weak.float().softmax(dim=1))
        strong = model(**strong_view(batch.target, self.strong, token_ids=self._token_ids)).logits
        transfer = self.loss(
            strong, weak, logits_source=out_s.logits, prior=self.source_prior, reference=self.target_mean
        )
        return StepLosses(loss, transfer)

    def forward(self, *, f_s, f_t, logits_s, logits_t, progress):
        raise ConfigError(
            "Consistency trains on a strong view of the target inputs, so it needs the full model "
            "(`hftl run adapt`), not cached features"
        )
