"""The bad-input corpus: each case builds one broken input and says what the error must name.

A case is run through the real CLI (``hftl.cli.main``, in process) by ``test_bad_inputs.py``, and
``make_table.py`` writes the table of cases and the messages they produce to ``docs/bad_inputs.md``.
Every failing case must exit non-zero with one ``error:`` line that names the field or file and the fix,
and leave no model, checkpoint or metrics behind; a ``handled`` case must run to the end.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf
import yaml

WORDS = {"pos": "good great fine nice love", "neg": "bad awful poor hate boring"}


@dataclass
class Env:
    """What a case builds on: a scratch folder and the tiny model dirs (``bert``, ``wav2vec2``, ``vit``)."""

    root: Path
    models: dict[str, str]

    @property
    def out(self) -> Path:
        return self.root / "out"


@dataclass
class Case:
    id: str
    category: str
    what: str
    build: Callable[[Env], list[str]]  # returns the CLI argv
    expect: list[str] = field(default_factory=list)  # fragments the error line must contain
    handled: bool = False  # the run must succeed (the input is repaired, with a note)


# --- builders -------------------------------------------------------------------------------------------
def text_csv(path: Path, n: int = 24, *, labels: tuple[str, ...] = ("pos", "neg"), seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    rows = ["text,label"]
    for i in range(n):
        label = labels[i % len(labels)]
        words = " ".join(rng.choice(WORDS.get(label, "so so").split(), size=3))
        rows.append(f"the movie was {words},{label}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


def text_config(env: Env, **data) -> dict:
    files = {
        "train": text_csv(env.root / "train.csv"),
        "validation": text_csv(env.root / "val.csv", 8, seed=1),
        "test": text_csv(env.root / "test.csv", 8, seed=2),
    }
    return {
        "recipe": "finetune",
        "output_dir": str(env.out),
        "encoder": {
            "_component_": "hftl.encoders.TextEncoder",
            "model": env.models["bert"],
            "max_length": 16,
        },
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead"},
        "data": {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": files, **data},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 8},
    }


def stream_file(env: Env) -> str:
    """16 good rows, then one whose label is not a class (read only when the stream reaches it)."""
    path = env.root / "stream.csv"
    path.write_text("text,label\n" + "fine film,pos\nbad film,neg\n" * 8 + "odd film,maybe\n")
    return str(path)


def run_config(env: Env, cfg: dict, *overrides: str) -> list[str]:
    path = env.root / "config.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return ["run", "finetune", "--config", str(path), *overrides]


def text_run(*overrides: str, **data) -> Callable[[Env], list[str]]:
    return lambda env: run_config(env, text_config(env, **data), *overrides)


def with_file(
    name: str, content: bytes | str, split: str | None = "train", **data
) -> Callable[[Env], list[str]]:
    """The text config with one split's file replaced (``split=None``: a single file, carved)."""

    def build(env: Env) -> list[str]:
        cfg = text_config(env, **data)
        path = env.root / name
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        if split is None:
            cfg["data"] = {"_component_": "hftl.data.ClassificationData", "path": str(path), **data}
        else:
            cfg["data"]["data_files"][split] = str(path)
        return run_config(env, cfg)

    return build


def media_config(env: Env, encoder: str, model: str, path: Path, modality: str) -> dict:
    """The text config with an audio or vision encoder and a data node on ``path`` (2 validation, 2 test rows)."""
    cfg = text_config(env)
    cfg["encoder"] = {"_component_": f"hftl.encoders.{encoder}", "model": env.models[model]}
    cfg["data"] = {
        "_component_": "hftl.data.ClassificationData",
        "path": str(path),
        "modality": modality,
        "validation_size": 2,
        "test_size": 2,
    }
    return cfg


def audio_run(write: Callable[[Path], str], *, name: str = "bad.wav") -> Callable[[Env], list[str]]:
    """A manifest of 8 good 16 kHz clips plus one clip written by ``write`` (returns its path)."""

    def build(env: Env) -> list[str]:
        rng = np.random.default_rng(0)
        rows = ["audio,label"]
        for i in range(8):
            path = env.root / f"ok{i}.wav"
            sf.write(path, (0.1 * rng.standard_normal(4000)).astype("float32"), 16000)
            rows.append(f"{path},{'yes' if i % 2 else 'no'}")
        rows.append(f"{write(env.root / name)},yes")
        (env.root / "manifest.csv").write_text("\n".join(rows) + "\n")
        return run_config(
            env, media_config(env, "AudioEncoder", "wav2vec2", env.root / "manifest.csv", "audio")
        )

    return build


