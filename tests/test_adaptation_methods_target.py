"""Issue 15's method nodes: InformationMaximization, Consistency (strong views per modality), ImportanceWeighting,
and the loss-weight warm-up of the adversarial methods. Unit checks on toy modules, then `hftl run adapt` on tiny
text, vision and audio models."""

from __future__ import annotations

import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml
from helpers import adapt_config
from torch import nn

from hftl.adaptation import (
    CDAN,
    DANN,
    MCC,
    MDD,
    AdaptationLoss,
    AdaptBatch,
    AdaptModel,
    Consistency,
    ImportanceWeighting,
    InformationMaximization,
)
from hftl.adaptation.augmentation import (
    StrongViewConfig,
    TokenIds,
    mask_tokens,
    noisy_shift,
    spec_augment,
    strong_view,
)
from hftl.cli import main as hftl
from hftl.errors import ConfigError
from hftl.losses import InformationMaximizationLoss, shot_pseudo_labels
from hftl.training import Progress

# --- warm-up of the transfer weight --------------------------------------------------------------------------


def test_adversarial_methods_ramp_their_weight_and_the_others_do_not():
    for cls in (DANN, CDAN, MDD):
        m = cls(in_features=4, num_classes=2, hidden_features=8, trade_off=0.5)
        assert m.warmup == "ganin" and m.weight(0.0) == 0.0
        assert m.weight(0.3) == pytest.approx(0.5 * (2 / (1 + math.exp(-3.0)) - 1), abs=1e-12)
    assert DANN(in_features=4, num_classes=2, warmup="none", trade_off=0.5).weight(0.0) == 0.5
    assert MCC(in_features=4, num_classes=2, trade_off=0.5).weight(0.0) == 0.5
    with pytest.raises(ConfigError, match="`method.warmup`"):
        DANN(in_features=4, num_classes=2, warmup="linear")


def test_adaptation_loss_applies_the_scheduled_weight():
    torch.manual_seed(0)
    model = AdaptModel(ToyClassifier(), DANN(in_features=FEAT, num_classes=CLASSES, hidden_features=8))
    batch = toy_batch()
    at_start, _ = AdaptationLoss(model.method)(model, batch, Progress(step=0, total_steps=10))
    step = model.method.training_step(model, AdaptBatch.from_loader(batch), Progress(step=0, total_steps=10))
    assert torch.equal(at_start, step.base)  # weight 0 at p = 0: the source-only loss


# --- strong views --------------------------------------------------------------------------------------------

IDS = TokenIds(replace_id=103, special_ids=(0, 101, 102, 103))


def test_token_masking_never_touches_special_tokens_or_padding():
    torch.manual_seed(0)
    ids = torch.tensor([[101, 7, 8, 9, 10, 102, 0, 0]] * 64)
    mask = (ids != 0).long()
    out = mask_tokens(ids, mask, IDS, prob=0.5)
    keep = torch.isin(ids, torch.tensor([0, 101, 102]))
    assert torch.equal(out[keep], ids[keep])
    changed = out != ids
    assert torch.all(out[changed] == 103) and 0.35 < changed[:, 1:5].float().mean() < 0.65
    assert torch.equal(mask_tokens(ids, mask, IDS, prob=0.0), ids)


def test_token_ids_fall_back_to_unk_and_refuse_tokenizers_without_either():
    tok = SimpleNamespace(mask_token_id=None, unk_token_id=3, all_special_ids=[0, 3])
    assert TokenIds.of(tok).replace_id == 3
    with pytest.raises(ConfigError, match="neither a mask nor an unknown token"):
        TokenIds.of(SimpleNamespace(mask_token_id=None, unk_token_id=None, all_special_ids=[]))


def test_waveform_view_is_delayed_signal_plus_noise_at_the_snr():
    torch.manual_seed(0)
    wave = torch.randn(256, 4000)
    cfg = StrongViewConfig(snr_db_min=10.0, snr_db_max=10.0, max_shift=0.0)
    noise = noisy_shift(wave, cfg) - wave
    snr = 10 * torch.log10(wave.pow(2).mean() / noise.pow(2).mean())
    assert snr.item() == pytest.approx(10.0, abs=0.1)
    shifted = noisy_shift(torch.ones(8, 100), StrongViewConfig(snr_db_min=80, snr_db_max=80, max_shift=0.5))
    first = (shifted.abs() > 0.5).float().argmax(dim=1)  # the delay: zeros in front
    assert first.max() <= 50 and first.max() > 0


