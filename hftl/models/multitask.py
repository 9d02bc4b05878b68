"""One encoder, several named classification heads (multi-task learning, LwF).

A multi-task model directory is an ordinary hftl model directory for the *default* task (the first
one), so ``hftl.load``, ``hftl eval``, ``hftl predict``, cards and export work unchanged, plus::

    tasks.json             task names in order, label names and head spec of every task
    tasks/<name>.safetensors   head weights of every task

``hftl.load(path, task="name")`` (or :func:`load_task`) predicts another task with the shared encoder.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from hftl.encoders.base import Encoder
from hftl.errors import ModelLoadError
from hftl.models import spec
from hftl.models.classifier import Classifier, ClassifierOutput
from hftl.models.io import load_model, load_weights
from hftl.models.records import read_json

TASKS_FILE = "tasks.json"
TASK_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,127}$")  # also the head's file name: no path separators


@dataclass
class MultiTaskOutput(ClassifierOutput):
    """``logits`` of the requested task, pooled ``features``, and ``others``: ``{task: logits}`` of extra heads."""

    others: dict[str, torch.Tensor] = field(default_factory=dict)


class MultiTaskClassifier(nn.Module):
    """A shared encoder with one head per task; each forward pass runs one task's head.

    Args:
        encoder: any :class:`hftl.encoders.Encoder` (adapter already applied).
        heads: task name -> head mapping ``(B, encoder.out_features)`` to ``(B, num_labels_task)``.
        label_names: task name -> class names in label-id order.

    Example:
        >>> model = MultiTaskClassifier(enc, {"sst2": LinearHead(384, 2)}, {"sst2": ["neg", "pos"]})  # doctest: +SKIP
        >>> model(task="sst2", **batch).logits.shape  # doctest: +SKIP
        torch.Size([8, 2])
    """

    def __init__(self, encoder: Encoder, heads: dict[str, nn.Module], label_names: dict[str, list[str]]):
        super().__init__()
        if not heads or set(heads) != set(label_names):
            raise ValueError(
                f"`heads` {sorted(heads)} and `label_names` {sorted(label_names)} must name the same, non-empty tasks"
            )
        self.encoder, self.heads = encoder, nn.ModuleDict(heads)
        self.label_names = {k: list(v) for k, v in label_names.items()}

    @property
    def tasks(self) -> list[str]:
        return list(self.heads)

    def _head(self, task: str) -> nn.Module:
        if task not in self.heads:
            raise KeyError(f"unknown task {task!r}; this model has tasks {self.tasks}")
        return self.heads[task]

    def forward(self, *, task: str, also: tuple[str, ...] = (), **inputs: torch.Tensor) -> MultiTaskOutput:
        """Logits of ``task`` (and of the heads named in ``also``, in ``others``) from one encoder pass."""
        head = self._head(task)
        features = self.encoder(**inputs).pooled
        others = {name: self._head(name)(features) for name in also}
        return MultiTaskOutput(logits=head(features), features=features, others=others)

    def forward_all(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        """Logits of every head for the same inputs (one encoder pass): ``{task: (B, C_task)}``."""
        features = self.encoder(**inputs).pooled
        return {name: head(features) for name, head in self.heads.items()}

    def task_classifier(self, task: str) -> Classifier:
        """A :class:`Classifier` view of one task (shares the encoder and the head's parameters)."""
        return Classifier(self.encoder, self._head(task), self.label_names[task])


def save_tasks(model: MultiTaskClassifier, model_dir: str | Path, *, head_configs: dict[str, Any]) -> None:
    """Writes ``tasks.json`` and ``tasks/<name>.safetensors`` next to a saved default-task model.

    Args:
        model: the trained model.
        model_dir: the directory :func:`hftl.models.io.save_model` wrote for ``model.task_classifier(first)``.
        head_configs: task name -> the head's ``_component_`` node (plain dict or DictConfig); its values
            are recorded as the head's spec (:func:`hftl.models.spec.describe_head`).
    """
    model_dir = Path(model_dir)
    (model_dir / "tasks").mkdir(exist_ok=True)
    entries = []
    for name in model.tasks:
        state = {k: v.detach().contiguous().cpu() for k, v in model.heads[name].state_dict().items()}
        save_file(state, str(model_dir / "tasks" / f"{name}.safetensors"))
        head = spec.describe_head(model.heads[name], head_configs.get(name))
        entries.append({"name": name, "label_names": model.label_names[name], "head": head})
    (model_dir / TASKS_FILE).write_text(json.dumps({"tasks": entries}, indent=2) + "\n")


def load_multitask(
    path: str | Path, *, from_hub: bool = False, revision: str | None = None, trust_remote_code: bool = False
) -> MultiTaskClassifier:
    """Rebuilds every head of a saved multi-task model on its shared encoder (eval mode).

    Args:
        path: a run's ``output_dir``, its ``model/`` folder, or ``hf://user/name[@revision]``.
        from_hub, revision, trust_remote_code: as for :func:`hftl.models.io.load_model`.

    Raises:
        ModelLoadError: not a multi-task model, or ``tasks.json`` / a head file is damaged or does not
            match (one line naming the file).
    """
    return _load(path, from_hub=from_hub, revision=revision, trust_remote_code=trust_remote_code)[0]


def _load(path: str | Path, **source: Any) -> tuple[MultiTaskClassifier, dict[str, Any]]:
    classifier, meta = load_model(path, **source)
    model_dir = Path(meta["path"])
    heads, labels = {}, {}
    for i, (name, label_names, head_spec) in enumerate(_task_entries(model_dir, legacy=meta["format"] == 1)):
        where = f"{model_dir / TASKS_FILE} `tasks[{i}]`"
        head = spec.build(
            head_spec,
            "head",
            where=where,
            in_features=classifier.encoder.out_features,
            num_labels=len(label_names),
        )
        load_weights(head, model_dir / "tasks" / f"{name}.safetensors")
        heads[name], labels[name] = head, label_names
    return MultiTaskClassifier(classifier.encoder, heads, labels).eval(), meta


def _task_entries(model_dir: Path, *, legacy: bool) -> list[tuple[str, list[str], dict[str, Any]]]:
    """``(name, label_names, head spec)`` of every task in ``tasks.json``, each value checked."""
    file = model_dir / TASKS_FILE
    if not file.is_file():
        raise ModelLoadError(
            f"{model_dir} is not a multi-task model (no {TASKS_FILE}); load it without `task=` "
            "(it predicts its single task)."
        )
    data = read_json(file)
    tasks = data.get("tasks") if isinstance(data, dict) and set(data) == {"tasks"} else None
    entries, problem = [], None if isinstance(tasks, list) and tasks else "`tasks` must be a non-empty list"
    for i, entry in enumerate(tasks if problem is None else []):
        if not isinstance(entry, dict) or set(entry) != {"name", "label_names", "head"}:
            problem = f"`tasks[{i}]` must have exactly `name`, `label_names` and `head`"
        elif not isinstance(entry["name"], str) or not TASK_NAME.match(entry["name"]):
            problem = (
                f"`tasks[{i}].name` = {str(entry['name'])[:40]!r} is not a task name (letters, digits, _ . -)"
            )
        elif not _labels_ok(entry["label_names"]):
            problem = f"`tasks[{i}].label_names` must be a non-empty list of distinct strings"
        elif entry["name"] in {e[0] for e in entries}:
            problem = f"task {entry['name']!r} appears twice"
        if problem:
            break
        head = (
            spec.legacy_spec(entry["head"], "head", where=f"{file} `tasks[{i}]`") if legacy else entry["head"]
        )
        entries.append((entry["name"], entry["label_names"], head))
    if problem:
        raise ModelLoadError(
            f"{file}: {problem}. The file is damaged; re-download the model or re-run training."
        )
    return entries


def _labels_ok(labels: Any) -> bool:
    return (
        isinstance(labels, list) and bool(labels) and all(isinstance(x, str) for x in labels)
        and len(set(labels)) == len(labels)
    )  # fmt: skip


def load_task(
    path: str | Path,
    task: str,
    *,
    from_hub: bool = False,
    revision: str | None = None,
    trust_remote_code: bool = False,
) -> tuple[Classifier, dict[str, Any]]:
    """One ``task`` of a saved multi-task model as a plain classifier, with its model record.

    :meth:`hftl.predict.Predictor.from_pretrained` (``hftl.load(path, task=...)``) wraps it for inference.

    Raises:
        ModelLoadError: not a multi-task model, or ``task`` is not one of its tasks.
    """
    model, meta = _load(path, from_hub=from_hub, revision=revision, trust_remote_code=trust_remote_code)
    if task not in model.tasks:
        raise ModelLoadError(f"Model {str(path)!r} has no task {task!r}; its tasks are {model.tasks}.")
    return model.task_classifier(task), {**meta, "label_names": model.label_names[task], "task": task}
