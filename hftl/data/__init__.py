"""Data: loading into one standard shape (:class:`ClassificationData`), audio decoding, batch collators."""

from __future__ import annotations

from hftl.data.audio import crop_or_pad, decode_audio
from hftl.data.augment import AudioAugment, AudioAugmentConfig
from hftl.data.blitzer import read_blitzer_domain
from hftl.data.collate import (
    AudioCollator,
    EpochKeySampler,
    ImageCollator,
    KeyedDataset,
    TextCollator,
    audio_lengths,
    text_lengths,
    with_example_keys,
)
from hftl.data.episodes import Episode, EpisodeConfig, EpisodeDataset, EpisodeSampler
from hftl.data.loading import ClassificationData
from hftl.data.pairs import build_pairs, build_triplets, sample_per_class

__all__ = [
    "Episode",
    "EpisodeConfig",
    "EpisodeDataset",
    "EpisodeSampler",
    "build_pairs",
    "build_triplets",
    "sample_per_class",
    "AudioAugment",
    "AudioAugmentConfig",
    "AudioCollator",
    "EpochKeySampler",
    "KeyedDataset",
    "audio_lengths",
    "with_example_keys",
    "ClassificationData",
    "ImageCollator",
    "TextCollator",
    "crop_or_pad",
    "decode_audio",
    "read_blitzer_domain",
    "text_lengths",
]
