"""Data: loading into one standard shape (:class:`ClassificationData`), labels, audio decoding, example keys.

Batch collators live with the encoders that own the processor (:mod:`hftl.encoders`).
"""

from __future__ import annotations

from hftl.data.audio import crop_or_pad, decode_audio
from hftl.data.augment import AudioAugment, AudioAugmentConfig
from hftl.data.blitzer import read_blitzer_domain
from hftl.data.episodes import Episode, EpisodeConfig, EpisodeDataset, EpisodeSampler
from hftl.data.filters import RowFilter
from hftl.data.keys import EXAMPLE_KEY, EpochKeySampler, KeyedDataset, KeyedStream, with_example_keys
from hftl.data.label_space import LabelSpace
from hftl.data.lengths import audio_lengths, text_lengths
from hftl.data.loading import ClassificationData
from hftl.data.pairs import build_pairs, build_triplets, sample_per_class
from hftl.data.spec import ClassificationSplits, DataSpec

__all__ = [
    "EXAMPLE_KEY",
    "AudioAugment",
    "AudioAugmentConfig",
    "ClassificationData",
    "ClassificationSplits",
    "DataSpec",
    "Episode",
    "EpisodeConfig",
    "EpisodeDataset",
    "EpisodeSampler",
    "EpochKeySampler",
    "KeyedDataset",
    "KeyedStream",
    "LabelSpace",
    "RowFilter",
    "audio_lengths",
    "build_pairs",
    "build_triplets",
    "crop_or_pad",
    "decode_audio",
    "read_blitzer_domain",
    "sample_per_class",
    "text_lengths",
    "with_example_keys",
]
