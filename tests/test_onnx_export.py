"""``hftl export --onnx``: one ONNX graph per model, parity with PyTorch, and running it without hftl or torch.

The speech CNN-transformer uses the default exporters (dynamo first; its TorchScript graph fails in
onnxruntime, which the refusal test relies on); the others ask for the TorchScript exporter, which
exports a tiny model in ~1 s of CPU instead of ~12 s, so the file stays fast on a busy machine.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import numpy as np
import onnx
import pytest
import soundfile as sf
import torch
from omegaconf import OmegaConf

import hftl
from hftl.adapters import Frozen, FullFinetune, Lora
from hftl.cli import main as hftl_main
from hftl.config import instantiate, load_config
from hftl.errors import DataError, ModelLoadError
from hftl.export import OnnxPredictor, export_onnx
from hftl.export.exporter import OnnxExportError, render_readme
from hftl.export.graph import merged_copy
from hftl.models.io import save_model
from hftl.models.multitask import MultiTaskClassifier, save_tasks

LABELS = ["neg", "neu", "pos"]
TEXTS = ["a good film", "bad", "this was not a very good movie at all, the book was better " * 3, "it is"]
TORCH_FREE = ("torch", "torchaudio", "torchvision", "torchcodec")  # "not installed" for the subprocesses
SCRATCH = {
    "_component_": "hftl.encoders.AudioEncoder",
    "model": {
        "_component_": "hftl.encoders.SpeechCNNTransformerConfig", "num_mel_bins": 40, "hidden_size": 32,
        "num_layers": 2, "num_heads": 2, "intermediate_size": 64, "input_layout": "time_mel",
    },
    "processor": {
        "_component_": "transformers.Speech2TextFeatureExtractor", "feature_size": 40, "num_mel_bins": 40,
        "sampling_rate": 8000,
    },
    "pooling": "stats", "max_duration": 1.0, "normalize": "peak",
}  # fmt: skip


def _trained_like(model: torch.nn.Module) -> None:
    """Moves every trainable weight (LoRA included) off its initial value, as training would."""
    torch.manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.add_(0.2 * torch.randn_like(p))


def _save(root: Path, encoder: dict, head: dict, adapter=None, *, tasks=None, config=None, data=None) -> str:
    """A model directory ``root/run/model`` whose config.yaml records the shipped ``config`` (or only the
    encoder and head) with ``data`` fields replaced; ``tasks``: extra task name -> label names."""
    adapter = adapter or FullFinetune()
    cfg = load_config(config) if config else OmegaConf.create({})
    cfg.encoder, cfg.head = encoder, head
    for key, value in (data or {}).items():
        cfg.data[key] = value
    torch.manual_seed(0)
    enc = adapter.apply(instantiate(cfg.encoder))
    labels = {"main": LABELS, **(tasks or {})}
    heads = {
        t: instantiate(cfg.head, in_features=enc.out_features, num_labels=len(n)) for t, n in labels.items()
    }
    model = MultiTaskClassifier(enc, heads, labels)
    _trained_like(model)
    path = save_model(
        model.task_classifier("main"), root / "run" / "model", adapter_kind=adapter.kind, config=cfg
    )
    if tasks:
        save_tasks(model, path, head_configs={t: head for t in labels})
    return str(root / "run")


def _logits(run: str, inputs: list, task: str | None = None) -> np.ndarray:
    """hftl.load's logits (PyTorch) for raw inputs, through its own collator."""
    predictor = hftl.load(run, task=task) if task else hftl.load(run)
    key = {"text": "text", "audio": "audio", "image": "image"}[predictor.modality]
    batch = predictor.collate([{key: x} for x in inputs])
    with torch.no_grad():
        return predictor.model(**{k: v for k, v in batch.items() if k != "labels"}).logits.numpy()


