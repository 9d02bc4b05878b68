"""Encoders: one interface over transformers models for text, audio and vision.

Every encoder exposes ``out_features``, ``processor``, ``collator(train=...)`` and returns an
:class:`EncoderOutput` (pooled vector, chosen-layer states, mask).
"""

from hftl.encoders.audio import AudioEncoder
from hftl.encoders.base import OFFLINE_MIRRORS, Encoder, EncoderOutput, resolve_model_path
from hftl.encoders.pooling import Pooling
from hftl.encoders.scratch import LeNetConfig, SpeechCNNTransformerConfig
from hftl.encoders.text import TextEncoder
from hftl.encoders.tiny import save_tiny_encoder
from hftl.encoders.vision import VisionEncoder

__all__ = [
    "OFFLINE_MIRRORS",
    "AudioEncoder",
    "Encoder",
    "EncoderOutput",
    "LeNetConfig",
    "Pooling",
    "SpeechCNNTransformerConfig",
    "TextEncoder",
    "VisionEncoder",
    "resolve_model_path",
    "save_tiny_encoder",
]
