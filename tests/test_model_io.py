"""Component tests of hftl.models.io (save/load round trips) and the predictor on tiny random models."""

from __future__ import annotations

import json
from pathlib import Path

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
    assert meta["format"] == 2 and meta["base_revision"] is None
    # The whole rebuilding recipe, as plain values: what the encoder stores, then the config, then defaults.
    assert meta["encoder"] == {
        "class": "TextEncoder",
        "kwargs": {"pooling": "attention", "layer": -1, "max_length": 128, "pretokenize": True},
    }
    assert meta["head"] == {
        "class": "MLPHead",
        "kwargs": {"hidden_features": 8, "num_layers": 1, "dropout": 0.1, "activation": "gelu"},
    }

    loaded, loaded_meta = load_model(tmp_path)  # a run output dir holding model/
    assert not loaded.training and loaded_meta.items() >= meta.items()
    assert loaded_meta["source"] == loaded_meta["path"] == str(out)
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
    loaded, _ = load_model(out)
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
    with pytest.raises(
        ModelLoadError, match=r"does not exist. .* \(for a Hub model: hf://user/name or --from-hub\)"
    ):
        load_model(tmp_path / "nowhere")
    with pytest.raises(ModelLoadError, match="did you mean hf://alice/model or --from-hub"):
        find_model_dir("alice/model")  # a missing `user/name` is an error, never a Hub lookup


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


# -- the directory is data: every value checked, every refusal one line naming the file -----------------------
@pytest.fixture(scope="module")
def saved(tiny_models, tmp_path_factory):
    """A LoRA model directory and its logits on TEXTS (copied by each test before it edits anything)."""
    cfg = _config(tiny_models["bert"], pooling="mean")
    model = _build(cfg, Lora(r=4))
    path = save_model(model, tmp_path_factory.mktemp("saved") / "model", adapter_kind="peft", config=cfg)
    return path, _logits(model)


@pytest.fixture
def copy(saved, tmp_path):
    import shutil

    return Path(shutil.copytree(saved[0], tmp_path / "model"))


def _edit_meta(path: Path, **changes) -> None:
    meta = json.loads((path / "hftl_model.json").read_text())
    for key, value in changes.items():
        if value is _DROP:
            meta.pop(key)
        else:
            meta[key] = value
    (path / "hftl_model.json").write_text(json.dumps(meta))


_DROP = object()


def _format1(path: Path) -> None:
    """Rewrites ``path`` as hftl 0.1 wrote it: no specs in hftl_model.json, encoder/head in config.yaml."""
    _edit_meta(path, format=1, encoder=_DROP, head=_DROP, base_revision=_DROP)


def test_format1_directory_loads_through_the_same_tables(copy, saved):
    _format1(copy)
    model, meta = load_model(copy)
    torch.testing.assert_close(_logits(model), saved[1])
    assert meta["format"] == 1 and meta["encoder"]["class"] == "TextEncoder"
    assert meta["head"] == {"class": "MLPHead", "kwargs": {"hidden_features": 8}}


@pytest.mark.parametrize(
    ("node", "value", "expected"),
    [
        ("encoder", {"_component_": "os.system", "model": "x"}, "`encoder.class` = 'os.system'"),
        ("head", {"_component_": "hftl.config._instantiate.importlib.import_module"}, "`head.class`"),
        ("encoder", {"_component_": "hftl.encoders.TextEncoder", "max_length": "${oc.env:HOME}"}, "interpolation"),
        ("head", {"_component_": "hftl.models.MLPHead", "hidden_features": {"_component_": "os.getpid"}}, "hidden_features"),
        ("head", {"_component_": "hftl.models.LinearHead", "eval": "1"}, "`head.kwargs.eval`"),
    ],
    ids=["module-function", "module-walk", "interpolation", "nested-component", "unknown-key"],
)  # fmt: skip
def test_format1_config_payloads_are_refused(copy, node, value, expected):
    import yaml

    _format1(copy)
    record = yaml.safe_load((copy / "config.yaml").read_text())
    record[node] = value
    (copy / "config.yaml").write_text(yaml.safe_dump(record))
    with pytest.raises(ModelLoadError, match="config.yaml") as err:
        load_model(copy)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_format2_ignores_config_yaml(copy, saved):
    (copy / "config.yaml").write_text(
        "encoder: {_component_: os.system, command: 'exit 1'}\nhead: ${oc.env:HOME}\n"
    )
    torch.testing.assert_close(_logits(load_model(copy)[0]), saved[1])


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"encoder": {"class": "builtins.exec", "kwargs": {}}}, "`encoder.class` = 'builtins.exec'"),
        ({"head": {"class": "hftl.models.heads.nn.Module", "kwargs": {}}}, "`head.class`"),
        ({"head": {"_component_": "hftl.models.LinearHead"}}, "exactly `class` and `kwargs`"),
        ({"encoder": {"class": "TextEncoder", "kwargs": {"trust_remote_code": True}}}, "kwargs.trust_remote_code"),
        ({"encoder": {"class": "TextEncoder", "kwargs": {"max_length": "${oc.env:HOME}"}}}, "`max_length`"),
        ({"encoder": {"class": "TextEncoder", "kwargs": {"pooling": "max"}}}, "one of cls, mean, attention, stats"),
        ({"head": {"class": "MLPHead", "kwargs": {"hidden_features": 10**9}}}, "[1, 65536]"),
        ({"head": {"class": "LinearHead", "kwargs": {"dropout": float("nan")}}}, "`dropout`"),
        ({"head": {"class": "MLPHead", "kwargs": {"num_layers": True}}}, "`num_layers`"),
        ({"encoder": {"class": "VisionEncoder", "kwargs": {}}}, "image encoder"),
        ({"callback": "os.system"}, "unknown key `callback`"),
        ({"format": 3}, "Upgrade hftl"),
        ({"adapter": "pickle"}, "`adapter`"),
        ({"label_names": ["a", "a"]}, "distinct"),
        ({"base_model": "/nonexistent/base"}, "`base_model` = '/nonexistent/base'"),
    ],
)  # fmt: skip
def test_hftl_model_json_values_are_checked(copy, changes, expected):
    _edit_meta(copy, **changes)
    with pytest.raises(ModelLoadError, match="hftl_model.json") as err:
        load_model(copy)
    assert expected in str(err.value) and "\n" not in str(err.value)


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[:-7])