def _run_without(blocked: tuple[str, ...], code: str, tmp: Path) -> str:
    """Runs ``code`` in a fresh interpreter whose site-packages lack ``blocked`` (and hftl, unless asked).

    The interpreter starts with ``-S`` on a folder of links to every other installed distribution, so
    the blocked ones are as absent as if never installed; ``"hftl"`` not in ``blocked`` puts the repo on
    the path (hftl from source, its dependencies minus the blocked ones).
    """
    site = Path(sysconfig.get_paths()["purelib"])
    view = tmp / ("site-without-" + "-".join(blocked))
    if not view.is_dir():
        view.mkdir()
        for entry in site.iterdir():
            top = re.split(r"[-.]", entry.name.lstrip("_"))[0].lower()
            if entry.suffix != ".pth" and top not in blocked and "hftl" not in entry.name:
                (view / entry.name).symlink_to(entry)
    path = [str(view)] if "hftl" in blocked else [str(view), str(Path(hftl.__file__).parents[1])]
    done = subprocess.run(
        [sys.executable, "-S", "-c", code], capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(path), "PYTHONWARNINGS": "ignore"},
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def _snippet(spec: dict, out: Path, inputs: list[str]) -> str:
    """The README's python block for this export, on ``inputs``, printing its logits as JSON."""
    code = re.search(r"```python\n(.*?)```", render_readme(spec, out), re.S).group(1)
    example = {
        "text": '["an example sentence", "another one"]',
        "audio": '["clip.wav"]',
        "image": '["image.png"]',
    }
    assert example[spec["modality"]] in code
    code = code.replace(example[spec["modality"]], json.dumps(inputs))
    return code + "\nprint(json.dumps(logits.tolist()))\n"


def _write_wavs(root: Path, rate: int, seconds: list[float]) -> list[str]:
    rng = np.random.default_rng(1)
    paths = []
    for i, s in enumerate(seconds):
        t = np.arange(int(s * rate)) / rate
        wave = 0.3 * np.sin(2 * np.pi * (300 + 200 * i) * t) + 0.05 * rng.standard_normal(t.size)
        paths.append(str(root / f"clip{i}.wav"))
        sf.write(paths[-1], wave.astype(np.float32), rate, subtype="FLOAT")
    return paths


@pytest.fixture(scope="module")
def text_lora(tmp_path_factory, tiny_models) -> tuple[str, Path, dict]:
    """Tiny BERT + LoRA, mean pooling, MLP head, exported through the CLI."""
    root = tmp_path_factory.mktemp("text_lora")
    for split, texts in (("train", TEXTS[:2]), ("test", TEXTS[2:])):  # the run's data: 2 test rows
        rows = "".join(f"{t}\t{i % 3}\n" for i, t in enumerate(texts))
        (root / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    head = {"_component_": "hftl.models.MLPHead", "hidden_features": 16}
    data = {"data_files": {s: str(root / f"{s}.tsv") for s in ("train", "test")}, "label_names": LABELS}
    run = _save(root, enc, head, Lora(r=4), config="text/minilm_lora_sst2", data=data)
    assert hftl_main(["export", "--onnx", run, "--out", str(root / "onnx"), "--exporter", "torchscript"]) == 0
    return run, root / "onnx", json.loads((root / "onnx" / "hftl_onnx.json").read_text())


def test_text_lora_export_is_one_merged_graph_with_dynamic_axes(text_lora):
    run, out, spec = text_lora
    assert spec["export"]["exporter"] == "torchscript" and spec["export"]["failed_exporters"] == []
    assert spec["export"]["parity"]["max_abs_diff"] <= 1e-4
    assert {i["name"]: i["shape"] for i in spec["inputs"]} == {
        "input_ids": ["batch", "sequence"], "attention_mask": ["batch", "sequence"],
        "token_type_ids": ["batch", "sequence"],
    }  # fmt: skip
    graph = onnx.load(str(out / "model.onnx"))
    assert not [t.name for t in graph.graph.initializer if "lora" in t.name.lower()]  # merged
    assert spec["label_names"] == LABELS and spec["preprocessing"]["max_length"] == 16
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["README.md", "hftl_onnx.json", "model.onnx", "tokenizer.json", "tokenizer_config.json"]
    )
    assert not list(out.parent.glob(".onnx.onnx-*"))  # the temporary sibling is gone
    assert spec["export"]["parity"]["inputs"].startswith("real: 2 rows of `data`")


def test_text_predictions_equal_pytorch_in_every_runner(text_lora):
    """OnnxPredictor, `hftl predict` with torch missing, and the README snippet with hftl missing."""
    run, out, spec = text_lora
    expected = _logits(run, TEXTS)  # includes a text longer than max_length (truncated) and padding
    np.testing.assert_allclose(OnnxPredictor(out).logits(TEXTS), expected, atol=1e-4, rtol=0)
    for one in TEXTS[:2]:  # batch of 1: no padding
        np.testing.assert_allclose(OnnxPredictor(out).logits([one]), _logits(run, [one]), atol=1e-4, rtol=0)

    code = f"from hftl.cli import main\nmain(['predict', {str(out)!r}, *{TEXTS!r}, '--json'])\n"
    printed = [json.loads(line) for line in _run_without(TORCH_FREE, code, out.parent).splitlines()]
    assert [p["label"] for p in printed] == [LABELS[i] for i in expected.argmax(-1)]

    snippet = _snippet(spec, out, TEXTS)
    logits = json.loads(
        _run_without((*TORCH_FREE, "hftl", "transformers"), snippet, out.parent).splitlines()[-1]
    )
    np.testing.assert_allclose(np.array(logits), expected, atol=1e-4, rtol=0)


