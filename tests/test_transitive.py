"""Transitive transfer (source → intermediate → target) in the adapt recipe, on tiny models."""

from __future__ import annotations

import json
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import yaml
from helpers import adapt_config, write_domain_csv
from omegaconf import OmegaConf

from hftl.adaptation.transitive import TransitiveConfig, pseudo_labelled, select_pseudo_labels
from hftl.cli import main as hftl
from hftl.errors import ConfigError

INTERMEDIATE_WORDS = {"positive": "good great nice", "negative": "bad awful boring"}  # between the two

PROBS = np.array(
    [[0.95, 0.05], [0.2, 0.8], [0.05, 0.95], [0.6, 0.4], [0.01, 0.99], [0.92, 0.08], [0.03, 0.97]]
)


def test_pseudo_labels_keep_confident_rows():
    rows, labels = select_pseudo_labels(PROBS, threshold=0.9, balance=False)
    assert rows.tolist() == [0, 2, 4, 5, 6] and labels.tolist() == [0, 1, 1, 0, 1]


def test_balanced_pseudo_labels_keep_the_most_confident_k_per_class():
    # class 0: rows 0 (.95), 5 (.92); class 1: rows 2 (.95), 4 (.99), 6 (.97) -> the two best: 4, 6
    rows, labels = select_pseudo_labels(PROBS, threshold=0.9, balance=True)
    assert rows.tolist() == [0, 4, 5, 6] and labels.tolist() == [0, 1, 0, 1]
    rows, _ = select_pseudo_labels(PROBS[[1, 2, 4]], threshold=0.9, balance=True)
    assert rows.size == 0  # no confident class-0 row: nothing is kept


def test_pseudo_labelled_rows_fit_the_source_columns():
    label = datasets.ClassLabel(names=["negative", "positive"])
    source = datasets.Dataset.from_dict(
        {"text": ["good", "bad"], "label": [1, 0]},
        features=datasets.Features({"text": datasets.Value("string"), "label": label}),
    )
    unlabelled = datasets.Dataset.from_dict({"text": [f"t{i}" for i in range(7)], "extra": list(range(7))})
    pseudo = pseudo_labelled(unlabelled, PROBS, like=source, threshold=0.9, balance=False)
    assert pseudo["text"] == ["t0", "t2", "t4", "t5", "t6"] and pseudo["label"] == [0, 1, 1, 0, 1]
    assert pseudo.features == source.features
    assert len(datasets.concatenate_datasets([source, pseudo])) == 7
    with pytest.raises(ConfigError, match="lacks the column"):
        pseudo_labelled(
            unlabelled.rename_column("text", "audio"), PROBS, like=source, threshold=0.9, balance=False
        )


def test_threshold_is_validated():
    with pytest.raises(ConfigError, match=r"`transitive.threshold` must be in \[0, 1\)"):
        TransitiveConfig(threshold=1.0)


def transitive_config(tmp_path: Path, tiny: str) -> dict:
    cfg = adapt_config(tmp_path, tiny, "hftl.adaptation.DANN", hidden_features=16)
    cfg["intermediate"] = {
        "_component_": "hftl.data.ClassificationData",
        "path": write_domain_csv(tmp_path / "intermediate.csv", 32, INTERMEDIATE_WORDS, 3),  # labels dropped
        "label_names": ["negative", "positive"],
    }
    cfg["train"]["epochs"] = 1
    cfg["transitive"] = {"threshold": 0.5}  # tiny models are never confident
    return cfg


