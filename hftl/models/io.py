"""Saving and loading trained classifiers: a model directory is data, never code.

A model directory holds::

    hftl_model.json      format 2: modality, adapter kind, base model (+ revision), label names, and the
                         encoder and head as a registered class with plain keyword values (hftl.models.spec)
    config.yaml          the recipe config of the run: a record for people and cards, never read to rebuild
    encoder/             full fine-tune: a transformers model (config.json + model.safetensors);
                         LoRA/IA3: peft adapter files (adapter_config.json + adapter_model.safetensors);
                         always the tokenizer / feature extractor / image processor
    head.safetensors     head and pooling weights
    metrics.json         evaluation results, when known

:func:`load_model` builds only classes from hftl's fixed tables, with type-checked values; it resolves no
interpolation, imports nothing the directory names, reads weights from safetensors only (headers checked
first), and turns on ``trust_remote_code`` only when the caller passes it (never on the directory's say),
with a warning naming the ``.py`` files transformers will import; without it, ``auto_map`` is refused.
Format-1 directories (encoder and head described only in ``config.yaml``) load through the same tables,
reading those two nodes as plain YAML.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from hftl.config import record_config
from hftl.encoders.base import resolve_model_path
from hftl.errors import HftlError, ModelLoadError
from hftl.models import spec
from hftl.models.classifier import Classifier
from hftl.models.records import read_json, recorded_node
from hftl.models.remote_code import check_folder, check_hub_config
from hftl.models.source import HUB_MODEL_ID, META_FILE, MODEL_DIRNAME, find_model_dir, resolve_source
from hftl.outputs import is_hftl_model_dir, record_output, writing
from hftl.version import __version__

logger = logging.getLogger(__name__)

FORMAT = 2
ADAPTER_KINDS = ("full", "peft", "frozen")
MODALITIES = ("text", "audio", "image")
__all__ = ["META_FILE", "MODEL_DIRNAME", "find_model_dir", "load_model", "load_weights", "save_model"]


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
    revision = config.get("encoder", {}).get("revision") if isinstance(config, DictConfig) else None
    meta = {
        "format": FORMAT,
        "hftl_version": __version__,
        "modality": encoder.modality,
        "adapter": adapter_kind,
        "base_model": encoder.name_or_path,
        "base_revision": revision if isinstance(revision, str) else None,
        "label_names": model.label_names,
        "out_features": encoder.out_features,
        "encoder": spec.describe_encoder(encoder, config.get("encoder")),
        "head": spec.describe_head(model.head, config.get("head")),
    }
    (tmp / META_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    # The record keeps `${oc.env:...}` / `${hftl.data_dir:...}` as text: no environment value in a shared file.
    OmegaConf.save(record_config(config), tmp / "config.yaml", resolve=True)
    if metrics is not None:
        (tmp / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")


# -- reading hftl_model.json --------------------------------------------------------------------------------
_KEYS: dict[str, tuple[type, ...]] = {
    "format": (int,), "hftl_version": (str,), "modality": (str,), "adapter": (str,), "base_model": (str,),
    "base_revision": (str, type(None)), "label_names": (list,), "out_features": (int,), "encoder": (dict,),
    "head": (dict,),
}  # fmt: skip
_LEGACY_KEYS = ("format", "hftl_version", "modality", "adapter", "base_model", "label_names", "out_features")


def read_meta(model_dir: Path) -> dict[str, Any]:
    """``hftl_model.json`` checked key by key; format-1 files get ``encoder``/``head`` from ``config.yaml``.

    Raises:
        ModelLoadError: unreadable JSON, an unknown key or format, a value of the wrong type, or a class
            outside hftl's tables (the message names the file and the key).
    """
    file = model_dir / META_FILE
    meta = read_json(file)
    version = meta.get("format") if isinstance(meta, dict) else None
    if version not in (1, FORMAT) or isinstance(version, bool):
        newer = isinstance(version, int) and not isinstance(version, bool) and version > FORMAT
        raise ModelLoadError(
            f"{file}: `format` is {version!r}; this hftl reads formats 1 and {FORMAT}. "
            + (
                "Upgrade hftl (pip install -U hftl)."
                if newer
                else "The file is damaged; re-download the model."
            )
        )
    allowed = _LEGACY_KEYS if version == 1 else tuple(_KEYS)
    required = ("modality", "adapter", "base_model", "label_names") if version == 1 else allowed
    for key in meta:
        if key not in allowed:
            raise ModelLoadError(
                f"{file}: unknown key `{key}` (allowed: {', '.join(allowed)}). Re-download the model."
            )
    for key in required:
        if key not in meta or not isinstance(meta[key], _KEYS[key]) or isinstance(meta[key], bool):
            raise ModelLoadError(
                f"{file}: `{key}` is {'missing' if key not in meta else repr(meta[key])[:60]}; the file is "
                "damaged or was not written by hftl. Re-download the model or re-run training."
            )
    _check_choices(meta, file)
    if version == 1:
        meta = {**meta, **_legacy_specs(model_dir)}
    encoder_cls, _ = spec.resolve_spec(meta["encoder"], "encoder", where=str(file))
    spec.resolve_spec(meta["head"], "head", where=str(file))
    if encoder_cls.modality != meta["modality"]:
        raise ModelLoadError(
            f"{file}: `modality` is {meta['modality']!r} but `encoder.class` is a {encoder_cls.modality} encoder. "
            "The file is damaged; re-download the model."
        )
    return meta


def _check_choices(meta: dict[str, Any], file: Path) -> None:
    labels = meta["label_names"]
    problem = None
    if meta["modality"] not in MODALITIES:
        problem = f"`modality` is {meta['modality']!r}; allowed: {', '.join(MODALITIES)}"
    elif meta["adapter"] not in ADAPTER_KINDS:
        problem = f"`adapter` is {meta['adapter']!r}; allowed: {', '.join(ADAPTER_KINDS)}"
    elif not labels or not all(isinstance(x, str) for x in labels) or len(set(labels)) != len(labels):
        problem = "`label_names` must be a non-empty list of distinct strings"
    if problem:
        raise ModelLoadError(
            f"{file}: {problem}. The file is damaged; re-download the model or re-run training."
        )


def _legacy_specs(model_dir: Path) -> dict[str, Any]:
    """Encoder/head specs and base revision of a format-1 directory, from ``config.yaml`` read as plain data."""
    file = model_dir / "config.yaml"
    where = f"{file} (format 1)"
    encoder = recorded_node(file, "encoder")
    revision = encoder.get("revision")
    return {
        "base_revision": revision if isinstance(revision, str) else None,
        "encoder": spec.legacy_spec(encoder, "encoder", where=where),
        "head": spec.legacy_spec(recorded_node(file, "head"), "head", where=where),
    }


# -- weights ---------------------------------------------------------------------------------------------------
def check_safetensors(model_dir: Path) -> None:
    """Parses the header of every weights file a load reads (head, encoder/, tasks/) before anything loads it."""
    files = [model_dir / "head.safetensors", *(model_dir / "encoder").glob("*.safetensors")]
    for file in [*files, *sorted((model_dir / "tasks").glob("*.safetensors"))]:
        if not file.exists():
            continue  # reported by the step that needs it
        try:
            with safe_open(str(file), framework="pt"):
                pass
        except (SafetensorError, OSError) as err:
            raise ModelLoadError(
                f"{file} is not a valid safetensors file ({str(err).strip()}). The model directory is damaged "
                "or was tampered with; re-download it or re-run training."
            ) from None


def load_weights(module: nn.Module, file: Path, *, optional_prefix: str | None = None) -> None:
    """Loads ``file`` into ``module``: every name, shape and dtype kind must match (``optional_prefix``: may be absent).

    Raises:
        ModelLoadError: the file is missing or malformed, or does not match ``module``.
    """
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError) as err:
        raise ModelLoadError(
            f"Cannot read {file} ({str(err).strip()}). The model directory is damaged; re-download it or re-run training."
        ) from None
    own = module.state_dict()
    missing = [k for k in own if k not in state and not (optional_prefix and k.startswith(optional_prefix))]
    unexpected = [k for k in state if k not in own]
    wrong = [
        f"{k} {tuple(state[k].shape)} {state[k].dtype} (expected {tuple(own[k].shape)} {own[k].dtype})"
        for k in state
        if k in own
        and (
            state[k].shape != own[k].shape
            or state[k].dtype.is_floating_point != own[k].dtype.is_floating_point
        )
    ]
    if missing or unexpected or wrong:
        found = "; ".join(
            f"{what} {items[:3]}{' ...' if len(items) > 3 else ''}"
            for what, items in (("missing", missing), ("unexpected", unexpected), ("mismatched", wrong))
            if items
        )
        raise ModelLoadError(
            f"{file} does not match the model described by {META_FILE}: {found}. The directory is damaged or "
            "mixed from two models; re-download it or re-run training."
        )
    module.load_state_dict(state, strict=False)


def _base_model(meta: dict[str, Any], file: Path, *, trust_remote_code: bool) -> str:
    """The base model adapters and frozen encoders load on: a local directory or a Hub id, checked."""
    base = meta["base_model"]
    path = resolve_model_path(base)
    what = f"the base model {base!r}"
    if Path(path).is_dir():
        check_folder(Path(path), trust_remote_code=trust_remote_code, what=what)
        return base
    if Path(base).is_absolute() or base.startswith((".", "~")) or not HUB_MODEL_ID.match(base):
        raise ModelLoadError(
            f"{file}: `base_model` = {base!r} is neither a directory on this machine nor a Hub model id; this "
            f"{meta['adapter']} model needs its base model. Put the base model there, or re-run training."
        )
    check_hub_config(base, meta["base_revision"], trust_remote_code=trust_remote_code, what=what)
    return base


# -- loading ----------------------------------------------------------------------------------------------------
def load_model(
    path: str | Path, *, from_hub: bool = False, revision: str | None = None, trust_remote_code: bool = False
) -> tuple[Classifier, dict[str, Any]]:
    """Rebuilds a saved classifier (eval mode) from a model directory, treated as data.

    Args:
        path: a run's ``output_dir``, its ``model/`` folder, or ``hf://user/name[@revision]``.
        from_hub: ``path`` is a Hub repo id ``user/name`` (``--from-hub``).
        revision: Hub branch, tag or commit.
        trust_remote_code: let transformers import the ``.py`` files the model (or its base) ships, for
            ``auto_map`` configs; refused otherwise. Only for code you have read.

    Returns:
        ``(model, meta)``: ``meta`` is ``hftl_model.json`` (format-2 keys), plus ``source`` (the local path,
        or ``hf://user/name@<commit sha>`` as loaded) and ``path`` (the local model directory).

    Raises:
        ModelLoadError: anything wrong with the path or the directory, in one line naming the file.
    """
    source = resolve_source(path, from_hub=from_hub, revision=revision, trust_remote_code=trust_remote_code)
    model_dir, file = source.path, source.path / META_FILE
    meta = read_meta(model_dir)
    check_safetensors(model_dir)
    encoder = _build_encoder(meta, model_dir, trust_remote_code=trust_remote_code)
    head = spec.build(
        meta["head"],
        "head",
        where=str(file),
        in_features=encoder.out_features,
        num_labels=len(meta["label_names"]),
    )
    model = Classifier(encoder, head, meta["label_names"])
    load_weights(model, model_dir / "head.safetensors", optional_prefix="encoder.backbone.")
    return model.eval(), {**meta, "source": str(source), "path": str(model_dir)}


def _build_encoder(meta: dict[str, Any], model_dir: Path, *, trust_remote_code: bool) -> Any:
    kind, enc_dir, file = meta["adapter"], model_dir / "encoder", model_dir / META_FILE
    weights = {"full": "model.safetensors", "peft": "adapter_model.safetensors"}.get(kind)
    if weights and not ((enc_dir / weights).is_file() or (enc_dir / f"{weights}.index.json").is_file()):
        raise ModelLoadError(
            f"{enc_dir} has no {weights} (hftl loads safetensors weights only); the directory is incomplete. "
            "Re-download it or re-run training."
        )
    check_folder(enc_dir, trust_remote_code=trust_remote_code, what="this model")
    cls, _ = spec.resolve_spec(meta["encoder"], "encoder", where=str(file))
    try:
        processor = cls.load_processor(str(enc_dir), trust_remote_code=trust_remote_code)
    except (OSError, ValueError, TypeError, KeyError) as err:
        raise ModelLoadError(
            f"Cannot read the processor files in {enc_dir} ({(str(err).splitlines() or [''])[0]}). The directory "
            "is damaged; re-download it or re-run training."
        ) from None
    if kind == "full":
        source, revision = str(enc_dir), None
    else:
        source = _base_model(meta, file, trust_remote_code=trust_remote_code)
        revision = meta["base_revision"]
    encoder = spec.build(
        meta["encoder"], "encoder", where=str(file), model=source, processor=processor, revision=revision,
        trust_remote_code=trust_remote_code,
    )  # fmt: skip
    if kind == "peft":
        from peft import PeftModel

        from hftl.adapters.peft_adapters import peft_wrapping, saved_peft_config

        config = saved_peft_config(enc_dir)
        try:
            with peft_wrapping():
                encoder.backbone = PeftModel.from_pretrained(encoder.backbone, str(enc_dir), config=config)
        except (OSError, ValueError, TypeError, KeyError, RuntimeError) as err:
            raise ModelLoadError(
                f"Cannot load the adapter in {enc_dir} ({(str(err).splitlines() or [''])[0]}). The directory is "
                "damaged or its adapter does not fit the base model; re-download it or re-run training."
            ) from None
    return encoder
