"""The ``train:`` section of every recipe config."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


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
    mixed_precision: Literal["no", "fp16", "bf16"] = field(
        default="no", metadata={"help": "Autocast precision (accelerate). `bf16` on recent GPUs/CPUs."}
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
    num_workers: int = field(default=0, metadata={"help": "DataLoader worker processes."})
    log_every_steps: int = field(default=20, metadata={"help": "Loss/LR logging period in steps."})
    report_to: list[str] = field(
        default_factory=list, metadata={"help": "Trackers for accelerate: tensorboard, trackio, wandb, ..."}
    )
    cpu: bool = field(default=False, metadata={"help": "Train on CPU even when a GPU is present."})

    def __post_init__(self) -> None:
        from hftl.errors import ConfigError

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
        if not 0.0 <= self.warmup_ratio < 1.0:
            problems.append(f"`train.warmup_ratio` must be in [0, 1); got {self.warmup_ratio}")
        if problems:
            raise ConfigError(problems)