def test_stage2_starts_from_stage1_weights_and_reports_beside_direct(
    tmp_path, tiny_models, monkeypatch, capsys
):
    from hftl.recipes.adapt import AdaptRecipe

    from hftl.training import Engine

    cfg = transitive_config(tmp_path, tiny_models["bert"])
    cfg["report"]["baselines"] = ["source_only"]
    cfg["train"]["layerwise"] = {"lr_decay": 0.5, "unfreeze_every_steps": 2}
    starts, groups, finals = {}, {}, {}
    fit, run_method = Engine.fit, AdaptRecipe.run_method

    def spy_fit(engine):
        name = engine.output_dir.name
        model = engine.acc.unwrap_model(engine.model)
        starts[name] = {k: v.clone() for k, v in model.classifier.state_dict().items()}
        groups[name] = [(g["name"], g["initial_lr"]) for g in engine.optimizer.param_groups]
        return fit(engine)

    def spy_run_method(recipe, name, node, **kwargs):
        result, model = run_method(recipe, name, node, **kwargs)
        finals[name] = {k: v.clone() for k, v in model.state_dict().items()}
        return result, model

    monkeypatch.setattr(Engine, "fit", spy_fit)
    monkeypatch.setattr(AdaptRecipe, "run_method", spy_run_method)
    recipe = AdaptRecipe(OmegaConf.create(cfg))
    metrics = recipe.run()

    assert "label" not in recipe.intermediate["train"].column_names  # intermediate labels never loaded
    results = metrics["results"]
    assert list(results) == ["source_only", "dann", "dann_stage1", "dann_transitive"]
    assert metrics["method"] == "dann_transitive"
    stage1, stage2 = finals["dann_stage1"], starts["dann_transitive"]
    assert stage1.keys() == stage2.keys() and all(torch.equal(stage1[k], stage2[k]) for k in stage1)
    direct = starts["dann"]  # direct and stage 1 both start from the pretrained encoder (same seed)
    assert all(torch.equal(direct[k], starts["dann_stage1"][k]) for k in direct)
    assert any(not torch.equal(direct[k], stage2[k]) for k in direct)
    pseudo = results["dann_stage1"]["pseudo_labels"]
    assert set(pseudo) == {"negative", "positive"} and pseudo["negative"] == pseudo["positive"]  # balanced
    assert results["dann_transitive"]["steps"] == -(-(36 + 2 * pseudo["negative"]) // 8)  # source + pseudo
    lr = cfg["optimizer"]["lr"]  # layer-wise groups in the adapt recipe too (discriminator = depth 0)
    assert groups["dann_transitive"] == [
        (n, lr * 0.5**d) for d, n in enumerate(["head", "layer 1", "layer 0", "embeddings"])
    ]
    out = capsys.readouterr().out
    assert "dann_stage1: adapted source → intermediate" in out and "Transitive vs direct:" in out
    saved = json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())
    assert (
        saved["results"]["dann_transitive"]["target_test_acc"]
        == results["dann_transitive"]["target_test_acc"]
    )


def test_transitive_without_direct_or_pseudo_labels_through_the_cli(tmp_path, tiny_models):
    cfg = transitive_config(tmp_path, tiny_models["bert"])
    cfg["transitive"] = {"direct": False, "pseudo_labels": False}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(tmp_path / "cfg.yaml")]) == 0
    metrics = json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())
    assert list(metrics["results"]) == ["dann_stage1", "dann_transitive"]
    assert metrics["results"]["dann_transitive"]["steps"] == 5  # the source alone: 36 rows / batch 8
    saved = json.loads((Path(cfg["output_dir"]) / "model" / "metrics.json").read_text())
    assert saved["method"] == "dann_transitive"  # the stage-2 model is the one written


def test_bad_transitive_section_is_reported_by_validate(tmp_path, tiny_models, capsys):
    cfg = transitive_config(tmp_path, tiny_models["bert"])
    cfg["transitive"] = {"threshold": 1.5, "pseudo_label": True}
    cfg["intermediate"]["unlabeled_splits"] = []
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["validate", "--config", str(tmp_path / "cfg.yaml")]) == 2
    err = capsys.readouterr().err
    assert (
        "`transitive.pseudo_label`: unknown field of TransitiveConfig; did you mean `pseudo_labels`?" in err
    )
    assert "`intermediate.unlabeled_splits`: set by the recipe at run time" in err
