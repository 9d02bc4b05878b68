"""Full fine-tuning and the frozen-encoder probe."""

from __future__ import annotations

from typing import ClassVar

from hftl.encoders.base import Encoder


class Adapter:
    """Base class: ``apply`` prepares an encoder's weights for training, in place.

    ``kind`` is written to the output dir (``hftl_model.json``) so loading knows what was saved:
    ``full`` (a complete transformers model), ``frozen`` (only the head), ``peft`` (adapter files).
    """

    kind: ClassVar[str] = "full"

    def apply(self, encoder: Encoder) -> Encoder:
        return encoder


class FullFinetune(Adapter):
    """Train every encoder weight (except modules the encoder config freezes)."""

    kind = "full"


class Frozen(Adapter):
    """Keep the encoder fixed and train only the head: a linear or MLP probe on pooled features.

    The encoder also runs in eval mode (no dropout), so features are deterministic.
    """

    kind = "frozen"

    def apply(self, encoder: Encoder) -> Encoder:
        encoder.freeze()
        encoder.frozen = True  # Encoder.train() keeps a frozen backbone in eval mode
        encoder.backbone.eval()
        return encoder
