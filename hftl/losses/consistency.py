"""Consistency self-training (FixMatch / AdaMatch): pseudo-labels from a weak view, loss on a strong view."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hftl.losses.base import LossOutput, at_least_float32, check_pair


def align_distribution(
    probs: torch.Tensor, prior: torch.Tensor, *, reference: torch.Tensor | None = None
) -> torch.Tensor:
    r"""Distribution alignment: rescale target predictions so their class mean moves to ``prior``.

    Berthelot et al., ReMixMatch (ICLR 2020, arXiv:1911.09785) and AdaMatch (ICLR 2022, arXiv:2106.04732):
    :math:`\tilde p_i = \mathrm{normalize}(p_i \odot \pi / \bar p)`, where :math:`\bar p` is the mean target
    prediction (``reference``: a running mean the caller keeps, or this batch's mean) and :math:`\pi` the
    source class prior (label frequencies, or the mean prediction on a source batch as in AdaMatch).

    Shape:
        - probs: :math:`(B, C)`; prior, reference: :math:`(C,)`. Output: :math:`(B, C)`, rows summing to 1.

    Example:
        >>> p = torch.tensor([[0.9, 0.1], [0.7, 0.3]])  # the target leans to class 0 (mean 0.8 / 0.2)
        >>> align_distribution(p, torch.tensor([0.5, 0.5])).mean(0)  # after alignment: nearer the prior
        tensor([0.5304, 0.4696])
    """
    reference = probs.mean(dim=0) if reference is None else reference
    floor = torch.finfo(probs.dtype).tiny
    aligned = probs * (prior.to(probs) / reference.to(probs).clamp_min(floor))
    return aligned / aligned.sum(dim=1, keepdim=True).clamp_min(floor)


class ConsistencyLoss(nn.Module):
    r"""Cross-entropy of a strong view's logits on the confident pseudo-labels of a weak view.

    FixMatch: Sohn et al., "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence",
    NeurIPS 2020 (arXiv:2001.07685). AdaMatch (relative threshold, distribution alignment): Berthelot et al.,
    "AdaMatch: A Unified Approach to Semi-Supervised Learning and Domain Adaptation", ICLR 2022
    (arXiv:2106.04732). With weak-view probabilities :math:`p_i` (no gradient), optionally aligned to the
    source prior (:func:`align_distribution`), pseudo-labels :math:`\hat y_i = \arg\max_c p_{ic}` and

    .. math::
        \mathcal{L} = \frac1B \sum_{i=1}^{B} \mathbb{1}\big[\max_c p_{ic} \ge \tau\big]\,
                      \mathrm{CE}(\text{logits\_strong}_i, \hat y_i), \qquad
        \tau = \begin{cases} \tau_0 & \text{FixMatch} \\
               \tau_0 \cdot \frac{1}{B_s} \sum_j \max_c p^{s}_{jc} & \text{AdaMatch (relative)} \end{cases}

    The relative threshold scales :math:`\tau_0` by the mean confidence on a weakly augmented *source* batch,
    so it follows the model's calibration instead of a fixed level. No label is read: only logits go in.

    Args:
        threshold: :math:`\tau_0 \in (0, 1]` (FixMatch 0.95; AdaMatch 0.9 with the relative threshold).
        relative_threshold: scale the threshold by the source confidence (needs ``logits_source``).
        distribution_alignment: align weak target predictions to ``prior`` before pseudo-labelling.

    Raises:
        ValueError: ``threshold`` outside ``(0, 1]``, mismatched shapes, or a missing ``logits_source``
            / ``prior`` for the option that needs it.

    Shape:
        - logits_strong, logits_weak: :math:`(B, C)`, the same target examples under two augmentations.
        - logits_source: :math:`(B_s, C)` weak-view source logits; prior: :math:`(C,)`.
        - Output: ``LossOutput`` with a scalar ``loss`` and (detached) ``metrics["pseudo_ratio"]`` (share of
          rows kept) and ``metrics["threshold"]`` (the threshold applied).

    Example:
        >>> loss_fn = ConsistencyLoss(threshold=0.9)
        >>> weak = torch.tensor([[4.0, 0.0], [0.2, 0.0]])  # only the first row is confident
        >>> loss_fn(torch.zeros(2, 2), weak).metrics["pseudo_ratio"]
        tensor(0.5000)
    """

    def __init__(
        self,
        *,
        threshold: float = 0.95,
        relative_threshold: bool = False,
        distribution_alignment: bool = False,
    ):
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"`threshold` must be in (0, 1]; got {threshold}")
        self.threshold, self.relative_threshold = threshold, relative_threshold
        self.distribution_alignment = distribution_alignment

    def forward(
        self,
        logits_strong: torch.Tensor,
        logits_weak: torch.Tensor,
        *,
        logits_source: torch.Tensor | None = None,
        prior: torch.Tensor | None = None,
        reference: torch.Tensor | None = None,
    ) -> LossOutput:
        check_pair("logits_strong", logits_strong, "logits_weak", logits_weak, same_rows=True)
        probs = at_least_float32(logits_weak.detach()).softmax(dim=1)
        if self.distribution_alignment:
            if prior is None:
                raise ValueError("`distribution_alignment` needs `prior`, the source class distribution (C,)")
            probs = align_distribution(probs, prior, reference=reference)
        threshold = self.threshold
        if self.relative_threshold:
            if logits_source is None:
                raise ValueError(
                    "`relative_threshold` needs `logits_source`, weak-view logits of a source batch"
                )
            check_pair("logits_source", logits_source, "logits_weak", logits_weak)
            source_conf = at_least_float32(logits_source.detach()).softmax(dim=1).max(dim=1).values
            threshold = threshold * source_conf.mean()  # stays on the device: no host sync
        confidence, pseudo_labels = probs.max(dim=1)
        mask = (confidence >= threshold).to(logits_strong.dtype)
        per_example = F.cross_entropy(logits_strong, pseudo_labels, reduction="none")
        loss = (per_example * mask).sum() / logits_strong.shape[0]
        metrics = {
            "pseudo_ratio": mask.mean().detach(),
            "threshold": torch.as_tensor(threshold, device=mask.device),
        }
        return LossOutput(loss=loss, metrics=metrics)
