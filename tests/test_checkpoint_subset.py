"""Checkpoints that hold what training changes (hftl.training.checkpoint_weights), on a CPU Accelerator.

A toy "LoRA" model: a frozen base (Linear + BatchNorm), a trainable adapter and head, a frozen copy written
in place (as ADDA's source encoder is). The checkpoint must leave the frozen base out, keep buffers, the
trained tensors and the written copy, restore them exactly, and refuse other models and other formats.
"""

from __future__ import annotations

import hashlib
import json

import pytest
import torch
from accelerate import Accelerator
from safetensors import safe_open
from torch import nn

from hftl.errors import HftlError, TrainingError
from hftl.training.best import BestRecord, WeightsFile
from hftl.training.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from hftl.training.checkpoint_weights import TrainableSubset


class Toy(nn.Module):
    def __init__(self, width: int = 4):
        super().__init__()
        self.base = nn.Linear(width, 8).requires_grad_(False)
        self.norm = nn.BatchNorm1d(8)
        self.norm.requires_grad_(False)
        self.adapter = nn.Linear(8, 8)
        self.head = nn.Linear(8, 2)
        self.copy = nn.Linear(8, 8).requires_grad_(False)  # written in place during training, never trained

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.adapter(self.norm(self.base(x))))


def _prepared(width: int = 4, seed: int = 0) -> tuple[Accelerator, nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(seed)
    acc = Accelerator(cpu=True)
    model = Toy(width)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=0.1)
    model, optimizer = acc.prepare(model, optimizer)
    return acc, model, optimizer


def _step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model(torch.randn(16, 4)).pow(2).mean().backward()
    optimizer.step()
    optimizer.zero_grad()


def _keys(path) -> set[str]:
    with safe_open(str(path / "model.safetensors"), framework="pt") as f:
        return set(f.keys())


def test_subset_leaves_the_frozen_base_out_and_restores_exactly(tmp_path):
    acc, model, optimizer = _prepared()
    subset = TrainableSubset.capture(acc)
    _step(model, optimizer)
    with torch.no_grad():
        model.copy.load_state_dict(model.adapter.state_dict())  # as ADDA.start_stage2
    path = save_checkpoint(acc, tmp_path, step=1, state={}, weights=subset)

    assert _keys(path) == {
        "norm.running_mean", "norm.running_var", "norm.num_batches_tracked",  # buffers
        "adapter.weight", "adapter.bias", "head.weight", "head.bias", "copy.weight", "copy.bias",
    }  # fmt: skip  # base.* and norm.weight/bias are frozen and untouched: left out
    manifest = json.loads((path / "hftl_state.json").read_text())
    assert manifest["weights"]["model.safetensors"]["left_out"] == 4
    saved = {k: v.clone() for k, v in model.state_dict().items()}

    acc2, model2, optimizer2 = _prepared()  # a fresh process: same seed, same frozen base
    state = load_checkpoint(acc2, path)
    assert "weights" not in state
    for key, value in model2.state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert torch.equal(
        optimizer2.state_dict()["state"][0]["exp_avg"], optimizer.state_dict()["state"][0]["exp_avg"]
    )


def test_full_finetune_checkpoint_is_complete(tmp_path):
    acc = Accelerator(cpu=True)
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    model, optimizer = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    path = save_checkpoint(acc, tmp_path, step=1, state={}, weights=TrainableSubset.capture(acc))
    assert _keys(path) == set(model.state_dict())


def test_a_model_with_another_frozen_part_is_refused(tmp_path):
    acc, model, optimizer = _prepared()
    path = save_checkpoint(acc, tmp_path, step=1, state={}, weights=TrainableSubset.capture(acc))

    other, _, _ = _prepared(width=6)  # base.weight is 8 x 6: the trained tensors fit, the frozen part not
    with pytest.raises(
        HftlError, match=r"does not fit the prepared model: model.safetensors has its frozen part"
    ):
        load_checkpoint(other, path)


def test_a_model_that_trains_more_is_refused(tmp_path):
    acc, model, optimizer = _prepared()
    path = save_checkpoint(acc, tmp_path, step=1, state={}, weights=TrainableSubset.capture(acc))

    torch.manual_seed(0)
    other = Accelerator(cpu=True)
    toy = Toy()
    toy.base.requires_grad_(True)
    other.prepare(toy, torch.optim.AdamW([p for p in toy.parameters() if p.requires_grad], lr=0.1))
    with pytest.raises(HftlError, match=r"no value for 2 tensors the model trains \(e.g. base.bias\)"):
        load_checkpoint(other, path)


def test_a_checkpoint_of_another_format_is_refused_in_one_line(tmp_path):
    acc, model, optimizer = _prepared()
    path = save_checkpoint(acc, tmp_path, step=1, state={}, weights=TrainableSubset.capture(acc))
    manifest = json.loads((path / "hftl_state.json").read_text())
    manifest["format"] = 2
    raw = json.dumps(manifest).encode()
    (path / "hftl_state.json").write_bytes(raw)
    (path / "COMPLETE").write_text(hashlib.sha256(raw).hexdigest() + "\n")

    with pytest.raises(
        TrainingError, match=r"written by another hftl version \(checkpoint format 2; this hftl reads 3\)"
    ):
        latest_checkpoint(tmp_path, strict=True)
    with pytest.raises(HftlError, match=r"another hftl version"):
        load_checkpoint(acc, path)


def test_best_weights_hold_the_buffers(tmp_path):
    acc, model, optimizer = _prepared()
    model.train()
    model(torch.randn(16, 4))  # BatchNorm statistics move
    best = WeightsFile(acc, model, optimizer, tmp_path / "best.safetensors")
    record = BestRecord(best_step=1)
    best.save(record)
    stats = model.norm.running_mean.clone()
    model(torch.randn(16, 4) + 3)
    assert not torch.equal(model.norm.running_mean, stats)

    assert best.restore(record)
    assert torch.equal(model.norm.running_mean, stats)


def test_best_weights_save_tied_weights_once(tmp_path):
    """A masked-LM head tied to the input embeddings: one tensor under two names is saved (and restored) once."""
    acc = Accelerator(cpu=True)
    model = nn.Sequential(nn.Embedding(5, 3), nn.Linear(3, 5, bias=False))
    model[1].weight = model[0].weight  # tied
    model, optimizer = acc.prepare(model, torch.optim.SGD(model.parameters(), lr=0.1))
    best = WeightsFile(acc, model, optimizer, tmp_path / "best.safetensors")
    record = BestRecord(best_step=1)
    best.save(record)
    saved = model[0].weight.detach().clone()
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert best.restore(record)
    assert torch.equal(model[1].weight, saved)