def wav(samples: np.ndarray, rate: int = 16000, subtype: str | None = None) -> Callable[[Path], str]:
    def write(path: Path) -> str:
        sf.write(path, samples.astype("float32"), rate, subtype=subtype)  # FLOAT keeps NaN (PCM cannot)
        return str(path)

    return write


def raw(content: bytes) -> Callable[[Path], str]:
    def write(path: Path) -> str:
        path.write_bytes(content)
        return str(path)

    return write


def image_run(make: Callable[[Path], None], name: str = "bad.png") -> Callable[[Env], list[str]]:
    """An imagefolder of 8 good 16×16 images in two classes plus one written by ``make``."""

    def build(env: Env) -> list[str]:
        from PIL import Image

        rng = np.random.default_rng(0)
        for i in range(8):
            folder = env.root / "images" / ("a" if i % 2 else "b")
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(folder / f"{i}.png")
        make(env.root / "images" / "a" / name)
        return run_config(env, media_config(env, "VisionEncoder", "vit", env.root / "images", "image"))

    return build


def model_dir(kind: str) -> Callable[[Env], list[str]]:
    def build(env: Env) -> list[str]:
        import shutil

        src = Path(env.models["bert"])
        dst = env.root / "model"
        shutil.copytree(src, dst)
        if kind in ("pickle", "pickle-code"):
            import torch
            from safetensors.torch import load_file

            state = load_file(dst / "model.safetensors")
            if kind == "pickle-code":  # a pickle that would run code when unpickled without weights_only
                state["evil"] = Evil()
            torch.save(state, dst / "pytorch_model.bin")
            (dst / "model.safetensors").unlink()
        elif kind == "no-config":
            (dst / "config.json").unlink()
        cfg = text_config(env)
        cfg["encoder"]["model"] = str(dst)
        return run_config(env, cfg)

    return build


class Evil:
    """Unpickling this runs a shell command: what ``torch.load(weights_only=True)`` exists to refuse."""

    def __reduce__(self):
        import os

        return (os.system, ("echo pwned",))


