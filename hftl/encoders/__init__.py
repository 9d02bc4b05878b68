"""Encoders: one interface over transformers models for text, audio and vision.

Every encoder exposes ``out_features``, ``processor``, ``collator(train=...)`` and returns an
:class:`EncoderOutput` (pooled vector, chosen-layer states, mask). Each modality's collator (the batch
function that runs its processor) lives with its encoder: :class:`TextCollator`, :class:`AudioCollator`,
:class:`ImageCollator`.
"""

from hftl.encoders.audio import AudioEncoder
from hftl.encoders.audio_collator import AudioCollator
from hftl.encoders.base import OFFLINE_MIRRORS, Encoder, EncoderOutput, resolve_model_path
from hftl.encoders.pooling import Pooling
from hftl.encoders.scratch import LeNetConfig, SpeechCNNTransformerConfig
from hftl.encoders.text import TextCollator, TextEncoder
from hftl.encoders.tiny import save_tiny_encoder
from hftl.encoders.vision import ImageCollator, VisionEncoder

__all__ = [
    "OFFLINE_MIRRORS",
    "AudioCollator",
    "AudioEncoder",
    "Encoder",
    "EncoderOutput",
    "ImageCollator",
    "LeNetConfig",
    "Pooling",
    "SpeechCNNTransformerConfig",
    "TextCollator",
    "TextEncoder",
    "VisionEncoder",
    "resolve_model_path",
    "save_tiny_encoder",
]
