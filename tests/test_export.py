"""``hftl export --merge``: exact transformers classifiers, checked by loading them with plain transformers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from hftl.adapters import FullFinetune, Lora
from hftl.cli import main as hftl
from hftl.config import instantiate
from hftl.models import Classifier
from hftl.models.io import save_model

LABELS = ["neg", "neu", "pos"]


def _save(tmp_path, encoder: dict, head: dict, adapter) -> str:
    """A trained-looking model dir: every trainable weight (LoRA included) moved off its initial value."""
    cfg = OmegaConf.create({"encoder": encoder, "head": head})
    torch.manual_seed(0)
    enc = adapter.apply(instantiate(cfg.encoder))
    model = Classifier(enc, instantiate(cfg.head, in_features=enc.out_features, num_labels=3), LABELS)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))
    save_model(model, tmp_path / "run" / "model", adapter_kind=adapter.kind, config=cfg)
    return str(tmp_path / "run")


def _hftl_logits(run: str, rows: list[dict]) -> torch.Tensor:
    import hftl

    predictor = hftl.load(run)
    batch = predictor.collate(rows)
    with torch.no_grad():
        return predictor.model(**{k: v for k, v in batch.items() if k != "labels"}).logits


def _export(run: str, out) -> None:
    assert hftl(["export", "--merge", run, "--out", str(out)]) == 0


def test_bert_cls_tanh_mlp_with_lora_exports_exactly(tmp_path, tiny_models):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "pooling": "cls"}
    hidden = 32  # the tiny BERT's hidden size: BERT's pooler is a hidden -> hidden dense layer
    head = {"_component_": "hftl.models.MLPHead", "activation": "tanh", "hidden_features": hidden}
    run = _save(tmp_path, enc, head, Lora(r=4))
    _export(run, tmp_path / "hf")

    texts = ["a very good movie", "bad", "it was not the film of the book at all"]
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    batch = AutoTokenizer.from_pretrained(tmp_path / "hf")(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model(**batch).logits
    ours = _hftl_logits(run, [{"text": t} for t in texts])
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)
    assert model.config.id2label == dict(enumerate(LABELS))
    assert "lora" not in " ".join(model.state_dict())  # merged, no peft modules left


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_audio_mean_pooling_linear_head_exports_exactly(tmp_path, tiny_models, kind):
    from transformers import AutoFeatureExtractor, AutoModelForAudioClassification

    enc = {"_component_": "hftl.encoders.AudioEncoder", "model": tiny_models[kind], "pooling": "mean"}
    adapter = Lora(r=4) if kind == "wav2vec2" else FullFinetune()
    run = _save(tmp_path, enc, {"_component_": "hftl.models.LinearHead"}, adapter)
    _export(run, tmp_path / "hf")

    rng = np.random.default_rng(0)
    clips = [
        rng.standard_normal(16000).astype(np.float32) * 0.1,
        rng.standard_normal(9000).astype(np.float32),
    ]
    extractor = AutoFeatureExtractor.from_pretrained(tmp_path / "hf")
    inputs = extractor(clips, sampling_rate=16000, padding=True, return_tensors="pt")
    model = AutoModelForAudioClassification.from_pretrained(tmp_path / "hf").eval()
    with torch.no_grad():
        theirs = model(**inputs).logits
        import hftl

        ours = hftl.load(run).model(**inputs).logits
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_vit_cls_linear_head_exports_exactly(tmp_path, tiny_models):
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    enc = {"_component_": "hftl.encoders.VisionEncoder", "model": tiny_models["vit"], "pooling": "cls"}
    run = _save(tmp_path, enc, {"_component_": "hftl.models.LinearHead"}, FullFinetune())
    _export(run, tmp_path / "hf")

    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)) for _ in range(2)]
    model = AutoModelForImageClassification.from_pretrained(tmp_path / "hf").eval()
    inputs = AutoImageProcessor.from_pretrained(tmp_path / "hf")(images, return_tensors="pt")
    with torch.no_grad():
        theirs = model(**inputs).logits
    ours = _hftl_logits(run, [{"image": im} for im in images])
    torch.testing.assert_close(theirs, ours, atol=1e-5, rtol=0)


def test_configurations_without_exact_equivalent_are_refused(tmp_path, tiny_models, capsys):
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "pooling": "mean"}
    run = _save(tmp_path, enc, {"_component_": "hftl.models.LinearHead"}, FullFinetune())
    assert hftl(["export", "--merge", run, "--out", str(tmp_path / "hf")]) == 2
    err = capsys.readouterr().err
    assert "tanh(dense(CLS))" in err and "`mean` pooling" in err and "hftl.load" in err
    assert not (tmp_path / "hf").exists()


def test_merge_refuses_data_it_would_ignore(tmp_path, tiny_models, capsys):
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "pooling": "mean"}
    run = _save(tmp_path, enc, {"_component_": "hftl.models.LinearHead"}, FullFinetune())
    rows = tmp_path / "rows.csv"
    rows.write_text("text,label\ngood,positive\n")
    assert hftl(["export", "--merge", run, "--data", str(rows), "--out", str(tmp_path / "hf")]) == 2
    assert "--data applies to --onnx only" in capsys.readouterr().err
    assert not (tmp_path / "hf").exists()
