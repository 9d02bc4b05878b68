"""Distillation: KD loss against its closed form, FitNets hints, layer cutting, `hftl run distill` end to end."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
import yaml
from helpers import distill_config, dump

from hftl.cli import main as hftl
from hftl.losses.distillation import HintLoss, KnowledgeDistillationLoss, LwFLoss, SoftTargetCollator, soft_kl


def _softmax(z: list[float]) -> list[float]:
    e = [math.exp(v) for v in z]
    return [v / sum(e) for v in e]


def test_kd_loss_equals_closed_form():
    s, t, y, T, alpha = [1.0, 2.0, 0.0], [0.5, 1.0, 3.0], 1, 2.0, 0.3
    p_t, p_s = _softmax([v / T for v in t]), _softmax([v / T for v in s])
    kl = sum(a * (math.log(a) - math.log(b)) for a, b in zip(p_t, p_s, strict=True))
    hard = -math.log(_softmax(s)[y])
    expected = alpha * T * T * kl + (1 - alpha) * hard  # Hinton et al.: T² on the soft term

    kd = KnowledgeDistillationLoss(temperature=T, alpha=alpha)
    out = kd(torch.tensor([s]), torch.tensor([t]), torch.tensor([y]))
    assert out.loss.item() == pytest.approx(expected, rel=1e-6)
    assert out.metrics["kd_soft"] == pytest.approx(T * T * kl, rel=1e-6)
    assert out.metrics["kd_hard"] == pytest.approx(hard, rel=1e-6)


def test_kd_soft_gradient_is_t_times_probability_gap():
    """With T² scaling, d(T²·KL)/dz_s = T·(p_s^T − p_t^T) / N: the gradient keeps its size as T grows."""
    torch.manual_seed(0)
    s, t = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3)
    for T in (1.0, 4.0):
        s.grad = None
        soft_kl(s, t, T).backward()
        expected = T * ((s.detach() / T).softmax(-1) - (t / T).softmax(-1)) / 4
        torch.testing.assert_close(s.grad, expected)


def test_kd_unlabelled_rows_get_the_soft_term_only():
    kd = KnowledgeDistillationLoss(temperature=3.0, alpha=0.4)
    s, t = torch.tensor([[2.0, 0.0], [0.0, 1.0]]), torch.tensor([[1.0, 1.0], [0.0, 2.0]])
    mixed = kd(s, t, torch.tensor([0, -1]))  # second row unlabelled
    labelled_only = torch.nn.functional.cross_entropy(s[:1], torch.tensor([0]))
    assert mixed.metrics["kd_hard"] == pytest.approx(labelled_only.item(), rel=1e-6)
    assert kd(s, t, None).loss.item() == pytest.approx(0.4 * soft_kl(s, t, 3.0).item(), rel=1e-6)
    with pytest.raises(ValueError, match="alpha"):
        KnowledgeDistillationLoss(alpha=1.5)
    with pytest.raises(ValueError, match="same shape"):
        kd(s, torch.zeros(2, 3))


def test_hint_loss_projection_shapes_and_mask():
    hint = HintLoss(4, 8, student_layers=[1, 2], teacher_layers=[3, 6])
    assert [tuple(r.weight.shape) for r in hint.regressors] == [(8, 4), (8, 4)]  # student width -> teacher
    s = [torch.randn(2, 5, 4, requires_grad=True) for _ in range(3)]
    t = [torch.randn(2, 5, 8) for _ in range(7)]
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = hint(s, t, mask)
    assert out.loss.dim() == 0 and out.loss.item() > 0
    out.loss.backward()
    assert s[0].grad is None and s[1].grad is not None and hint.regressors[0].weight.grad is not None
    assert s[1].grad[0, 3:].abs().sum() == 0  # padded positions give no gradient
    t2 = [x.clone() for x in t]
    t2[3][0, 3:] += 100.0  # changing padded teacher positions does not change the loss
    assert hint(s, t2, mask).loss.item() == pytest.approx(out.loss.item(), rel=1e-6)
    same = HintLoss(3, 3, student_layers=[-1], teacher_layers=[-1])
    with torch.no_grad():
        same.regressors[0].weight.copy_(torch.eye(3)), same.regressors[0].bias.zero_()
    x = torch.randn(2, 4, 3)
    assert same([x], [x]).loss.item() == 0.0
    with pytest.raises(ValueError, match="same length"):
        HintLoss(4, 8, student_layers=[1], teacher_layers=[1, 2])


def test_lwf_loss_is_ce_plus_weighted_kd():
    new, y = torch.tensor([[1.0, 0.0, -1.0]]), torch.tensor([2])
    old, rec = torch.tensor([[0.2, 0.8]]), torch.tensor([[1.0, -1.0]])
    out = LwFLoss(weight=0.5, temperature=2.0)(new, y, old, rec)
    ce = torch.nn.functional.cross_entropy(new, y).item()
    assert out.loss.item() == pytest.approx(ce + 0.5 * soft_kl(old, rec, 2.0).item(), rel=1e-6)


def test_soft_target_collator_stacks_stored_logits():
    def base(rows):
        return {"x": torch.tensor([r["x"] for r in rows])}

    batch = SoftTargetCollator(base)(
        [{"x": 1, "teacher_logits": [0.1, 0.9]}, {"x": 2, "teacher_logits": [1.0, 0.0]}]
    )
    assert batch["x"].tolist() == [1, 2] and batch["teacher_logits"].shape == (2, 2)


def test_keep_layers_cuts_a_bert_to_chosen_layers(tiny_models):
    from hftl.encoders import TextEncoder
    from hftl.models.compress import keep_layers

    enc = TextEncoder(tiny_models["bert"], max_length=16)
    wanted = enc.backbone.encoder.layer[1].state_dict()
    keep_layers(enc, [1])
    assert enc.backbone.config.num_hidden_layers == 1 and len(enc.backbone.encoder.layer) == 1
    for k, v in enc.backbone.encoder.layer[0].state_dict().items():
        torch.testing.assert_close(v, wanted[k])
    batch = enc.collator(train=False)([{"text": "a good movie"}])
    assert enc(**batch).pooled.shape == (1, 32)
    from hftl.errors import ConfigError

    with pytest.raises(ConfigError, match="student_layers"):
        keep_layers(enc, [3])


# -- recipe, end to end on a tiny BERT ----------------------------------------------------------------
@pytest.fixture
def distill_setup(tmp_path, tiny_models):
    return distill_config(tmp_path, tiny_models["bert"]), dump, tmp_path


def test_distill_recipe_trains_teacher_then_student_and_reports_speed(distill_setup):
    cfg, dump, tmp_path = distill_setup
    assert hftl(["run", "distill", "--config", dump(cfg, tmp_path / "distill.yaml")]) == 0
    assert (tmp_path / "teacher" / "model" / "hftl_model.json").is_file()  # trained first
    metrics = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert metrics["steps"] == 2 * 9  # (48 labelled + 24 unlabelled) / 8 per step, 2 epochs
    assert set(metrics["teacher"]) == {"validation", "test"} and metrics["test"]["num_samples"] == 16
    assert metrics["accuracy_retained"] == pytest.approx(
        metrics["test"]["accuracy"] / metrics["teacher"]["test"]["accuracy"]
    )
    speed = metrics["speed"]
    assert speed["batch_size"] == 8 and speed["student_ms"] > 0 and speed["speedup"] > 0
    assert metrics["parameters"]["student"] < metrics["parameters"]["teacher"]

    import hftl as h

    predictor = h.load(str(tmp_path / "student"))
    assert predictor.model.encoder.backbone.config.num_hidden_layers == 1
    assert predictor(["the movie was good"])[0]["label"] in ("negative", "positive")


def test_distill_with_fitnets_hints_runs_teacher_per_batch(distill_setup, capsys):
    cfg, dump, tmp_path = distill_setup
    assert hftl(["run", "finetune", "--config", cfg["teacher"]["finetune_config"], "train.epochs=1"]) == 0
    cfg["teacher"] = {"path": str(tmp_path / "teacher")}
    cfg["hints"] = {"_component_": "hftl.losses.HintLoss", "student_layers": [1], "teacher_layers": [2]}
    del cfg["unlabeled"]
    cfg["train"]["epochs"] = 1
    assert hftl(["run", "distill", "--config", dump(cfg, tmp_path / "hints.yaml")]) == 0
    assert "computed per batch" in capsys.readouterr().out
    history = json.loads((tmp_path / "student" / "metrics.json").read_text())
    assert history["steps"] == 6


def test_distill_config_errors_are_reported_before_training(distill_setup, capsys):
    cfg, dump, tmp_path = distill_setup
    cfg["teacher"] = {"path": str(tmp_path / "nowhere")}
    cfg["hints"] = {"_component_": "hftl.losses.HintLoss", "student_features": 3}
    assert hftl(["run", "distill", "--config", dump(cfg, tmp_path / "bad.yaml")]) == 2
    err = capsys.readouterr().err
    assert "`hints.student_features`: set by the recipe" in err
    cfg.pop("hints")
    assert hftl(["run", "distill", "--config", dump(cfg, tmp_path / "bad2.yaml")]) == 2
    assert "holds no trained model" in capsys.readouterr().err
    assert not Path(cfg["output_dir"]).exists() or not (Path(cfg["output_dir"]) / "model").exists()


def test_shipped_distill_config_validates(shipped_data):
    shipped_data("text/minilm_distill_sst2")
    assert hftl(["validate", "--config", "text/minilm_distill_sst2"]) == 0
    loaded = yaml.safe_load(
        (Path(__file__).parents[1] / "recipes/configs/text/minilm_distill_sst2.yaml").read_text()
    )
    assert loaded["recipe"] == "distill"
