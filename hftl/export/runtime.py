"""Running an ONNX export with onnxruntime: ``hftl predict EXPORT_DIR ...`` and :class:`OnnxPredictor`.

Nothing here imports torch (nor any hftl module that does): an exported directory runs where only
onnxruntime, NumPy and the preprocessing library of its modality are installed — ``tokenizers`` for
text, ``soundfile`` (+ SciPy to resample) for audio, ``transformers`` + Pillow for images and for
audio extractors that are not part of the graph. The preprocessing is hftl's evaluation
preprocessing (what ``hftl.load`` does), read from the export's ``hftl_onnx.json``:

* text: the export's ``tokenizer.json``, which carries the truncation (``max_length``) and padding;
* audio: decode, mix to mono, resample to ``sampling_rate``, level (``peak`` / ``rms``), centre crop to
  ``max_samples``, pad to the longest clip; the feature extraction itself is in the graph
  (:mod:`hftl.export.frontends`) unless ``features`` is ``extractor``;
* image: convert to ``image_mode`` and run the saved image processor.

One difference from ``hftl.load``: clips at another rate than the model's are resampled with SciPy's
polyphase filter here and with torchaudio's sinc filter there, so their scores can differ slightly.
"""

from __future__ import annotations

import io
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from hftl.errors import DataError, ModelLoadError

SPEC_FILE = "hftl_onnx.json"
GRAPH_FILE = "model.onnx"
SPEC_FORMAT = 1
TOKENIZER_FILE = "tokenizer.json"
TEXT_FIELDS = {
    "input_ids": "ids",
    "attention_mask": "attention_mask",
    "token_type_ids": "type_ids",
}  # -> Encoding
RMS_TARGET = 0.1  # hftl.encoders.audio_collator.normalize_level's rms level (-20 dBFS)


def is_onnx_export(path: str | Path) -> bool:
    """Whether ``path`` is a directory written by ``hftl export --onnx``."""
    return (Path(path) / SPEC_FILE).is_file()


def read_spec(path: str | Path) -> dict[str, Any]:
    """Reads and checks an export's ``hftl_onnx.json``.

    Raises:
        ModelLoadError: the file or the graph is missing, unreadable, or of another format version.
    """
    path = Path(path)
    try:
        spec = json.loads((path / SPEC_FILE).read_text())
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Cannot read {path / SPEC_FILE}: {err}. Export the model again with `hftl export --onnx`."
        ) from err
    if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
        found = spec.get("format") if isinstance(spec, dict) else type(spec).__name__
        raise ModelLoadError(
            f"{path / SPEC_FILE} has format {found!r}; this hftl reads format {SPEC_FORMAT}. "
            "Export the model again with this hftl version."
        )
    problems = spec_problems(spec)
    if problems:
        raise ModelLoadError(
            f"{path / SPEC_FILE}: {'; '.join(problems)}. The file is damaged or was not written by hftl; export "
            "the model again with `hftl export --onnx`."
        )
    if not (path / GRAPH_FILE).is_file():
        raise ModelLoadError(f"{path} has no {GRAPH_FILE}; the export is incomplete. Export the model again.")
    return spec


def spec_problems(spec: dict[str, Any]) -> list[str]:
    """What in ``spec`` is not what ``hftl export --onnx`` writes (the file is data: every field is checked
    before it is used, and no file name is taken from it)."""
    pre, outputs, modality = spec.get("preprocessing"), spec.get("outputs"), spec.get("modality")
    checks = [
        ("modality", modality in _PREPROCESSORS, "text, audio or image"),
        ("outputs", isinstance(outputs, list) and bool(outputs) and all(map(_is_output, outputs)),
         "a non-empty list of {name, task, label_names}"),
        ("preprocessing", isinstance(pre, dict), "a mapping"),
    ]  # fmt: skip
    if modality in _PREPROCESSORS and isinstance(pre, dict):
        checks += _PREPROCESSING_CHECKS[modality](pre)
    return [f"`{field}` is not valid (allowed: {allowed})" for field, ok, allowed in checks if not ok]