def png_zero_size(path: Path) -> None:
    """A PNG whose header claims 0×0 pixels (PIL refuses to open it)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 0, 0, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def png_truncated(path: Path) -> None:
    from PIL import Image

    Image.new("RGB", (16, 16), (10, 200, 30)).save(path)
    path.write_bytes(path.read_bytes()[:40])


def jpeg_cmyk(path: Path) -> None:
    from PIL import Image

    Image.new("CMYK", (16, 16), (10, 200, 30, 0)).save(path.with_suffix(".jpg"))


def predict_on(what: str) -> Callable[[Env], list[str]]:
    def build(env: Env) -> list[str]:
        folder = env.root / "model"
        if what == "encoder-only":
            import shutil

            shutil.copytree(env.models["bert"], folder)
        return ["predict", str(folder), "the movie was good"]

    return build


def output_at(make: Callable[[Path], Path]) -> Callable[[Env], list[str]]:
    """The text run with ``output_dir`` = the path ``make(env.root)`` prepares."""
    return lambda env: run_config(env, text_config(env), f"output_dir={make(env.root)}")


def foreign_folder(root: Path) -> Path:
    (root / "mine" / "model").mkdir(parents=True)
    (root / "mine" / "notes.txt").write_text("my notes")
    return root / "mine"


def other_run(root: Path) -> Path:
    """A folder an earlier hftl run (with another config) left: its marker and metrics."""
    (root / "earlier").mkdir()
    marker = {"written_by": "hftl", "format": 1, "recipe": "finetune", "created": "2025-01-01T00:00:00+00:00",
              "config_fingerprint": "0123456789abcdef", "data_fingerprint": "fedcba9876543210",
              "config_keys": {"optimizer.lr": "0"}, "data_keys": {}, "outputs": ["metrics.json"]}  # fmt: skip
    (root / "earlier" / ".hftl_run.json").write_text(json.dumps(marker))
    (root / "earlier" / "metrics.json").write_text('{"written_by": "hftl", "steps": 3}')
    return root / "earlier"


def tampered_model(kind: str) -> Callable[[Env], list[str]]:
    """``hftl predict`` on a saved tiny model directory that ``kind`` damages or tampers with."""

    def build(env: Env) -> list[str]:
        import json as _json

        import torch
        from omegaconf import OmegaConf
        from safetensors.torch import save_file

        from hftl.encoders import TextEncoder
        from hftl.models import Classifier, LinearHead
        from hftl.models.io import save_model

        encoder = TextEncoder(env.models["bert"], max_length=16)
        cfg = OmegaConf.create({"encoder": {"_component_": "hftl.encoders.TextEncoder", "max_length": 16}})
        classifier = Classifier(encoder, LinearHead(encoder.out_features, 2), ["neg", "pos"])
        model = save_model(classifier, env.root / "saved" / "model", adapter_kind="full", config=cfg)
        meta = _json.loads((model / "hftl_model.json").read_text())
        if kind == "component":
            meta["head"]["class"] = "os.system"
        elif kind == "interpolation":  # hftl 0.1's layout, a secret asked for inside a value
            meta = {k: v for k, v in meta.items() if k not in ("encoder", "head", "base_revision")} | {
                "format": 1
            }
            (model / "config.yaml").write_text(yaml.safe_dump({
                "encoder": {"_component_": "hftl.encoders.TextEncoder", "max_length": "${oc.env:HF_TOKEN}"},
                "head": {"_component_": "hftl.models.LinearHead"}}))  # fmt: skip
        elif kind == "auto-map":
            config = _json.loads((model / "encoder" / "config.json").read_text())
            config["auto_map"] = {"AutoModel": "modeling_evil.EvilModel"}
            (model / "encoder" / "config.json").write_text(_json.dumps(config))
            (model / "encoder" / "modeling_evil.py").write_text("import os\nos.system('echo pwned')\n")
        elif kind == "truncated":
            head = model / "head.safetensors"
            head.write_bytes(head.read_bytes()[:-16])
        elif kind == "head-mismatch":
            save_file(
                {"head.1.weight": torch.zeros(3, 32), "head.1.bias": torch.zeros(3)},
                str(model / "head.safetensors"),
            )
        (model / "hftl_model.json").write_text(_json.dumps(meta))
        return ["predict", str(model), "the movie was good"]

    return build


def _nan_audio() -> np.ndarray:
    x = np.zeros(4000)
    x[100:200] = np.nan
    return x


_sine = 0.1 * np.sin(np.arange(4000) / 5.0)

CASES: list[Case] = [
    # --- configs -------------------------------------------------------------------------------------
    Case("yaml-syntax", "config", "config file that is not valid YAML",
         lambda env: (env.root.joinpath("c.yaml").write_text("train: [epochs: 1\n"),
                      ["run", "finetune", "--config", str(env.root / "c.yaml")])[1],
         ["c.yaml"]),
    Case("config-not-found", "config", "`--config` names no shipped config and no file",
         lambda env: ["run", "finetune", "--config", "text/no_such_config"], ["text/no_such_config", "hftl ls"]),
    Case("unknown-section", "config", "misspelt top-level section (`trian:`)",
         lambda env: run_config(env, {**text_config(env), "trian": {"epochs": 1}}), ["trian"]),
    Case("unknown-argument", "config", "argument the component does not take",
         text_run("optimizer.lerning_rate=0.1"), ["optimizer.lerning_rate"]),
    Case("unknown-train-key", "config", "misspelt `train.` field on the command line",
         text_run("train.epocs=2"), ["train.epocs", "epochs"]),
    Case("wrong-type", "config", "a string where an int is expected", text_run("train.epochs=abc"),
         ["train.epochs", "abc"]),
    Case("bad-choice", "config", "value outside a `Literal` choice", text_run("train.mixed_precision=fp8"),
         ["train.mixed_precision", "bf16"]),
    Case("out-of-range", "config", "batch size 0", text_run("train.batch_size=0"), ["train.batch_size"]),
    Case("component-not-allowed", "config", "`_component_` outside the allow-list",
         text_run("optimizer._component_=os.system"), ["os.system", "--allow-any-component"]),
    Case("component-not-found", "config", "`_component_` that does not exist",
         text_run("head._component_=hftl.models.NoSuchHead"), ["hftl.models.NoSuchHead"]),
    Case("missing-section", "config", "required section deleted", text_run("~encoder"), ["encoder"]),
    Case("bad-override", "config", "override without `=`", text_run("train.epochs"), ["train.epochs", "="]),
    # --- data ------------------------------------------------------------------------------------------
    Case("missing-data-file", "data", "data file that does not exist",
         text_run(**{"data_files": {"train": "/nonexistent/train.csv"}}), ["/nonexistent/train.csv"]),
    Case("empty-file", "data", "0-byte CSV", with_file("empty.csv", b""), ["empty.csv", "0 bytes"]),
    Case("header-only", "data", "CSV with a header and no rows", with_file("header.csv", "text,label\n"),
         ["header.csv", "0 rows"]),
    Case("no-label-column", "data", "CSV without a label column",
         with_file("nolabel.csv", "text,stars\nfine,1\nbad,2\n" * 4, None), ["label", "stars"]),
    Case("no-text-column", "data", "CSV without a text column",
         with_file("notext.csv", "body,label\nfine,pos\nbad,neg\n" * 4, None), ["text", "body"]),
    Case("mismatched-columns", "data", "train and test files with different columns",
         with_file("other.csv", "review,label\nfine,pos\nbad,neg\n", "test"), ["other.csv", "review"]),
    Case("empty-text", "data", "a row with empty text",
         with_file("emptytext.csv", "text,label\nfine,pos\n,neg\nbad,neg\n"), ["row 1"]),
    Case("unknown-label", "data", "test label not in the training label set",
         with_file("test.csv", "text,label\nfine,pos\nmeh,neutral\n", "test"), ["neutral"]),
    Case("bad-split-name", "data", "split mapping to a split the data does not have",
         text_run(splits={"validation": "dev"}), ["dev"]),
    Case("unsupported-format", "data", "data file with an unknown extension",
         lambda env: run_config(env, {**text_config(env), "data": {
             "_component_": "hftl.data.ClassificationData",
             "path": (env.root.joinpath("d.xlsx").write_bytes(b"PK\x03\x04"), str(env.root / "d.xlsx"))[1]}}),
         ["d.xlsx"]),
    Case("not-utf8", "data", "CSV in Latin-1, not UTF-8",
         with_file("latin1.csv", "text,label\ncaf\xe9 ok,pos\nbad,neg\n".encode("latin-1")), ["latin1.csv", "UTF-8"]),
    Case("stream-no-max-steps", "data", "streamed train data without `train.max_steps`",
         text_run("data.streaming=true", "data.label_names=[pos,neg]"), ["train.max_steps", "streamed"]),
    Case("stream-no-label-names", "data", "streamed train data without `label_names`",
         text_run("data.streaming=true", "train.max_steps=4"), ["label_names", "streaming"]),
    Case("stream-fraction", "data", "streamed data with a fractional `validation_size`",
         text_run("data.streaming=true", "data.label_names=[pos,neg]", "train.max_steps=4",
                  "~data.data_files.validation", "data.validation_size=0.2"), ["validation_size", "row count"]),
    Case("stream-bad-row", "data", "a streamed row whose label is not a class",
         lambda env: run_config(env, {**text_config(env, streaming=True, label_names=["pos", "neg"]),
                                      "train": {"max_steps": 4, "batch_size": 8}},
                                f"data.data_files.train={stream_file(env)}"), ["maybe", "row 16", "streamed"]),
    # --- audio -----------------------------------------------------------------------------------------
    Case("audio-corrupt", "audio", "file with a .wav name and garbage bytes",
         audio_run(raw(b"RIFF\x00\x00garbage" * 10)), ["bad.wav"]),
    Case("audio-empty-file", "audio", "0-byte .wav", audio_run(raw(b"")), ["bad.wav"]),
    Case("audio-zero-length", "audio", "valid WAV header, 0 samples", audio_run(wav(np.zeros(0))), ["bad.wav"]),
    Case("audio-nan", "audio", "samples that are NaN", audio_run(wav(_nan_audio(), subtype="FLOAT")), ["bad.wav", "NaN"]),
    Case("audio-missing", "audio", "manifest row pointing at a missing file",
         audio_run(lambda path: str(path.with_name("missing.wav"))), ["missing.wav"]),
    Case("audio-unsupported", "audio", "a file in a format no decoder reads",
         audio_run(raw(b"\x00" * 64), name="clip.xyz"), ["clip.xyz"]),
    Case("audio-stereo", "audio", "stereo clip (mixed down)",
         audio_run(wav(np.stack([_sine, _sine], axis=1))), handled=True),
    Case("audio-odd-rate", "audio", "44.1 kHz clip (resampled)", audio_run(wav(_sine, 44100)), handled=True),
    Case("audio-huge", "audio", "a 60 s clip (cropped to max_duration)",
         audio_run(wav(0.1 * np.sin(np.arange(16000 * 60) / 5.0))), handled=True),
    # --- images ----------------------------------------------------------------------------------------
    Case("image-truncated", "image", "PNG cut off after 40 bytes", image_run(png_truncated), ["bad.png"]),
    Case("image-zero-size", "image", "PNG whose header says 0×0", image_run(png_zero_size), ["bad.png"]),
    Case("image-cmyk", "image", "CMYK JPEG (converted to RGB)", image_run(jpeg_cmyk), handled=True),
    # --- models ----------------------------------------------------------------------------------------
    Case("model-missing", "model", "encoder directory that does not exist",
         text_run("encoder.model=/nonexistent/model"), ["/nonexistent/model", "no such directory"]),
    Case("model-wrong-modality", "model", "a speech model given to the text encoder",
         lambda env: run_config(env, text_config(env), f"encoder.model={env.models['wav2vec2']}"),
         ["TextEncoder", "AudioEncoder"]),
    Case("model-pickle-only", "model", "weights only as pytorch_model.bin (loaded with `weights_only=True`)",
         model_dir("pickle"), handled=True),
    Case("model-pickle-code", "model", "pytorch_model.bin whose pickle would run code",
         model_dir("pickle-code"), ["pytorch_model.bin"]),
    Case("model-no-config", "model", "model folder without config.json", model_dir("no-config"),
         ["config.json"]),
    Case("predict-not-a-model", "model", "`hftl predict` on a folder with no hftl model",
         predict_on("missing"), ["model"]),
    Case("predict-encoder-only", "model", "`hftl predict` on a bare encoder (no classifier head)",
         predict_on("encoder-only"), ["model"]),
    # --- runtime ---------------------------------------------------------------------------------------
    Case("nan-loss", "runtime", "learning rate so large the loss becomes NaN",
         text_run("optimizer.lr=1e30", "train.max_grad_norm=null"), ["NaN", "optimizer.lr"]),
    Case("output-is-a-file", "runtime", "`output_dir` that is an existing file",
         lambda env: (env.root.joinpath("taken").write_text("x"),
                      run_config(env, text_config(env), f"output_dir={env.root / 'taken'}"))[1],
         ["taken"]),
    # --- output folder (refused before any work) -------------------------------------------------------
    Case("output-empty", "output", "`output_dir=` (empty)", text_run("output_dir="), ["output_dir", "empty"]),
    Case("output-dot", "output", "`output_dir=.` (the current folder)", text_run("output_dir=."),
         ["output_dir", "current folder"]),
    Case("output-parent", "output", "`output_dir=..`", text_run("output_dir=.."),
         ["output_dir", "parent of the current folder"]),
    Case("output-home", "output", "`output_dir` = the home folder", text_run(f"output_dir={Path.home()}"),
         ["output_dir", "home folder"]),
    Case("output-below-file", "output", "`output_dir` below a regular file",
         output_at(lambda root: (root.joinpath("notes.txt").write_text("x"), root / "notes.txt" / "run")[1]),
         ["output_dir", "lies below the file"]),
    Case("output-dangling-symlink", "output", "`output_dir` is a dangling symlink",
         output_at(lambda root: (root.joinpath("scratch").symlink_to(root / "unmounted"), root / "scratch")[1]),
         ["output_dir", "dangling symlink"]),
    Case("output-foreign", "output", "`output_dir` is a non-empty folder hftl did not write",
         output_at(foreign_folder), ["output_dir", "not empty", "new `output_dir`"]),
    Case("output-other-run", "output", "`output_dir` holds an hftl run with other settings (no `--overwrite`)",
         output_at(other_run), ["output_dir", "other settings", "--overwrite"]),
    Case("output-holds-data", "output", "`output_dir` is the folder holding the data files",
         output_at(lambda root: root), ["output_dir", "contains `data.data_files."]),
    # --- saved model directories are data (issue 13) ----------------------------------------------------
    Case("load-missing-user-name", "loading", "`hftl predict user/name` that is no local folder (no Hub lookup)",
         lambda env: ["predict", "nobody/no-such-model", "good"], ["nobody/no-such-model", "hf://nobody/no-such-model", "--from-hub"]),
    Case("load-revision-local", "loading", "`--revision` for a local folder",
         lambda env: ["predict", str(env.root), "--revision", "v1", "good"], ["--revision", "Hub models"]),
    Case("load-component", "loading", "hftl_model.json naming `os.system` as the head class",
         tampered_model("component"), ["hftl_model.json", "os.system", "registered hftl head"]),
    Case("load-interpolation", "loading", "model config.yaml asking for `${oc.env:HF_TOKEN}` (hftl 0.1 layout)",
         tampered_model("interpolation"), ["config.yaml", "encoder.max_length", "interpolation"]),
    Case("load-auto-map", "loading", "encoder config.json with `auto_map` and a .py file",
         tampered_model("auto-map"), ["config.json", "auto_map", "modeling_evil.py", "--trust-remote-code"]),
    Case("load-truncated-weights", "loading", "head.safetensors cut short (malformed header)",
         tampered_model("truncated"), ["head.safetensors", "not a valid safetensors file"]),
    Case("load-head-mismatch", "loading", "head weights of another shape than the declared head",
         tampered_model("head-mismatch"), ["head.safetensors", "mismatched"]),
]  # fmt: skip


# --- data files are untrusted input (issue 13: labels, decompression bombs, absurd headers) ---------------
CAFE_NFC, CAFE_NFD = "caf\u00e9", "cafe\u0301"  # one label, two Unicode spellings


def png_bomb(path: Path) -> None:
    """A PNG of a few hundred bytes whose header declares 50,000 × 50,000 pixels (2.5 gigapixels)."""
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", 50_000, 50_000, 1, 0, 0, 0, 0)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(bytes(6251)))
        + chunk(b"IEND", b"")
    )


def jpeg_truncated(path: Path) -> None:
    """A JPEG cut off at 60 % (PIL opens it and ``verify()`` passes; decoding fails)."""
    from PIL import Image

    jpg = path.with_suffix(".jpg")
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(jpg)
    jpg.write_bytes(jpg.read_bytes()[: jpg.stat().st_size * 6 // 10])


def wav_claiming_rate(rate: int) -> Callable[[Path], str]:
    """A 16-bit WAV of 0.1 s of silence whose header claims ``rate`` Hz."""

    def write(path: Path) -> str:
        data = bytes(3200)
        fmt = struct.pack("<IHHIIHH", 16, 1, 1, rate, (2 * rate) & 0xFFFFFFFF, 2, 16)
        riff = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + fmt
        path.write_bytes(riff + b"data" + struct.pack("<I", len(data)) + data)
        return str(path)

    return write


def _unicode_labels() -> str:
    rows = [f"good film {i},{CAFE_NFC if i % 2 else CAFE_NFD}\nbad film {i},tea" for i in range(12)]
    return "text,label\n" + "\n".join(rows) + "\n"


CASES += [
    Case("label-nan", "data", "integer labels with a `nan` cell",
         with_file("nan.csv", "text,label\nfine,1\nbad,0\nmeh,nan\ngood,1\n"), ["nan.csv", "row 2", "data.filters"]),
    Case("label-fraction", "data", "a label of 1.5 in an integer label column",
         with_file("frac.csv", "text,label\nfine,1\nbad,0\nmeh,1.5\n"), ["frac.csv", "row 2", "whole number"]),
    Case("label-single-class", "data", "every row has the same label (would score 100 %)",
         with_file("one.csv", "text,label\n" + "fine film,pos\n" * 12, None), ["one.csv", "single class", "'pos'"]),
    Case("label-single-class-train", "data", "the train split holds one of the two classes",
         with_file("onetrain.csv", "text,label\n" + "fine film,pos\n" * 8, label_names=["pos", "neg"]),
         ["'train'", "single class", "'pos'"]),
    Case("label-names-nfc-nfd", "config", "`data.label_names` lists one name in NFC and in NFD",
         text_run(label_names=[CAFE_NFC, CAFE_NFD, "tea"]), ["data.label_names", "same class twice"]),
    Case("label-unicode-forms", "data", "one label written in NFC and NFD (read as one class)",
         with_file("unicode.csv", _unicode_labels(), None), handled=True),
    Case("image-bomb", "image", "PNG header declaring 50,000×50,000 pixels (decompression bomb)",
         image_run(png_bomb), ["bad.png", "data.max_image_pixels"]),
    Case("image-truncated-jpeg", "image", "JPEG cut off at 60 % (its header and verify() pass)",
         image_run(jpeg_truncated), ["bad.jpg", "truncated"]),
    Case("audio-absurd-rate", "audio", "WAV header claiming a 2 GHz sampling rate",
         audio_run(wav_claiming_rate(2_000_000_000)), ["bad.wav", "768,000"]),
]  # fmt: skip


# --- publishing: hftl card / push / export (issue 13) ------------------------------------------------------
def saved_model(env: Env) -> Path:
    """A tiny exportable hftl model (BERT, CLS pooling, tanh MLP head) saved to ``env.root / "run"``."""
    import torch
    from omegaconf import OmegaConf

    from hftl.adapters import FullFinetune
    from hftl.config import instantiate
    from hftl.models import Classifier
    from hftl.models.io import save_model

    cfg = OmegaConf.create(
        {
            "recipe": "finetune",
            "encoder": {
                "_component_": "hftl.encoders.TextEncoder",
                "model": env.models["bert"],
                "pooling": "cls",
            },
            "head": {"_component_": "hftl.models.MLPHead", "activation": "tanh", "hidden_features": 32},
        }
    )
    torch.manual_seed(0)
    enc = FullFinetune().apply(instantiate(cfg.encoder))
    model = Classifier(enc, instantiate(cfg.head, in_features=enc.out_features, num_labels=2), ["pos", "neg"])
    save_model(model, env.root / "run" / "model", adapter_kind="full", config=cfg, metrics={})
    return env.root / "run"


def publish(command: str, plant: Callable[[Env, Path], list[str]]) -> Callable[[Env], list[str]]:
    """``hftl <command> RUN ...``: ``plant`` changes the saved run and returns the rest of the argv."""

    def build(env: Env) -> list[str]:
        run = saved_model(env)
        return [command, str(run), *plant(env, run)]

    return build


def _token_link(env: Env, run: Path) -> list[str]:
    (env.root / "token").write_text("hf_FAKEtoken")
    (run / "model" / "encoder" / "vocab.txt").symlink_to(env.root / "token")
    return ["--repo-id", "alice/x"]


def _foreign_out(env: Env, run: Path) -> list[str]:
    (env.root / "mine").mkdir()
    (env.root / "mine" / "notes.txt").write_text("not an export")
    return ["--merge", "--out", str(env.root / "mine"), "--force"]


CASES += [
    Case("push-symlink", "publish", "a symlink to a token file inside model/ (named like a tokenizer file)",
         publish("push", _token_link), ["vocab.txt", "symlink"]),
    Case("push-unknown-file", "publish", "a file hftl did not write inside model/",
         publish("push", lambda env, run: ((run / "model" / "notes.txt").write_text("x"), ["--repo-id", "a/b"])[1]),
         ["notes.txt", "--skip-unknown"]),
    Case("push-bad-repo-id", "publish", "`--repo-id` that is not user/name",
         publish("push", lambda env, run: ["--repo-id", "not a repo"]), ["--repo-id", "user/name"]),
    Case("export-out-is-source", "publish", "`hftl export --out` inside the run it exports, with --force",
         publish("export", lambda env, run: ["--merge", "--out", str(run / "model" / "hf"), "--force"]),
         ["--out", "even with --force"]),
    Case("export-out-foreign", "publish", "`hftl export --force` into a folder an export did not write",
         publish("export", _foreign_out), ["mine", "not written by `hftl export`"]),
    Case("card-edited", "publish", "`hftl card` over a README.md the user wrote",
         publish("card", lambda env, run: ((run / "model" / "README.md").write_text("# mine\n"), [])[1]),
         ["README.md", "--force"]),
]  # fmt: skip


# --- configs are untrusted data (issue 13: components, remote code, environment, pathological YAML) -------
def config_file(content: str | bytes) -> Callable[[Env], list[str]]:
    """``hftl run finetune`` on a config file holding exactly ``content``."""

    def build(env: Env) -> list[str]:
        path = env.root / "c.yaml"
        path.write_bytes(content.encode() if isinstance(content, str) else content)
        return ["run", "finetune", "--config", str(path)]

    return build


def with_node(key: str, node: dict) -> Callable[[Env], list[str]]:
    """The text config with its ``key`` section replaced by ``node`` (as a shared config would do it)."""
    return lambda env: run_config(env, {**text_config(env), key: node})


_CHECKPOINT_GET_COMPONENT = {  # checkpoint(fn, **kw) calls fn(**kw); get_component hands it os.system
    "_component_": "torch.utils.checkpoint.checkpoint",
    "function": {"_component_": "hftl.config.get_component", "path": "os.system", "allow_any": True},
    "use_reentrant": False,
    "command": "echo pwned",
}
_ALIAS_BOMB = "".join(
    [f"a: &a [{', '.join(['x'] * 9)}]\n"]
    + [f"{c}: &{c} [{', '.join([f'*{p}'] * 9)}]\n" for p, c in zip("abcdef", "bcdefg", strict=True)]
)

CASES += [
    Case("component-module-walk", "config", "`_component_` walking into a module an hftl module imported",
         text_run("data._component_=hftl.cli.os.system"), ["hftl.cli.os.system", "module `os`"]),
    Case("component-torch-load", "config", "`torch.load` with `weights_only: false` as a component",
         with_node("data", {"_component_": "torch.load", "f": "x.pt", "weights_only": False}),
         ["torch.load", "--allow-any-component"]),
    Case("component-higher-order", "config", "a function calling `hftl.config.get_component`'s result",
         with_node("data", _CHECKPOINT_GET_COMPONENT), ["torch.utils.checkpoint.checkpoint", "get_component"]),
    Case("component-private", "config", "`_component_` through a private module (`hftl.config._parse.yaml`)",
         text_run("head._component_=hftl.config._parse.yaml.unsafe_load"), ["private name `_parse`"]),
    Case("component-classmethod", "config", "`_component_` naming a class method (`X.from_pretrained`)",
         text_run("head._component_=transformers.AutoModel.from_pretrained"), ["the class itself"]),
    Case("config-remote-code", "config", "`trust_remote_code: true` set by the config",
         text_run("encoder.trust_remote_code=true"), ["encoder.trust_remote_code", "--trust-remote-code"]),
    Case("config-env-secret", "config", "`${oc.env:HF_TOKEN}` in a shared config",
         text_run(missing_hint="${oc.env:HF_TOKEN}"), ["data.missing_hint", "HF_TOKEN", "--allow-env HF_TOKEN"]),
    Case("yaml-deep-nesting", "config", "10,000 nested lists", config_file("train: " + "[" * 10_000 + "]" * 10_000),
         ["c.yaml", "levels deep"]),
    Case("yaml-alias-bomb", "config", "anchors and aliases expanding to ~5 million values",
         config_file(_ALIAS_BOMB), ["c.yaml", "aliases"]),
    Case("yaml-huge", "config", "a 5 MiB config file", config_file("notes: '" + "x" * (5 << 20) + "'\n"),
         ["c.yaml", "MiB"]),
    Case("yaml-python-tag", "config", "`!!python/object/apply:os.system` in the YAML",
         config_file("data: !!python/object/apply:os.system ['echo pwned']\n"), ["c.yaml", "python/object/apply"]),
    Case("yaml-not-utf8", "config", "config saved in Latin-1", config_file("train: {epochs: 1}\n# caf\xe9\n".encode("latin-1")),
         ["c.yaml", "UTF-8"]),
    Case("yaml-deep-interpolation", "config", "`${...}` nested 500 deep in one value",
         config_file("x: " + "${oc.decode:" * 500 + "1" + "}" * 500 + "\n"), ["interpolations nested"]),
]  # fmt: skip
