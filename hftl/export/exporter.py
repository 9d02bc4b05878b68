"""``hftl export --onnx``: a trained hftl model as one ONNX graph that runs without hftl or torch.

What is written (into a temporary sibling of ``out``, renamed into place only after every check)::

    model.onnx          (audio front end →) encoder → pooling → head(s); LoRA/IA3 merged; dynamic batch
                        and sequence/time axes
    hftl_onnx.json      inputs, outputs and label names, the preprocessing the graph expects, the exporter
                        used and the parity check's result
    tokenizer.json      text: the tokenizer with hftl's truncation (``max_length``) and padding set in it
    preprocessor_config.json   audio/image: the feature extractor / image processor
    README.md           how to run it with onnxruntime alone

The graph comes from ``torch.onnx.export``: the dynamo exporter (``torch.export``) first, the TorchScript
exporter when dynamo fails or its graph misses the parity check; ``hftl_onnx.json`` records which one
was used and why. The parity check runs the written graph in onnxruntime through
:class:`~hftl.export.runtime.OnnxPredictor` (the exact code path of ``hftl predict``) on a few rows of
the run's data (or of ``--data FILE``) and on synthetic inputs of very different lengths, in padded and single-row batches, and
compares the logits with the loaded PyTorch model's (LoRA unmerged): the export is refused, with nothing
written, when they differ by more than ``atol``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from hftl.export.frontends import WAVEFORM_INPUTS, audio_frontend
from hftl.export.graph import ExportGraph, OnnxExportError, merged_copy, unsupported
from hftl.export.preprocessing import graph_spec, write_processor
from hftl.export.runtime import (
    _PREPROCESSORS,
    GRAPH_FILE,
    SPEC_FILE,
    OnnxPredictor,
)
from hftl.export.samples import Sample, real_samples, synthetic_samples

ATOL = 1e-4  # largest |logit difference| allowed between onnxruntime and PyTorch (float32)
EXPORTERS = ("dynamo", "torchscript")
TORCHSCRIPT_OPSET = 17  # the first opset with DFT (in-graph filter banks)
AXIS_NAMES = {"text": "sequence", "audio": "frames", "image": "size"}


def export_onnx(
    output_dir: str | Path,
    out: str | Path,
    *,
    force: bool = False,
    atol: float = ATOL,
    real_data: bool = True,
    data: str | Path | None = None,
    exporters: tuple[str, ...] = EXPORTERS,
) -> dict[str, Any]:
    """Exports a trained model to ``out`` and returns the written ``hftl_onnx.json`` contents.

    Args:
        output_dir: a finished run's ``output_dir``, its ``model/`` folder, or a Hub repo id.
        out: directory to create.
        force: replace ``out`` when it exists and is not empty (only a previous ONNX export).
        atol: largest logit difference allowed by the parity check.
        real_data: also check on up to 3 rows of real data: ``data``, else the run's recorded data when
            it is on this machine (see :func:`hftl.export.samples.real_samples`).
        data: a data file or folder to take those rows from (``--data``; labels not needed). Its rows
            are checked even for a Hub model, whose recorded data is never read.
        exporters: the torch.onnx exporters to try, in order (``dynamo``, ``torchscript``).

    Raises:
        OnnxExportError: ``out`` is in the way, no exporter gives a graph matching the PyTorch model
            within ``atol``, or a text model has no fast tokenizer (``tokenizer.json``).
        DataError: ``data`` cannot be read.
    """
    out = Path(out).expanduser().absolute()
    _check_out(out, force)  # before the model loads
    reference, heads, labels, meta = _load(output_dir)
    model_dir = Path(meta["path"])
    if model_dir.resolve() in (out.resolve(), *out.resolve().parents):
        raise OnnxExportError(
            f"--out {out} is inside the model directory {model_dir}; choose a folder outside it."
        )
    encoder = reference.encoder
    reason = unsupported(encoder)
    if reason:
        raise OnnxExportError(f"ONNX export refused, nothing written: {reason}.")
    frontend = audio_frontend(encoder.processor) if encoder.modality == "audio" else None
    samples, source = [], "none (not asked)" if not real_data else "none (a Hub model: its data is not here)"
    if real_data and (data is not None or not meta["source"].startswith("hf://")):
        samples, source = real_samples(model_dir, encoder, labels[0][1], data=data)
    synthetic = synthetic_samples(encoder)
    samples += synthetic
    tmp = out.with_name(f".{out.name}.onnx-tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        spec = graph_spec(meta, encoder, frontend, labels)
        write_processor(tmp, encoder, spec["preprocessing"])
        _write_json(tmp / SPEC_FILE, spec)
        feeds = _PREPROCESSORS[encoder.modality](tmp, spec["preprocessing"])
        batches = [list(range(len(samples))), [0], [len(samples) - 1], [1, 2]]
        expected = [_reference(reference, [samples[i][0] for i in b]) for b in batches]
        graph = ExportGraph(*merged_copy(encoder, heads), list(feeds([s[1] for s in samples])), frontend)
        checks = (samples, batches, expected, atol)
        spec["export"] = _export_checked(graph, tmp, spec, feeds, checks, exporters)
        spec["export"]["parity"]["inputs"] = f"real: {source}; synthetic: {len(synthetic)} of varied lengths"
        spec["inputs"] = _graph_inputs(tmp)
        _write_json(tmp / SPEC_FILE, spec)
        (tmp / "README.md").write_text(render_readme(spec, out))
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _replace(tmp, out)
    return spec


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise OnnxExportError(f"--out {out} is a file; pass a directory path.")
    if out.is_dir() and any(out.iterdir()):
        if not force:
            raise OnnxExportError(
                f"--out {out} exists and is not empty; pass --force to replace it, or another --out."
            )
        if not (out / SPEC_FILE).is_file():  # hftl only deletes what it wrote
            raise OnnxExportError(
                f"--out {out} is not empty and is not an hftl ONNX export (no {SPEC_FILE}); --force replaces "
                "only a previous export. Choose an empty or new folder."
            )


def _load(
    source: str | Path,
) -> tuple[nn.Module, dict[str, nn.Module], list[tuple[str | None, list[str]]], dict]:
    """The loaded model (the parity reference), its heads by output, ``(task, label names)`` and meta."""
    from hftl.models.io import load_model
    from hftl.models.multitask import TASKS_FILE, load_multitask

    model, meta = load_model(source)
    model_dir = Path(meta["path"])
    if not (model_dir / TASKS_FILE).is_file():
        return model, {"logits": model.head}, [(None, list(model.label_names))], meta
    multi = load_multitask(model_dir)
    labels = [(task, multi.label_names[task]) for task in multi.tasks]
    return multi, {f"logits_{task}": multi.heads[task] for task in multi.tasks}, labels, meta


@torch.no_grad()
def _reference(model: nn.Module, rows: list[dict[str, Any]]) -> list[np.ndarray]:
    """Logits of every output (in graph order) of the loaded PyTorch model, through hftl's collator."""
    batch = model.encoder.collator(train=False)(rows)
    batch = {k: v for k, v in batch.items() if k != "labels"}
    if hasattr(model, "forward_all"):
        return [v.float().numpy() for v in model.forward_all(**batch).values()]
    return [model(**batch).logits.float().numpy()]


