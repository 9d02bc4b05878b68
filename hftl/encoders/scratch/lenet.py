"""LeNet for small grayscale digits (ADDA / TLlib ``lenet``), as a transformers model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig
from transformers.modeling_outputs import BaseModelOutput

from hftl.encoders.scratch.base import _positive_int, _probability, _raise_problems, _ScratchModel


class LeNetConfig(PretrainedConfig):
    """LeNet for small grayscale digits (ADDA / TLlib ``lenet``).

    conv5(``conv_channels[0]``) -> max-pool 2 -> ReLU -> conv5(``conv_channels[1]``) -> Dropout2d ->
    max-pool 2 -> ReLU -> flatten -> Linear(``hidden_size``) -> ReLU -> Dropout. A 28x28 input gives a
    50x4x4 map, i.e. 800 inputs to the linear layer.

    Args:
        num_channels: input channels (1 for grayscale digits).
        image_size: input height and width in pixels (at least 16); the processor must resize to it.
        hidden_size: width of the output features.
        conv_channels: output channels of the two convolutions.
        kernel_size: size of both convolution kernels.
        dropout: drop probability of the Dropout2d after the second convolution and of the final Dropout.

    Raises:
        ConfigError: for a value outside the allowed ones (all problems at once).
    """

    model_type = "hftl-lenet"

    num_channels: int = 1
    image_size: int = 28
    hidden_size: int = 500
    conv_channels: list[int] | tuple[int, ...] = (20, 50)
    kernel_size: int = 5
    dropout: float | int = 0.5

    def __post_init__(self, **kwargs):
        channels, k = self.conv_channels, self.kernel_size
        checks = [
            (f, _positive_int(getattr(self, f)), "a positive integer")
            for f in ("num_channels", "hidden_size")
        ]
        checks += [
            ("kernel_size", _positive_int(k), "a positive integer (5 in LeNet)"),
            ("conv_channels", isinstance(channels, list | tuple) and len(channels) == 2
             and all(map(_positive_int, channels)), "two positive integers, e.g. [20, 50]"),
            ("dropout", _probability(self.dropout), "a number in [0, 1)"),
        ]  # fmt: skip
        if _positive_int(k):  # two valid convolutions and two 2x2 poolings must leave at least 1x1
            ok = _positive_int(self.image_size) and self.feature_map_size >= 1
            checks.append(("image_size", ok, f"an integer >= {3 * k + 1} for kernel_size {k} (28 for MNIST)"))
        _raise_problems(self, checks)
        self.conv_channels = list(channels)
        super().__post_init__(**kwargs)

    @property
    def feature_map_size(self) -> int:
        """Side of the map after the second pooling: 28 -> conv 24 -> pool 12 -> conv 8 -> pool 4."""
        return ((self.image_size - self.kernel_size + 1) // 2 - self.kernel_size + 1) // 2

    @property
    def num_hidden_layers(self) -> int:
        """0: ``hidden_states`` holds only the output features, so ``encoder.layer`` may be -1 or 0."""
        return 0


class LeNetModel(_ScratchModel):
    """The LeNet feature extractor; see :class:`LeNetConfig`.

    Returns ``last_hidden_state`` of shape ``(B, 1, hidden_size)``: one position holding the feature
    vector, so every :class:`hftl.encoders.Pooling` (mean, cls, stats, attention) works on it (``stats``
    pooling then has a zero std half).

    Example:
        >>> model = LeNetModel(LeNetConfig())
        >>> model(pixel_values=torch.zeros(2, 1, 28, 28)).last_hidden_state.shape
        torch.Size([2, 1, 500])
    """

    config_class = LeNetConfig
    base_model_prefix = "lenet"
    main_input_name = "pixel_values"

    def __init__(self, config: LeNetConfig):
        super().__init__(config)
        c1, c2 = config.conv_channels
        self.conv1 = nn.Conv2d(config.num_channels, c1, kernel_size=config.kernel_size)
        self.conv2 = nn.Conv2d(c1, c2, kernel_size=config.kernel_size)
        self.dropout2d = nn.Dropout2d(config.dropout)
        self.fc = nn.Linear(c2 * config.feature_map_size**2, config.hidden_size)
        self.dropout = nn.Dropout(config.dropout)
        self.post_init()

    def forward(
        self,
        pixel_values: torch.Tensor,
        output_hidden_states: bool | None = None,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BaseModelOutput | tuple:
        """Features of ``pixel_values`` ``(B, num_channels, image_size, image_size)``.

        ``hidden_states`` (when asked) is a one-element tuple holding ``last_hidden_state``. Other
        keyword arguments (e.g. ``output_attentions``) are accepted and ignored, as in transformers' CNNs.
        """
        expected = (self.config.num_channels, self.config.image_size, self.config.image_size)
        if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
            raise ValueError(
                f"LeNetModel expects pixel_values of shape (B, {', '.join(map(str, expected))}), got "
                f"{tuple(pixel_values.shape)}: make the image processor resize to `image_size` = "
                f"{self.config.image_size} with {self.config.num_channels} channel(s) (image_mean of that length)."
            )
        x = F.relu(F.max_pool2d(self.conv1(pixel_values), 2))
        x = F.relu(F.max_pool2d(self.dropout2d(self.conv2(x)), 2))
        x = self.dropout(F.relu(self.fc(x.flatten(1))))
        last = x.unsqueeze(1)  # (B, 1, hidden_size): one position
        return self._output(last, [last], output_hidden_states, return_dict)