def test_spec_augment_masks_one_band_per_axis_with_the_mean():
    torch.manual_seed(0)
    x = torch.arange(2 * 20 * 40, dtype=torch.float).view(2, 20, 40)
    out = spec_augment(x, StrongViewConfig(spec_mask=0.5))
    assert out.shape == x.shape and not torch.equal(out, x)
    assert torch.all((out == x) | (out == x.mean()))


def test_strong_view_refuses_a_batch_it_cannot_augment_and_bad_config():
    with pytest.raises(ConfigError, match="No strong view"):
        strong_view({"x": torch.zeros(2, 3)}, StrongViewConfig(), token_ids=None)
    with pytest.raises(ConfigError, match="unknown key"):
        StrongViewConfig.of({"token_mask": 0.2})
    with pytest.raises(ConfigError, match="token_mask_prob"):
        StrongViewConfig.of({"token_mask_prob": 1.5})


# --- the method contract on a toy classifier -----------------------------------------------------------------

IN, FEAT, CLASSES = 5, 6, 3


class ToyClassifier(nn.Module):
    """Reads ``pixel_values`` (B, 1, 1, IN) so the image strong view applies."""

    def __init__(self) -> None:
        super().__init__()
        self.encoder, self.head = nn.Linear(IN, FEAT), nn.Linear(FEAT, CLASSES)

    def forward(self, pixel_values: torch.Tensor) -> SimpleNamespace:
        features = torch.tanh(self.encoder(pixel_values.flatten(1)))
        return SimpleNamespace(features=features, logits=self.head(features))


def toy_batch() -> tuple[dict, dict]:
    gen = torch.Generator().manual_seed(1)
    x_s, x_t = torch.randn(8, 1, 1, IN, generator=gen), torch.randn(8, 1, 1, IN, generator=gen) * 2 + 1
    labels = torch.randint(0, CLASSES, (8,), generator=gen)
    return {"pixel_values": x_s, "labels": labels}, {"pixel_values": x_t}


def trained_groups(model: AdaptModel, loss: torch.Tensor) -> set[str]:
    model.zero_grad()
    loss.backward()
    parts = {"encoder": model.classifier.encoder, "head": model.classifier.head, "method": model.method}
    return {
        name
        for name, m in parts.items()
        if any(p.grad is not None and p.grad.abs().sum() > 0 for p in m.parameters())
    }


@pytest.mark.parametrize(
    "method,trained",
    [
        (lambda: InformationMaximization(in_features=FEAT, num_classes=CLASSES), {"encoder", "head"}),
        (
            lambda: InformationMaximization(in_features=FEAT, num_classes=CLASSES, pseudo_label_weight=0.3),
            {"encoder", "head"},
        ),
        (lambda: Consistency(in_features=FEAT, num_classes=CLASSES, threshold=0.01), {"encoder", "head"}),
        (lambda: ImportanceWeighting(in_features=FEAT, num_classes=CLASSES, hidden_features=8), {"method"}),
    ],
    ids=["IM", "IM+pseudo", "Consistency", "ImportanceWeighting"],
)
def test_the_transfer_term_alone_trains_what_it_should(method, trained):
    torch.manual_seed(0)
    model = AdaptModel(ToyClassifier(), method())
    step = model.method.training_step(
        model, AdaptBatch.from_loader(toy_batch()), Progress(step=5, total_steps=10)
    )
    assert trained_groups(model, step.transfer.loss) == trained


def test_im_with_pseudo_labels_is_im_plus_weighted_cross_entropy():
    torch.manual_seed(0)
    f, g = torch.randn(16, FEAT), torch.randn(16, CLASSES)
    m = InformationMaximization(in_features=FEAT, num_classes=CLASSES, pseudo_label_weight=0.3, bank_size=64)
    out = m(f_s=None, f_t=f, logits_s=None, logits_t=g, progress=0.5)
    expected = InformationMaximizationLoss()(g).loss + 0.3 * nn.functional.cross_entropy(
        g, shot_pseudo_labels(f, g)
    )
    torch.testing.assert_close(out.loss, expected)
    assert m.bank_features.shape == (16, FEAT)  # this batch is banked for the next one's centroids


