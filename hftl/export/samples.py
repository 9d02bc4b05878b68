"""Inputs for the export's parity check: a few rows of the run's own data, and synthetic rows.

Each sample is a pair: the row hftl's evaluation collator takes (``{"text" | "audio" | "image": ...}``)
and the same input as :class:`hftl.export.runtime.OnnxPredictor` takes (a string, a decoded waveform
at the model's rate, a PIL image). Synthetic rows vary in length on purpose (one longer than the
encoder keeps, one very short), so batches are padded and truncated or cropped.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hftl.errors import HftlError
from hftl.models.records import DATA_COMPONENTS, read_record, recorded_node

logger = logging.getLogger(__name__)

Sample = tuple[dict[str, Any], Any]  # (collator row, runtime input)
# Data node fields copied into the parity loader: reading only (no reports written, no remote code).
_DATA_FIELDS = (
    "path",
    "data_files",
    "name",
    "input_column",
    "label_column",
    "splits",
    "filters",
    "delimiter",
)
_DATA_NODES = ("data", "target", "source")  # finetune-style recipes, then adapt's two domains


def real_samples(
    model_dir: Path, encoder: Any, label_names: list[str], *, data: str | Path | None = None, count: int = 3
) -> tuple[list[Sample], str]:
    """Up to ``count`` rows of real data (test split first), and where they came from.

    ``data`` (``hftl export --onnx --data FILE``, the user's own command line) is read as
    ``hftl eval --data`` reads it; a single file's labels are optional. Without it, the data node is read from the run's ``config.yaml`` as plain data: no
    component but :class:`hftl.data.ClassificationData`, only the fields that say what to read, and no
    interpolation except the whole-value ``${hftl.data_dir:REL}`` a run records for the shared data folder
    (resolved to this machine's folder, as ``hftl eval`` does; any other ``${...}`` is refused). Only
    local data is read: a Hub data set is never downloaded for a check. When none is usable, the list is
    empty and the description says why.
    """
    if data is not None:
        node = {"path": str(data), "splits": None, "unlabeled_splits": ["train"]}  # a file: labels optional
        return _rows(node, encoder, label_names, count, f"--data {data}", strict=True)
    file, reasons = model_dir / "config.yaml", []
    try:
        record = read_record(file)
    except HftlError as err:
        return [], f"none ({_first_line(err)})"
    for key in _DATA_NODES:
        if not isinstance(record, dict) or not isinstance(record.get(key), dict):
            continue
        try:
            node = recorded_node(file, key, plain=True, data_dir=True)
        except HftlError as err:
            reasons.append(_first_line(err))
            continue
        if node.get("_component_") not in DATA_COMPONENTS:
            reasons.append(f"`{key}` is not a ClassificationData node")
            continue
        path = str(node.get("path", ""))
        if not _is_local(path, node.get("data_files")):
            reasons.append(f"`{key}` ({path!r}) is not on this machine")
            continue
        fields = {k: node[k] for k in _DATA_FIELDS if node.get(k) is not None}
        samples, source = _rows(fields, encoder, label_names, count, f"`{key}` ({path})", strict=False)
        if samples:
            return samples, source
        reasons.append(source)
    return [], "none (" + ("; ".join(reasons) or "the run's config names no data") + ")"


def _rows(
    fields: dict[str, Any], encoder: Any, label_names: list[str], count: int, name: str, *, strict: bool
) -> tuple[list[Sample], str]:
    """The first ``count`` rows of the test split (else the first split) of ``fields``' data.

    ``strict`` (the user's ``--data``): data that cannot be read raises; otherwise the reason is returned.
    """
    from hftl.data import ClassificationData

    spec = dict(fields, label_names=label_names, validation_size=0, check_train_classes=False)
    if strict:
        data = ClassificationData(**spec).load()
    else:
        try:
            data = ClassificationData(**spec).load()
        except (HftlError, OSError, ValueError, TypeError) as err:
            return [], f"{name} could not be read: {_first_line(err)}"
    split = "test" if "test" in data else next(iter(data))
    rows = [data[split][i] for i in range(min(count, len(data[split])))]
    return [_sample(row, encoder) for row in rows], f"{len(rows)} rows of {name}, {split} split"


def _is_local(path: str, data_files: Any) -> bool:
    """Whether a data node reads only files on this machine (a built-in set, a file, or a builder's files)."""
    if path.startswith("hftl:"):
        return True
    if data_files is None:
        return _plain(Path(path).expanduser())
    files = data_files.values() if isinstance(data_files, dict) else [data_files]
    flat = [f for item in files for f in (item if isinstance(item, list) else [item])]
    return bool(flat) and all(_plain(Path(str(f)).expanduser()) for f in flat)


def _plain(path: Path) -> bool:
    """A regular file or a folder (a recorded ``/dev/zero`` or FIFO would never finish reading)."""
    return path.is_file() or path.is_dir()


def synthetic_samples(encoder: Any, *, seed: int = 0) -> list[Sample]:
    """Four inputs of very different lengths in the encoder's modality (deterministic for ``seed``)."""
    rng = np.random.default_rng(seed)
    if encoder.modality == "text":
        return [_sample({"text": t}, encoder) for t in _texts(encoder, rng)]
    if encoder.modality == "audio":
        return [_sample({"audio": clip}, encoder) for clip in _clips(encoder, rng)]
    from PIL import Image

    images = [
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in ((37, 45), (64, 64))
    ] + [Image.fromarray(rng.integers(0, 256, (28, 28), dtype=np.uint8), mode="L")]
    return [_sample({"image": im}, encoder) for im in images]


def _texts(encoder: Any, rng: np.random.Generator) -> list[str]:
    vocab = sorted(t for t in encoder.processor.get_vocab() if t.isalpha() and t.isascii() and len(t) > 1)
    vocab = vocab or ["good", "bad", "film"]
    words = int(encoder.max_length) * 2  # longer than max_length: truncated
    return [" ".join(rng.choice(vocab, size=n)) for n in (1, 5, 17, words)]


def _clips(encoder: Any, rng: np.random.Generator) -> list[dict[str, Any]]:
    """WAV bytes at the encoder's rate: short, medium, longer than ``max_duration``, loud and quiet."""
    import soundfile as sf

    rate = encoder.sampling_rate
    longest = 1.5 * (encoder.max_duration or 2.0)
    clips = []
    for seconds, gain in ((0.3, 0.05), (0.7, 0.5), (longest, 0.2), (0.45, 0.9)):
        t = np.arange(int(seconds * rate)) / rate
        tone = np.sin(2 * np.pi * (200 + 600 * t) * t)  # a rising chirp in noise
        wave = gain * (0.6 * tone + 0.4 * rng.standard_normal(t.size))
        buffer = io.BytesIO()
        sf.write(buffer, wave.astype(np.float32), rate, format="WAV", subtype="FLOAT")
        clips.append({"bytes": buffer.getvalue(), "path": None})
    return clips


def _sample(row: dict[str, Any], encoder: Any) -> Sample:
    """Pairs a collator row with the runtime's input for it."""
    if encoder.modality == "text":
        return {"text": row["text"]}, row["text"]
    if encoder.modality == "audio":
        from hftl.data.audio import decode_audio

        return {"audio": row["audio"]}, decode_audio(row["audio"], sampling_rate=encoder.sampling_rate)
    return {"image": row["image"]}, row["image"]


def _first_line(err: BaseException) -> str:
    """The error's first line without its advice (the export goes on without real rows)."""
    return (str(err).strip().splitlines() or [type(err).__name__])[0].split(". Fix:")[0][:240]
