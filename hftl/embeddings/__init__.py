"""Embedding transfer: heads trained on cached features of a frozen encoder.

* Sentence level: pooled vectors of any :mod:`hftl.encoders` encoder, computed once and cached on disk
  (:class:`FeatureCache`, keyed by encoder, weights, revision, pooling, layer and data fingerprint).
* Context level: :class:`ContextTextEncoder` / :class:`ContextAudioEncoder` read every hidden layer
  through a learned :class:`ScalarMix` and a token-level :class:`ContextPooler`; their per-layer states
  are cached where memory allows.

The ``embed`` recipe (``hftl run embed``) drives both; see ``docs/embeddings.md``.
"""

from hftl.embeddings.cache import (
    FeatureCache,
    cache_key,
    cached_pooled,
    cached_states,
    default_cache_dir,
    weights_fingerprint,
)
from hftl.embeddings.config import CacheConfig, HeadTrainConfig
from hftl.embeddings.encoders import ContextAudioEncoder, ContextTextEncoder
from hftl.embeddings.features import (
    LiveStates,
    PooledFeatures,
    TokenStates,
    encode_pooled,
    encode_states,
)
from hftl.embeddings.heads import ContextPooler
from hftl.embeddings.scalar_mix import ScalarMix
from hftl.embeddings.train import EmbeddingModel, FitResult, fit, predict

__all__ = [
    "CacheConfig",
    "ContextAudioEncoder",
    "ContextPooler",
    "ContextTextEncoder",
    "EmbeddingModel",
    "FeatureCache",
    "FitResult",
    "HeadTrainConfig",
    "LiveStates",
    "PooledFeatures",
    "ScalarMix",
    "TokenStates",
    "cache_key",
    "cached_pooled",
    "cached_states",
    "default_cache_dir",
    "encode_pooled",
    "encode_states",
    "fit",
    "predict",
    "weights_fingerprint",
]
