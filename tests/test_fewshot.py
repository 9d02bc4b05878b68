"""Few-shot metric transfer: the metric losses (exact values), the pair builder, the recipe end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import fewshot_config, fewshot_csv

from hftl.cli import main as hftl
from hftl.data.pairs import (
    TupleCollator,
    TupleDataset,
    build_pairs,
    build_repeats,
    build_triplets,
    sample_per_class,
)
from hftl.errors import DataError
from hftl.losses import BatchHardTripletLoss, ContrastiveLoss, CosineSimilarityLoss, TripletLoss

# Four points in the plane: A at the origin, B one to the right, C two up, D three up.
A, B, C, D = ([0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [0.0, 3.0])


def _t(*rows) -> torch.Tensor:
    return torch.tensor(rows, requires_grad=True)


# --- losses -------------------------------------------------------------------------------------------


def test_triplet_loss_hand_computed_with_hinge_at_zero():
    anchor, positive, negative = _t(A, A), _t(B, C), _t(D, B)
    # (A, B, D): d+ = 1, d- = 3 -> max(0, 1 - 3 + 1) = 0 (hinge closed); (A, C, B): d+ = 2, d- = 1 -> 2
    out = TripletLoss(margin=1.0)(anchor, positive, negative)
    assert out.loss.item() == pytest.approx(1.0)
    assert out.metrics == pytest.approx({"active": 0.5, "d_pos": 1.5, "d_neg": 2.0})
    out.loss.backward()
    assert torch.equal(negative.grad[0], torch.zeros(2))  # the closed hinge sends no gradient to D
    # open hinge: d(A, C) - d(A, B) / 2 triplets -> dL/dC = (C - A)/|C - A| / 2, dL/dB = -(B - A)/|B - A| / 2
    assert torch.allclose(positive.grad[1], torch.tensor([0.0, 0.5]))
    assert torch.allclose(negative.grad[1], torch.tensor([-0.5, 0.0]))
    # a larger margin opens the first hinge too: (1 - 3 + 2.5) + (2 - 1 + 2.5) = 0.5 + 3.5
    assert TripletLoss(margin=2.5)(anchor, positive, negative).loss.item() == pytest.approx(2.0)
    assert TripletLoss(margin=0.0)(anchor, positive, negative).loss.item() == pytest.approx(0.5)


def test_triplet_loss_other_distances():
    anchor, positive, negative = _t(A, A), _t(B, C), _t(D, B)
    # squared: (1 - 9 + 1 -> 0) and (4 - 1 + 1 = 4) -> 2
    sq = TripletLoss(margin=1.0, distance="squared_euclidean")(anchor, positive, negative)
    assert sq.loss.item() == pytest.approx(2.0)
    u, v, w = _t(B), _t([1.0, 1.0]), _t([0.0, 1.0])  # cos distances 1 - 1/sqrt(2) and 1
    cos = TripletLoss(margin=0.1, distance="cosine")(u, w, v)  # positive is the farther one
    assert cos.loss.item() == pytest.approx(1 - (1 - 1 / math.sqrt(2)) + 0.1)


def test_batch_hard_mining_matches_hand_picked_triplets():
    x = torch.tensor([[0.0], [1.0], [3.0], [6.0]], requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1])
    out = BatchHardTripletLoss(margin=1.0)(x, labels)
    # hardest positive / negative of each anchor: 0 -> (1, 3), 1 -> (0, 3), 2 -> (6, 1), 3 -> (3, 1)
    expected = TripletLoss(margin=1.0)(x[[0, 1, 2, 3]], x[[1, 0, 3, 2]], x[[2, 2, 1, 1]])
    assert out.loss.item() == pytest.approx(expected.loss.item()) == pytest.approx(0.5)
    assert out.metrics["anchors"] == 4.0
    # an anchor alone in its class has no positive and is left out; a single class mines nothing
    out = BatchHardTripletLoss(margin=1.0)(x[:3], torch.tensor([0, 0, 1]))
    assert out.metrics["anchors"] == 2.0 and out.loss.item() == pytest.approx(0.0)
    none = BatchHardTripletLoss()(x, torch.zeros(4, dtype=torch.long))
    none.loss.backward()
    assert none.loss.item() == 0.0 and torch.equal(x.grad, torch.zeros_like(x))


def test_pair_losses_closed_form():
    g = torch.Generator().manual_seed(0)
    u, v = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g)
    target = torch.tensor([1, 0, 1, 0, 1, 1])
    cos = torch.nn.functional.cosine_similarity(u, v)
    expected = ((cos - target) ** 2).mean()
    assert CosineSimilarityLoss()(u, v, target).loss.item() == pytest.approx(expected.item(), rel=1e-6)
    same, opposite, orth = (
        torch.tensor([[1.0, 2.0]]),
        torch.tensor([[-1.0, -2.0]]),
        torch.tensor([[-2.0, 1.0]]),
    )
    assert CosineSimilarityLoss()(same, 3 * same, torch.tensor([1])).loss.item() == pytest.approx(
        0.0, abs=1e-7
    )
    assert CosineSimilarityLoss()(same, opposite, torch.tensor([1])).loss.item() == pytest.approx(4.0)
    assert CosineSimilarityLoss()(same, orth, torch.tensor([0])).loss.item() == pytest.approx(0.0, abs=1e-7)

    d = (u - v).norm(dim=1)
    hadsell = (target * d**2 + (1 - target) * (2.5 - d).clamp(min=0) ** 2).mean() / 2
    assert ContrastiveLoss(margin=2.5)(u, v, target).loss.item() == pytest.approx(hadsell.item(), rel=1e-6)
    # A-B (d = 1) as a positive: 1^2; B-D (d = sqrt 10 > margin 3) as a negative: 0 -> (1 + 0) / (2 * 2)
    pair = ContrastiveLoss(margin=3.0)(torch.tensor([A, B]), torch.tensor([B, D]), torch.tensor([1, 0]))
    assert pair.loss.item() == pytest.approx(0.25)


def test_losses_reject_bad_inputs():
    with pytest.raises(ValueError, match="same shape"):
        TripletLoss()(torch.zeros(2, 3), torch.zeros(3, 3), torch.zeros(2, 3))
    with pytest.raises(ValueError, match="target"):
        CosineSimilarityLoss()(torch.zeros(2, 3), torch.zeros(2, 3), torch.zeros(3))
    with pytest.raises(ValueError, match="distance"):
        TripletLoss(distance="manhattan")
    with pytest.raises(ValueError, match="margin"):
        ContrastiveLoss(margin=-1.0)


# --- pairs and triplets -------------------------------------------------------------------------------

LABELS = [0, 0, 0, 1, 1, 2, 2, 2]  # 8 examples, 3 classes


def test_build_pairs_counts_labels_and_determinism():
    pairs = build_pairs(LABELS, num_iterations=3, seed=7)
    labels = np.asarray(LABELS)
    assert pairs.shape == (2 * 3 * 8, 3)
    assert pairs[:, 2].sum() == 3 * 8  # exactly half positive
    assert np.all(pairs[:, 0] != pairs[:, 1])  # no example paired with itself
    assert np.array_equal(pairs[:, 2], (labels[pairs[:, 0]] == labels[pairs[:, 1]]).astype(int))
    assert np.array_equal(np.bincount(pairs[:, 0]), np.full(8, 2 * 3))  # each example anchors 2 per round
    assert np.array_equal(pairs, build_pairs(LABELS, num_iterations=3, seed=7))
    assert not np.array_equal(pairs, build_pairs(LABELS, num_iterations=3, seed=8))


def test_build_triplets_and_repeats():
    labels = np.asarray(LABELS)
    trip = build_triplets(LABELS, num_iterations=4, seed=0)
    assert trip.shape == (4 * 8, 3)
    assert np.all(trip[:, 0] != trip[:, 1])
    assert np.all(labels[trip[:, 0]] == labels[trip[:, 1]]) and np.all(
        labels[trip[:, 0]] != labels[trip[:, 2]]
    )
    assert np.array_equal(np.bincount(trip[:, 0]), np.full(8, 4))
    assert np.array_equal(trip, build_triplets(LABELS, num_iterations=4, seed=0))
    reps = build_repeats(LABELS, num_iterations=5, seed=0)
    assert reps.shape == (40, 1) and np.array_equal(np.bincount(reps[:, 0]), np.full(8, 5))


def test_pair_builder_errors():
    with pytest.raises(DataError, match="at least 2 examples"):
        build_pairs([0, 0, 1], num_iterations=1)
    with pytest.raises(DataError, match="at least 2 classes"):
        build_triplets([1, 1, 1], num_iterations=1)
    with pytest.raises(DataError, match="num_iterations"):
        build_pairs(LABELS, num_iterations=0)


def test_sample_per_class_is_stratified_and_seeded():
    labels = np.repeat([0, 1, 2], [10, 5, 7])
    idx = sample_per_class(labels, 4, seed=3)
    assert np.array_equal(np.bincount(labels[idx]), [4, 4, 4]) and len(set(idx)) == 12
    assert np.array_equal(idx, np.sort(idx)) and np.array_equal(idx, sample_per_class(labels, 4, seed=3))
    assert not np.array_equal(idx, sample_per_class(labels, 4, seed=4))
    with pytest.raises(DataError, match=r"\{1: 5\}"):
        sample_per_class(labels, 6, seed=0)
    with pytest.raises(DataError, match=r"\{3: 0\}"):
        sample_per_class(labels, 2, seed=0, num_classes=4)


def test_tuple_collator_is_position_major():
    examples = [{"text": f"t{i}", "label": i % 2} for i in range(4)]
    rows = np.array([[0, 1, 0], [2, 3, 1]])  # pairs (a, b, target)
    items = [TupleDataset(examples, rows, "pairs")[i] for i in range(2)]
    batch = TupleCollator(lambda exs: {"texts": [e["text"] for e in exs]})(items)
    assert batch["inputs"]["texts"] == ["t0", "t2", "t1", "t3"]  # all a's, then all b's: chunk(2) = (u, v)
    assert torch.equal(batch["target"], torch.tensor([0.0, 1.0]))


def test_logistic_head_reproduces_sklearn_probabilities():
    from hftl.recipes.fewshot import logistic_head
    from sklearn.linear_model import LogisticRegression

    from hftl.models import LinearHead

    rng = np.random.default_rng(0)
    for k in (2, 3):
        x = rng.normal(size=(30, 6)).astype(np.float32)
        y = np.arange(30) % k
        head = LinearHead(6, k, dropout=0.0).eval()
        logistic_head(x, y, head, num_labels=k, c=0.5, max_iter=500)
        expected = LogisticRegression(C=0.5, max_iter=500).fit(x, y).predict_proba(x)
        got = head(torch.from_numpy(x)).softmax(-1).detach().numpy()
        assert np.allclose(got, expected, atol=1e-5), k


# --- the recipe, end to end through the CLI -----------------------------------------------------------


def _run(tmp_path: Path, cfg: dict, *overrides: str) -> int:
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return hftl(["run", "fewshot", "--config", str(path), *overrides])


@pytest.fixture
def text_cfg(tmp_path, tiny_models):
    files = {
        "train": fewshot_csv(tmp_path / "train.csv", 40, 0),
        "test": fewshot_csv(tmp_path / "test.csv", 12, 1),
    }
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    return fewshot_config(tmp_path, enc, {"path": "csv", "data_files": files})


def test_text_recipe_end_to_end_then_load(tmp_path, text_cfg):
    import hftl as hftl_pkg

    assert _run(tmp_path, text_cfg) == 0
    out = Path(text_cfg["output_dir"])
    metrics = json.loads((out / "metrics.json").read_text())
    fs = metrics["fewshot"]
    assert fs["num_examples"] == 8 and fs["stage1_rows"] == 2 * 2 * 8 and fs["stage1_inputs"] == "pairs"
    assert metrics["steps"] == 8  # 32 pairs / batch 4
    assert len(set(fs["train_indices"])) == 8 and metrics["test"]["num_samples"] == 12
    clf = hftl_pkg.load(out)  # the saved directory loads like any hftl model
    texts = [
        line.rsplit(",", 1)
        for line in Path(text_cfg["data"]["data_files"]["test"]).read_text().split("\n")[1:-1]
    ]
    preds = clf([t for t, _ in texts])
    accuracy = np.mean([p["label"] == y for p, (_, y) in zip(preds, texts, strict=True)])
    assert accuracy == pytest.approx(metrics["test"]["accuracy"])


def test_text_probe_and_triplets_with_lora(tmp_path, text_cfg):
    # stage 1 off + frozen encoder = a logistic-regression probe; only the head is saved
    assert (
        _run(tmp_path, text_cfg, "fewshot.num_iterations=0", "adapter._component_=hftl.adapters.Frozen") == 0
    )
    out = Path(text_cfg["output_dir"])
    assert json.loads((out / "metrics.json").read_text())["steps"] == 0
    assert json.loads((out / "model" / "hftl_model.json").read_text())["adapter"] == "frozen"
    overrides = ["adapter._component_=hftl.adapters.Lora", "loss._component_=hftl.losses.TripletLoss"]
    assert _run(tmp_path, text_cfg, *overrides, "output_dir=" + str(tmp_path / "lora")) == 0
    metrics = json.loads((tmp_path / "lora" / "metrics.json").read_text())
    assert metrics["fewshot"]["stage1_inputs"] == "triplets" and metrics["steps"] == 4  # 16 triplets / 4
    assert (tmp_path / "lora" / "model" / "encoder" / "adapter_config.json").is_file()


def test_bad_configs_are_named(tmp_path, text_cfg, capsys):
    assert _run(tmp_path, text_cfg, "adapter._component_=hftl.adapters.Frozen") == 2
    assert "fewshot.num_iterations=0" in capsys.readouterr().err
    assert _run(tmp_path, text_cfg, "head._component_=hftl.models.MLPHead") == 2
    assert "hftl.models.LinearHead" in capsys.readouterr().err
    assert _run(tmp_path, text_cfg, "fewshot.shots_per_class=30") == 2  # 20 per class in train.csv
    assert "shots_per_class" in capsys.readouterr().err


def test_audio_recipe_with_batch_hard_mining(tmp_path, tiny_models):
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(16):  # low vs high tone, 8 kHz (resampled to 16 kHz by the collator)
        freq = 300 if i % 2 else 1500
        t = np.arange(int(8000 * rng.uniform(0.2, 0.4))) / 8000
        sf.write(tmp_path / f"clip{i}.wav", 0.5 * np.sin(2 * np.pi * freq * t), 8000)
        rows.append(f"clip{i}.wav,{'low' if i % 2 else 'high'}")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    enc = {"_component_": "hftl.encoders.AudioEncoder", "model": tiny_models["wav2vec2"], "max_duration": 0.3}
    cfg = fewshot_config(tmp_path, enc, {"path": str(tmp_path / "clips.csv"), "test_size": 0.25})
    cfg["loss"] = {"_component_": "hftl.losses.BatchHardTripletLoss", "margin": 0.5, "distance": "cosine"}
    cfg["fewshot"] = {"shots_per_class": 3, "num_iterations": 2}
    assert _run(tmp_path, cfg) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["fewshot"]["stage1_inputs"] == "labeled" and metrics["steps"] == 3  # 12 clips / batch 4
    assert metrics["test"]["num_samples"] == 4


def test_shipped_configs_validate(shipped_data):
    for name in ("text/minilm_setfit_sst2", "audio/fsdd_setfit"):
        shipped_data(name)
        assert hftl(["validate", "--config", name]) == 0, name


def test_stage1_honours_layerwise_learning_rates_and_unfreezing(tmp_path, text_cfg):
    from hftl.recipes.fewshot import FewShotRecipe
    from omegaconf import OmegaConf

    text_cfg["train"]["layerwise"] = {"lr_decay": 0.5, "unfreeze_every_steps": 2}
    recipe = FewShotRecipe(OmegaConf.create(text_cfg))
    recipe.setup()
    groups = recipe.engine.optimizer.param_groups
    # stage 1 trains the encoder alone (the head is fitted after it): depth 1 (the top layer) is the top group
    assert [g["name"] for g in groups] == ["layer 1", "layer 0", "embeddings"]
    assert [g["initial_lr"] for g in groups] == pytest.approx([1e-3 * 0.5**d for d in (1, 2, 3)])
    recipe.engine.on_step(0)
    assert [g["params"][0].requires_grad for g in groups] == [True, False, False]  # top layer first
    recipe.engine.on_step(2)
    assert [g["params"][0].requires_grad for g in groups] == [True, True, False]
