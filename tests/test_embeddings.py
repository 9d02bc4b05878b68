"""Embedding transfer: scalar mix, token heads, the feature cache (invalidation, atomic writes) and
``hftl run embed`` end to end on tiny text and audio models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import datasets
import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import embed_config, write_embed_csv

import hftl
from hftl.cli import main as hftl_cli
from hftl.data import ClassificationData
from hftl.embeddings import (
    ContextPooler,
    ContextTextEncoder,
    FeatureCache,
    ScalarMix,
    TokenStates,
    cached_pooled,
    cached_states,
    encode_states,
)
from hftl.encoders import TextEncoder, save_tiny_encoder
from hftl.errors import ConfigError


def load_split(path: str) -> datasets.Dataset:
    return ClassificationData(path=path, validation_size=0, label_names=["negative", "positive"]).load()[
        "train"
    ]


class ForwardCounter:
    """Counts backbone forward passes through a hook (one per encoded batch)."""

    def __init__(self, encoder):
        self.calls = 0
        encoder.backbone.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))


# --- scalar mix and token heads --------------------------------------------------------------------


def test_scalar_mix_weights_sum_to_one_and_get_gradients():
    torch.manual_seed(0)
    mix = ScalarMix(4)
    with torch.no_grad():
        mix.weights.copy_(torch.tensor([0.5, -1.0, 2.0, 0.0]))
        mix.gamma.fill_(1.5)
    states = torch.randn(2, 3, 4, 8)
    w = mix.layer_weights()
    assert torch.isclose(w.sum(), torch.tensor(1.0))
    expected = 1.5 * sum(w[k] * states[:, :, k] for k in range(4))
    out = mix(states)
    torch.testing.assert_close(out, expected)
    (out**2).sum().backward()
    assert mix.weights.grad is not None and mix.weights.grad.abs().sum() > 0
    assert mix.gamma.grad is not None and mix.gamma.grad.abs() > 0
    with pytest.raises(ValueError, match=r"\(\.\.\., 4, H\)"):
        mix(torch.randn(2, 3, 5, 8))


@pytest.mark.parametrize("token_head", ["mean", "attention", "transformer", "bilstm"])
def test_context_pooler_ignores_padding(token_head):
    torch.manual_seed(0)
    pooler = ContextPooler(
        num_layers=3, hidden_size=8, token_head=token_head, hidden_features=8, num_heads=2
    ).eval()
    states = torch.randn(2, 5, 3, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    out = pooler(states, mask)
    assert out.shape == (2, pooler.out_features)
    changed = states.clone()
    changed[0, 3:] = 100.0  # padded positions of example 0
    torch.testing.assert_close(pooler(changed, mask), out)
    out.sum().backward()
    assert pooler.mix.weights.grad is not None


def test_context_encoder_rejects_layer_and_pooling(tiny_models):
    with pytest.raises(ConfigError, match="encoder.layer"):
        ContextTextEncoder(tiny_models["bert"], layer=1)


# --- the feature cache -------------------------------------------------------------------------------


@pytest.fixture()
def text_split(tmp_path):
    return load_split(write_embed_csv(tmp_path / "train.csv", 20, seed=0))


def test_pooled_cache_reused_and_invalidated(tmp_path, tiny_models, text_split):
    cache = FeatureCache(tmp_path / "cache")

    def encode(encoder, ds=text_split, **kw):
        counter = ForwardCounter(encoder)
        features, hit = cached_pooled(encoder, ds, cache=cache, batch_size=8, **kw)
        return features, hit, counter.calls

    base = TextEncoder(tiny_models["bert"], pooling="mean", max_length=16)
    first, hit, calls = encode(base)
    assert (hit, calls, first.shape) == (False, 3, (20, 32))  # 20 examples / batch 8 = 3 passes
    again, hit, calls = encode(TextEncoder(tiny_models["bert"], pooling="mean", max_length=16))
    assert (hit, calls) == (True, 0)
    torch.testing.assert_close(again, first)
    # Each change must miss the cache and run the encoder again.
    changes = {
        "pooling": dict(pooling="cls", max_length=16),
        "layer": dict(pooling="mean", layer=1, max_length=16),
        "max_length": dict(pooling="mean", max_length=4),
        "revision": dict(pooling="mean", max_length=16, revision="v2"),
    }
    for what, kwargs in changes.items():
        revision = kwargs.get("revision")
        _, hit, calls = encode(TextEncoder(tiny_models["bert"], **kwargs), revision=revision)
        assert (hit, calls) == (False, 3), what
    _, hit, calls = encode(base, ds=text_split.select(range(10)))  # other data
    assert (hit, calls) == (False, 2)
    _, hit, calls = encode(base, precision="bf16")
    assert not hit


def test_cache_invalidated_when_local_weights_or_data_files_change(tmp_path, text_split):
    model_dir = save_tiny_encoder("bert", tmp_path / "bert", seed=0)
    cache = FeatureCache(tmp_path / "cache")
    _, hit = cached_pooled(TextEncoder(str(model_dir)), text_split, cache=cache)
    assert not hit
    assert cached_pooled(TextEncoder(str(model_dir)), text_split, cache=cache)[1]
    save_tiny_encoder("bert", model_dir, seed=1)  # same directory, new weights
    _, hit = cached_pooled(TextEncoder(str(model_dir)), text_split, cache=cache)
    assert not hit
    # The same file rewritten with other rows: datasets gives it a new fingerprint.
    csv = write_embed_csv(tmp_path / "data.csv", 12, seed=0)
    encoder = TextEncoder(str(model_dir))
    assert not cached_pooled(encoder, load_split(csv), cache=cache)[1]
    assert cached_pooled(encoder, load_split(csv), cache=cache)[1]
    write_embed_csv(tmp_path / "data.csv", 12, seed=5)
    assert not cached_pooled(encoder, load_split(csv), cache=cache)[1]


def test_failed_write_leaves_no_entry(tmp_path, tiny_models, text_split, monkeypatch):
    cache = FeatureCache(tmp_path / "cache")
    encoder = TextEncoder(tiny_models["bert"])
    real_save = datasets.Dataset.save_to_disk

    def crash_after_writing(self, path, **kwargs):
        real_save(self, path, **kwargs)  # the data files are written, then the process "dies"
        raise KeyboardInterrupt

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", crash_after_writing)
    with pytest.raises(KeyboardInterrupt):
        cached_pooled(encoder, text_split, cache=cache)
    assert list((tmp_path / "cache").iterdir()) == []  # neither an entry nor a temporary folder
    monkeypatch.undo()
    counter = ForwardCounter(encoder)
    _, hit = cached_pooled(encoder, text_split, cache=cache)
    assert not hit and counter.calls > 0
    # A damaged entry (its marker file gone) is recomputed, never read.
    (entry,) = (tmp_path / "cache").iterdir()
    (entry / "hftl_cache.json").unlink()
    assert not cached_pooled(encoder, text_split, cache=cache)[1]


def test_token_states_cache_matches_live_encoding(tmp_path, tiny_models, text_split):
    encoder = ContextTextEncoder(tiny_models["bert"], max_length=16, token_head="mean").eval()
    cache = FeatureCache(tmp_path / "cache")
    counter = ForwardCounter(encoder)
    (values, lengths), hit = cached_states(encoder, text_split, cache=cache, dtype="float32", batch_size=8)
    assert not hit and counter.calls == 3
    (values2, lengths2), hit = cached_states(encoder, text_split, cache=cache, dtype="float32")
    assert hit and counter.calls == 3
    torch.testing.assert_close(values2, values)
    assert torch.equal(lengths2, lengths) and values.shape[1:] == (3, 32)  # embeddings + 2 layers
    states = TokenStates(values, lengths, None)
    batch = states.batch(torch.tensor([3, 0]))
    inputs = encoder.collator(train=False)([text_split[3], text_split[0]])
    inputs.pop("labels")
    with torch.no_grad():
        live, mask = encoder.encode_states(**inputs)
    torch.testing.assert_close(batch["mask"], mask)
    torch.testing.assert_close(
        batch["states"] * mask[..., None, None], live * mask[..., None, None], atol=1e-5, rtol=1e-4
    )
    assert encode_states(encoder, text_split, max_bytes=1000) is None  # over the memory limit: live instead


# --- the recipe end to end -----------------------------------------------------------------------------


def run_embed(cfg: dict, path: Path) -> dict:
    path.write_text(yaml.safe_dump(cfg))
    assert hftl_cli(["run", "embed", "--config", str(path)]) == 0
    return json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())


@pytest.mark.parametrize(
    "encoder",
    [
        {"_component_": "hftl.encoders.TextEncoder", "pooling": "mean"},
        {"_component_": "hftl.embeddings.ContextTextEncoder", "token_head": "transformer", "hidden_features": 16, "num_heads": 2},
    ],
    ids=["sentence", "context"],
)  # fmt: skip
def test_embed_recipe_text_caches_and_saved_model_predicts(tmp_path, tiny_models, encoder):
    cfg = embed_config(tmp_path, tiny_models["bert"], "out", encoder)
    first = run_embed(cfg, tmp_path / "cfg.yaml")
    assert {v["mode"] for v in first["features"].values()} == {"encoded"}
    second = run_embed(cfg, tmp_path / "cfg.yaml")
    assert {v["mode"] for v in second["features"].values()} == {"cache"}
    assert second["test"]["accuracy"] == first["test"]["accuracy"]
    assert len(first["epoch_seconds"]) == 3 and first["steps"] == 9
    # The output is a normal model dir: hftl.load runs encoder + head on raw text, like the cached features.
    predictor = hftl.load(cfg["output_dir"])
    texts = load_split(cfg["data"]["data_files"]["test"])["text"]
    probs = torch.tensor([[r["scores"]["negative"], r["scores"]["positive"]] for r in predictor(texts)])
    accuracy = (probs.argmax(-1) == torch.tensor([i % 2 for i in range(16)])).float().mean().item()
    assert accuracy == pytest.approx(first["test"]["accuracy"])


def test_embed_recipe_shallow_adaptation(tmp_path, tiny_models):
    cfg = embed_config(tmp_path, tiny_models["bert"], "out", {"_component_": "hftl.encoders.TextEncoder"})
    target = {
        "train": write_embed_csv(tmp_path / "t_train.csv", 32, seed=7, prefix="this"),
        "test": write_embed_csv(tmp_path / "t_test.csv", 16, seed=8, prefix="this"),
    }
    cfg["target"] = {
        "_component_": "hftl.data.ClassificationData",
        "path": "csv",
        "data_files": target,
        "label_names": ["negative", "positive"],
        "validation_size": 0,
    }
    cfg["method"] = {"_component_": "hftl.adaptation.CORAL"}  # fmt: skip
    metrics = run_embed(cfg, tmp_path / "cfg.yaml")
    assert set(metrics["results"]) == {"source_only", "coral"}
    # the reported target accuracy is the adapted (saved) model's on the target test file, exactly
    assert metrics["target_test_acc"] == metrics["results"]["coral"]["target_test_acc"]
    texts = load_split(target["test"])["text"]
    predicted = [r["label"] for r in hftl.load(cfg["output_dir"], device="cpu")(texts)]
    labels = ["negative", "positive"] * 8
    accuracy = sum(p == y for p, y in zip(predicted, labels, strict=True)) / 16
    assert metrics["target_test_acc"] == pytest.approx(accuracy)
    assert "im" in metrics["results"]["coral"]["history"][0]
    cfg["head"] = {"_component_": "hftl.models.LinearHead"}  # no trainable features to align
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl_cli(["run", "embed", "--config", str(tmp_path / "bad.yaml")]) == 2


def test_embed_recipe_rejects_trainable_pooling(tmp_path, tiny_models, capsys):
    cfg = embed_config(
        tmp_path,
        tiny_models["bert"],
        "out",
        {"_component_": "hftl.encoders.TextEncoder", "pooling": "attention"},
    )
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl_cli(["run", "embed", "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "pooling: attention" in capsys.readouterr().err


@pytest.mark.parametrize("component", ["hftl.encoders.AudioEncoder", "hftl.embeddings.ContextAudioEncoder"])
def test_embed_recipe_audio(tmp_path, tiny_models, component):
    rows = ["audio,label"]
    t = np.arange(4000) / 16000
    for i in range(24):
        label = ["low", "high"][i % 2]
        wave = 0.3 * np.sin(2 * np.pi * (200 if label == "low" else 2000) * (1 + 0.05 * i) * t)
        sf.write(tmp_path / f"clip{i}.wav", wave.astype("float32"), 16000)
        rows.append(f"clip{i}.wav,{label}")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    extra = (
        {"pooling": "stats"}
        if component.endswith("AudioEncoder") and "Context" not in component
        else {"token_head": "attention"}
    )
    cfg = {
        "recipe": "embed",
        "output_dir": str(tmp_path / "out"),
        "encoder": {"_component_": component, "model": tiny_models["wav2vec2"], "max_duration": 0.25, **extra},
        "head": {"_component_": "hftl.models.LinearHead"},
        "data": {"_component_": "hftl.data.ClassificationData", "path": str(tmp_path / "clips.csv"), "validation_size": 0.25},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-2},
        "train": {"epochs": 2, "batch_size": 8},
        "cache": {"dir": str(tmp_path / "cache"), "encode_batch_size": 6},
    }  # fmt: skip
    metrics = run_embed(cfg, tmp_path / "cfg.yaml")
    assert metrics["level"] == ("context" if "Context" in component else "sentence")
    assert {v["mode"] for v in metrics["features"].values()} == {"encoded"}
    assert run_embed(cfg, tmp_path / "cfg.yaml")["features"]["source_train"]["mode"] == "cache"
    predictions = hftl.load(cfg["output_dir"])([str(tmp_path / "clip0.wav"), str(tmp_path / "clip1.wav")])
    assert {p["label"] for p in predictions} <= {"low", "high"}
    shutil.rmtree(tmp_path / "cache")