def _export_checked(
    graph: ExportGraph,
    tmp: Path,
    spec: dict[str, Any],
    feeds: Any,
    checks: tuple[list[Sample], list[list[int]], list[list[np.ndarray]], float],
    exporters: tuple[str, ...],
) -> dict[str, Any]:
    """Exports with the first exporter whose graph passes the parity check; raises when none does."""
    samples, batches, expected, atol = checks
    example = {k: torch.from_numpy(v) for k, v in feeds([s[1] for s in samples]).items()}
    singles = [feeds([s[1]]) for s in samples]  # one-row batches: the axes whose size varies are dynamic
    axis = "samples" if list(example) == list(WAVEFORM_INPUTS) else AXIS_NAMES[spec["modality"]]
    dynamic = {
        name: {
            0: "batch",
            **{d: axis for d in range(1, t.dim()) if {o[name].shape[d] for o in singles} != {t.shape[d]}},
        }
        for name, t in example.items()
    }
    outputs = [o["name"] for o in spec["outputs"]]
    tried = []
    for exporter in exporters:
        try:
            _torch_export(graph, example, dynamic, outputs, tmp / GRAPH_FILE, exporter)
        except Exception as err:  # noqa: BLE001 - any exporter failure falls through to the next one
            tried.append(f"{exporter}: export failed: {type(err).__name__}: {_first_line(err)}")
            continue
        try:
            diff = _max_diff(tmp, samples, batches, expected)
        except Exception as err:  # noqa: BLE001 - onnxruntime rejects the graph on some input shapes
            tried.append(f"{exporter}: onnxruntime failed on the check inputs: {_first_line(err)}")
            continue
        if diff <= atol:  # False for NaN
            return {
                "exporter": exporter,
                "torch_version": torch.__version__,
                "failed_exporters": tried,
                "parity": {"max_abs_diff": diff, "atol": atol, "batch_sizes": [len(b) for b in batches]},
            }
        tried.append(f"{exporter}: max |logit difference| {diff:.2e} > atol {atol:g}")
    raise OnnxExportError(
        f"ONNX export refused, nothing written: no exporter matched the PyTorch model ({'; '.join(tried)}). "
        "Load the model with hftl.load instead, or report this with its config.yaml."
    )


