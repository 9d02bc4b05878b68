"""A learned softmax-weighted mix of all hidden layers (ELMo, s3prl's ``WeightedSum``)."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from hftl.errors import ConfigError


class ScalarMix(nn.Module):
    """``γ · Σ_l softmax(w)_l · h_l``: one learned weight per layer, softmax-normalised, and a scale γ.

    Peters et al., "Deep contextualized word representations" (NAACL 2018), eq. 1; the SUPERB
    benchmark (Yang et al., Interspeech 2021) probes frozen speech encoders the same way. With
    ``w = 0`` at the start every layer weighs ``1 / num_layers``.

    Args:
        num_layers: number of stacked layers ``K`` (a transformers model with ``n`` layers returns
            ``n + 1`` hidden states: the embeddings and each layer).
        layer_norm: normalise each layer's states over the feature axis before mixing (ELMo's
            ``do_layer_norm``); useful when layer scales differ a lot, as in speech encoders.

    Raises:
        ConfigError: ``num_layers`` < 1.

    Shape:
        - states: ``(..., K, H)``, e.g. ``(B, T, K, H)``.
        - output: ``(..., H)``.

    Example:
        >>> mix = ScalarMix(3)
        >>> mix(torch.ones(2, 5, 3, 8)).shape
        torch.Size([2, 5, 8])
        >>> float(mix.layer_weights().sum())
        1.0
    """

    def __init__(self, num_layers: int, *, layer_norm: bool = False):
        super().__init__()
        if num_layers < 1:
            raise ConfigError(f"ScalarMix needs at least one layer; got num_layers={num_layers}")
        self.num_layers, self.layer_norm = num_layers, layer_norm
        self.weights = nn.Parameter(torch.zeros(num_layers))  # softmax(0) = uniform mix
        self.gamma = nn.Parameter(torch.ones(()))

    def layer_weights(self) -> torch.Tensor:
        """The mixing weights ``softmax(w)``, shape ``(K,)``, summing to 1."""
        return self.weights.softmax(dim=0)

    def forward(self, states: torch.Tensor) -> torch.Tensor:
        if states.dim() < 2 or states.shape[-2] != self.num_layers:
            raise ValueError(
                f"ScalarMix expects states of shape (..., {self.num_layers}, H); got {tuple(states.shape)}. "
                "The encoder returned a different number of hidden layers than it was built for."
            )
        if self.layer_norm:
            states = F.layer_norm(states, states.shape[-1:])
        weights = self.layer_weights().to(states.dtype)
        return self.gamma.to(states.dtype) * torch.einsum("...kh,k->...h", states, weights)

    def extra_repr(self) -> str:
        return f"num_layers={self.num_layers}, layer_norm={self.layer_norm}"
