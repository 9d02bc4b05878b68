"""The ``selection:`` and ``report:`` sections of the adapt recipe."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal


@dataclass
class SelectionConfig:
    """How the adapt recipe picks its checkpoint without target labels (``selection:``)."""

    criterion: Literal["im", "snd", "dev", "source_val_acc", "bnm", "class_ami"] = field(
        default="im",
        metadata={
            "help": "im: information maximization (confident and diverse target predictions; the default, "
            "since snd rewards collapsed predictions); snd: soft neighborhood density (Saito et al. 2021); "
            "dev: deep embedded validation (You et al. 2019); source_val_acc: accuracy on held-out source; "
            "bnm: batch nuclear norm of source-val + target predictions (Cui et al. 2020, as a validator in "
            "Musgrave et al. 2022); class_ami: do k-means clusters of source-val + target features match "
            "the labels (Musgrave et al. 2022). None of them reads target labels; "
            "benchmarks/results/selection.md measures how well each picks."
        },
    )
    max_target_samples: int = field(
        default=1000,
        metadata={"help": "Unlabelled target examples scored at each evaluation (seeded subset)."},
    )
    max_source_samples: int = field(
        default=1000, metadata={"help": "Source training examples used by `dev` (seeded subset)."}
    )


@dataclass
class ReportConfig:
    """Baselines and diagnostics of the adapt recipe (``report:``)."""

    baselines: list[Literal["source_only", "target_oracle"]] = field(
        default_factory=lambda: ["source_only", "target_oracle"],
        metadata={"help": "Baselines trained in the same run with the same encoder, adapter and budget."},
    )
    diagnostics: bool = field(
        default=True,
        metadata={
            "help": "Proxy A-distance before/after adaptation and a source-vs-target feature plot (PNG)."
        },
    )
    plot: Literal["tsne", "pca"] = field(default="pca", metadata={"help": "Projection of the feature plot."})
    card: bool = field(
        default=False,
        metadata={
            "help": "Write the model card (model/README.md, with plots) at the end, as `hftl card` does."
        },
    )
