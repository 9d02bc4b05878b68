"""Helpers shared by the test modules: data writers, recipe configs, a tracker spy.

Test modules import these (``from helpers import ...``; pytest puts ``tests/`` on ``sys.path``) and never
each other, so a test file can be run, moved or deleted on its own. Fixtures every test uses are in
``conftest.py``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pytest
import yaml
from accelerate import tracking
from accelerate.tracking import GeneralTracker
from accelerate.utils import LoggerType

REPO = Path(__file__).resolve().parents[1]
# Two sentiment classes with disjoint words: a tiny model separates them within a few steps.
WORDS = {"positive": "good great fine nice love", "negative": "bad awful poor hate boring"}


def dump(cfg: dict, path: Path) -> str:
    """Writes ``cfg`` as YAML to ``path``; returns the path as ``--config`` takes it."""
    path.write_text(yaml.safe_dump(cfg))
    return str(path)


def write_text_csv(path: Path, n: int, seed: int) -> Path:
    """``n`` rows ``text,label`` alternating negative/positive, 2-5 words of the class each (seeded)."""
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        words = rng.choice(WORDS[label].split(), size=rng.integers(2, 6))
        rows.append(f"the movie was {' '.join(words)},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def text_files(tmp_path: Path, *, train: int = 48, validation: int = 16, test: int = 16) -> dict[str, str]:
    """Train, validation and test files of :func:`write_text_csv` (seeds 0, 1, 2)."""
    sizes = {"train": train, "validation": validation, "test": test}
    names = {"train": "train.csv", "validation": "val.csv", "test": "test.csv"}
    return {s: str(write_text_csv(tmp_path / names[s], n, seed)) for seed, (s, n) in enumerate(sizes.items())}


def text_encoder(model: str, *, max_length: int = 16) -> dict[str, Any]:
    """A ``TextEncoder`` node for a tiny model directory."""
    return {"_component_": "hftl.encoders.TextEncoder", "model": model, "max_length": max_length}


def base_config(encoder: dict, data: dict, out: Path, **train: Any) -> dict:
    """A finetune config: full fine-tuning, a linear head, AdamW, 2 epochs of batch 8 (``train`` overrides)."""
    return {
        "recipe": "finetune",
        "output_dir": str(out),
        "seed": 0,
        "encoder": encoder,
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.0},
        "data": {"_component_": "hftl.data.ClassificationData", **data},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 8, "log_every_steps": 2, **train},
    }


# -- fewshot -------------------------------------------------------------------------------------------------
def fewshot_csv(path: Path, n: int, seed: int) -> str:
    """``n`` rows alternating negative/positive with three words of the class each (seeded)."""
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        rows.append(f"the movie was {' '.join(rng.choice(WORDS[label].split(), size=3))},{label}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def fewshot_config(tmp_path: Path, encoder: dict, data: dict, **over: Any) -> dict:
    """A fewshot config: 4 shots per class, 2 pair rounds, cosine-similarity loss (``over`` replaces keys)."""
    cfg = {
        "recipe": "fewshot",
        "output_dir": str(tmp_path / "out"),
        "seed": 0,
        "encoder": encoder,
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.0},
        "loss": {"_component_": "hftl.losses.CosineSimilarityLoss"},
        "data": {"_component_": "hftl.data.ClassificationData", "validation_size": 0, **data},
        "fewshot": {"shots_per_class": 4, "num_iterations": 2},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 4, "log_every_steps": 1},
    }
    return cfg | over


# -- multitask -----------------------------------------------------------------------------------------------
SENTIMENT = WORDS
# A new task over the old task's vocabulary, orthogonal to sentiment: fine-tuning for it moves the features
# the sentiment head reads.
STRENGTH = {"strong": "great love awful hate", "mild": "good fine nice poor boring bad"}
TOPIC = {"sport": "ball goal team match", "music": "song band guitar drum", "food": "pizza bread soup cake"}


def write_task_csv(path: Path, words: dict[str, str], n: int, seed: int) -> Path:
    """``n`` rows cycling through the classes of ``words``, 2-4 words of the class each (seeded)."""
    rng = np.random.default_rng(seed)
    names, rows = list(words), ["text,label"]
    for i in range(n):
        label = names[i % len(names)]
        rows.append(f"this is {' '.join(rng.choice(words[label].split(), size=rng.integers(2, 5)))},{label}")
    path.write_text("\n".join(rows) + "\n")
    return path


def task_data(tmp_path: Path, name: str, words: dict[str, str], n: int = 48) -> dict:
    """A ``ClassificationData`` node over train/validation/test files of :func:`write_task_csv`."""
    files = {
        split: str(write_task_csv(tmp_path / f"{name}_{split}.csv", words, k, seed))
        for split, k, seed in (("train", n, 0), ("validation", 12, 1), ("test", 12, 2))
    }
    return {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": files}


def multitask_config(tmp_path: Path, model: str) -> dict:
    """Sentiment and topic tasks on one tiny encoder, round-robin sampling, 3 epochs of batch 8."""
    head = {"_component_": "hftl.models.LinearHead", "dropout": 0.0}
    return {
        "recipe": "multitask",
        "output_dir": str(tmp_path / "mt"),
        "seed": 0,
        "encoder": text_encoder(model),
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "tasks": {
            "sentiment": {"data": task_data(tmp_path, "sentiment", SENTIMENT), "head": head, "weight": 1.0},
            "topic": {"data": task_data(tmp_path, "topic", TOPIC), "head": head, "weight": 2.0},
        },
        "multitask": {"sampling": "round_robin"},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 4e-3},
        "train": {"epochs": 3, "batch_size": 8, "log_every_steps": 2},
    }


# -- distill -------------------------------------------------------------------------------------------------
def distill_config(tmp_path: Path, model: str) -> dict:
    """A distill config whose LoRA teacher is trained first (``teacher.finetune_config``), one-layer student."""
    files = text_files(tmp_path)
    unlabeled = write_text_csv(tmp_path / "unlabeled.csv", 24, 3)
    enc = text_encoder(model)
    data = {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": files}
    teacher = {
        "recipe": "finetune", "output_dir": str(tmp_path / "teacher"), "seed": 0, "encoder": enc,
        "adapter": {"_component_": "hftl.adapters.Lora", "r": 4}, "data": data,
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.0},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "train": {"epochs": 3, "batch_size": 8, "log_every_steps": 2},
    }  # fmt: skip
    return {
        "recipe": "distill",
        "output_dir": str(tmp_path / "student"),
        "seed": 0,
        "teacher": {
            "path": str(tmp_path / "teacher"),
            "finetune_config": dump(teacher, tmp_path / "teacher.yaml"),
        },
        "student": {"encoder": enc, "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.0}},
        "distill": {"student_layers": [1], "speed_batch_size": 8, "speed_repeats": 2},
        "data": data,
        "unlabeled": {"_component_": "hftl.data.ClassificationData", "path": str(unlabeled)},
        "loss": {"_component_": "hftl.losses.KnowledgeDistillationLoss", "temperature": 2.0, "alpha": 0.7},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        "train": {"epochs": 2, "batch_size": 8, "log_every_steps": 2},
    }


# -- trackers ------------------------------------------------------------------------------------------------
class SpyTracker(GeneralTracker):
    """Stands in for TensorBoard: records the configuration and every log a run sends (see :func:`spy_on_trackers`)."""

    name = "tensorboard"
    requires_logging_directory = True
    started: ClassVar[list[SpyTracker]] = []

    def __init__(self, run_name: str, logging_dir: str | None = None, **kwargs: Any):
        super().__init__()
        self.run_name, self.logging_dir = run_name, logging_dir
        self.config: dict[str, Any] | None = None
        self.logs: list[tuple[int | None, dict[str, Any]]] = []
        SpyTracker.started.append(self)

    @property
    def tracker(self) -> SpyTracker:
        return self

    def store_init_configuration(self, values: dict) -> None:
        self.config = dict(values)

    def log(self, values: dict, step: int | None = None, **kwargs: Any) -> None:
        self.logs.append((step, dict(values)))


def spy_on_trackers(monkeypatch: pytest.MonkeyPatch) -> list[SpyTracker]:
    """From now on (for the test), ``train.report_to=[tensorboard]`` starts a :class:`SpyTracker`.

    Returns:
        The list of the trackers started, in order.
    """
    monkeypatch.setitem(tracking.LOGGER_TYPE_TO_CLASS, "tensorboard", SpyTracker)
    monkeypatch.setattr(tracking, "get_available_trackers", lambda: [LoggerType.TENSORBOARD])
    monkeypatch.setattr(SpyTracker, "started", [])
    return SpyTracker.started
