"""Classification heads on pooled features. ``in_features`` and ``num_labels`` come from the recipe."""

from __future__ import annotations

from typing import Literal

from torch import nn


class LinearHead(nn.Sequential):
    """Dropout + one linear layer: ``(B, in_features) -> (B, num_labels)``."""

    def __init__(self, in_features: int, num_labels: int, *, dropout: float = 0.1):
        super().__init__(nn.Dropout(dropout), nn.Linear(in_features, num_labels))


class MLPHead(nn.Sequential):
    """``num_layers`` hidden layers (Linear → activation → dropout) then a linear classifier.

    Args:
        in_features: width of the pooled features (``encoder.out_features``, set by the recipe).
        num_labels: number of classes (set by the recipe from the data).
        hidden_features: width of each hidden layer.
        num_layers: number of hidden layers (``0`` = a linear head).
        dropout: dropout after each hidden layer and on the input.
        activation: ``gelu``, ``relu`` or ``tanh``.
    """

    def __init__(
        self,
        in_features: int,
        num_labels: int,
        *,
        hidden_features: int = 256,
        num_layers: int = 1,
        dropout: float = 0.1,
        activation: Literal["gelu", "relu", "tanh"] = "gelu",
    ):
        act = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}[activation]
        layers: list[nn.Module] = [nn.Dropout(dropout)]
        width = in_features
        for _ in range(num_layers):
            layers += [nn.Linear(width, hidden_features), act(), nn.Dropout(dropout)]
            width = hidden_features
        super().__init__(*layers, nn.Linear(width, num_labels))
