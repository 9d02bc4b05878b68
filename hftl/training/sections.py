"""Config sections of the distill, multitask and fewshot recipes (``distill:``, ``teacher:``, ``multitask:``,
``lwf:``, ``fewshot:``).

They live in the library, like :class:`~hftl.training.TrainConfig`, so that everything reading a run's
settings (the recipes, ``hftl validate``, the model card) shares one definition of each field and its
default without importing a recipe script.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from hftl.errors import ConfigError

__all__ = ["DistillConfig", "FewShotConfig", "LwFConfig", "MultitaskConfig", "TeacherConfig"]


@dataclass
class TeacherConfig:
    """Where the teacher comes from (``teacher:``)."""

    path: str = field(
        metadata={"help": "A saved hftl model (run output dir or its model/), e.g. a LoRA MiniLM."}
    )
    finetune_config: str | None = field(
        default=None,
        metadata={"help": "When `path` holds no model yet: train it first with this `finetune` config."},
    )
    finetune_overrides: list[str] = field(
        default_factory=list, metadata={"help": "Overrides for that teacher run, e.g. [train.max_steps=500]."}
    )


@dataclass
class DistillConfig:
    """How the student is built and fed (``distill:``)."""

    student_layers: list[int] | None = field(
        default=None,
        metadata={
            "help": "Keep only these transformer layers of the student encoder (0-based), e.g. [0, 5]."
        },
    )
    init_from_teacher: bool = field(
        default=True,
        metadata={"help": "Start the student from the teacher's (LoRA-merged) encoder and head weights; "
                  "needs the same architecture before `student_layers` cuts it."},
    )  # fmt: skip
    cache_teacher_logits: bool = field(
        default=True,
        metadata={"help": "Run the teacher once over the training data and keep its logits in memory "
                  "(off: the teacher runs on every batch; hints always need that)."},
    )  # fmt: skip
    speed_batch_size: int = field(default=64, metadata={"help": "Test examples in the timed batch."})
    speed_repeats: int = field(default=20, metadata={"help": "Timed forward passes per model (median kept)."})

    def __post_init__(self) -> None:
        if self.student_layers is not None and (not self.student_layers or min(self.student_layers) < 0):
            raise ConfigError(
                f"`distill.student_layers` is {self.student_layers}; give non-empty 0-based layer indices or null"
            )
        if self.speed_batch_size < 1 or self.speed_repeats < 1:
            raise ConfigError("`distill.speed_batch_size` and `distill.speed_repeats` must be >= 1")


@dataclass
class MultitaskConfig:
    """Task sampling (``multitask:``)."""

    sampling: Literal["proportional", "round_robin"] = field(
        default="proportional",
        metadata={"help": "`proportional`: every batch of every task once per epoch, tasks shuffled in "
                  "proportion to their size; `round_robin`: tasks in turn, smaller ones cycling."},
    )  # fmt: skip


@dataclass
class LwFConfig:
    """Learning without forgetting (``lwf:``; needs ``init_from``)."""

    task: str = field(default="old", metadata={"help": "Name given to the init model's task (its head)."})
    weight: float = field(default=1.0, metadata={"help": "λ of the old-output term; 0 = plain fine-tuning."})
    temperature: float = field(default=2.0, metadata={"help": "KD temperature (Li & Hoiem use 2)."})
    baseline: bool = field(
        default=False,
        metadata={"help": "Also train plain fine-tuning (λ = 0) and report how much it forgets."},
    )

    def __post_init__(self) -> None:
        if self.weight < 0 or self.temperature <= 0:
            raise ConfigError(
                f"`lwf.weight` must be >= 0 and `lwf.temperature` > 0; got {self.weight}, {self.temperature}"
            )


@dataclass
class FewShotConfig:
    """The ``fewshot:`` section: which examples, how many pairs, and the stage-2 head."""

    shots_per_class: int | None = field(
        default=8,
        metadata={
            "help": "Labelled examples drawn per class from the train split (seeded by `seed`, "
            "stratified). null uses the whole train split (e.g. a file that already holds the shots)."
        },
    )
    num_iterations: int = field(
        default=20,
        metadata={
            "help": "SetFit's rounds of pair generation: each example gets one positive and one negative "
            "pair per round (pairs), anchors one triplet (triplets) or is seen once (labeled). 0 skips "
            "stage 1: the head is fit on the untouched encoder (a frozen probe)."
        },
    )
    head_c: float = field(
        default=1.0,
        metadata={"help": "Inverse L2 strength `C` of the logistic regression (scikit-learn default 1.0)."},
    )
    head_max_iter: int = field(
        default=1000, metadata={"help": "Iterations of the logistic regression's L-BFGS solver."}
    )

    def __post_init__(self) -> None:
        problems = []
        if self.shots_per_class is not None and self.shots_per_class < 1:
            problems.append(
                f"`fewshot.shots_per_class` is {self.shots_per_class}; allowed: >= 1, or null for the "
                "whole train split."
            )
        if self.num_iterations < 0:
            problems.append(
                f"`fewshot.num_iterations` is {self.num_iterations}; allowed: >= 0 (0 = no stage 1)."
            )
        if self.head_c <= 0:
            problems.append(
                f"`fewshot.head_c` is {self.head_c}; allowed: > 0 (larger = weaker regularization)."
            )
        if self.head_max_iter < 1:
            problems.append(f"`fewshot.head_max_iter` is {self.head_max_iter}; allowed: >= 1.")
        if problems:
            raise ConfigError(problems)
