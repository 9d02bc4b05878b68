"""The collapse guard: exact signals on toy predictions (2 and 10 classes, imbalanced priors), then the adapt
recipe end to end: a run forced to collapse warns, stops and keeps its pre-collapse checkpoint; a healthy
run is left alone."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from helpers import adapt_config

from hftl.adaptation.collapse import CollapseGuard, fix_advice, prediction_signals
from hftl.adaptation.config import SelectionConfig
from hftl.cli import main as hftl
from hftl.errors import ConfigError
from hftl.training.engine import SELECTABLE, STOP_TRAINING


def _guard(**over) -> CollapseGuard:
    return CollapseGuard(**{"share": 0.8, "entropy": 0.5, "source_drop": 0.5, "stop_after": 2, "log": lambda m: None, **over})  # fmt: skip


def _probs(classes: list[int], num: int, confidence: float) -> np.ndarray:
    """One row per entry of ``classes``: ``confidence`` on that class, the rest spread evenly."""
    rows = np.full((len(classes), num), (1 - confidence) / (num - 1))
    rows[np.arange(len(classes)), classes] = confidence
    return rows


def test_signals_are_the_histogram_relative_to_the_source_prior():
    labels = np.array([0] * 72 + [1] * 28)  # imbalanced source prior
    s = prediction_signals(_probs([0] * 90 + [1] * 10, 2, 0.9), labels)
    mean = np.array([0.9 * 0.9 + 0.1 * 0.1, 0.9 * 0.1 + 0.1 * 0.9])
    entropy = lambda p: -(p * np.log(p)).sum()  # noqa: E731
    assert s["target_top_class"] == 0 and s["target_top_share"] == pytest.approx(0.9)
    assert s["target_top_prior"] == pytest.approx(0.72) and s["source_chance"] == pytest.approx(0.72)
    assert s["target_entropy_ratio"] == pytest.approx(entropy(mean) / entropy(np.array([0.72, 0.28])))


@pytest.mark.parametrize(
    "num,prior,predicted,confidence,collapsed",
    [
        (2, [50, 50], [0] * 100, 0.97, True),  # binary, everything one class
        (2, [50, 50], [0] * 60 + [1] * 40, 0.95, False),  # binary, healthy
        (2, [50, 50], [0] * 100, 0.55, False),  # an untrained model: argmax one class, soft near uniform
        (2, [72, 28], [0] * 100, 0.99, True),  # imbalanced prior, collapsed onto the majority
        (2, [72, 28], [0] * 85 + [1] * 15, 0.95, False),  # imbalanced prior, healthy (a little label shift)
        (10, [10] * 10, [3] * 95 + list(range(5)), 0.95, True),  # 10 classes, collapsed onto class 3
        (10, [10] * 10, [i % 10 for i in range(100)], 0.9, False),  # 10 classes, healthy
        (10, [30] + [70 // 9] * 9, [0] * 35 + [i % 10 for i in range(65)], 0.9, False),  # 10, imbalanced
    ],
)
def test_prediction_collapse_holds_for_two_and_ten_classes(num, prior, predicted, confidence, collapsed):
    labels = np.repeat(np.arange(num), prior)
    signals = prediction_signals(_probs(predicted, num, confidence), labels)
    assert (_guard().prediction_collapse(signals) is not None) == collapsed


def test_one_class_argmax_after_source_skill_was_lost_is_collapse():
    """The adversarial text collapse: every output near uniform (no low-entropy mean prediction), its
    argmax on one class, and source-val accuracy no better than the majority class."""
    labels = np.array([0] * 79 + [1] * 71)  # books: majority class 52.7 %
    flat = prediction_signals(_probs([1] * 100, 2, 0.51), labels)
    assert flat["target_entropy_ratio"] > 0.99  # the entropy rule alone cannot see it
    guard, earlier = _guard(), [{"step": 15, "eval_source_val_acc": 0.547, "eval_collapse": 0.0}]
    why = guard.reasons({**flat, "source_val_acc": 0.473}, earlier)
    assert len(why) == 1 and "no better than the majority-class rate 52.7%" in why[0]
    assert guard.reasons({**flat, "source_val_acc": 0.473}, []) == []  # a first evaluation: maybe untrained
    never = [{"step": 15, "eval_source_val_acc": 0.52, "eval_collapse": 0.0}]  # not above chance yet
    assert guard.reasons({**flat, "source_val_acc": 0.473}, never) == []
    assert guard.reasons({**flat, "source_val_acc": 0.54}, earlier) == []  # some source skill: not collapsed
    spread = prediction_signals(_probs([0, 1] * 50, 2, 0.51), labels)  # argmax not on one class
    assert guard.reasons({**spread, "source_val_acc": 0.40}, earlier) == []
    # the fallback's check of a final model (no history) applies it; without source-val it cannot
    assert guard.prediction_collapse({**flat, "source_val_acc": 0.5}) is not None
    assert guard.prediction_collapse(flat) is None


def test_source_accuracy_drop_is_relative_to_the_margin_above_chance():
    healthy = prediction_signals(_probs([0, 1] * 50, 2, 0.9), np.array([0, 1] * 50))
    history = [{"step": 1, "eval_source_val_acc": 0.9, "eval_collapse": 0.0}]
    # best 0.9, chance 0.5: half the margin is 0.2 points -> 0.7 is collapsed, 0.71 is not
    assert _guard().reasons({**healthy, "source_val_acc": 0.71}, history) == []
    assert (
        "fell to 70.0% from its best 90.0%"
        in _guard().reasons({**healthy, "source_val_acc": 0.7}, history)[0]
    )
    # collapsed evaluations do not count as the best earlier value
    history.append({"step": 2, "eval_source_val_acc": 0.99, "eval_collapse": 1.0})
    assert _guard().reasons({**healthy, "source_val_acc": 0.71}, history) == []
    # a task not learnt yet (best 20% with 10 classes, less than halfway to 100%) cannot be lost: early noise
    ten = prediction_signals(_probs([i % 10 for i in range(100)], 10, 0.5), np.arange(100) % 10)
    early = [{"step": 1, "eval_source_val_acc": 0.2, "eval_collapse": 0.0}]
    assert _guard().reasons({**ten, "source_val_acc": 0.12}, early) == []
    learnt = [{"step": 1, "eval_source_val_acc": 0.6, "eval_collapse": 0.0}]  # 0.6 >= 0.1 + 0.45
    assert len(_guard().reasons({**ten, "source_val_acc": 0.34}, learnt)) == 1  # lost 0.26 >= 0.25


def test_the_engine_keys_mark_collapse_and_stop_after_a_streak():
    messages = []
    guard = _guard(log=messages.append, name="dann", fix="Likely fix: lower `method.trade_off`.")
    labels = np.array([0, 1] * 50)
    collapsed = {**prediction_signals(_probs([1] * 100, 2, 0.99), labels), "source_val_acc": 0.9, "train_domain_acc": 0.51}  # fmt: skip
    first = guard(collapsed, [{"step": 10, "eval_source_val_acc": 0.9, "eval_collapse": 0.0}], 20)
    assert first["collapse"] == 1.0 and first[SELECTABLE] == 0.0 and STOP_TRAINING not in first
    second = guard(collapsed, [{"step": 20, "eval_source_val_acc": 0.9, "eval_collapse": 1.0}], 30)
    assert second[STOP_TRAINING] == 1.0
    assert "dann collapsed at step 30 (2 evaluation(s) in a row)" in messages[1]
    assert "discriminator accuracy 0.51" in messages[1] and "lower `method.trade_off`" in messages[1]
    healthy = guard({**collapsed, **prediction_signals(_probs([0, 1] * 50, 2, 0.99), labels)}, [], 10)
    assert healthy["collapse"] == 0.0 and SELECTABLE not in healthy


@pytest.mark.parametrize("field,value", [("collapse_share", 0.0), ("collapse_entropy", 1.5), ("collapse_stop_after", -1)])  # fmt: skip
def test_thresholds_are_validated(field, value):
    with pytest.raises(ConfigError, match=f"`selection.{field}`"):
        SelectionConfig(**{field: value})


def _run(tmp_path: Path, cfg: dict) -> dict:
    cfg["train"].update(epochs=4, eval_every_steps=2)  # 20 steps, an evaluation every 2
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(tmp_path / "cfg.yaml"), "--allow-any-component"]) == 0
    return json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())


def test_guard_stops_a_collapsing_run_and_keeps_its_pre_collapse_checkpoint(tmp_path, tiny_models, capsys):
    # helpers.OneClass pushes every target prediction to class 0 (trade_off 5: within a few steps)
    cfg = adapt_config(tmp_path, tiny_models["bert"], "helpers.OneClass", trade_off=5.0)
    metrics = _run(tmp_path, cfg)
    result = metrics["results"]["one_class"]
    out = capsys.readouterr().out
    assert "WARNING: one_class collapsed at step" in out and "lower `method.trade_off` (now 5" in out
    history = {h["step"]: h for h in result["history"]}
    collapse = result["collapse"]
    assert collapse["collapsed"] and collapse["stopped_early"] and result["steps"] < 20
    # it stopped at the second collapsed evaluation in a row; the kept step is an earlier, healthy one
    assert [h["eval_collapse"] for h in result["history"]][-2:] == [1.0, 1.0]
    assert collapse["stopped_at"] == result["steps"] and collapse["collapsed_evaluations"] == 2
    assert result["selected_step"] == collapse["kept_step"] < collapse["first_step"]
    assert history[result["selected_step"]]["eval_collapse"] == 0.0
    assert history[collapse["first_step"]]["eval_target_top_share"] == 1.0
    assert (
        f"WARNING: one_class collapsed at step {collapse['first_step']}" in out.split("Adaptation report")[1]
    )


def test_guard_stays_silent_on_a_healthy_run(tmp_path, tiny_models, capsys):
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.DANN", hidden_features=16)
    result = _run(tmp_path, cfg)["results"]["dann"]
    assert "collapsed" not in capsys.readouterr().out
    assert result["collapse"] == {"collapsed": False} and result["steps"] == 20
    assert [h["eval_collapse"] for h in result["history"]] == [0.0] * 10


def test_guard_off_lets_the_run_collapse(tmp_path, tiny_models):
    cfg = adapt_config(tmp_path, tiny_models["bert"], "helpers.OneClass", trade_off=5.0)
    cfg["selection"] = {"collapse_guard": False}
    result = _run(tmp_path, cfg)["results"]["one_class"]
    assert result["steps"] == 20 and "collapse" not in result
    assert result["final_scores"]["target_top_share"] == 1.0  # the kept model predicts one class


def test_fix_advice_names_the_settings_of_the_method():
    from hftl.adaptation import DANN, MCC

    advice = fix_advice(DANN(in_features=8, num_classes=2, trade_off=1.0, warmup="none"))
    assert "`method.trade_off` (now 1; try 0.1–0.33)" in advice and "`method.warmup=ganin`" in advice
    assert "`method.grl_alpha`" in advice
    assert "method.warmup" not in fix_advice(DANN(in_features=8, num_classes=2, trade_off=0.1))
    assert "grl_alpha" not in fix_advice(MCC(in_features=8, num_classes=2))
