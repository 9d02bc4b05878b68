"""Encoder + head = a classifier over text, audio or images."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from hftl.encoders.base import Encoder


@dataclass
class ClassifierOutput:
    """``logits``: ``(B, num_labels)``; ``features``: ``(B, out_features)`` pooled encoder features."""

    logits: torch.Tensor
    features: torch.Tensor


class Classifier(nn.Module):
    """Pools the encoder's states and classifies them with ``head``.

    Args:
        encoder: any :class:`hftl.encoders.Encoder` (adapter already applied).
        head: a module mapping ``(B, encoder.out_features)`` to ``(B, num_labels)``.
        label_names: class names in label-id order.
    """

    def __init__(self, encoder: Encoder, head: nn.Module, label_names: list[str]):
        super().__init__()
        self.encoder, self.head, self.label_names = encoder, head, list(label_names)

    def forward(self, **inputs: torch.Tensor) -> ClassifierOutput:
        features = self.encoder(**inputs).pooled
        return ClassifierOutput(logits=self.head(features), features=features)

    def non_backbone_state_dict(self) -> dict[str, torch.Tensor]:
        """Weights outside the transformers backbone (head, attention pooling): saved as ``head.safetensors``."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("encoder.backbone.")}


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """Returns ``(trainable, total)`` parameter counts."""
    params = list(model.parameters())
    return sum(p.numel() for p in params if p.requires_grad), sum(p.numel() for p in params)