def test_im_shot_schedule_trains_the_source_first_then_the_encoder_alone_on_the_target():
    torch.manual_seed(0)
    method = InformationMaximization(
        in_features=FEAT, num_classes=CLASSES, source_fraction=0.5, freeze_head=True, source_free=True
    )
    model = AdaptModel(ToyClassifier(), method)
    batch = AdaptBatch.from_loader(toy_batch())
    stage1 = method.training_step(model, batch, Progress(step=4, total_steps=10))  # source labels only
    torch.testing.assert_close(
        stage1.base, nn.functional.cross_entropy(model(**batch.source).logits, batch.labels)
    )
    assert stage1.transfer is None and trained_groups(model, stage1.base) == {"encoder", "head"}
    stage2 = method.training_step(model, batch, Progress(step=5, total_steps=10))
    assert stage2.base.item() == 0.0  # source-free: no source batch read
    assert trained_groups(model, stage2.base + stage2.transfer.loss) == {"encoder"}  # the head stays frozen
    joint = InformationMaximization(in_features=FEAT, num_classes=CLASSES, source_fraction=0.5)
    model = AdaptModel(ToyClassifier(), joint)  # source kept, head trained: the source CE is the base
    step = joint.training_step(model, batch, Progress(step=5, total_steps=10))
    torch.testing.assert_close(
        step.base, nn.functional.cross_entropy(model(**batch.source).logits, batch.labels)
    )
    assert trained_groups(model, step.base + step.transfer.loss) == {"encoder", "head"}


def test_consistency_pseudo_labels_come_from_the_weak_view_above_the_threshold():
    torch.manual_seed(0)
    classifier = ToyClassifier()
    identity = {"degrees": 0.0, "translate": 0.0, "scale": 0.0, "erase_prob": 0.0}  # strong view = weak view
    method = Consistency(
        in_features=FEAT, num_classes=CLASSES, threshold=0.4, distribution_alignment=False, strong=identity
    )
    model = AdaptModel(classifier, method)
    batch = AdaptBatch.from_loader(toy_batch())
    step = method.training_step(model, batch, Progress(step=0, total_steps=10))
    logits = classifier(**batch.target).logits
    conf, labels = logits.softmax(1).max(1)
    keep = conf >= 0.4
    assert 0 < keep.sum() < len(keep)  # the threshold matters in this batch
    ce = nn.functional.cross_entropy(logits, labels, reduction="none")
    torch.testing.assert_close(step.transfer.loss, (ce * keep).sum() / len(keep), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(step.transfer.metrics["pseudo_ratio"], keep.float().mean())


def test_consistency_tracks_the_source_prior_for_distribution_alignment():
    method = Consistency(in_features=FEAT, num_classes=CLASSES, momentum=0.0)
    model = AdaptModel(ToyClassifier(), method)
    source, target = toy_batch()
    method.training_step(model, AdaptBatch.from_loader((source, target)), Progress(step=0, total_steps=10))
    counts = torch.bincount(source["labels"], minlength=CLASSES).float()
    torch.testing.assert_close(method.source_prior, counts / counts.sum())
    assert "source_prior" in method.state_dict()  # checkpointed, resumed


def test_importance_weighting_is_plain_cross_entropy_when_the_ratio_is_one():
    torch.manual_seed(0)
    method = ImportanceWeighting(in_features=FEAT, num_classes=CLASSES, hidden_features=8)
    for p in method.loss.discriminator.parameters():  # D(f) = 0 everywhere: p_t / p_s = 1
        nn.init.zeros_(p)
    model = AdaptModel(ToyClassifier(), method)
    batch = AdaptBatch.from_loader(toy_batch())
    step = method.training_step(model, batch, Progress(step=0, total_steps=10))
    plain = nn.functional.cross_entropy(model(**batch.source).logits, batch.labels)
    torch.testing.assert_close(step.base, plain)
    assert torch.allclose(step.transfer.weights, torch.ones(8))


@pytest.mark.parametrize(
    "build,match",
    [
        (lambda: Consistency(in_features=2, num_classes=2, threshold=0.0), "`method.threshold`"),
        (lambda: Consistency(in_features=2, num_classes=2, momentum=1.0), "`method.momentum`"),
        (
            lambda: InformationMaximization(in_features=2, num_classes=3, class_prior=[0.5, 0.5]),
            "class_prior",
        ),
        (
            lambda: InformationMaximization(in_features=2, num_classes=2, pseudo_label_weight=-1),
            "pseudo_label",
        ),
        (lambda: ImportanceWeighting(in_features=2, num_classes=2, clip=1.0), "`method.clip`"),
        (
            lambda: InformationMaximization(in_features=2, num_classes=2, source_fraction=1.0),
            "source_fraction",
        ),
        (
            lambda: InformationMaximization(in_features=2, num_classes=2, freeze_head=True),
            "freeze_head.*source_fraction",
        ),
        (
            lambda: InformationMaximization(in_features=2, num_classes=2, source_free=True),
            "source_free.*source_fraction",
        ),
    ],
)
def test_bad_arguments_are_config_errors_naming_the_field(build, match):
    with pytest.raises(ConfigError, match=match):
        build()


# --- the recipe end to end on tiny models ----------------------------------------------------------------------


def run(cfg: dict, path: Path) -> dict:
    path.write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(path)]) == 0
    return json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())


