"""The domain discriminator: a plain MLP from features to one domain logit."""

from __future__ import annotations

from torch import nn


class DomainDiscriminator(nn.Sequential):
    """MLP that predicts whether a feature comes from the source domain (logit > 0) or the target.

    ``num_layers`` blocks of ``Linear → [BatchNorm1d] → ReLU → [Dropout]`` followed by ``Linear(hidden, 1)``,
    as in DANN (Ganin et al., JMLR 2016, arXiv:1505.07818) and TLlib's ``DomainDiscriminator``.
    The output is a raw logit: the losses apply ``binary_cross_entropy_with_logits``.

    Args:
        in_features: width of the features it reads.
        hidden_features: width of every hidden layer.
        num_layers: number of hidden blocks (0 gives a linear discriminator).
        batch_norm: add ``BatchNorm1d`` after each hidden ``Linear`` (needs batches of 2+ rows in training).
        dropout: dropout probability after each ReLU (0 disables it).

    Raises:
        ValueError: a width or depth is not positive, or ``dropout`` is outside ``[0, 1)``.

    Shape:
        - Input: :math:`(N, \\text{in\\_features})`.
        - Output: :math:`(N, 1)` logits.

    Example:
        >>> import torch
        >>> d = DomainDiscriminator(16, hidden_features=32)
        >>> d(torch.randn(8, 16)).shape
        torch.Size([8, 1])
    """

    def __init__(
        self,
        in_features: int,
        *,
        hidden_features: int = 1024,
        num_layers: int = 2,
        batch_norm: bool = True,
        dropout: float = 0.0,
    ):
        problems = []
        if in_features < 1 or hidden_features < 1:
            problems.append(
                f"`in_features` and `hidden_features` must be >= 1; got {in_features}, {hidden_features}"
            )
        if num_layers < 0:
            problems.append(f"`num_layers` must be >= 0; got {num_layers}")
        if not 0.0 <= dropout < 1.0:
            problems.append(f"`dropout` must be in [0, 1); got {dropout}")
        if problems:
            raise ValueError("DomainDiscriminator: " + "; ".join(problems))
        layers: list[nn.Module] = []
        width = in_features
        for _ in range(num_layers):
            layers.append(nn.Linear(width, hidden_features))
            if batch_norm:
                layers.append(nn.BatchNorm1d(hidden_features))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = hidden_features
        layers.append(nn.Linear(width, 1))
        super().__init__(*layers)
