"""Token-level heads for context-level transfer: mix the layers, model the tokens/frames, pool.

A :class:`ContextPooler` turns the stacked hidden states of a frozen encoder, ``(B, T, K, H)``, into
one vector per example: :class:`~hftl.embeddings.ScalarMix` over the ``K`` layers, then a small
token-level model (none, a 1-layer transformer or a BiLSTM), then attention (or mean) pooling over the
``T`` positions. The classifier head (``hftl.models.LinearHead`` / ``MLPHead``) sits on top of it.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from hftl.embeddings.scalar_mix import ScalarMix
from hftl.encoders.pooling import Pooling
from hftl.errors import ConfigError

TokenHead = Literal["mean", "attention", "transformer", "bilstm"]
TOKEN_HEADS: tuple[str, ...] = ("mean", "attention", "transformer", "bilstm")


class ContextPooler(nn.Module):
    """Scalar mix of all layers → token-level model → pooling.

    Args:
        num_layers: stacked hidden states ``K`` (embeddings + every layer).
        hidden_size: width ``H`` of each hidden state.
        token_head: ``mean`` (mask-aware average of the mixed states), ``attention`` (learned
            attention pooling), ``transformer`` (project to ``hidden_features``, one pre-norm
            transformer layer, attention pooling) or ``bilstm`` (a 1-layer BiLSTM with
            ``hidden_features`` outputs, attention pooling).
        hidden_features: width of the transformer / BiLSTM (ignored by ``mean`` and ``attention``).
        num_heads: attention heads of the transformer layer (must divide ``hidden_features``).
        dropout: dropout on the mixed states and inside the token model.
        layer_norm: normalise each layer before mixing (see :class:`ScalarMix`).

    Raises:
        ConfigError: unknown ``token_head`` or ``hidden_features`` not divisible by ``num_heads``.

    Shape:
        - states: ``(B, T, K, H)``; mask: ``(B, T)`` with 1 for real positions (a prefix), or ``None``.
        - output: ``(B, out_features)``.
    """

    def __init__(
        self,
        *,
        num_layers: int,
        hidden_size: int,
        token_head: TokenHead = "transformer",
        hidden_features: int = 256,
        num_heads: int = 4,
        dropout: float = 0.1,
        layer_norm: bool = False,
    ):
        super().__init__()
        if token_head not in TOKEN_HEADS:
            raise ConfigError(
                f"`encoder.token_head` must be one of {', '.join(TOKEN_HEADS)}; got {token_head!r}"
            )
        if token_head == "transformer" and hidden_features % num_heads:
            raise ConfigError(
                f"`encoder.hidden_features` ({hidden_features}) must be divisible by `encoder.num_heads` "
                f"({num_heads}) for the transformer token head; change one of them"
            )
        self.token_head = token_head
        self.mix = ScalarMix(num_layers, layer_norm=layer_norm)
        self.dropout = nn.Dropout(dropout)
        self.proj: nn.Module | None = None
        self.tokens: nn.Module | None = None
        width = hidden_size
        if token_head == "transformer":
            self.proj = nn.Linear(hidden_size, hidden_features)
            self.tokens = nn.TransformerEncoderLayer(
                hidden_features, num_heads, dim_feedforward=2 * hidden_features, dropout=dropout,
                batch_first=True, norm_first=True,
            )  # fmt: skip
            width = hidden_features
        elif token_head == "bilstm":
            if hidden_features % 2:
                raise ConfigError(
                    f"`encoder.hidden_features` must be even for a BiLSTM; got {hidden_features}"
                )
            self.tokens = nn.LSTM(hidden_size, hidden_features // 2, batch_first=True, bidirectional=True)
            width = hidden_features
        self.pool = Pooling("mean" if token_head == "mean" else "attention", width)
        self.out_features = width

    def forward(self, states: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.dropout(self.mix(states))  # (B, T, H)
        if self.token_head == "transformer":
            pad = None if mask is None else mask == 0
            x = self.tokens(self.proj(x), src_key_padding_mask=pad)
        elif self.token_head == "bilstm":
            x = self._bilstm(x, mask)
        return self.pool(x, mask)

    def _bilstm(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        if mask is None:
            return self.tokens(x)[0]
        lengths = mask.sum(dim=1).clamp(min=1).cpu()
        packed = nn.utils.rnn.pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        out, _ = self.tokens(packed)
        return nn.utils.rnn.pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])[0]
