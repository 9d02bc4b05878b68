"""Component tests of hftl.models.io (save/load round trips) and the predictor on tiny random models."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf
from PIL import Image

import hftl
from hftl.adapters import Frozen, FullFinetune, Lora
from hftl.config import instantiate
from hftl.errors import DataError, ModelLoadError
from hftl.models import Classifier, io
from hftl.models.io import find_model_dir, load_model, save_model

LABELS = ["negative", "positive"]
TEXTS = ["a very good movie", "bad", "it was not the film of the book"]


def _config(model_path: str, encoder: str = "hftl.encoders.TextEncoder", pooling: str = "attention"):
    return OmegaConf.create(
        {
            "encoder": {"_component_": encoder, "model": model_path, "pooling": pooling},
            "head": {"_component_": "hftl.models.MLPHead", "hidden_features": 8},
        }
    )


def _build(cfg, adapter) -> Classifier:
    torch.manual_seed(0)
    encoder = adapter.apply(instantiate(cfg.encoder))
    head = instantiate(cfg.head, in_features=encoder.out_features, num_labels=len(LABELS))
    model = Classifier(encoder, head, LABELS)
    with torch.no_grad():  # move every trainable weight off its initial value, as training would
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.05 * torch.randn_like(p))
    return model.eval()


def _logits(model: Classifier, texts: list[str] = TEXTS) -> torch.Tensor:
    batch = model.encoder.collator(train=False)([{"text": t} for t in texts])
    with torch.no_grad():
        return model(**batch).logits


@pytest.mark.parametrize("adapter", [FullFinetune(), Frozen(), Lora(r=4)], ids=["full", "frozen", "lora"])
def test_round_trip_gives_same_logits(tiny_models, tmp_path, adapter):
    cfg = _config(tiny_models["bert"])
    model = _build(cfg, adapter)
    out = save_model(
        model, tmp_path / "model", adapter_kind=adapter.kind, config=cfg, metrics={"accuracy": 0.5}
    )
    files = {p.name for p in out.iterdir()}
    assert {"hftl_model.json", "config.yaml", "head.safetensors", "metrics.json", "encoder"} <= files
    encoder_files = {p.name for p in (out / "encoder").iterdir()}
    assert "tokenizer.json" in encoder_files or "vocab.txt" in encoder_files
    if adapter.kind == "peft":
        assert {"adapter_config.json", "adapter_model.safetensors"} <= encoder_files
        assert "model.safetensors" not in encoder_files
    elif adapter.kind == "full":
        assert {"config.json", "model.safetensors"} <= encoder_files
    else:
        assert "model.safetensors" not in encoder_files and "adapter_model.safetensors" not in encoder_files
    meta = json.loads((out / "hftl_model.json").read_text())
    assert meta["adapter"] == adapter.kind and meta["label_names"] == LABELS and meta["modality"] == "text"

    loaded, loaded_cfg, loaded_meta = load_model(tmp_path)  # a run output dir holding model/
    assert not loaded.training and loaded_meta == meta and loaded_cfg.head.hidden_features == 8
    torch.testing.assert_close(_logits(loaded), _logits(model))


def test_from_config_frozen_encoder_is_saved_whole(tmp_path):
    cfg = OmegaConf.create(
        {
            "encoder": {
                "_component_": "hftl.encoders.VisionEncoder",
                "model": {
                    "_component_": "transformers.ViTConfig",
                    **dict(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32),
                    **dict(image_size=16, patch_size=8),
                },
                "processor": {
                    "_component_": "transformers.ViTImageProcessor",
                    "size": {"height": 16, "width": 16},
                },
            },
            "head": {"_component_": "hftl.models.LinearHead"},
        }
    )
    model = _build(cfg, Frozen())
    out = save_model(model, tmp_path / "model", adapter_kind="frozen", config=cfg)
    assert json.loads((out / "hftl_model.json").read_text())["adapter"] == "full"
    loaded, _, _ = load_model(out)
    batch = model.encoder.collator(train=False)([{"image": Image.new("RGB", (20, 20), (9, 99, 199))}])
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, model(**batch).logits)


def test_crash_during_save_keeps_previous_model(tiny_models, tmp_path, monkeypatch):
    cfg = _config(tiny_models["bert"])
    model = _build(cfg, Frozen())
    target = save_model(model, tmp_path / "model", adapter_kind="frozen", config=cfg)
    before = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}

    def explode(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(io, "save_file", explode)  # dies after the encoder files are written
    with pytest.raises(RuntimeError, match="disk full"):
        save_model(_build(cfg, Frozen()), target, adapter_kind="frozen", config=cfg)
    after = {p.relative_to(target): p.read_bytes() for p in target.rglob("*") if p.is_file()}
    assert after == before
    assert [p.name for p in tmp_path.iterdir()] == ["model"]  # no partial temporary directory left behind
    monkeypatch.undo()
    torch.testing.assert_close(_logits(load_model(target)[0]), _logits(model))


def test_find_model_dir(tiny_models, tmp_path):
    cfg = _config(tiny_models["bert"])
    saved = save_model(_build(cfg, Frozen()), tmp_path / "model", adapter_kind="frozen", config=cfg)
    assert find_model_dir(saved) == saved
    assert find_model_dir(tmp_path) == saved
    with pytest.raises(ModelLoadError, match="hftl_model.json"):
        find_model_dir(saved / "encoder")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(tmp_path / "nowhere")


def test_text_predictor(tiny_models, tmp_path):
    cfg = _config(tiny_models["bert"], pooling="mean")
    model = _build(cfg, Lora(r=4))
    save_model(model, tmp_path / "model", adapter_kind="peft", config=cfg)
    predictor = hftl.load(str(tmp_path), device="cpu")
    results = predictor(TEXTS, batch_size=2)
    assert len(results) == 3
    expected = _logits(model).softmax(-1)
    for result, probs in zip(results, expected, strict=True):
        assert set(result) == {"label", "score", "scores"} and list(result["scores"]) == LABELS
        assert sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
        assert result["label"] == LABELS[int(probs.argmax())]
        assert result["score"] == pytest.approx(float(probs.max()), abs=1e-5)
    with pytest.raises(DataError, match="non-empty string"):
        predictor(["fine", "  "])


def test_image_predictor(tiny_models, tmp_path):
    cfg = _config(tiny_models["vit"], encoder="hftl.encoders.VisionEncoder", pooling="cls")
    save_model(_build(cfg, FullFinetune()), tmp_path / "model", adapter_kind="full", config=cfg)
    png = tmp_path / "digit.png"
    Image.new("L", (28, 28), 200).save(png)
    predictor = hftl.load(str(tmp_path / "model"), device="cpu")
    (result,) = predictor([str(png)])
    assert result["label"] in LABELS and sum(result["scores"].values()) == pytest.approx(1.0, abs=1e-5)
    for again in predictor([png, Image.open(png)]):  # a Path and an opened image give the same answer
        assert again["label"] == result["label"] and again["scores"] == pytest.approx(result["scores"])
    with pytest.raises(DataError, match="does not exist"):
        predictor([str(tmp_path / "missing.png")])
