"""Recipe tests: the real `hftl` CLI end to end on tiny text, audio and vision models."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import REPO, base_config, dump, text_encoder, text_files

from hftl.cli import main as hftl
from hftl.models import LinearHead

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture
def text_config(tmp_path, tiny_models):
    enc = text_encoder(tiny_models["bert"])
    return base_config(enc, {"path": "csv", "data_files": text_files(tmp_path)}, tmp_path / "out")


def test_text_finetune_end_to_end_then_eval_and_predict(tmp_path, text_config, capsys):
    config = dump(text_config, tmp_path / "cfg.yaml")
    assert hftl(["run", "finetune", "--config", config, "optimizer.lr=4e-3", "train.epochs=3"]) == 0
    out = Path(text_config["output_dir"])
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 3 * 6  # 48 rows / batch 8 = 6 steps per epoch
    assert metrics["test"]["num_samples"] == 16
    assert metrics["test"]["accuracy"] >= 0.75  # the two classes use disjoint words: easy to learn
    saved = yaml.safe_load((out / "model" / "config.yaml").read_text())
    assert saved["optimizer"]["lr"] == 4e-3 and saved["train"]["epochs"] == 3  # overrides are recorded
    assert (out / "model" / "encoder" / "model.safetensors").is_file()

    capsys.readouterr()
    assert hftl(["eval", str(out), "--data", text_config["data"]["data_files"]["test"]]) == 0
    printed = capsys.readouterr().out
    assert "accuracy" in printed and (out / "eval_train.json").is_file()
    evaluated = json.loads((out / "eval_train.json").read_text())["train"]
    assert evaluated["accuracy"] == pytest.approx(metrics["test"]["accuracy"])  # same file, same model

    assert hftl(["predict", str(out), "the movie was good great", "the movie was awful hate", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.strip().splitlines()]
    assert [x["label"] for x in lines] == ["positive", "negative"]
    assert sum(lines[0]["scores"].values()) == pytest.approx(1.0)


def test_lora_run_saves_adapter_only(tmp_path, text_config):
    text_config["adapter"] = {"_component_": "hftl.adapters.Lora", "r": 4}
    config = dump(text_config, tmp_path / "cfg.yaml")
    assert hftl(["run", "finetune", "--config", config, "train.epochs=1"]) == 0
    enc = Path(text_config["output_dir"]) / "model" / "encoder"
    assert (enc / "adapter_model.safetensors").is_file() and (enc / "adapter_config.json").is_file()
    assert not (enc / "model.safetensors").exists()
    assert json.loads((enc.parent / "hftl_model.json").read_text())["adapter"] == "peft"


def test_audio_finetune_end_to_end(tmp_path, tiny_models):
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(24):  # two "classes": low vs high tone, 8 kHz (resampled to 16 kHz by the collator)
        freq = 300 if i % 2 else 1500
        t = np.arange(int(8000 * rng.uniform(0.3, 0.6))) / 8000
        sf.write(
            tmp_path / f"clip{i}.wav",
            0.5 * np.sin(2 * np.pi * freq * t) + 0.01 * rng.standard_normal(t.size),
            8000,
        )
        rows.append(f"clip{i}.wav,{'low' if i % 2 else 'high'}")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    enc = {
        "_component_": "hftl.encoders.AudioEncoder",
        "model": tiny_models["wav2vec2"],
        "max_duration": 0.5,
        "pooling": "stats",
    }
    data = {"path": str(tmp_path / "clips.csv"), "validation_size": 0.25, "test_size": 0.25}
    cfg = base_config(enc, data, tmp_path / "out", epochs=1, batch_size=4)
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / "cfg.yaml")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["test"]["num_samples"] == 6 and metrics["steps"] == 3


def test_vision_finetune_on_bundled_digits(tmp_path, tiny_models):
    enc = {"_component_": "hftl.encoders.VisionEncoder", "model": tiny_models["vit"], "pooling": "cls"}
    data = {"path": "hftl:sklearn_digits", "max_samples": {"train": 64, "validation": 16, "test": 16}}
    cfg = base_config(enc, data, tmp_path / "out", epochs=1)
    cfg["adapter"] = {"_component_": "hftl.adapters.Lora"}
    assert hftl(["run", "finetune", "--config", dump(cfg, tmp_path / "cfg.yaml")]) == 0
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert len(metrics["test"]["confusion_matrix"]) == 10 and metrics["steps"] == 8


def test_validate_reports_every_problem_at_once(tmp_path, text_config, capsys):
    text_config["optimizer"]["lrr"] = 1e-3
    text_config["train"]["epochs"] = "three"
    text_config["head"]["in_features"] = 32
    text_config["encoder"]["poolin"] = "mean"
    config = dump(text_config, tmp_path / "bad.yaml")
    assert hftl(["validate", "--config", config]) == 2
    err = capsys.readouterr().err
    assert "4 config errors" in err
    for needle in (
        "`optimizer.lrr`",
        "did you mean `lr`",
        "`train.epochs`",
        "`head.in_features`",
        "`encoder.poolin`",
    ):
        assert needle in err
    assert "Traceback" not in err
    assert not Path(text_config["output_dir"]).exists()  # nothing was written


def test_validate_ok_and_shipped_configs(capsys, shipped_data):
    assert hftl(["ls"]) == 0
    listing = capsys.readouterr().out
    assert "finetune" in listing and "text/minilm_lora_sst2" in listing
    for name in (
        "vision/digits_resnet",  # scikit-learn's bundled digits: no shared data
        "text/minilm_lora_sst2",
        "text/minilm_full_sst2",
        "text/minilm_probe_sst2",
    ):
        shipped_data(name)
        assert hftl(["validate", "--config", name]) == 0, name


def test_component_outside_allow_list_is_refused(tmp_path, text_config, capsys):
    text_config["optimizer"]["_component_"] = "os.system"
    config = dump(text_config, tmp_path / "evil.yaml")
    assert hftl(["run", "finetune", "--config", config]) == 2
    assert "--allow-any-component" in capsys.readouterr().err


def test_bad_data_file_is_named_and_nothing_written(tmp_path, text_config, capsys):
    text_config["data"]["data_files"]["train"] = str(tmp_path / "missing.csv")
    assert hftl(["run", "finetune", "--config", dump(text_config, tmp_path / "cfg.yaml")]) == 2
    assert "missing.csv" in capsys.readouterr().err
    assert not (Path(text_config["output_dir"]) / "model").exists()


def test_cp_copies_recipe_and_config_without_overwriting(tmp_path, capsys):
    assert hftl(["cp", "finetune", str(tmp_path / "my_recipe.py")]) == 0
    assert "class FinetuneRecipe" in (tmp_path / "my_recipe.py").read_text()
    assert hftl(["cp", "text/minilm_lora_sst2", str(tmp_path)]) == 0
    assert (tmp_path / "minilm_lora_sst2.yaml").is_file()
    assert hftl(["cp", "finetune", str(tmp_path / "my_recipe.py")]) == 2
    assert "--force" in capsys.readouterr().err
    assert hftl(["run", "finetun", "--config", "x"]) == 2
    assert "Did you mean finetune" in capsys.readouterr().err


def test_recipe_script_runs_the_same_code_path(tmp_path, text_config):
    text_config["train"].update(epochs=1, max_steps=2)
    config = dump(text_config, tmp_path / "cfg.yaml")
    proc = subprocess.run(
        [sys.executable, str(REPO / "recipes" / "finetune.py"), "--config", config],
        capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Running training" in proc.stdout
    assert json.loads((Path(text_config["output_dir"]) / "metrics.json").read_text())["steps"] == 2


def test_bf16_mixed_precision_run(tmp_path, text_config, monkeypatch):
    """Training and evaluation forwards run under bf16 autocast (the head's matmul returns bf16)."""
    calls, forward = [], LinearHead.forward

    def recording(self, x):
        out = forward(self, x)
        calls.append((self.training, out.dtype))
        return out

    monkeypatch.setattr(LinearHead, "forward", recording)
    config = dump(text_config, tmp_path / "cfg.yaml")
    assert (
        hftl(["run", "finetune", "--config", config, "train.mixed_precision=bf16", "train.max_steps=3"]) == 0
    )
    metrics = json.loads((Path(text_config["output_dir"]) / "metrics.json").read_text())
    assert (
        metrics["steps"] == 3
        and metrics["test"]["num_samples"] == 16
        and np.isfinite(metrics["test"]["loss"])
    )
    # 3 training batches; validation at the last step, then validation and test: one batch of 16 rows each
    assert calls == [(True, torch.bfloat16)] * 3 + [(False, torch.bfloat16)] * 3
