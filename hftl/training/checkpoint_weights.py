"""Which tensors a checkpoint holds: what training can change, not the frozen pretrained base.

A LoRA, IA3 or frozen-encoder run trains a few MiB of a model of a hundred or more; the rest is rebuilt from
the config, bit for bit, when the run resumes (the run folder's config and data fingerprints make sure it is
the same config: :mod:`hftl.training.run_dir`). So of each model the Accelerator prepared a checkpoint holds:

* every parameter that requires grad or that an optimizer holds (gradual unfreezing, ADDA's frozen head),
* every parameter written in place since training started (ADDA copies the stage-1 encoder into a frozen
  source encoder): torch counts in-place writes in ``tensor._version``, compared with the count at capture,
* every buffer (BatchNorm running statistics, step counters),

and records, per weights file, how many tensors it left out and a signature of their names, shapes and
dtypes. A resume loads the file into the model only when every tensor the model trains is in it, nothing
in it is foreign to the model and the left-out part has the same signature; otherwise it stops with one
line saying what differs. FSDP and DeepSpeed save their own sharded files: those checkpoints stay complete.

Example:
    >>> subset = TrainableSubset.capture(accelerator)  # doctest: +SKIP
    >>> save_checkpoint(accelerator, output_dir, step=100, state={}, weights=subset)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn

from hftl.errors import HftlError

if TYPE_CHECKING:
    import accelerate

__all__ = ["TrainableSubset", "kept_names", "weights_filename"]


def weights_filename(index: int) -> str:
    """The file ``accelerator.save_state`` writes the ``index``-th prepared model to (safetensors)."""
    return f"model{f'_{index}' if index else ''}.safetensors"


def _optimized(accelerator: accelerate.Accelerator) -> set[int]:
    return {id(p) for opt in accelerator._optimizers for g in opt.param_groups for p in g["params"]}


def kept_names(
    model: nn.Module, optimized: set[int], versions: dict[int, int] | None = None
) -> tuple[set[str], dict[str, Any]]:
    """``(names kept, the model's state_dict with its parameters as objects)``.

    Kept: buffers, parameters that require grad or are in ``optimized`` (ids), and, given ``versions`` (id ->
    ``_version`` at capture), parameters written in place since; ``versions=None`` keeps none of those.
    """
    state = model.state_dict(keep_vars=True)
    params = {id(p) for p in model.parameters()}
    kept = set()
    for name, tensor in state.items():
        changed = versions is not None and versions.get(id(tensor)) != tensor._version
        if id(tensor) not in params or tensor.requires_grad or id(tensor) in optimized or changed:
            kept.add(name)
    return kept, state


def _signature(names: list[str], state: dict[str, Any]) -> str:
    text = "\n".join(f"{n} {tuple(state[n].shape)} {state[n].dtype}" for n in sorted(names))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


class TrainableSubset:
    """Saves and loads only what training can change (see the module docstring) through accelerate's hooks.

    Build it with :meth:`capture` once the model, optimizer and scheduler are prepared and before training
    starts; pass it to :func:`~hftl.training.checkpoint.save_checkpoint`. Loading needs no object:
    :func:`~hftl.training.checkpoint.load_checkpoint` reads what the manifest says was left out.
    """

    def __init__(self, accelerator: accelerate.Accelerator, versions: dict[int, int]):
        self.acc, self.versions = accelerator, versions
        self.record: dict[str, dict[str, Any]] = {}  # file -> {"left_out": n, "signature": ...}, last save

    @classmethod
    def capture(cls, accelerator: accelerate.Accelerator) -> TrainableSubset:
        """Records the in-place write counts of every parameter of the prepared models."""
        return cls(accelerator, {id(p): p._version for m in accelerator._models for p in m.parameters()})

    def save_hook(
        self, models: list[nn.Module], weights: list[dict[str, torch.Tensor]], output_dir: str
    ) -> None:
        """``register_save_state_pre_hook``: drops the frozen, untouched tensors from each state dict."""
        self.record = {}
        optimized = _optimized(self.acc)
        for index, (model, state) in enumerate(zip(models, weights, strict=False)):
            kept, full = kept_names(model, optimized, self.versions)
            left_out = [name for name in full if name not in kept]
            for name in left_out:
                state.pop(name, None)
            self.record[weights_filename(index)] = {
                "left_out": len(left_out), "signature": _signature(left_out, full),
            }  # fmt: skip


def load_hook(accelerator: accelerate.Accelerator, record: dict[str, dict[str, Any]], path: Path):
    """A ``register_load_state_pre_hook`` that loads each filtered weights file itself, after checking it fits.

    Args:
        accelerator: the Accelerator that prepared the models (its optimizers say what trains).
        record: the manifest's ``weights`` section (:attr:`TrainableSubset.record` at save time).
        path: the checkpoint folder, for the error message.
    """

    def hook(models: list[nn.Module], input_dir: str) -> None:
        if (
            not record
        ):  # a complete checkpoint (FSDP, DeepSpeed, or saved without a subset): accelerate loads it
            return
        if len(record) != len(models):
            raise HftlError(
                f"Checkpoint {path} does not fit the prepared models: it holds weights of {len(record)} models, "
                f"this run prepared {len(models)}. Resume with the setup it was saved from."
            )
        optimized = _optimized(accelerator)
        for index, model in enumerate(models):
            name = weights_filename(index)
            _load_subset(model, Path(input_dir) / name, record[name], optimized, path)
        models.clear()  # loaded here; accelerate would load the files strictly

    return hook


def _load_subset(
    model: nn.Module, file: Path, record: dict[str, Any], optimized: set[int], path: Path
) -> None:
    with safe_open(str(file), framework="pt") as f:
        keys = set(f.keys())
    kept, state = kept_names(model, optimized)
    aliases: dict[int, set[str]] = {}
    for name, tensor in state.items():
        aliases.setdefault(id(tensor), set()).add(name)
    covered = set().union(*(aliases[id(state[k])] for k in keys if k in state)) if keys else set()
    unexpected, missing = sorted(keys - state.keys()), sorted(kept - covered)
    left_out = [n for n in state if n not in covered]
    problem = None
    if unexpected:
        problem = f"{len(unexpected)} tensors the model does not have (e.g. {unexpected[0]})"
    elif missing:
        problem = f"no value for {len(missing)} tensors the model trains (e.g. {missing[0]})"
    elif len(left_out) != record.get("left_out") or _signature(left_out, state) != record.get("signature"):
        problem = (
            f"its frozen part ({record.get('left_out')} tensors) differs from this model's ({len(left_out)}: "
            "another encoder, adapter or target modules)"
        )
    if problem:
        raise HftlError(
            f"Checkpoint {path} does not fit the prepared model: {file.name} has {problem}. Resume with the "
            "encoder, adapter and method config it was trained with, or start a fresh output_dir."
        )
    model.load_state_dict(load_file(str(file)), strict=False)
