"""Vision encoders: ``AutoModel`` + ``AutoImageProcessor`` (ViT, ConvNeXt, ResNet, ...), and their collator."""

from __future__ import annotations

from typing import Any

import torch

from hftl.encoders.base import Encoder, with_labels
from hftl.encoders.pooling import PoolingName


class VisionEncoder(Encoder):
    """A transformers image encoder with its image processor.

    CNN backbones (ResNet, ConvNeXt) return feature maps; their spatial positions are pooled like
    tokens, so use ``pooling: mean`` (``cls`` needs a ViT-style class token).
    """

    modality = "image"

    def __init__(self, model: str, *, pooling: PoolingName = "mean", **kwargs: Any):
        super().__init__(model, pooling=pooling, **kwargs)

    @classmethod
    def load_processor(cls, path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(
            path, revision=revision, trust_remote_code=trust_remote_code
        )

    def collator(self, *, train: bool) -> Any:
        return ImageCollator(self.processor)


class ImageCollator:
    """Runs the image processor on ``image``, converting to the channel count it expects.

    The expected count is the processor's ``num_channels`` if it has one, else the length of its
    ``image_mean`` (3 when unknown): grayscale digits become RGB for an ImageNet ViT.

    Args:
        image_processor: a transformers image processor.

    Returns (on call):
        ``pixel_values`` shape ``(B, C, H, W)`` and ``labels`` shape ``(B,)``.
    """

    def __init__(self, image_processor):
        self.image_processor = image_processor
        channels = getattr(image_processor, "num_channels", None)
        mean = getattr(image_processor, "image_mean", None)
        if channels is None and isinstance(mean, list | tuple):
            channels = len(mean)
        self.mode = "L" if channels == 1 else "RGB"

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        images = [ex["image"] for ex in examples]
        images = [
            im.convert(self.mode) if getattr(im, "mode", self.mode) != self.mode else im for im in images
        ]
        return with_labels(self.image_processor(images, return_tensors="pt"), examples)
