"""The adapt recipe end to end on tiny models: every method, baselines, leak-proof target data."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml
from safetensors.torch import load_file

from hftl.cli import main as hftl

SOURCE_WORDS = {"positive": "good great fine", "negative": "bad awful poor"}
TARGET_WORDS = {"positive": "good nice love", "negative": "bad boring hate"}  # shifted vocabulary


def write_csv(path: Path, n: int, words: dict[str, str], seed: int, *, flip_labels: bool = False) -> str:
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        label = ["negative", "positive"][i % 2]
        text = " ".join(rng.choice(words[label].split(), size=3))
        shown = {"negative": "positive", "positive": "negative"}[label] if flip_labels else label
        rows.append(f"it was {text},{shown}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def adapt_config(
    tmp_path: Path, tiny: str, method: str, *, target_train: str | None = None, **method_args
) -> dict:
    return {
        "recipe": "adapt",
        "output_dir": str(tmp_path / f"out_{method.rsplit('.', 1)[-1]}"),
        "seed": 0,
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": tiny, "max_length": 16},
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead", "dropout": 0.0},
        "source": {
            "_component_": "hftl.data.ClassificationData",
            "path": write_csv(tmp_path / "source.csv", 48, SOURCE_WORDS, 0),
            "validation_size": 0.25,
            "label_names": ["negative", "positive"],
        },
        "target": {
            "_component_": "hftl.data.ClassificationData",
            "path": "csv",
            "data_files": {
                "train": target_train or write_csv(tmp_path / "target_train.csv", 32, TARGET_WORDS, 1),
                "test": write_csv(tmp_path / "target_test.csv", 16, TARGET_WORDS, 2),
            },
            "label_names": ["negative", "positive"],
        },
        "method": {"_component_": method, **method_args},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 3e-3},
        # group_by_length off: batches independent of how lengths are counted (words or tokens)
        "train": {"epochs": 2, "batch_size": 8, "log_every_steps": 1, "group_by_length": False},
        "report": {"baselines": [], "diagnostics": False},
    }


def run(cfg: dict, path: Path) -> dict:
    path.write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(path)]) == 0
    return json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())


METHODS = [
    ("hftl.adaptation.DANN", {"hidden_features": 16}),
    ("hftl.adaptation.CDAN", {"hidden_features": 16, "entropy": True}),
    ("hftl.adaptation.MDD", {"hidden_features": 16}),
    ("hftl.adaptation.MCC", {}),
    ("hftl.adaptation.DAN", {}),
    ("hftl.adaptation.JAN", {}),
    ("hftl.adaptation.CORAL", {}),
    ("hftl.adaptation.SelfTraining", {"threshold": 0.6}),
    ("hftl.adaptation.ADDA", {"hidden_features": 16}),
]


@pytest.mark.parametrize("method,args", METHODS, ids=[m.rsplit(".", 1)[-1] for m, _ in METHODS])
def test_each_method_trains_and_lowers_source_loss(tmp_path, tiny_models, method, args):
    metrics = run(adapt_config(tmp_path, tiny_models["bert"], method, **args), tmp_path / "cfg.yaml")
    result = metrics["results"][metrics["method"]]
    assert result["steps"] == 2 * 5  # 36 source train rows / batch 8 = 5 pairs per epoch (target cycles)
    history = result["history"]
    if method.endswith("ADDA"):  # stage 2 trains only the target encoder against the discriminator
        assert "eval_train_domain_acc" in history[-1]
    assert {"im", "snd", "dev", "source_val_acc", "target_test_acc"} <= {
        k[5:] for k in history[0] if k.startswith("eval_")
    }
    assert history[-1]["eval_source_val_acc"] >= 0.75  # the source task is learnt while adapting


def test_baselines_run_beside_the_method_and_report(tmp_path, tiny_models, capsys):
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.DANN", hidden_features=16)
    cfg["report"] = {"baselines": ["source_only", "target_oracle"], "diagnostics": True, "plot": "pca"}
    metrics = run(cfg, tmp_path / "cfg.yaml")
    assert list(metrics["results"]) == ["source_only", "target_oracle", "dann"]
    out = capsys.readouterr().out
    assert "Adaptation report" in out and "source_only" in out and "target_oracle" in out
    pad = metrics["results"]["dann"]["proxy_a_distance"]
    assert 0.0 <= pad["before"] <= 2.0 and 0.0 <= pad["after"] <= 2.0
    assert (Path(cfg["output_dir"]) / "features_dann.png").stat().st_size > 1000
    assert metrics["selection_criterion"] == "im"


def test_target_training_labels_cannot_change_the_model(tmp_path, tiny_models):
    """Leak test: flip every target *training* label; the trained weights must be bit-identical."""
    weights = []
    for flip in (False, True):
        sub = tmp_path / f"flip{flip}"
        sub.mkdir()
        train = write_csv(sub / "target_train.csv", 32, TARGET_WORDS, 1, flip_labels=flip)
        cfg = adapt_config(
            sub, tiny_models["bert"], "hftl.adaptation.DANN", target_train=train, hidden_features=16
        )
        run(cfg, sub / "cfg.yaml")
        model_dir = Path(cfg["output_dir"]) / "model"
        weights.append(
            {
                **load_file(model_dir / "head.safetensors"),
                **load_file(model_dir / "encoder" / "model.safetensors"),
            }
        )
    assert weights[0].keys() == weights[1].keys()
    for name in weights[0]:
        assert (weights[0][name] == weights[1][name]).all(), name


def test_target_with_labels_in_config_is_refused(tmp_path, tiny_models, capsys):
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.CORAL")
    cfg["target"]["unlabeled_splits"] = []  # trying to keep target training labels
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "`target.unlabeled_splits`: set by the recipe at run time" in capsys.readouterr().err