def _retype(file: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: v.to(torch.int64) for k, v in load_file(file).items()}, str(file))


def _reshape(file: Path) -> None:
    from safetensors.torch import load_file, save_file

    save_file({k: torch.cat([v, v]) for k, v in load_file(file).items()}, str(file))


@pytest.mark.parametrize(
    ("file", "damage", "expected"),
    [
        ("head.safetensors", _truncate, "not a valid safetensors file"),
        ("head.safetensors", lambda f: f.write_bytes(b"\xff" * 8 + b"{}"), "not a valid safetensors file"),
        ("head.safetensors", _retype, "mismatched"),
        ("head.safetensors", _reshape, "mismatched"),
        ("head.safetensors", lambda f: f.unlink(), "head.safetensors"),
        ("encoder/adapter_model.safetensors", _truncate, "adapter_model.safetensors is not a valid"),
        ("encoder/adapter_model.safetensors", lambda f: f.unlink(), "no adapter_model.safetensors"),
        ("hftl_model.json", lambda f: f.write_text("{"), "Cannot read"),
        ("encoder/tokenizer_config.json", lambda f: f.write_text("[" * 100_000), "tokenizer_config.json"),
    ],
    ids=["truncated", "bad-header", "wrong-dtype", "wrong-shape", "missing-head", "truncated-adapter",
         "missing-adapter", "bad-json", "deep-json"],
)  # fmt: skip
def test_damaged_files_give_one_line_naming_the_file(copy, file, damage, expected):
    damage(copy / file)
    with pytest.raises(ModelLoadError) as err:
        load_model(copy)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_multitask_task_names_cannot_leave_the_directory(copy):
    from hftl.models.multitask import load_multitask

    head = json.loads((copy / "hftl_model.json").read_text())["head"]
    tasks = {"tasks": [{"name": "../../head", "label_names": LABELS, "head": head}]}
    (copy / "tasks.json").write_text(json.dumps(tasks))
    with pytest.raises(ModelLoadError, match=r"tasks\[0\].name"):
        load_multitask(copy)


def test_auto_map_of_a_hub_base_model_is_refused_without_the_flag(copy, tmp_path, monkeypatch, caplog):
    """An adapter whose Hub base model ships code: refused, or loaded with a warning naming the module."""
    import transformers.utils

    base_config = tmp_path / "base_config.json"
    base_config.write_text(json.dumps({"model_type": "bert", "auto_map": {"AutoModel": "modeling_x.XModel"}}))
    monkeypatch.setattr(transformers.utils, "cached_file", lambda repo, name, revision=None: str(base_config))
    _edit_meta(copy, base_model="someone/base-with-code")
    with pytest.raises(
        ModelLoadError, match=r"base_config.json has `auto_map`: .*'someone/base-with-code'"
    ) as err:
        load_model(copy)
    assert "modeling_x.py" in str(err.value) and "--trust-remote-code" in str(err.value)
    caplog.set_level("WARNING", logger="hftl")
    with pytest.raises(ModelLoadError):  # the check passes; the (fake, unreachable) base then fails to load
        load_model(copy, trust_remote_code=True)
    assert "modeling_x.py" in caplog.text and "someone/base-with-code" in caplog.text


def test_predictor_runs_lora_through_a_merged_copy_and_keeps_the_loaded_model(saved):
    """hftl.load(...)(texts) on a LoRA model: a cached copy with the adapters folded in gives the
    unmerged model's scores, and ``predictor.model`` stays the loaded (peft, unmerged) model."""
    from hftl.adapters.merged import _VIEWS, evaluation_view, has_unmerged_adapters
    from hftl.predict import Predictor

    predictor = Predictor.from_pretrained(saved[0], device="cpu")
    assert predictor.model not in _VIEWS
    results = predictor(TEXTS)
    assert predictor.model in _VIEWS  # the call built the merged copy
    probs = torch.tensor([[r["scores"][name] for name in LABELS] for r in results])
    torch.testing.assert_close(probs, saved[1].softmax(-1), atol=1e-5, rtol=1e-5)
    assert has_unmerged_adapters(predictor.model)
    view = evaluation_view(predictor.model)
    assert view is not predictor.model and not has_unmerged_adapters(view)
    assert evaluation_view(predictor.model) is view  # built once, reused by the next call