def _is_output(entry: Any) -> bool:
    return (
        isinstance(entry, dict)
        and isinstance(entry.get("name"), str)
        and (entry.get("task") is None or isinstance(entry.get("task"), str))
        and isinstance(entry.get("label_names"), list)
        and bool(entry["label_names"])
        and all(isinstance(n, str) for n in entry["label_names"])
    )


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


_PREPROCESSING_CHECKS = {
    "text": lambda pre: [
        ("preprocessing.tokenizer", pre.get("tokenizer") == TOKENIZER_FILE, f'"{TOKENIZER_FILE}"'),
        ("preprocessing.inputs", isinstance(pre.get("inputs"), list) and bool(pre["inputs"])
         and set(pre["inputs"]) <= set(TEXT_FIELDS), f"a list of {', '.join(TEXT_FIELDS)}"),
    ],
    "audio": lambda pre: [
        ("preprocessing.sampling_rate", _count(pre.get("sampling_rate")), "a positive integer"),
        ("preprocessing.max_samples", pre.get("max_samples") is None or _count(pre.get("max_samples")),
         "null or a positive integer"),
        ("preprocessing.level", pre.get("level") in ("none", "peak", "rms"), "none, peak or rms"),
        ("preprocessing.features", pre.get("features") in ("graph", "extractor"), "graph or extractor"),
        ("preprocessing.min_samples", _count(pre.get("min_samples", 1)), "a positive integer"),
        ("preprocessing.padding", pre.get("padding", "longest") in ("longest", "max_length"), "longest or max_length"),
    ],
    "image": lambda pre: [("preprocessing.image_mode", pre.get("image_mode") in ("RGB", "L"), "RGB or L")],
}  # fmt: skip


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(-1, keepdims=True))
    return shifted / shifted.sum(-1, keepdims=True)


class OnnxPredictor:
    """An ONNX export with its preprocessing; call it like :class:`hftl.predict.Predictor`.

    Args:
        path: a directory written by ``hftl export --onnx``.
        task: the task of a multi-task export (default: its first task).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice, one per core).
        providers: onnxruntime execution providers (default: CPU).

    Example:
        >>> predictor = OnnxPredictor("exported/")  # doctest: +SKIP
        >>> predictor(["a gorgeous, witty film"])  # doctest: +SKIP
        [{'label': 'positive', 'score': 0.97, 'scores': {...}}]
    """

    def __init__(
        self,
        path: str | Path,
        *,
        task: str | None = None,
        threads: int | None = None,
        providers: list[str] | None = None,
    ):
        import onnxruntime as ort

        self.path = Path(path)
        self.spec = spec = read_spec(self.path)
        self.modality: str = spec["modality"]
        outputs = {o["task"]: o for o in spec["outputs"]}
        task = task if task is not None else spec["outputs"][0]["task"]
        if task not in outputs:
            raise ModelLoadError(f"Export {str(path)!r} has no task {task!r}; its tasks are {list(outputs)}.")
        self.task, self.output = task, outputs[task]["name"]
        self.label_names: list[str] = outputs[task]["label_names"]
        options = ort.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        self.session = ort.InferenceSession(
            str(self.path / GRAPH_FILE), options, providers=providers or ["CPUExecutionProvider"]
        )
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.preprocess = _PREPROCESSORS[self.modality](self.path, spec["preprocessing"])

    def run(self, inputs: Sequence[Any], *, outputs: list[str] | None = None) -> list[np.ndarray]:
        """The graph's outputs (all, in order, or those named in ``outputs``) for one batch of inputs."""
        feeds = self.preprocess(list(inputs))
        missing = [name for name in self.input_names if name not in feeds]
        if missing:
            raise ModelLoadError(
                f"{self.path / GRAPH_FILE} takes inputs {missing} that its preprocessing does not make; "
                "the export is damaged. Export the model again."
            )
        return self.session.run(outputs, {k: feeds[k] for k in self.input_names})

    def logits(self, inputs: Sequence[Any]) -> np.ndarray:
        """Logits ``(len(inputs), num_labels)`` of this predictor's task for one batch of inputs."""
        return self.run(inputs, outputs=[self.output])[0]

    def __call__(self, inputs: Sequence[Any] | str | Path, *, batch_size: int = 32) -> list[dict[str, Any]]:
        if isinstance(inputs, str | Path):
            inputs = [inputs]  # one text or file, not a sequence of characters
        results = []
        for start in range(0, len(inputs), batch_size):
            for p in softmax(self.logits(inputs[start : start + batch_size]).astype(np.float64)):
                i = int(p.argmax())
                scores = dict(zip(self.label_names, map(float, p), strict=True))
                results.append({"label": self.label_names[i], "score": float(p[i]), "scores": scores})
        return results