@pytest.mark.parametrize(
    "method,args,logged",
    [
        ("InformationMaximization", {"pseudo_label_weight": 0.3}, "eval_train_pseudo_ce"),
        (
            "InformationMaximization",
            {"source_fraction": 0.5, "freeze_head": True, "source_free": True},
            "eval_train_pseudo_ce",
        ),
        ("Consistency", {"threshold": 0.7}, "eval_train_pseudo_ratio"),
        ("ImportanceWeighting", {"hidden_features": 16}, "eval_train_effective_sample_size"),
    ],
)
def test_text_adapt_runs_each_method(tmp_path, tiny_models, method, args, logged):
    metrics = run(
        adapt_config(tmp_path, tiny_models["bert"], f"hftl.adaptation.{method}", **args), tmp_path / "c.yaml"
    )
    result = metrics["results"][metrics["method"]]
    assert result["steps"] == 10 and logged in result["history"][-1]
    if args.get("source_fraction"):  # SHOT's schedule: epoch 1 (5 steps) on source labels only, no IM term
        assert [logged in h for h in result["history"]] == [False, True]
    else:
        assert result["history"][-1]["eval_source_val_acc"] >= 0.75


def test_vision_adapt_with_consistency(tmp_path, tiny_models):
    cfg = adapt_config(tmp_path, tiny_models["vit"], "hftl.adaptation.Consistency", threshold=0.3)
    cfg["encoder"] = {
        "_component_": "hftl.encoders.VisionEncoder",
        "model": tiny_models["vit"],
        "pooling": "cls",
    }
    digits = {"_component_": "hftl.data.ClassificationData", "path": "hftl:sklearn_digits"}
    cfg["source"] = {**digits, "max_samples": {"train": 32, "validation": 8, "test": 8}}
    cfg["target"] = {**digits, "max_samples": {"train": 16, "test": 8}}
    result = run(cfg, tmp_path / "c.yaml")["results"]["consistency"]
    assert result["steps"] == 2 * 4 and "eval_train_pseudo_ratio" in result["history"][-1]


def test_audio_adapt_with_consistency(tmp_path, tiny_models):
    rng = np.random.default_rng(0)
    rows = ["path,label"]
    for i in range(24):
        t = np.arange(int(16000 * rng.uniform(0.2, 0.4))) / 16000
        sf.write(tmp_path / f"c{i}.wav", 0.5 * np.sin(2 * np.pi * (300 if i % 2 else 1500) * t), 16000)
        rows.append(f"c{i}.wav,{'low' if i % 2 else 'high'}")
    (tmp_path / "clips.csv").write_text("\n".join(rows) + "\n")
    cfg = adapt_config(tmp_path, tiny_models["wav2vec2"], "hftl.adaptation.Consistency", threshold=0.3)
    cfg["encoder"] = {
        "_component_": "hftl.encoders.AudioEncoder",
        "model": tiny_models["wav2vec2"],
        "max_duration": 0.4,
    }
    clips = {"_component_": "hftl.data.ClassificationData", "path": str(tmp_path / "clips.csv")}
    cfg["source"] = {**clips, "validation_size": 0.25}
    cfg["target"] = {**clips, "test_size": 0.5}
    result = run(cfg, tmp_path / "c.yaml")["results"]["consistency"]
    assert result["steps"] > 0 and "eval_train_pseudo_ratio" in result["history"][-1]


# --- shipped configs ---------------------------------------------------------------------------------------------


def _adapt_configs() -> list[str]:
    from hftl.config._parse import list_shipped_configs, resolve_config_path

    return [
        n
        for n in list_shipped_configs()
        if yaml.safe_load(resolve_config_path(n).read_text())["recipe"] == "adapt"
    ]


@pytest.mark.parametrize("name", _adapt_configs())
def test_every_shipped_adapt_config_validates(name, shipped_data):
    shipped_data(name)
    assert hftl(["validate", "--config", name]) == 0


