"""What an ONNX export records about its inputs: ``hftl_onnx.json``'s spec and the processor files.

:func:`preprocessing` is the contract between the exporter and :mod:`hftl.export.runtime`: the
tokenizer/feature-extractor settings the graph expects, which ``hftl predict`` reproduces without torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import nn

import hftl
from hftl.export.frontends import min_samples
from hftl.export.graph import OnnxExportError
from hftl.export.runtime import GRAPH_FILE, SPEC_FORMAT, TEXT_FIELDS, TOKENIZER_FILE


def graph_spec(meta: dict, encoder: Any, frontend: nn.Module | None, labels: list) -> dict[str, Any]:
    """The ``hftl_onnx.json`` contents known before export: source, outputs and preprocessing."""
    outputs = [
        {"name": "logits" if task is None else f"logits_{task}", "task": task, "label_names": names}
        for task, names in labels
    ]
    return {
        "format": SPEC_FORMAT,
        "hftl_version": hftl.__version__,
        "modality": encoder.modality,
        "base_model": meta.get("base_model"),
        "adapter": meta.get("adapter"),
        "exported_from": meta["source"],
        "graph": GRAPH_FILE,
        "label_names": labels[0][1],
        "outputs": outputs,
        "preprocessing": preprocessing(encoder, frontend),
    }


def preprocessing(encoder: Any, frontend: nn.Module | None) -> dict[str, Any]:
    """What the graph expects of its inputs (read by :mod:`hftl.export.runtime` and the README snippet)."""
    processor = encoder.processor
    if encoder.modality == "text":
        names = ["input_ids", *(k for k in processor.model_input_names if k != "input_ids")]  # TextCollator's
        if not set(names) <= set(TEXT_FIELDS):
            raise OnnxExportError(
                f"The tokenizer of {encoder.name_or_path!r} gives {names}; the export reproduces "
                f"{', '.join(TEXT_FIELDS)} only (what `tokenizers` encodings hold)."
            )
        return {
            "tokenizer": TOKENIZER_FILE,
            "inputs": names,
            "max_length": int(encoder.max_length),
            "truncation_side": processor.truncation_side,
            "padding_side": processor.padding_side,
            "pad_token": processor.pad_token,
            "pad_token_id": processor.pad_token_id,
        }
    if encoder.modality == "audio":
        rate = encoder.sampling_rate
        fixed = encoder.base_model.config.model_type == "whisper"  # AudioEncoder.collator's padding rule
        return {
            "sampling_rate": rate,
            "max_duration": encoder.max_duration,
            "max_samples": None if encoder.max_duration is None else int(round(encoder.max_duration * rate)),
            "crop": "centre",
            "level": encoder.normalize,
            "features": "graph" if frontend is not None else "extractor",
            "feature_extractor": type(processor).__name__,
            "min_samples": min_samples(frontend),
            "padding": "max_length" if fixed else "longest",
        }
    from hftl.encoders.vision import ImageCollator

    return {"image_processor": type(processor).__name__, "image_mode": ImageCollator(processor).mode}


def write_processor(tmp: Path, encoder: Any, pre: dict[str, Any]) -> None:
    """The tokenizer (with hftl's truncation and padding in ``tokenizer.json``) or processor files."""
    processor = encoder.processor
    processor.save_pretrained(str(tmp))
    if encoder.modality != "text":
        return
    backend = getattr(processor, "backend_tokenizer", None)
    if backend is None:
        raise OnnxExportError(
            f"The tokenizer of {encoder.name_or_path!r} ({type(processor).__name__}) has no fast version "
            "(tokenizer.json), which the export needs to tokenize without transformers. Train with a model "
            "that ships a fast tokenizer."
        )
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(backend.to_str())
    tokenizer.enable_truncation(pre["max_length"], direction=pre["truncation_side"])
    tokenizer.enable_padding(
        direction=pre["padding_side"], pad_id=pre["pad_token_id"], pad_token=pre["pad_token"],
        pad_type_id=int(getattr(processor, "pad_token_type_id", 0)),
    )  # fmt: skip
    tokenizer.save(str(tmp / pre["tokenizer"]))
