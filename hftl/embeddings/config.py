"""The ``cache:`` and ``train:`` sections of the embed recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hftl.errors import ConfigError


@dataclass
class CacheConfig:
    """Where and how frozen-encoder features are cached (``cache:``)."""

    dir: str | None = field(
        default=None,
        metadata={"help": "Cache folder; null = $HFTL_CACHE, else ~/.cache/hftl/features."},
    )
    enabled: bool = field(
        default=True,
        metadata={
            "help": "Read and write the on-disk cache. false: features are still computed once per run and "
            "kept in memory, but never stored or reused."
        },
    )
    encode_batch_size: int = field(default=64, metadata={"help": "Examples per frozen-encoder forward pass."})
    max_states_gb: float = field(
        default=4.0,
        metadata={
            "help": "Context level: per-layer token states are kept (in memory and on disk) only when their "
            "estimated size is below this; above it the frozen encoder runs under no_grad at every step."
        },
    )
    states_dtype: Literal["float16", "float32"] = field(
        default="float16", metadata={"help": "Storage type of cached per-layer token states."}
    )
    num_workers: int = field(default=0, metadata={"help": "DataLoader workers while encoding."})

    def __post_init__(self) -> None:
        problems = []
        if self.encode_batch_size < 1:
            problems.append(f"`cache.encode_batch_size` must be >= 1; got {self.encode_batch_size}")
        if self.max_states_gb < 0:
            problems.append(
                f"`cache.max_states_gb` must be >= 0 (0 = never keep states); got {self.max_states_gb}"
            )
        if self.num_workers < 0:
            problems.append(f"`cache.num_workers` must be >= 0; got {self.num_workers}")
        if problems:
            raise ConfigError(problems)


@dataclass
class HeadTrainConfig:
    """The fast training loop on cached features (``train:`` of the embed recipe).

    Batches are drawn straight from feature tensors on the device: no DataLoader, no collation, no
    encoder pass (except context level above ``cache.max_states_gb``).
    """

    epochs: int = field(default=10, metadata={"help": "Passes over the training split."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps to run; overrides `epochs` when set."}
    )
    batch_size: int = field(default=256, metadata={"help": "Examples per optimizer step."})
    eval_batch_size: int = field(default=1024, metadata={"help": "Examples per evaluation forward pass."})
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = field(
        default="cosine", metadata={"help": "transformers.get_scheduler name."}
    )
    warmup_ratio: float = field(default=0.05, metadata={"help": "Fraction of steps with linear warm-up."})
    max_grad_norm: float | None = field(default=None, metadata={"help": "Gradient clipping; null = off."})
    eval_every_steps: int | None = field(
        default=None, metadata={"help": "Validate every N steps; null = at the end of each epoch."}
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after N evaluations without improvement; null = never."}
    )
    metric_for_best: Literal["accuracy", "macro_f1", "loss"] = field(
        default="accuracy", metadata={"help": "Validation metric that selects the best weights."}
    )
    load_best_at_end: bool = field(
        default=True, metadata={"help": "Restore the best validation weights at the end."}
    )
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        default="no",
        metadata={"help": "Autocast precision of the frozen-encoder passes (part of the cache key)."},
    )
    cpu: bool = field(default=False, metadata={"help": "Run on CPU even when a GPU is present."})

    def __post_init__(self) -> None:
        problems = []
        for name in ("epochs", "batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"`train.{name}` must be >= 1; got {getattr(self, name)}")
        for name in ("max_steps", "eval_every_steps", "early_stopping_patience"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"`train.{name}` must be >= 1 or null; got {value}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"`train.warmup_ratio` must be in [0, 1); got {self.warmup_ratio}")
        if problems:
            raise ConfigError(problems)