def test_real_rows_from_recorded_shared_data_or_from_data_flag(tmp_path, tiny_models, monkeypatch):
    """The run's `${hftl.data_dir:REL}` files are read from this machine's shared folder (as `hftl eval` does);
    any other interpolation stays unresolved (synthetic rows only); `--data FILE` needs no labels."""
    from hftl.export.samples import real_samples

    shared = tmp_path / "shared"
    (shared / "mini").mkdir(parents=True)
    (shared / "mini" / "test.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t0\n" for t in TEXTS))
    monkeypatch.setenv("HFTL_DATA_DIR", str(shared))
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    head = {"_component_": "hftl.models.LinearHead"}
    recorded = {"data_files": {"test": "${hftl.data_dir:mini/test.tsv}"}, "label_names": LABELS}
    run = _save(tmp_path, enc, head, config="text/minilm_lora_sst2", data=recorded)
    spec = export_onnx(run, tmp_path / "onnx", exporters=("torchscript",))
    assert spec["export"]["parity"]["inputs"].startswith(
        "real: 3 rows of `data` (csv), test split; synthetic: 4"
    )

    encoder = hftl.load(run).model.encoder
    other = _save(
        tmp_path / "env", enc, head, config="text/minilm_lora_sst2", data={"data_files": "${oc.env:X}"}
    )
    rows, source = real_samples(Path(other) / "model", encoder, LABELS)
    assert rows == [] and "`data.data_files` holds an interpolation" in source

    unlabelled = tmp_path / "new.csv"
    unlabelled.write_text("text\nan unseen review\nanother one\n")
    out = tmp_path / "onnx2"
    assert hftl_main(["export", "--onnx", other, "--out", str(out), "--data", str(unlabelled)]) == 0
    inputs = json.loads((out / "hftl_onnx.json").read_text())["export"]["parity"]["inputs"]
    assert inputs.startswith(f"real: 2 rows of --data {unlabelled}, train split")
    with pytest.raises(DataError, match="missing.csv"):
        export_onnx(other, tmp_path / "onnx3", data=tmp_path / "missing.csv")
    assert not (tmp_path / "onnx3").exists()


def test_merged_copy_leaves_the_loaded_model_unmerged(text_lora):
    model = hftl.load(text_lora[0]).model
    before = {k: v.clone() for k, v in model.state_dict().items()}
    encoder, heads = merged_copy(model.encoder, {"logits": model.head})
    assert "lora" not in " ".join(encoder.state_dict())
    assert hasattr(model.encoder.backbone, "merge_and_unload")  # the loaded model keeps its peft wrapper
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_multitask_text_exports_one_output_per_task(tmp_path, tiny_models):
    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "pooling": "cls"}
    run = _save(tmp_path, enc, {"_component_": "hftl.models.LinearHead"}, tasks={"topic": ["x", "y"]})
    spec = export_onnx(run, tmp_path / "onnx", exporters=("torchscript",))
    assert [(o["name"], o["task"]) for o in spec["outputs"]] == [
        ("logits_main", "main"),
        ("logits_topic", "topic"),
    ]
    for task in ("main", "topic"):
        got = OnnxPredictor(tmp_path / "onnx", task=task).logits(TEXTS)
        np.testing.assert_allclose(got, _logits(run, TEXTS, task=task), atol=1e-4, rtol=0)
    with pytest.raises(ModelLoadError, match="no task 'nope'"):
        OnnxPredictor(tmp_path / "onnx", task="nope")


@pytest.fixture(scope="module")
def scratch(tmp_path_factory) -> tuple[str, Path, dict, list[str]]:
    """The speech CNN-transformer from scratch (Kaldi filter banks, stats pooling, peak level), dynamo export."""
    root = tmp_path_factory.mktemp("scratch")
    run = _save(root, SCRATCH, {"_component_": "hftl.models.LinearHead"})
    spec = export_onnx(run, root / "onnx")
    clips = _write_wavs(root, 8000, [0.35, 1.6, 0.8])  # 1.6 s: centre-cropped to max_duration 1.0 s
    return run, root / "onnx", spec, clips