def test_bring_your_own_data_configs_exist_and_text_adversarial_configs_avoid_the_collapsing_trade_off():
    from hftl.config._parse import resolve_config_path

    names = _adapt_configs()
    assert {"text/byod_adapt", "vision/byod_adapt", "audio/byod_adapt"} <= set(names)
    for name in (n for n in names if n.startswith("text/")):
        method = yaml.safe_load(resolve_config_path(name).read_text())["method"]
        if method["_component_"].rsplit(".", 1)[-1] in {"DANN", "CDAN", "MDD"}:
            assert method["trade_off"] <= 0.1 and method.get("warmup", "ganin") == "ganin", name


# --- UDALM: source CE + target masked-LM ---------------------------------------------------------------------


def udalm_model(tiny: str, **args):
    from hftl.adaptation import UDALM
    from hftl.encoders import TextEncoder
    from hftl.models import Classifier, LinearHead

    torch.manual_seed(0)
    encoder = TextEncoder(tiny, max_length=16)
    classifier = Classifier(
        encoder, LinearHead(in_features=encoder.out_features, num_labels=2), ["neg", "pos"]
    )
    model = AdaptModel(classifier, UDALM(in_features=encoder.out_features, num_classes=2, **args)).eval()
    collate = encoder.collator(train=True)
    source = collate([{"text": "it was good fine", "label": 1}, {"text": "bad", "label": 0}])
    target = collate([{"text": "it was nice and i love it"}, {"text": "boring"}])
    return model, source, target


def test_udalm_masks_only_real_target_tokens_and_never_reads_labels(tiny_models):
    model, source, target = udalm_model(tiny_models["bert"], mlm_probability=0.5)
    assert "labels" not in target
    torch.manual_seed(0)
    masked, labels = model.method.mask(target)
    real = target["attention_mask"].bool() & ~torch.isin(target["input_ids"], torch.tensor([101, 102, 0]))
    assert torch.all(labels[~real] == -100) and (labels[real] != -100).any()
    assert torch.equal(
        labels[labels != -100], target["input_ids"][labels != -100]
    )  # labels: the original ids
    assert torch.equal(masked["input_ids"][~real], target["input_ids"][~real])


def test_udalm_joint_loss_is_ce_plus_weighted_mlm(tiny_models):
    model, source, target = udalm_model(tiny_models["bert"], mlm_weight=0.5)
    torch.manual_seed(3)
    total, logs = AdaptationLoss(model.method)(model, (source, target), Progress(step=0, total_steps=10))
    ce = nn.functional.cross_entropy(
        model(**{k: v for k, v in source.items() if k != "labels"}).logits, source["labels"]
    )
    torch.manual_seed(3)
    mlm = model.method.mlm_loss(target)
    torch.testing.assert_close(total, ce + 0.5 * mlm)
    torch.testing.assert_close(logs["mlm_loss"], mlm.detach())
    assert len(model.method.head) > 0 and all(p.requires_grad for p in model.method.head)


def test_udalm_composes_with_dann_and_refuses_other_modalities(tiny_models):
    model, source, target = udalm_model(
        tiny_models["bert"], align={"name": "hftl.adaptation.DANN", "hidden_features": 8, "warmup": "none"}
    )
    step = model.method.training_step(
        model, AdaptBatch.from_loader((source, target)), Progress(step=5, total_steps=10)
    )
    assert {"mlm_loss", "align_domain_acc"} <= set(step.transfer.metrics)
    from hftl.adaptation import UDALM

    with pytest.raises(ConfigError, match="hftl.encoders.TextEncoder"):
        AdaptModel(ToyClassifier(), UDALM(in_features=FEAT, num_classes=CLASSES))
    with pytest.raises(ConfigError, match="one-stage"):
        UDALM(in_features=FEAT, num_classes=CLASSES, align={"name": "hftl.adaptation.ADDA"})
    shot = {"name": "hftl.adaptation.InformationMaximization", "source_fraction": 0.5}
    with pytest.raises(ConfigError, match="schedule of its own.*source_fraction"):
        UDALM(in_features=FEAT, num_classes=CLASSES, align=shot)
    joint = UDALM(in_features=FEAT, num_classes=CLASSES, align={**shot, "source_fraction": 0.0})
    assert not joint.align.two_stage


def test_text_adapt_runs_udalm_with_dann(tmp_path, tiny_models):
    cfg = adapt_config(
        tmp_path, tiny_models["bert"], "hftl.adaptation.UDALM", mlm_weight=0.5,
        align={"name": "hftl.adaptation.DANN", "hidden_features": 16, "trade_off": 0.1},
    )  # fmt: skip
    result = run(cfg, tmp_path / "c.yaml")["results"]["udalm"]
    assert result["steps"] == 10 and "eval_train_mlm_loss" in result["history"][-1]
