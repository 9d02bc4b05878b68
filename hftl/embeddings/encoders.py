"""Context-level encoders: every hidden layer of a frozen backbone, mixed and pooled by a learned head.

``ContextTextEncoder`` / ``ContextAudioEncoder`` are the text and audio encoders of
:mod:`hftl.encoders` whose pooling is a :class:`~hftl.embeddings.heads.ContextPooler` (scalar mix of
all layers → token-level model → pooling) instead of a fixed pooling of one layer. They are ordinary
encoders for the rest of hftl: a saved model holds the pooler's weights in ``head.safetensors`` and
``hftl.load`` / ``hftl predict`` rebuild them from ``hftl_model.json``.
"""

from __future__ import annotations

from typing import Any

import torch

from hftl.embeddings.heads import ContextPooler, TokenHead
from hftl.encoders.audio import AudioEncoder
from hftl.encoders.base import EncoderOutput, hidden_size_of
from hftl.encoders.text import TextEncoder
from hftl.errors import ConfigError


class _ContextMixin:
    """Replaces an encoder's one-layer pooling by a :class:`ContextPooler` over all layers.

    Args:
        model: Hub id or local directory (see :class:`hftl.encoders.base.Encoder`).
        token_head: ``mean``, ``attention``, ``transformer`` or ``bilstm`` (see :class:`ContextPooler`).
        hidden_features: width of the transformer / BiLSTM token model.
        num_heads: attention heads of the transformer token model.
        dropout: dropout of the pooler.
        layer_norm: normalise each layer before the scalar mix.
        **kwargs: the modality encoder's own arguments (``max_length``, ``max_duration``, ``revision``...);
            ``pooling`` and ``layer`` are not accepted: every layer is used and the pooler pools.
    """

    def __init__(
        self,
        model: Any,
        *,
        token_head: TokenHead = "transformer",
        hidden_features: int = 256,
        num_heads: int = 4,
        dropout: float = 0.1,
        layer_norm: bool = False,
        **kwargs: Any,
    ):
        fixed = [k for k in ("pooling", "layer") if k in kwargs]
        if fixed:
            raise ConfigError(
                f"`encoder.{fixed[0]}` is not used by {type(self).__name__}: it mixes every layer and pools "
                "with `encoder.token_head`; remove it (or use the sentence-level TextEncoder/AudioEncoder)"
            )
        super().__init__(model, **kwargs)
        config = self.base_model.config
        layers = getattr(config, "num_hidden_layers", None)
        if not isinstance(layers, int):
            raise ConfigError(
                f"{type(self).__name__} needs a transformer with `num_hidden_layers` in its config; "
                f"{type(config).__name__} has none. Use a sentence-level encoder instead."
            )
        self.num_states = layers + 1  # embeddings + every layer
        self.pool = ContextPooler(
            num_layers=self.num_states, hidden_size=hidden_size_of(config), token_head=token_head,
            hidden_features=hidden_features, num_heads=num_heads, dropout=dropout, layer_norm=layer_norm,
        )  # fmt: skip
        self.out_features = self.pool.out_features

    def encode_states(self, **inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Runs the backbone; returns the stacked hidden states ``(B, T, K, H)`` and the ``(B, T)`` mask."""
        out = self.backbone(**inputs, output_hidden_states=True, return_dict=True)
        states = torch.stack(tuple(out.hidden_states), dim=2)
        return states, self.output_mask(inputs, states[:, :, 0])

    def forward(self, **inputs: torch.Tensor) -> EncoderOutput:
        states, mask = self.encode_states(**inputs)
        return EncoderOutput(pooled=self.pool(states, mask), hidden=states[:, :, -1], mask=mask)


class ContextTextEncoder(_ContextMixin, TextEncoder):
    """A frozen text encoder read through a scalar mix of all layers and a token-level head.

    Example (YAML)::

        encoder:
          _component_: hftl.embeddings.ContextTextEncoder
          model: sentence-transformers/all-MiniLM-L6-v2
          max_length: 64
          token_head: transformer      # mean | attention | transformer | bilstm
    """


class ContextAudioEncoder(_ContextMixin, AudioEncoder):
    """A frozen speech encoder (wav2vec2, HuBERT, WavLM) read the SUPERB way: a weighted sum of all
    layers, then a token-level head over the frames."""
