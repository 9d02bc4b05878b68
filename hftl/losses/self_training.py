"""Self-training on confident pseudo-labels."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from hftl.losses.base import LossOutput, check_pair


class ConfidenceThresholdSelfTraining(nn.Module):
    r"""Cross-entropy on the target examples whose pseudo-label is confident enough.

    Pseudo-labelling: Lee, "Pseudo-Label: The Simple and Efficient Semi-Supervised Learning Method for
    Deep Neural Networks", ICML 2013 Workshop (WREPL). Confidence threshold as in FixMatch: Sohn et al.,
    "FixMatch: Simplifying Semi-Supervised Learning with Consistency and Confidence", NeurIPS 2020
    (arXiv:2001.07685). Pseudo-labels come from ``pseudo_logits`` (e.g. a weakly augmented view or a
    teacher) when given, else from ``logits_t`` itself, and never receive gradient:

    .. math::
        \hat y_i = \arg\max_c p_{ic}, \quad p = \mathrm{softmax}(\text{pseudo\_logits}), \qquad
        \mathcal{L} = \frac{1}{B} \sum_{i=1}^{B} \mathbb{1}\big[\max_c p_{ic} \ge \tau\big]\,
                      \mathrm{CE}(\text{logits}_{t,i}, \hat y_i)

    Dividing by the batch size :math:`B` (not by the number of confident rows) makes the loss grow as more
    examples pass the threshold, as in FixMatch.

    Args:
        threshold: :math:`\tau \in (0, 1]`, the minimum max-probability for a row to count.

    Raises:
        ValueError: ``threshold`` outside ``(0, 1]``, or mismatched input shapes.

    Shape:
        - logits_t, pseudo_logits: :math:`(B, C)`.
        - Output: ``LossOutput`` with a scalar ``loss`` and ``metrics["pseudo_ratio"]`` (share of rows kept).

    Example:
        >>> loss_fn = ConfidenceThresholdSelfTraining(threshold=0.9)
        >>> logits = torch.tensor([[5.0, 0.0], [0.1, 0.0]])  # only the first row is confident
        >>> loss_fn(logits).metrics["pseudo_ratio"]
        tensor(0.5000)
    """

    def __init__(self, *, threshold: float = 0.9):
        super().__init__()
        if not 0.0 < threshold <= 1.0:
            raise ValueError(f"`threshold` must be in (0, 1]; got {threshold}")
        self.threshold = threshold

    def forward(self, logits_t: torch.Tensor, pseudo_logits: torch.Tensor | None = None) -> LossOutput:
        source = logits_t if pseudo_logits is None else pseudo_logits
        check_pair("logits_t", logits_t, "pseudo_logits", source, same_rows=True)
        confidence, pseudo_labels = source.detach().float().softmax(dim=1).max(dim=1)
        mask = (confidence >= self.threshold).to(logits_t.dtype)
        per_example = F.cross_entropy(logits_t, pseudo_labels, reduction="none")
        loss = (per_example * mask).sum() / logits_t.shape[0]
        return LossOutput(loss=loss, metrics={"pseudo_ratio": mask.mean().float()})