class TextInputs:
    """Tokenizes with the export's ``tokenizer.json`` (truncation and padding are set in the file)."""

    def __init__(self, path: Path, pre: dict[str, Any]):
        from tokenizers import Tokenizer

        self.tokenizer = Tokenizer.from_file(str(path / TOKENIZER_FILE))
        self.names = pre["inputs"]  # what the tokenizer gives the model: input_ids, attention_mask, ...

    def __call__(self, texts: list[Any]) -> dict[str, np.ndarray]:
        for text in texts:
            if not isinstance(text, str) or not text.strip():
                raise DataError(f"Text input must be a non-empty string; got {text!r}")
        encodings = self.tokenizer.encode_batch(texts)
        return {
            name: np.array([getattr(e, TEXT_FIELDS[name]) for e in encodings], dtype=np.int64)
            for name in self.names
        }


class AudioInputs:
    """Reads clips (paths, ``{"path", "bytes"}`` items, or 1-D arrays already at the model's rate)."""

    def __init__(self, path: Path, pre: dict[str, Any]):
        self.rate, self.max_samples = int(pre["sampling_rate"]), pre["max_samples"]
        self.level, self.min_samples = pre["level"], int(pre.get("min_samples", 1))
        self.extractor = None
        if pre["features"] == "extractor":  # the graph takes the feature extractor's outputs
            from transformers import AutoFeatureExtractor

            self.extractor = AutoFeatureExtractor.from_pretrained(str(path))
            self.padding = pre["padding"]

    def clip(self, item: Any) -> np.ndarray:
        """One clip as hftl's evaluation collator prepares it: mono, at the rate, levelled, centre-cropped."""
        wave = np.asarray(item, dtype=np.float32) if isinstance(item, np.ndarray) else self._decode(item)
        if wave.ndim != 1 or wave.size == 0 or not np.isfinite(wave).all():
            raise DataError(
                f"Audio input {_name(item)} must be a non-empty mono clip of finite samples; got shape "
                f"{wave.shape}. Pass a file path or a 1-D array at {self.rate} Hz."
            )
        if self.level != "none":
            level = (
                np.abs(wave).max()
                if self.level == "peak"
                else np.sqrt(np.mean(np.square(wave, dtype=np.float64)))
            )
            if np.isfinite(level) and level > 1e-8:
                wave = (wave * ((1.0 if self.level == "peak" else RMS_TARGET) / level)).astype(np.float32)
        if self.max_samples is not None and len(wave) > self.max_samples:
            start = (len(wave) - self.max_samples) // 2
            wave = wave[start : start + self.max_samples]
        if len(wave) < self.min_samples:
            raise DataError(
                f"Audio input {_name(item)} has {len(wave)} samples; the model needs at least "
                f"{self.min_samples} ({1000 * self.min_samples / self.rate:g} ms at {self.rate} Hz, one feature frame)."
            )
        return wave

    def _decode(self, item: Any) -> np.ndarray:
        import soundfile as sf

        source = item
        if isinstance(item, dict):
            source = io.BytesIO(item["bytes"]) if item.get("bytes") else item.get("path")
        if isinstance(source, str | Path) and not Path(source).is_file():
            raise DataError(f"Audio file not found: {source}")
        try:
            wave, rate = sf.read(source, dtype="float32", always_2d=True)
        except (sf.LibsndfileError, RuntimeError, TypeError) as err:
            raise DataError(
                f"Cannot decode audio input {_name(item)}: {err}. Convert it to WAV or FLAC "
                "(e.g. `ffmpeg -i FILE -ac 1 FILE.wav`)."
            ) from err
        wave = wave.mean(axis=1, dtype=np.float32)
        if rate != self.rate:
            from scipy.signal import resample_poly

            g = math.gcd(int(rate), self.rate)
            wave = resample_poly(wave, self.rate // g, int(rate) // g).astype(np.float32)
        return wave

    def __call__(self, items: list[Any]) -> dict[str, np.ndarray]:
        clips = [self.clip(item) for item in items]
        if self.extractor is not None:
            out = self.extractor(
                clips, sampling_rate=self.rate, return_tensors="np", padding=self.padding,
                return_attention_mask=True,
            )  # fmt: skip
            return {k: np.asarray(v) for k, v in out.items()}
        return pad_waveforms(clips)


def pad_waveforms(clips: list[np.ndarray]) -> dict[str, np.ndarray]:
    """``waveform`` ``(B, S)`` float32 right-padded with zeros and its ``attention_mask`` (int64)."""
    longest = max(len(c) for c in clips)
    waveform = np.zeros((len(clips), longest), dtype=np.float32)
    mask = np.zeros((len(clips), longest), dtype=np.int64)
    for row, clip in enumerate(clips):
        waveform[row, : len(clip)], mask[row, : len(clip)] = clip, 1
    return {"waveform": waveform, "attention_mask": mask}


class ImageInputs:
    """Runs the saved image processor (transformers; NumPy/Pillow when torch is not installed)."""

    def __init__(self, path: Path, pre: dict[str, Any]):
        from transformers import AutoImageProcessor

        self.processor = AutoImageProcessor.from_pretrained(str(path))
        self.mode = pre["image_mode"]

    def __call__(self, images: list[Any]) -> dict[str, np.ndarray]:
        loaded = [open_image(image) if isinstance(image, str | Path) else image for image in images]
        loaded = [image.convert(self.mode) if image.mode != self.mode else image for image in loaded]
        pixels = self.processor(loaded, return_tensors="np")["pixel_values"]
        return {"pixel_values": np.asarray(pixels, dtype=np.float32)}


def open_image(path: str | Path) -> Any:
    """One image file, loaded, with the decompression-bomb limit of :func:`hftl.data.image_checks.open_image`.

    That opener (what ``hftl.load`` uses) cannot be imported here: the ``hftl.data`` package imports torch.
    Its default limit is PIL's ``Image.MAX_IMAGE_PIXELS`` (about 89.5 megapixels), which PIL only warns
    about; here, as there, a file declaring more is an error, raised before its pixels are decoded.

    Raises:
        DataError: naming the file, if it is missing, over the pixel limit or unreadable.
    """
    import warnings

    from PIL import Image

    if not Path(path).is_file():
        raise DataError(f"Image file {str(path)!r} does not exist.")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as opened:  # reads the header only; the size check is in open()
                return opened.copy()
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as err:
        raise DataError(f"Image file {str(path)!r} is a likely decompression bomb ({err}).") from None
    # PIL's plugins raise OSError, SyntaxError, ValueError, struct.error, EOFError, ... on hostile files
    except Exception as err:  # noqa: BLE001
        raise DataError(
            f"Image file {str(path)!r} cannot be read as an image ({type(err).__name__}: {err}). Fix: re-export "
            "it as PNG or JPEG."
        ) from None


def _name(item: Any) -> str:
    if isinstance(item, dict):
        return str(item.get("path") or "<in-memory audio bytes>")
    return "<array>" if isinstance(item, np.ndarray) else str(item)


_PREPROCESSORS = {"text": TextInputs, "audio": AudioInputs, "image": ImageInputs}
