"""A conv front end and a tiny pre-norm transformer on log-mel filter banks, as a transformers model."""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import BaseModelOutput

from hftl.encoders.scratch.base import _positive_int, _probability, _raise_problems, _ScratchModel

InputLayout = Literal["auto", "mel_time", "time_mel"]


class SpeechCNNTransformerConfig(PretrainedConfig):
    """A conv front end and a tiny transformer encoder on log-mel filter banks.

    Two Conv1d (kernel ``conv_kernel_size``, stride 2, GELU) subsample time x4 (10 ms frames become
    40 ms), sinusoidal positions are added, then ``num_layers`` pre-norm transformer layers and a final
    LayerNorm. ``num_hidden_layers`` / ``num_attention_heads`` are aliases of ``num_layers`` /
    ``num_heads`` (the names hftl and transformers read).

    Args:
        num_mel_bins: filter-bank channels of the input (the feature extractor's ``feature_size``).
        hidden_size: width of the conv output and of the transformer.
        num_layers: transformer layers.
        num_heads: attention heads (must divide ``hidden_size``).
        intermediate_size: width of the feed-forward block.
        dropout: dropout after the front end and inside the transformer layers.
        conv_kernel_size: kernel of both subsampling convolutions (odd).
        input_layout: ``mel_time`` for ``(B, num_mel_bins, T)`` input (Whisper's extractor),
            ``time_mel`` for ``(B, T, num_mel_bins)`` (Speech2Text's), ``auto`` to tell by which axis
            has ``num_mel_bins`` entries (a clip of exactly ``num_mel_bins`` frames is read as ``time_mel``).

    Raises:
        ConfigError: for a value outside the allowed ones (all problems at once).
    """

    model_type = "hftl-speech-cnn-transformer"
    attribute_map = {"num_hidden_layers": "num_layers", "num_attention_heads": "num_heads"}

    num_mel_bins: int = 40
    hidden_size: int = 128
    num_layers: int = 2
    num_heads: int = 4
    intermediate_size: int = 256
    dropout: float | int = 0.1
    conv_kernel_size: int = 5
    input_layout: InputLayout = "auto"

    def __post_init__(self, **kwargs):
        sizes = ("num_mel_bins", "hidden_size", "num_layers", "num_heads", "intermediate_size")
        checks = [(f, _positive_int(getattr(self, f)), "a positive integer") for f in sizes]
        h, heads, k = self.hidden_size, self.num_heads, self.conv_kernel_size
        if _positive_int(h) and _positive_int(heads):
            checks.append(("num_heads", h % heads == 0, f"a divisor of hidden_size = {h}"))
        checks += [
            ("conv_kernel_size", _positive_int(k) and k % 2 == 1, "an odd positive integer"),
            ("dropout", _probability(self.dropout), "a number in [0, 1)"),
            (
                "input_layout",
                self.input_layout in ("auto", "mel_time", "time_mel"),
                "auto, mel_time or time_mel",
            ),
        ]
        _raise_problems(self, checks)
        super().__post_init__(**kwargs)


