"""The ``train:`` section of every recipe config."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal


@dataclass
class LayerwiseConfig:
    """Discriminative learning rates and gradual unfreezing (``train.layerwise:``).

    Depth counts from the top: the head (and every module outside the encoder backbone) is depth 0 and
    trains at the optimizer's ``lr``; the backbone's top numbered layer (``layer.N`` / ``layers.N`` /
    ``blocks.N`` ...) is depth 1, the next one down depth 2, ...; parameters before the first layer
    (embeddings, a speech encoder's convolutional feature extractor) are the deepest group. A group at
    depth ``d`` trains at ``lr × lr_decay ** d`` (Howard & Ruder 2018, "Universal Language Model
    Fine-tuning for Text Classification"). With gradual unfreezing only depth 0 trains at first; every
    ``unfreeze_every_steps`` optimizer steps (or epochs) the next group down joins, until all train.
    The defaults change nothing.

    Example:
        ``train.layerwise.lr_decay=0.8 train.layerwise.unfreeze_every_epochs=1``
    """

    lr_decay: float = field(
        default=1.0,
        metadata={
            "help": "Learning-rate factor per layer from the head down, in (0, 1]: depth d trains at "
            "lr × lr_decay^d. 1 = one learning rate for all (ULMFiT uses 1/2.6 ≈ 0.38; BERT fine-tuning "
            "0.65-0.95)."
        },
    )
    unfreeze_every_steps: int | None = field(
        default=None,
        metadata={
            "help": "Gradual unfreezing: start with only the head trainable and unfreeze the next layer "
            "down every N optimizer steps. null = everything trains from the start."
        },
    )
    unfreeze_every_epochs: int | None = field(
        default=None,
        metadata={"help": "Like `unfreeze_every_steps`, counted in epochs (ULMFiT: 1)."},
    )

    def __post_init__(self) -> None:
        from hftl.errors import ConfigError

        problems = []
        if not 0.0 < self.lr_decay <= 1.0:
            problems.append(
                f"`train.layerwise.lr_decay` must be in (0, 1]; got {self.lr_decay}. Use 1 for one "
                "learning rate everywhere, e.g. 0.8 to shrink it by 20 % per layer from the head down."
            )
        for name in ("unfreeze_every_steps", "unfreeze_every_epochs"):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"`train.layerwise.{name}` must be >= 1 or null; got {value}")
        if self.unfreeze_every_steps is not None and self.unfreeze_every_epochs is not None:
            problems.append(
                "`train.layerwise.unfreeze_every_steps` and `train.layerwise.unfreeze_every_epochs` are both "
                "set; keep one of them"
            )
        if problems:
            raise ConfigError(problems)

    @property
    def active(self) -> bool:
        """Whether this section changes training at all (else the recipe builds one parameter group)."""
        return self.lr_decay != 1.0 or self.gradual

    @property
    def gradual(self) -> bool:
        """Whether gradual unfreezing is on."""
        return self.unfreeze_every_steps is not None or self.unfreeze_every_epochs is not None

    def unfreeze_interval(self, steps_per_epoch: int) -> int | None:
        """Optimizer steps between two unfreezings (``None`` when gradual unfreezing is off)."""
        if self.unfreeze_every_epochs is not None:
            return self.unfreeze_every_epochs * max(1, steps_per_epoch)
        return self.unfreeze_every_steps


@dataclass
class TrainConfig:
    """Scalar knobs of the training loop (``train:`` in a recipe config).

    Every field can be overridden on the command line, e.g. ``train.epochs=1``.
    """

    epochs: int = field(default=3, metadata={"help": "Passes over the training split."})
    max_steps: int | None = field(
        default=None, metadata={"help": "Optimizer steps to run; overrides `epochs` when set."}
    )
    batch_size: int = field(default=32, metadata={"help": "Examples per device per micro-batch."})
    eval_batch_size: int | None = field(default=None, metadata={"help": "Defaults to 2 × `batch_size`."})
    gradient_accumulation_steps: int = field(
        default=1, metadata={"help": "Micro-batches per optimizer step."}
    )
    mixed_precision: Literal["auto", "no", "fp16", "bf16"] = field(
        default="auto",
        metadata={
            "help": "Autocast precision (accelerate). `auto`: bf16 on a CUDA GPU that supports it (Ampere "
            "and newer), else `no` (fp32: CPU runs are unchanged); resolved when the Accelerator is built."
        },
    )
    tf32: bool = field(
        default=True,
        metadata={
            "help": "TF32 tensor cores for fp32 matmuls and convolutions on CUDA (Ampere+); no effect on CPU."
        },
    )
    compile: bool = field(
        default=False,
        metadata={
            "help": "torch.compile the model's training forward (the weights are shared with the eager model, "
            "which evaluation and checkpoints keep using). The first steps pay the compilation."
        },
    )
    compile_mode: Literal["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"] = field(
        default="default",
        metadata={
            "help": "torch.compile mode: `default` (fused kernels), `reduce-overhead` (also CUDA graphs: one "
            "launch per step, static shapes, so training batches are padded to `length_buckets`), "
            "`max-autotune` (+ kernel autotuning and CUDA graphs; long compile), `max-autotune-no-cudagraphs`."
        },
    )
    length_buckets: list[int] | None = field(
        default=None,
        metadata={
            "help": "Pad the token dimension of each training batch up to the next of these lengths, e.g. "
            "[32, 64, 128], so a compiled model sees a few fixed shapes. null: pad to the batch's longest "
            "text, or, with `compile` in a CUDA-graph mode, to 16, 32, 48, 64, 96, 128, 192, 256, 384, 512."
        },
    )
    concat_domains: Literal["auto", "on", "off"] = field(
        default="auto",
        metadata={
            "help": "adapt: one forward over the concatenated source + target batch instead of two (half the "
            "kernel launches; same losses). `auto`: on CUDA only; never for encoders with BatchNorm (their "
            "statistics must not mix domains) or methods with their own training step."
        },
    )
    max_grad_norm: float | None = field(default=1.0, metadata={"help": "Gradient clipping; null = off."})
    lr_scheduler: Literal["linear", "cosine", "constant", "constant_with_warmup"] = field(
        default="linear", metadata={"help": "transformers.get_scheduler name."}
    )
    warmup_ratio: float = field(default=0.06, metadata={"help": "Fraction of steps with linear warm-up."})
    eval_every_steps: int | None = field(
        default=None, metadata={"help": "Validate every N optimizer steps; null = at the end of each epoch."}
    )
    save_every_steps: int | None = field(
        default=None,
        metadata={"help": "Write a resumable checkpoint every N steps; null = at each evaluation."},
    )
    keep_last: int = field(default=2, metadata={"help": "Checkpoints kept on disk (older ones are deleted)."})
    resume: bool = field(
        default=True,
        metadata={"help": "Continue from the newest valid checkpoint in `output_dir/checkpoints`."},
    )
    early_stopping_patience: int | None = field(
        default=None, metadata={"help": "Stop after N evaluations without improvement; null = never."}
    )
    metric_for_best: Literal["accuracy", "macro_f1", "loss"] = field(
        default="accuracy", metadata={"help": "Validation metric that selects the best model."}
    )
    load_best_at_end: bool = field(
        default=True, metadata={"help": "Restore the best validation weights at the end."}
    )
    group_by_length: bool = field(
        default=True, metadata={"help": "Batch texts of similar length together (less padding)."}
    )
    num_workers: int | None = field(
        default=None,
        metadata={
            "help": "DataLoader worker processes that collate training batches; null: 2 when training on a "
            "CUDA GPU (the collate then overlaps the step), 0 on CPU (workers would take the step's cores)."
        },
    )
    log_every_steps: int = field(default=20, metadata={"help": "Loss/LR logging period in steps."})
    report_to: list[str] = field(
        default_factory=list, metadata={"help": "Trackers for accelerate: tensorboard, trackio, wandb, ..."}
    )
    cpu: bool = field(default=False, metadata={"help": "Train on CPU even when a GPU is present."})
    layerwise: LayerwiseConfig = field(
        default_factory=LayerwiseConfig,
        metadata={
            "help": "Layer-wise learning rates and gradual unfreezing (`lr_decay`, `unfreeze_every_steps`, "
            "`unfreeze_every_epochs`); see LayerwiseConfig."
        },
    )

    @property
    def evaluation_batch_size(self) -> int:
        """Examples per evaluation batch: ``eval_batch_size``, else twice ``batch_size`` (no gradients kept).

        Example:
            >>> TrainConfig(batch_size=16).evaluation_batch_size, TrainConfig(eval_batch_size=8).evaluation_batch_size
            (32, 8)
        """
        return self.eval_batch_size or 2 * self.batch_size

    def __post_init__(self) -> None:
        from hftl.errors import ConfigError

        if self.layerwise is None:
            self.layerwise = LayerwiseConfig()
        elif isinstance(self.layerwise, Mapping):  # a YAML section
            from hftl.config import to_dataclass

            self.layerwise = to_dataclass(LayerwiseConfig, self.layerwise, key="train.layerwise")
        problems = []
        for name in ("epochs", "batch_size", "gradient_accumulation_steps", "keep_last", "log_every_steps"):
            if getattr(self, name) < 1:
                problems.append(f"`train.{name}` must be >= 1; got {getattr(self, name)}")
        for name in (
            "max_steps",
            "eval_every_steps",
            "save_every_steps",
            "early_stopping_patience",
            "eval_batch_size",
        ):
            value = getattr(self, name)
            if value is not None and value < 1:
                problems.append(f"`train.{name}` must be >= 1 or null; got {value}")
        if self.num_workers is not None and self.num_workers < 0:
            problems.append(f"`train.num_workers` must be >= 0 or null; got {self.num_workers}")
        if self.length_buckets is not None and (
            not self.length_buckets or any(int(b) < 1 for b in self.length_buckets)
        ):
            problems.append(
                f"`train.length_buckets` must be a non-empty list of lengths >= 1 or null; got {self.length_buckets}"
            )
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"`train.warmup_ratio` must be in [0, 1); got {self.warmup_ratio}")
        if problems:
            raise ConfigError(problems)
