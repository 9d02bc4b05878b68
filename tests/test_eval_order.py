"""Evaluation loaders sorted by length (hftl.training.run): less padding, outputs back in row order."""

from __future__ import annotations

import torch
from accelerate import Accelerator

from hftl.training.config import TrainConfig
from hftl.training.run import eval_loader, gather_outputs

LENGTHS = [3, 1, 5, 2, 5, 4, 1]


def _collate(rows: list[dict]) -> dict[str, torch.Tensor]:
    width = max(len(r["x"]) for r in rows)
    x = torch.stack([torch.nn.functional.pad(r["x"], (0, width - len(r["x"]))) for r in rows])
    return {"x": x, "width": torch.full((len(rows),), width)}


def _rows() -> list[dict]:
    return [{"x": torch.full((n,), float(i))} for i, n in enumerate(LENGTHS)]


def test_sorted_loader_pads_less_and_gives_rows_back_in_order():
    acc, config = Accelerator(cpu=True), TrainConfig(eval_batch_size=2)

    def forward(model, batch):
        return {"row": model(batch["x"])[:, 0], "width": batch["width"]}

    plain = gather_outputs(
        acc, torch.nn.Identity(), eval_loader(acc, _rows(), collate_fn=_collate, config=config), forward
    )
    loader = eval_loader(acc, _rows(), collate_fn=_collate, config=config, lengths=LENGTHS)
    out = gather_outputs(acc, torch.nn.Identity(), loader, forward)

    assert out["row"].tolist() == list(range(len(LENGTHS)))  # the dataset's order, as without sorting
    assert plain["row"].tolist() == out["row"].tolist()
    assert out["width"].sum() < plain["width"].sum()  # longest first: 5 5 | 4 3 | 2 1 | 1
    assert out["width"].tolist() == [4, 2, 5, 2, 5, 4, 1]
    assert not out["row"].is_inference()  # a caller may train on the outputs


def test_outputs_can_be_trained_on():
    acc = Accelerator(cpu=True)
    loader = eval_loader(acc, _rows(), collate_fn=_collate, config=TrainConfig(), lengths=LENGTHS)
    out = gather_outputs(acc, torch.nn.Identity(), loader, lambda m, b: {"x": m(b["x"])[:, :1]})
    head = torch.nn.Linear(1, 1)
    head(out["x"]).sum().backward()
    assert head.weight.grad is not None


def test_a_sorted_loader_leaves_the_global_rng_alone():
    """Training's dropout masks must not depend on how often (or whether) a split was evaluated."""
    acc = Accelerator(cpu=True)
    loader = eval_loader(acc, _rows(), collate_fn=_collate, config=TrainConfig(), lengths=LENGTHS)
    state = torch.get_rng_state()
    gather_outputs(acc, torch.nn.Identity(), loader, lambda m, b: {"x": b["x"][:, 0]})
    assert torch.equal(torch.get_rng_state(), state)