def test_scratch_speech_export_takes_waveforms_and_matches_pytorch(scratch):
    run, out, spec, clips = scratch
    assert spec["export"]["exporter"] == "dynamo" and spec["export"]["parity"]["max_abs_diff"] <= 1e-4
    assert {i["name"]: i["shape"] for i in spec["inputs"]} == {
        "waveform": ["batch", "samples"],
        "attention_mask": ["batch", "samples"],
    }
    pre = spec["preprocessing"]
    assert (pre["features"], pre["sampling_rate"], pre["max_samples"], pre["level"]) == (
        "graph",
        8000,
        8000,
        "peak",
    )
    expected = _logits(run, clips)
    np.testing.assert_allclose(OnnxPredictor(out).logits(clips), expected, atol=1e-4, rtol=0)

    snippet = _snippet(spec, out, clips)  # soundfile + numpy + onnxruntime only
    logits = json.loads(
        _run_without((*TORCH_FREE, "hftl", "transformers"), snippet, out.parent).splitlines()[-1]
    )
    np.testing.assert_allclose(np.array(logits), expected, atol=1e-4, rtol=0)


def test_graph_that_fails_the_check_is_refused_and_nothing_written(scratch, tmp_path):
    """The TorchScript exporter bakes this model's attention shapes in: onnxruntime fails on other lengths."""
    run = scratch[0]
    with pytest.raises(OnnxExportError, match=r"refused, nothing written.*torchscript: onnxruntime failed"):
        export_onnx(run, tmp_path / "onnx", exporters=("torchscript",))
    assert list(tmp_path.iterdir()) == []


def test_logits_beyond_atol_are_refused_with_the_difference(tmp_path, tiny_models, monkeypatch):
    import hftl.export.exporter as exporter

    enc = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"]}
    run = _save(tmp_path, enc, {"_component_": "hftl.models.LinearHead"})

    def bad_merge(encoder, heads):  # a merge that changes the weights: the check must notice
        encoder, heads = merged_copy(encoder, heads)
        with torch.no_grad():
            heads["logits"][-1].bias.add_(1e-3)
        return encoder, heads

    monkeypatch.setattr(exporter, "merged_copy", bad_merge)
    with pytest.raises(
        OnnxExportError, match=r"torchscript: max \|logit difference\| 1\.0\de-03 > atol 0\.0001"
    ):
        export_onnx(run, tmp_path / "onnx", exporters=("torchscript",))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_bilstm_context_head_is_refused_before_exporting(tmp_path, tiny_models):
    enc = {
        "_component_": "hftl.embeddings.ContextAudioEncoder", "model": tiny_models["wav2vec2"],
        "token_head": "bilstm", "hidden_features": 8,
    }  # fmt: skip
    run = _save(tmp_path, enc, {"_component_": "hftl.models.LinearHead"}, Frozen())
    with pytest.raises(
        OnnxExportError, match=r"nothing written: `encoder.token_head: bilstm`.*token_head transformer"
    ):
        export_onnx(run, tmp_path / "onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_wav2vec2_export_normalizes_in_the_graph(tmp_path, tiny_models, wavs):
    enc = {
        "_component_": "hftl.encoders.AudioEncoder",
        "model": tiny_models["wav2vec2"],
        "max_duration": 0.75,
    }
    run = _save(tmp_path, enc, {"_component_": "hftl.models.LinearHead"}, Lora(r=4))
    spec = export_onnx(run, tmp_path / "onnx", exporters=("torchscript",))
    assert spec["preprocessing"]["features"] == "graph" and spec["preprocessing"]["max_samples"] == 12000
    clips = [w["audio"] for w in wavs]  # 1.0 s (cropped to 0.75 s) and 0.5 s, at 16 kHz
    expected = _logits(run, clips)
    np.testing.assert_allclose(OnnxPredictor(tmp_path / "onnx").logits(clips), expected, atol=1e-4, rtol=0)


def test_vision_export_and_snippet_without_torch(tmp_path, tiny_models):
    from PIL import Image

    enc = {"_component_": "hftl.encoders.VisionEncoder", "model": tiny_models["vit"], "pooling": "cls"}
    run = _save(tmp_path, enc, {"_component_": "hftl.models.LinearHead"})
    spec = export_onnx(run, tmp_path / "onnx", exporters=("torchscript",))
    assert spec["inputs"] == [
        {"name": "pixel_values", "shape": ["batch", 3, 32, 32], "type": "tensor(float)"}
    ]
    rng = np.random.default_rng(0)
    paths = []
    for i, mode in enumerate(("RGB", "L", "RGB")):  # 32x32, the model's size: backends resize differently
        shape = (32, 32, 3) if mode == "RGB" else (32, 32)
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(paths[-1])
    expected = _logits(run, [Image.open(p) for p in paths])
    np.testing.assert_allclose(OnnxPredictor(tmp_path / "onnx").logits(paths), expected, atol=1e-4, rtol=0)
    snippet = _snippet(spec, tmp_path / "onnx", paths)  # transformers' Pillow processor, no torch
    logits = json.loads(_run_without((*TORCH_FREE, "hftl"), snippet, tmp_path).splitlines()[-1])
    np.testing.assert_allclose(np.array(logits), expected, atol=1e-4, rtol=0)


def test_runtime_opens_image_files_with_the_pixel_limit(tmp_path, monkeypatch):
    """hftl predict on an export: missing, unreadable and over-limit files are one-line DataErrors."""
    from PIL import Image

    from hftl.export.runtime import open_image

    path = tmp_path / "big.png"
    Image.new("L", (32, 32)).save(path)
    assert open_image(path).size == (32, 32)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 600)  # 1,024 pixels: over the limit, where PIL only warns
    with pytest.raises(DataError, match=r"big.png' is a likely decompression bomb"):
        open_image(path)
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"bad.png' cannot be read as an image \(UnidentifiedImageError"):
        open_image(tmp_path / "bad.png")
    with pytest.raises(DataError, match="does not exist"):
        open_image(tmp_path / "none.png")


