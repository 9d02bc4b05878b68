"""Saving and loading trained classifiers in standard formats.

A model directory holds::

    hftl_model.json      modality, adapter kind, base model, label names, hftl version
    config.yaml          the resolved recipe config (rebuilds encoder and head)
    encoder/             full fine-tune: a transformers model (config.json + model.safetensors);
                         LoRA/IA3: peft adapter files (adapter_config.json + adapter_model.safetensors);
                         always the tokenizer / feature extractor / image processor
    head.safetensors     head and pooling weights
    metrics.json         evaluation results, when known

Weights load from safetensors only (no pickle); remote code stays off unless the config asks.
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from safetensors.torch import load_file, save_file

import hftl
from hftl.errors import ModelLoadError
from hftl.models.classifier import Classifier

MODEL_DIRNAME = "model"
META_FILE = "hftl_model.json"
HUB_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # user/name


def save_model(
    model: Classifier, path: str | Path, *, adapter_kind: str, config: DictConfig, metrics: dict | None = None
) -> Path:
    """Writes ``model`` to ``path`` atomically (a temporary sibling directory renamed at the end).

    An existing ``path`` is replaced only when it is an hftl model directory (it holds ``hftl_model.json``);
    the temporary siblings get fresh names, so nothing of yours is ever removed.

    Raises:
        HftlError: ``path`` exists and is not an hftl model directory (it is left untouched).
        OutputError: the model could not be written (disk full, folder gone); no partial directory is left.
    """
    import uuid

    from hftl.errors import HftlError
    from hftl.training.run_dir import is_hftl_model_dir, record_output, writing

    path = Path(path)
    if (path.exists() or path.is_symlink()) and not is_hftl_model_dir(path):
        raise HftlError(
            f"Cannot save the model to {path}: it exists and is not an hftl model directory (no {META_FILE}), "
            "and hftl does not replace what it did not write. Move it away or choose another `output_dir`."
        )
    tag = uuid.uuid4().hex[:8]
    tmp, old = path.with_name(f".{path.name}.tmp-{tag}"), path.with_name(f".{path.name}.old-{tag}")
    with writing("the model", path):
        try:
            _write_model_dir(model, tmp, adapter_kind=adapter_kind, config=config, metrics=metrics)
            if path.exists():
                path.rename(old)
            try:
                tmp.rename(path)
            except BaseException:
                if old.exists():
                    old.rename(path)  # put the previous model back
                raise
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a failed save leaves no partial directory behind
            raise
        shutil.rmtree(old, ignore_errors=True)
        record_output(path)
    return path


def _write_model_dir(
    model: Classifier, tmp: Path, *, adapter_kind: str, config: DictConfig, metrics: dict | None
) -> None:
    """Writes every file of a model directory into ``tmp`` (see the module docstring for the layout)."""
    (tmp / "encoder").mkdir(parents=True)
    encoder = model.encoder
    if encoder.from_config and adapter_kind == "frozen":
        adapter_kind = "full"  # a randomly initialised backbone has no base to reload: store it whole
    if adapter_kind in ("full", "peft"):
        encoder.backbone.save_pretrained(tmp / "encoder", safe_serialization=True)
    if encoder.processor is not None:
        encoder.processor.save_pretrained(tmp / "encoder")
    save_file(
        {k: v.contiguous() for k, v in model.non_backbone_state_dict().items()}, str(tmp / "head.safetensors")
    )
    meta = {
        "format": 1,
        "hftl_version": hftl.__version__,
        "modality": encoder.modality,
        "adapter": adapter_kind,
        "base_model": encoder.name_or_path,
        "label_names": model.label_names,
        "out_features": encoder.out_features,
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    OmegaConf.save(config, tmp / "config.yaml", resolve=True)
    if metrics is not None:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


def find_model_dir(path: str | Path) -> Path:
    """Accepts a model directory, a run's output directory (which holds ``model/``) or a Hub repo id.

    A ``user/name`` that is not a local path is downloaded from the Hub (``hftl push`` uploads this layout).
    """
    path = Path(path)
    if not path.exists() and HUB_REPO_ID.match(str(path)):
        from hftl.hub.push import download_model

        path = download_model(str(path))
    for candidate in (path, path / MODEL_DIRNAME):
        if (candidate / META_FILE).is_file():
            return candidate
    if not path.exists():
        raise ModelLoadError(
            f"Model directory {str(path)!r} does not exist. Pass the `output_dir` of a finished `hftl run`."
        )
    raise ModelLoadError(
        f"{str(path)!r} is not an hftl model: no {META_FILE} in it or in {MODEL_DIRNAME}/. "
        "Pass the `output_dir` of a finished `hftl run` (or its model/ folder)."
    )


def load_model(
    path: str | Path, *, allow_any_component: bool = False
) -> tuple[Classifier, DictConfig, dict[str, Any]]:
    """Rebuilds a saved classifier; returns ``(model, config, meta)`` with the model in eval mode."""
    from hftl.config import instantiate

    model_dir = find_model_dir(path)
    try:
        meta = json.loads((model_dir / META_FILE).read_text())
        cfg = OmegaConf.load(model_dir / "config.yaml")
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"Cannot read {model_dir}: {err}. The directory is damaged; re-run training or re-download it."
        ) from err
    missing = [k for k in ("adapter", "base_model", "label_names", "modality") if k not in meta]
    if missing or "encoder" not in cfg or "head" not in cfg:
        raise ModelLoadError(
            f"{model_dir / META_FILE} or config.yaml lacks {missing or ['encoder/head']}: the directory was not "
            "written by this hftl version or is damaged; re-run training or re-download it."
        )
    kind, enc_dir = meta["adapter"], model_dir / "encoder"
    source = str(enc_dir) if kind == "full" else meta["base_model"]
    encoder_cls = _component(cfg.encoder, allow_any_component)
    processor = encoder_cls.load_processor(str(enc_dir))
    encoder = instantiate(cfg.encoder, model=source, processor=processor, allow_any=allow_any_component)
    if kind == "peft":
        from peft import PeftModel

        encoder.backbone = PeftModel.from_pretrained(encoder.backbone, str(enc_dir))
    head = instantiate(
        cfg.head,
        in_features=encoder.out_features,
        num_labels=len(meta["label_names"]),
        allow_any=allow_any_component,
    )
    model = Classifier(encoder, head, meta["label_names"])
    missing, unexpected = model.load_state_dict(load_file(str(model_dir / "head.safetensors")), strict=False)
    missing = [k for k in missing if not k.startswith("encoder.backbone.")]
    if missing or unexpected:
        raise ModelLoadError(
            f"{model_dir / 'head.safetensors'} does not match the config's head: missing {missing}, unexpected {unexpected}."
        )
    return model.eval(), cfg, meta


def _component(node: DictConfig, allow_any: bool):
    from hftl.config import get_component

    return get_component(node["_component_"], allow_any=allow_any)
