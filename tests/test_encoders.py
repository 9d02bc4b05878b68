"""Component tests of hftl.encoders: pooling, the text/audio/vision encoders on tiny random models, loading."""

from __future__ import annotations

import pytest
import torch
import transformers
from PIL import Image

from hftl.encoders import (
    OFFLINE_MIRRORS,
    AudioEncoder,
    Pooling,
    TextEncoder,
    VisionEncoder,
    resolve_model_path,
)
from hftl.errors import ConfigError, ModelLoadError

TEXTS = [{"text": "the movie was very good"}, {"text": "bad"}]


def _images() -> list[dict]:
    return [{"image": Image.new("RGB", (40, 40), (200, 10, 10))}, {"image": Image.new("L", (20, 28), 128)}]


# --- pooling ---------------------------------------------------------------------------------------


def _states() -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 4)
    mask = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]])
    return hidden, mask


def test_mean_pooling_averages_unmasked_positions_only():
    hidden, mask = _states()
    out = Pooling("mean", 4)(hidden, mask)
    torch.testing.assert_close(out[0], hidden[0].mean(0))
    torch.testing.assert_close(out[1], hidden[1, :2].mean(0))
    torch.testing.assert_close(Pooling("mean", 4)(hidden), hidden.mean(1))  # no mask: every position


def test_cls_pooling_takes_first_token():
    hidden, mask = _states()
    torch.testing.assert_close(Pooling("cls", 4)(hidden, mask), hidden[:, 0])


def test_stats_pooling_is_mean_and_std_of_unmasked_rows():
    hidden, mask = _states()
    pool = Pooling("stats", 4)
    out = pool(hidden, mask)
    assert pool.out_features == 8 and out.shape == (2, 8)
    for i, n in enumerate((5, 2)):
        rows = hidden[i, :n]
        torch.testing.assert_close(out[i], torch.cat([rows.mean(0), torch.std(rows, dim=0, unbiased=False)]))


def test_attention_pooling_ignores_masked_positions_and_learns():
    hidden, mask = _states()
    torch.manual_seed(1)
    pool = Pooling("attention", 4)
    out = pool(hidden, mask)
    changed = hidden.clone()
    changed[1, 2:] = 100.0  # masked positions of example 1
    torch.testing.assert_close(pool(changed, mask), out)
    # the output is a convex combination of the unmasked rows
    assert torch.all(out[1] <= hidden[1, :2].max(0).values + 1e-6)
    assert torch.all(out[1] >= hidden[1, :2].min(0).values - 1e-6)
    (out**2).sum().backward()
    assert pool.scorer.weight.grad is not None and pool.scorer.weight.grad.abs().sum() > 0


def test_unknown_pooling_is_a_config_error():
    with pytest.raises(ConfigError, match="encoder.pooling"):
        Pooling("max", 4)


# --- encoders on tiny models -----------------------------------------------------------------------


@pytest.mark.parametrize("pooling", ["cls", "mean", "stats", "attention"])
def test_text_encoder_shapes_per_pooling(tiny_models, pooling):
    enc = TextEncoder(tiny_models["bert"], pooling=pooling).eval()
    batch = enc.collator(train=False)(TEXTS)
    assert set(batch) >= {"input_ids", "attention_mask"}
    out = enc(**batch)
    assert enc.out_features == (64 if pooling == "stats" else 32)
    assert out.pooled.shape == (2, enc.out_features)
    assert out.hidden.shape == (2, batch["input_ids"].shape[1], 32)
    torch.testing.assert_close(out.mask, batch["attention_mask"])


def test_text_encoder_layer_choice(tiny_models):
    path = tiny_models["bert"]
    batch = TextEncoder(path).collator(train=False)(TEXTS)
    first, last = TextEncoder(path, layer=0).eval(), TextEncoder(path, layer=-1).eval()
    assert not torch.allclose(first(**batch).hidden, last(**batch).hidden)
    torch.testing.assert_close(TextEncoder(path, layer=2).eval()(**batch).hidden, last(**batch).hidden)
    for layer in (3, -4):
        with pytest.raises(ConfigError, match="encoder.layer"):
            TextEncoder(path, layer=layer)