def test_out_guards_run_before_the_model_loads(tmp_path, text_lora, capsys):
    run, out, _ = text_lora
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    assert hftl_main(["export", "--onnx", "missing-run", "--out", str(mine)]) == 2
    assert "exists and is not empty; pass --force" in capsys.readouterr().err
    assert hftl_main(["export", "--onnx", "missing-run", "--out", str(mine), "--force"]) == 2
    assert "not an hftl ONNX export" in capsys.readouterr().err and (mine / "notes.txt").is_file()
    assert hftl_main(["export", "--onnx", run, "--out", f"{run}/model/onnx"]) == 2
    assert "inside the model directory" in capsys.readouterr().err
    assert hftl_main(["export", run, "--out", str(tmp_path / "x")]) == 2
    assert "needs --merge" in capsys.readouterr().err
    assert hftl_main(["export", "--onnx", "--merge", run, "--out", str(tmp_path / "x")]) == 2
    assert "not both" in capsys.readouterr().err and not (tmp_path / "x").exists()


def test_runtime_input_and_file_errors(text_lora, scratch, tmp_path):
    with pytest.raises(DataError, match="non-empty string"):
        OnnxPredictor(text_lora[1])(["fine", "  "])
    with pytest.raises(DataError, match=r"150 samples; the model needs at least 200 \(25 ms at 8000 Hz"):
        OnnxPredictor(scratch[1])([np.zeros(150, dtype=np.float32)])
    with pytest.raises(DataError, match="Audio file not found"):
        OnnxPredictor(scratch[1])([str(tmp_path / "nope.wav")])
    damaged = tmp_path / "damaged"
    damaged.mkdir()
    (damaged / "hftl_onnx.json").write_text(json.dumps({"format": 99}))
    with pytest.raises(ModelLoadError, match="format 99; this hftl reads format 1"):
        OnnxPredictor(damaged)
    tampered = tmp_path / "tampered"
    shutil.copytree(text_lora[1], tampered)
    spec = json.loads((tampered / "hftl_onnx.json").read_text())
    spec["preprocessing"]["tokenizer"] = "../../../etc/passwd"  # the spec names no file hftl opens
    spec["outputs"][0]["label_names"] = [{"_component_": "x"}]
    (tampered / "hftl_onnx.json").write_text(json.dumps(spec))
    with pytest.raises(
        ModelLoadError, match=r"`outputs` is not valid .*`preprocessing.tokenizer` is not valid"
    ):
        OnnxPredictor(tampered)


def test_model_card_shows_the_onnx_snippet_of_its_modality(text_lora):
    from hftl.hub import render_card

    card = Path(render_card(text_lora[0])).read_text()
    usage = card[card.index("## How to use") :]
    assert (
        "### Without hftl or torch (ONNX)" in usage and "hftl export --onnx OUTPUT_DIR --out onnx/" in usage
    )
    assert "Tokenizer.from_file" in usage and "soundfile" not in usage
