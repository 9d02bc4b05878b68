"""One encoder, several named classification heads (multi-task learning, LwF).

A multi-task model directory is an ordinary hftl model directory for the *default* task (the first
one), so ``hftl.load``, ``hftl eval``, ``hftl predict``, cards and export work unchanged, plus::

    tasks.json             task names in order, label names and head config of every task
    tasks/<name>.safetensors   head weights of every task

``hftl.load(path, task="name")`` (or :func:`load_task`) predicts another task with the shared encoder.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file
from torch import nn

from hftl.encoders.base import Encoder
from hftl.errors import ModelLoadError
from hftl.models.classifier import Classifier, ClassifierOutput

TASKS_FILE = "tasks.json"


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
        head_configs: task name -> the head's ``_component_`` node (plain dict or DictConfig).
    """
    model_dir = Path(model_dir)
    (model_dir / "tasks").mkdir(exist_ok=True)
    entries = []
    for name in model.tasks:
        state = {k: v.detach().contiguous().cpu() for k, v in model.heads[name].state_dict().items()}
        save_file(state, str(model_dir / "tasks" / f"{name}.safetensors"))
        node = head_configs[name]
        node = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else dict(node)
        entries.append({"name": name, "label_names": model.label_names[name], "head": node})
    (model_dir / TASKS_FILE).write_text(json.dumps({"tasks": entries}, indent=2) + "\n")


def load_multitask(path: str | Path, *, allow_any_component: bool = False) -> MultiTaskClassifier:
    """Rebuilds every head of a saved multi-task model on its shared encoder (eval mode).

    Raises:
        ModelLoadError: the directory has no ``tasks.json`` (not a multi-task model) or a head file is
            missing or does not match its config.
    """
    from hftl.config import instantiate
    from hftl.models.io import find_model_dir, load_model

    model_dir = find_model_dir(path)
    spec_file = model_dir / TASKS_FILE
    if not spec_file.is_file():
        raise ModelLoadError(
            f"{model_dir} is not a multi-task model (no {TASKS_FILE}); load it without `task=` "
            "(it predicts its single task)."
        )
    classifier, _, _ = load_model(model_dir, allow_any_component=allow_any_component)
    heads, labels = {}, {}
    for entry in json.loads(spec_file.read_text())["tasks"]:
        name, file = entry["name"], model_dir / "tasks" / f"{entry['name']}.safetensors"
        head = instantiate(
            OmegaConf.create(entry["head"]),
            in_features=classifier.encoder.out_features,
            num_labels=len(entry["label_names"]),
            allow_any=allow_any_component,
        )
        try:
            head.load_state_dict(load_file(str(file)))
        except (OSError, RuntimeError) as err:
            raise ModelLoadError(
                f"Cannot load the head of task {name!r} from {file}: {err}. Re-run training or re-download the model."
            ) from err
        heads[name], labels[name] = head, entry["label_names"]
    return MultiTaskClassifier(classifier.encoder, heads, labels).eval()


def load_task(
    path: str | Path, task: str, *, device: str | None = None, allow_any_component: bool = False
) -> Any:
    """A :class:`hftl.predict.Predictor` for one ``task`` of a saved multi-task model.

    Raises:
        ModelLoadError: not a multi-task model, or ``task`` is not one of its tasks.
    """
    from hftl.models.io import find_model_dir
    from hftl.predict import Predictor

    model = load_multitask(path, allow_any_component=allow_any_component)
    if task not in model.tasks:
        raise ModelLoadError(f"Model {str(path)!r} has no task {task!r}; its tasks are {model.tasks}.")
    meta = json.loads((find_model_dir(path) / "hftl_model.json").read_text())
    meta = {**meta, "label_names": model.label_names[task], "task": task}
    return Predictor(model.task_classifier(task), meta, device=device)
