"""What `hftl run adapt` evaluates when: target test split at the selected step only unless
`report.target_curve`, the same selection and numbers either way, and the wall-time split of each run."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import adapt_config
from hftl.recipes import adapt
from hftl.recipes.adapt import AdaptRecipe
from omegaconf import OmegaConf

from hftl.adaptation import scoring
from hftl.cli import main as hftl
from hftl.data import ClassificationData


def _run(cfg: dict, path: Path) -> dict:
    path.write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(path)]) == 0
    return json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())["results"]["dann"]


def test_target_test_is_scored_at_the_selected_step_unless_the_curve_is_asked(tmp_path, tiny_models, capsys):
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.DANN", hidden_features=16)
    cfg["train"].update(eval_every_steps=2)
    plain = _run(cfg, tmp_path / "plain.yaml")
    assert "dann wall time" in capsys.readouterr().out
    cfg["output_dir"] = str(tmp_path / "curve")
    cfg["report"]["target_curve"] = True
    curve = _run(cfg, tmp_path / "curve.yaml")

    assert all("eval_target_test_acc" not in h for h in plain["history"])
    assert all("eval_target_test_acc" in h for h in curve["history"])
    assert plain["selected_step"] == curve["selected_step"]
    at_selected = next(h for h in curve["history"] if h["step"] == curve["selected_step"])
    assert plain["target_test_acc"] == curve["target_test_acc"] == at_selected["eval_target_test_acc"]
    for a, b in zip(plain["history"], curve["history"], strict=True):  # every other score unchanged
        assert a == {k: v for k, v in b.items() if k != "eval_target_test_acc"}
    split = plain["wall_time_s"]
    assert set(split) == {"build", "train", "evaluation", "selection", "checkpoints"}
    assert all(v >= 0 for v in split.values())


def test_diagnostics_do_not_change_the_trained_model(tmp_path, tiny_models):
    """The features taken before training (for the proxy A-distance) are taken only with diagnostics on,
    and reading them draws nothing from the training RNG: the same run with and without them is identical."""
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.DANN", hidden_features=16)
    cfg["train"].update(eval_every_steps=5)
    without = _run(cfg, tmp_path / "without.yaml")
    cfg["output_dir"] = str(tmp_path / "with")
    cfg["report"]["diagnostics"] = True
    with_diagnostics = _run(cfg, tmp_path / "with.yaml")
    assert "proxy_a_distance" in with_diagnostics and "proxy_a_distance" not in without
    for key in ("history", "selected_step", "target_test_acc", "source_val_acc"):
        assert with_diagnostics[key] == without[key], key


def test_periodic_evaluations_run_only_what_the_criterion_reads(tmp_path, tiny_models):
    """With `im` (the default) the source training subset is not run at each evaluation (only `dev` reads
    it); `selection.score_all` runs it and adds `dev`, and nothing else changes."""
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.DANN", hidden_features=16)
    cfg["train"].update(eval_every_steps=2)
    plain = _run(cfg, tmp_path / "plain.yaml")
    cfg["output_dir"] = str(tmp_path / "all")
    cfg["selection"] = {**cfg.get("selection", {}), "score_all": True}
    every = _run(cfg, tmp_path / "all.yaml")

    assert all("eval_dev" not in h and "eval_im" in h for h in plain["history"])
    assert all("eval_dev" in h for h in every["history"])
    for a, b in zip(plain["history"], every["history"], strict=True):
        assert a == {k: v for k, v in b.items() if k != "eval_dev"}
    for key in ("selected_step", "target_test_acc", "final_scores"):
        assert plain[key] == every[key], key  # the selected checkpoint is scored on every split either way
    assert "dev" in plain["final_scores"]


@pytest.mark.parametrize("carved", [False, True])
def test_the_target_is_read_once_when_the_oracle_needs_its_labels(tmp_path, tiny_models, monkeypatch, carved):
    """With `target_oracle` planned the target is loaded labelled once; the other runs see the same rows
    without train labels, exactly what loading it unlabelled gives (explicit test split or carved)."""
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.DANN", hidden_features=16)
    cfg["report"]["baselines"] = ["target_oracle"]
    if carved:
        cfg["target"]["data_files"] = {"train": cfg["target"]["data_files"]["train"]}
        cfg["target"]["test_size"] = 0.5
    loads = []
    load = ClassificationData.load
    monkeypatch.setattr(ClassificationData, "load", lambda spec: loads.append(spec.path) or load(spec))
    recipe = AdaptRecipe(OmegaConf.create(cfg))
    recipe.setup()
    assert loads == [cfg["source"]["path"], "csv"]  # source, then the target once
    assert "label" in recipe.labelled_target["train"].column_names
    assert "label" not in recipe.target["train"].column_names
    unlabelled = recipe._domain("target", labelled=False)[1]
    assert recipe.target.label_names == unlabelled.label_names
    for split in ("train", "test"):
        assert recipe.target[split].to_dict() == unlabelled[split].to_dict(), split


def test_the_selected_checkpoint_reuses_what_its_periodic_evaluation_ran(tmp_path, tiny_models, monkeypatch):
    """The final scoring runs only the splits the periodic evaluations skipped (source training subset,
    target test) when the model holds the selected step's weights, the proxy A-distance reads the features
    just scored, and every number equals a run that scores everything again."""
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.DANN", hidden_features=16)
    cfg["train"].update(eval_every_steps=3, epochs=3)
    cfg["optimizer"]["lr"] = 1e-2
    cfg["selection"] = {"criterion": "snd"}  # picks an early step on this tiny run (im: the last one)
    cfg["report"]["diagnostics"] = True
    calls = []
    collect = scoring.collect_outputs
    monkeypatch.setattr(scoring, "collect_outputs", lambda *a: calls.append(1) or collect(*a))
    monkeypatch.setattr(adapt, "collect_outputs", scoring.collect_outputs)  # the features before training
    reused = _run(cfg, tmp_path / "reused.yaml")
    evaluations = len(reused["history"])
    assert evaluations >= 2 and reused["selected_step"] != reused["steps"]  # a restored best checkpoint
    # 2 splits before training (diagnostics), 2 per periodic evaluation, 2 for the selected checkpoint
    assert len(calls) == 2 + 2 * evaluations + 2
    monkeypatch.setattr(AdaptRecipe, "_known", lambda self, run, state: None)
    cfg["output_dir"] = str(tmp_path / "again")
    again = _run(cfg, tmp_path / "again.yaml")
    for key in ("selected_step", "target_test_acc", "source_val_acc", "final_scores", "proxy_a_distance"):
        assert reused[key] == again[key], key