def _torch_export(
    graph: ExportGraph,
    example: dict[str, torch.Tensor],
    dynamic: dict[str, dict[int, str]],
    outputs: list[str],
    path: Path,
    exporter: str,
) -> None:
    args, names = tuple(example.values()), list(example)
    path.unlink(missing_ok=True)
    with (
        warnings.catch_warnings(),
        contextlib.redirect_stdout(io.StringIO()),
        _quiet("onnx_ir", "onnxscript"),
    ):
        warnings.simplefilter("ignore")
        if exporter == "dynamo":
            with torch.no_grad():
                torch.onnx.export(
                    graph, args, str(path), input_names=names, output_names=outputs, dynamo=True,
                    dynamic_shapes=(tuple(dynamic[n] for n in names),), external_data=False,
                )  # fmt: skip
            return
        # Tracing with gradients on keeps nn.TransformerEncoderLayer off its fused inference kernel
        # (aten::_transformer_encoder_layer_fwd), which has no ONNX translation; the graph is a copy.
        graph.requires_grad_(True)
        axes = {**dynamic, **{o: {0: "batch"} for o in outputs}}
        torch.onnx.export(
            graph, args, str(path), input_names=names, output_names=outputs, dynamo=False,
            dynamic_axes=axes, opset_version=TORCHSCRIPT_OPSET,
        )  # fmt: skip


@contextlib.contextmanager
def _quiet(*loggers: str):
    """The exporters' progress lines and translation notes (e.g. empty-attribute warnings) stay off the console."""
    saved = [(logging.getLogger(name), logging.getLogger(name).level) for name in loggers]
    for logger, _ in saved:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for logger, level in saved:
            logger.setLevel(level)


def _max_diff(
    tmp: Path, samples: list[Sample], batches: list[list[int]], expected: list[list[np.ndarray]]
) -> float:
    predictor = OnnxPredictor(tmp)
    diffs = []
    for batch, reference in zip(batches, expected, strict=True):
        got = predictor.run([samples[i][1] for i in batch])
        diffs += [float(np.abs(g - r).max()) for g, r in zip(got, reference, strict=True)]
    return float("nan") if any(np.isnan(diffs)) else max(diffs)


def _graph_inputs(tmp: Path) -> list[dict[str, Any]]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(tmp / GRAPH_FILE), providers=["CPUExecutionProvider"])
    return [{"name": i.name, "shape": i.shape, "type": i.type} for i in session.get_inputs()]


def render_readme(spec: dict[str, Any], out: Path) -> str:
    """The export's README: what it is, the parity result and the onnxruntime snippet."""
    parity = spec["export"]["parity"]
    template = _templates().from_string(
        '{% import "_onnx.md.j2" as onnx %}# ONNX export of `{{ source }}`\n\n'
        "Exported by hftl {{ version }} with the {{ exporter }} exporter of torch.onnx. Parity with the PyTorch "
        "model (onnxruntime vs hftl.load): max |logit difference| {{ diff }} (allowed {{ atol }}) on {{ inputs }}.\n\n"
        "{{ onnx.snippet(modality, export_dir) }}\n"
    )
    return template.render(
        source=spec["exported_from"], version=spec["hftl_version"], exporter=spec["export"]["exporter"],
        diff=f"{parity['max_abs_diff']:.1e}", atol=f"{parity['atol']:g}", inputs=parity["inputs"],
        modality=spec["modality"], export_dir=str(out),
    )  # fmt: skip


def _templates():
    """The model-card templates (``hftl/hub/templates``): the README shares the card's ONNX snippet."""
    from importlib import resources

    import jinja2

    def source(name: str) -> str | None:
        path = resources.files("hftl.hub") / "templates" / name
        return path.read_text(encoding="utf-8") if path.is_file() else None

    return jinja2.Environment(loader=jinja2.FunctionLoader(source), autoescape=False)


def _replace(tmp: Path, out: Path) -> None:
    old = out.with_name(f".{out.name}.onnx-old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _first_line(err: BaseException) -> str:
    """The line that says what went wrong (torch.onnx's errors open with boilerplate and name the cause
    under "## Exception summary"; onnxruntime's carry a coloured log prefix)."""
    lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
    if "## Exception summary" in lines:
        lines = lines[lines.index("## Exception summary") + 1 :]
    return re.sub(r"\x1b\[[0-9;]*m", "", (lines or [type(err).__name__])[0])[:300]
