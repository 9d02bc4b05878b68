"""Data: loading into one standard shape (:class:`ClassificationData`), audio decoding, batch collators."""

from __future__ import annotations

from hftl.data.audio import crop_or_pad, decode_audio
from hftl.data.blitzer import read_blitzer_domain
from hftl.data.collate import AudioCollator, ImageCollator, TextCollator, text_lengths
from hftl.data.loading import ClassificationData

__all__ = [
    "AudioCollator",
    "ClassificationData",
    "ImageCollator",
    "TextCollator",
    "crop_or_pad",
    "decode_audio",
    "read_blitzer_domain",
    "text_lengths",
]
