"""Data: loading into one standard shape (:class:`ClassificationData`), audio decoding, example keys.

Batch collators live with the encoders that own the processor (:mod:`hftl.encoders`).
"""

from __future__ import annotations

from hftl.data.audio import crop_or_pad, decode_audio
from hftl.data.augment import AudioAugment, AudioAugmentConfig
from hftl.data.blitzer import read_blitzer_domain
from hftl.data.episodes import Episode, EpisodeConfig, EpisodeDataset, EpisodeSampler
from hftl.data.keys import EXAMPLE_KEY, EpochKeySampler, KeyedDataset, KeyedStream, with_example_keys
from hftl.data.lengths import audio_lengths, text_lengths
from hftl.data.loading import ClassificationData
from hftl.data.pairs import build_pairs, build_triplets, sample_per_class

__all__ = [
    "EXAMPLE_KEY",
    "KeyedStream",
    "Episode",
    "EpisodeConfig",
    "EpisodeDataset",
    "EpisodeSampler",
    "build_pairs",
    "build_triplets",
    "sample_per_class",
    "AudioAugment",
    "AudioAugmentConfig",
    "EpochKeySampler",
    "KeyedDataset",
    "audio_lengths",
    "with_example_keys",
    "ClassificationData",
    "crop_or_pad",
    "decode_audio",
    "read_blitzer_domain",
    "text_lengths",
]