def test_freeze_modules(tiny_models):
    enc = TextEncoder(tiny_models["bert"], freeze_modules=["embeddings"])
    grads = {n: p.requires_grad for n, p in enc.backbone.named_parameters()}
    assert not any(g for n, g in grads.items() if n.startswith("embeddings"))
    assert all(g for n, g in grads.items() if n.startswith("encoder"))
    with pytest.raises(ConfigError, match="encoder.freeze_modules") as err:
        TextEncoder(tiny_models["bert"], freeze_modules=["embedings"])
    assert "'embedings'" in str(err.value) and "embeddings" in str(err.value)


@pytest.mark.parametrize("kind", ["wav2vec2", "hubert"])
def test_audio_encoder_frame_mask(tiny_models, wavs, kind):
    enc = AudioEncoder(tiny_models[kind], pooling="stats").eval()
    batch = enc.collator(train=False)(wavs)
    assert batch["input_values"].shape == (2, 16000)
    out = enc(**batch)
    assert enc.out_features == 64 and out.pooled.shape == (2, 64)
    assert out.mask.shape == out.hidden.shape[:2]
    valid = out.mask.sum(1)
    assert valid[0] == out.hidden.shape[1] and 0 < valid[1] < valid[0]  # the padded clip has fewer frames


def test_audio_collator_crops_to_max_duration(tiny_models, wavs):
    enc = AudioEncoder(tiny_models["wav2vec2"], max_duration=0.25)
    batch = enc.collator(train=True)(wavs)
    assert batch["input_values"].shape == (2, 4000)
    assert enc(**batch).pooled.shape == (2, 32)


def test_freeze_feature_encoder(tiny_models):
    enc = AudioEncoder(tiny_models["wav2vec2"])
    params = dict(enc.backbone.named_parameters())
    conv = [p.requires_grad for n, p in params.items() if n.startswith("feature_extractor.")]
    layers = [p.requires_grad for n, p in params.items() if n.startswith("encoder.layers.")]
    assert conv and not any(conv)
    assert layers and all(layers)
    unfrozen = AudioEncoder(tiny_models["wav2vec2"], freeze_feature_encoder=False)
    assert all(p.requires_grad for p in unfrozen.backbone.parameters())


def test_vision_encoder(tiny_models):
    enc = VisionEncoder(tiny_models["vit"], pooling="cls").eval()
    batch = enc.collator(train=False)(_images())  # RGB and grayscale of different sizes
    assert batch["pixel_values"].shape == (2, 3, 32, 32)
    out = enc(**batch)
    assert out.pooled.shape == (2, 32) and out.hidden.shape == (2, 17, 32)  # 16 patches + [CLS]
    assert out.mask is None


def test_vision_encoder_from_config():
    processor = transformers.ViTImageProcessor(size={"height": 32, "width": 32})
    vit = transformers.ViTConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=32,
        patch_size=8,
    )
    enc = VisionEncoder(vit, processor=processor)
    assert enc.from_config and enc.out_features == 16
    batch = enc.collator(train=True)(_images())
    assert enc(**batch).pooled.shape == (2, 16)

    resnet = transformers.ResNetConfig(
        embedding_size=8, hidden_sizes=[8, 12], depths=[1, 1], layer_type="basic"
    )
    cnn = VisionEncoder(resnet, processor=processor, pooling="stats")
    out = cnn(**batch)
    assert cnn.out_features == 24 and out.pooled.shape == (2, 24)
    assert out.hidden.shape[0] == 2 and out.hidden.shape[2] == 12  # feature map flattened to positions

    with pytest.raises(ConfigError, match="encoder.processor"):
        VisionEncoder(vit)


def test_missing_or_non_model_dir_is_model_load_error(tmp_path):
    with pytest.raises(ModelLoadError, match="encoder.model"):
        TextEncoder(str(tmp_path / "missing"))
    (tmp_path / "notes.txt").write_text("not a model")
    with pytest.raises(ModelLoadError, match="encoder.model") as err:
        TextEncoder(str(tmp_path))
    assert "config.json" in str(err.value)


def test_resolve_model_path_uses_offline_mirror(minilm_path):
    assert "sentence-transformers/all-MiniLM-L6-v2" in OFFLINE_MIRRORS
    assert resolve_model_path("sentence-transformers/all-MiniLM-L6-v2") == minilm_path


def test_resolve_model_path_leaves_other_ids_alone(tmp_path):
    assert resolve_model_path("someone/some-model") == "someone/some-model"
    assert resolve_model_path(str(tmp_path)) == str(tmp_path)
