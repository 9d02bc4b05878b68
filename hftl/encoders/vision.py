"""Vision encoders: ``AutoModel`` + ``AutoImageProcessor`` (ViT, ConvNeXt, ResNet, ...)."""

from __future__ import annotations

from typing import Any

from hftl.encoders.base import Encoder
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
        from hftl.data import ImageCollator

        return ImageCollator(self.processor)