def _sinusoids(length: int, channels: int, *, device, dtype) -> torch.Tensor:
    """``(length, channels)`` sinusoidal positions (Vaswani et al., 2017): sin on even, cos on odd channels."""
    position = torch.arange(length, device=device, dtype=torch.float32)[:, None]
    rate = torch.exp(torch.arange(0, channels, 2, device=device) * (-math.log(1e4) / channels))
    table = torch.zeros(length, channels, device=device)
    table[:, 0::2] = torch.sin(position * rate)
    table[:, 1::2] = torch.cos(position * rate[: channels // 2])
    return table.to(dtype)


class SpeechCNNTransformerModel(_ScratchModel):
    """Speech encoder trained from scratch; see :class:`SpeechCNNTransformerConfig`.

    Pair it with transformers' ``Speech2TextFeatureExtractor`` (Kaldi log-mel filter banks, 25 ms
    windows every 10 ms, per-utterance mean/variance normalisation that ignores padding; built from its
    constructor, nothing to download; uses torchaudio when installed). It returns ``input_features``
    ``(B, T, num_mel_bins)`` and a frame-level ``attention_mask`` ``(B, T)``; the model transposes to
    ``(B, num_mel_bins, T)`` itself. ``WhisperFeatureExtractor(feature_size=num_mel_bins)`` also works
    (``(B, num_mel_bins, T)``; set ``input_layout: mel_time``). The encoder maps the frame mask to
    the subsampled positions with :meth:`_get_feature_vector_attention_mask` (the name wav2vec2 uses).

    Example (YAML):

    .. code-block:: yaml

        encoder:
          _component_: hftl.encoders.AudioEncoder
          model:
            _component_: hftl.encoders.SpeechCNNTransformerConfig
            num_mel_bins: 40
            input_layout: time_mel
          processor:
            _component_: transformers.Speech2TextFeatureExtractor
            feature_size: 40
            num_mel_bins: 40
            sampling_rate: 16000
          pooling: mean
          max_duration: 2.0
    """

    config_class = SpeechCNNTransformerConfig
    base_model_prefix = "speech_cnn_transformer"
    main_input_name = "input_features"

    def __init__(self, config: SpeechCNNTransformerConfig):
        super().__init__(config)
        h, k = config.hidden_size, config.conv_kernel_size
        self.conv1 = nn.Conv1d(config.num_mel_bins, h, kernel_size=k, stride=2, padding=k // 2)
        self.conv2 = nn.Conv1d(h, h, kernel_size=k, stride=2, padding=k // 2)
        self.dropout = nn.Dropout(config.dropout)
        self.layers = nn.ModuleList(
            nn.TransformerEncoderLayer(
                h,
                config.num_heads,
                config.intermediate_size,
                config.dropout,
                activation="gelu",
                batch_first=True,
                norm_first=True,
            )
            for _ in range(config.num_layers)
        )
        self.layer_norm = nn.LayerNorm(h)
        self.post_init()

    def _conv_output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames after one stride-2 convolution: ``L -> (L + 2 * (k // 2) - k) // 2 + 1 = ceil(L / 2)``."""
        k = self.config.conv_kernel_size
        return torch.div(lengths + 2 * (k // 2) - k, 2, rounding_mode="floor") + 1

    def _get_feat_extract_output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        """Frames after both convolutions (the name wav2vec2 uses)."""
        return self._conv_output_lengths(self._conv_output_lengths(lengths))

    def _get_feature_vector_attention_mask(
        self, num_frames: int, attention_mask: torch.Tensor
    ) -> torch.Tensor:
        """Maps a right-padded input-frame mask ``(B, T)`` to the output positions ``(B, num_frames)``."""
        lengths = self._get_feat_extract_output_lengths(attention_mask.sum(-1).long())
        positions = torch.arange(num_frames, device=attention_mask.device)
        return (positions[None, :] < lengths[:, None]).to(attention_mask.dtype)

    def _mel_time(self, features: torch.Tensor) -> torch.Tensor:
        mel, layout = self.config.num_mel_bins, self.config.input_layout
        if features.dim() != 3 or mel not in features.shape[1:]:
            raise ValueError(
                f"SpeechCNNTransformerModel expects input_features (B, {mel}, T) or (B, T, {mel}) "
                f"(num_mel_bins = {mel}), got {tuple(features.shape)}: set the feature extractor's "
                "feature_size / num_mel_bins to the config's num_mel_bins."
            )
        if layout == "auto":
            layout = "time_mel" if features.shape[2] == mel else "mel_time"
        if layout == "time_mel":
            features = features.transpose(1, 2)
        if features.shape[1] != mel:
            raise ValueError(
                f"input_features {tuple(features.shape)} do not match `input_layout` = "
                f"{self.config.input_layout!r} with num_mel_bins = {mel}; use input_layout: auto."
            )
        return features

    def forward(
        self,
        input_features: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        """Encodes log-mel ``input_features`` with an optional frame mask ``attention_mask`` ``(B, T)``.

        Returns:
            ``last_hidden_state`` ``(B, T', hidden_size)`` with ``T' = ceil(ceil(T / 2) / 2)`` for odd
            kernels; ``hidden_states`` (when asked): the front-end output and each layer's output,
            ``num_layers + 1`` tensors, the last one after the final LayerNorm. Other keyword
            arguments are accepted and ignored.
        """
        x = self._mel_time(input_features)  # (B, mel, T)
        lengths = None
        if attention_mask is not None:
            if attention_mask.shape != (x.shape[0], x.shape[2]):
                raise ValueError(
                    f"attention_mask {tuple(attention_mask.shape)} must be a frame-level mask (B, T) = "
                    f"{(x.shape[0], x.shape[2])} for input_features {tuple(input_features.shape)}."
                )
            lengths = attention_mask.sum(-1).long()
        for conv in (self.conv1, self.conv2):
            if lengths is not None:  # zero the padding, so a clip encodes the same alone or in a padded batch
                x = x * (torch.arange(x.shape[2], device=x.device) < lengths[:, None]).unsqueeze(1).to(
                    x.dtype
                )
                lengths = self._conv_output_lengths(lengths)
            x = F.gelu(conv(x))
        x = x.transpose(1, 2)  # (B, T', H)
        x = self.dropout(x + _sinusoids(x.shape[1], x.shape[2], device=x.device, dtype=x.dtype))
        padding = None if lengths is None else torch.arange(x.shape[1], device=x.device) >= lengths[:, None]
        states = [x]
        for layer in self.layers:
            x = layer(x, src_key_padding_mask=padding)
            states.append(x)
        x = self.layer_norm(x)
        states[-1] = x
        return self._output(x, states, output_hidden_states, return_dict)
