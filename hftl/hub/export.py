"""``hftl export --merge``: a plain ``AutoModelFor*Classification`` directory, for users without hftl.

Only configurations whose hftl forward pass equals a transformers classification model's are exported,
and every export is checked on random inputs (logits equal within 1e-4) before it is written:

================================  ===========================  =====================================
transformers model_type           hftl encoder pooling / head   transformers class (what maps to what)
================================  ===========================  =====================================
``bert``                          ``cls`` + ``MLPHead(num_      ``BertForSequenceClassification``:
                                  layers=1, activation=tanh,    pooler dense + tanh = the MLP's hidden
                                  hidden_features=hidden)``     layer, classifier = its output layer
``wav2vec2``, ``hubert``,         ``mean`` + linear head        ``*ForSequenceClassification``: mean
``wavlm``                                                       pooling is the same masked mean;
                                                                projector = identity, classifier = head
``vit``, ``deit``                 ``cls`` + linear head         ``ViTForImageClassification``:
                                                                classifier on the final-layernorm CLS
================================  ===========================  =====================================

Anything else (BERT with ``mean`` pooling or a linear head: BERT's classifier always goes through its
tanh pooler; ``stats``/``attention`` pooling; MLP heads elsewhere; ``encoder.layer`` other than -1;
models trained from scratch with hftl's own architectures) has no exact transformers equivalent and is
refused with an explanation: load it with ``hftl.load`` instead. LoRA/IA3 weights are merged into the
base weights with peft's ``merge_and_unload()``.

``--out`` is checked before the model is loaded (:func:`check_out_dir`): it may not be, contain or lie
inside the model directory or its run, even with ``--force``; an existing non-empty folder is replaced
only with ``--force`` and only when an earlier export wrote it (its ``.hftl_export.json`` marker). The
export is written into a temporary sibling and renamed into place at the end (:func:`staged_out_dir`),
so a failure leaves ``--out`` as it was.
"""

from __future__ import annotations

import contextlib
import copy
import json
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hftl.errors import HftlError
from hftl.models.io import META_FILE, MODEL_DIRNAME, load_model
from hftl.version import __version__

AUDIO_TYPES = ("wav2vec2", "hubert", "wavlm")
VISION_TYPES = ("vit", "deit")
SUPPORTED = (
    "text `bert` with `encoder.pooling: cls` and `head: {_component_: hftl.models.MLPHead, num_layers: 1, "
    "activation: tanh, hidden_features: <hidden size>}`; audio `wav2vec2`/`hubert`/`wavlm` with `pooling: mean` "
    "and a linear head; vision `vit`/`deit` with `pooling: cls` and a linear head (all with `encoder.layer: -1`)"
)
EXPORT_MARKER = ".hftl_export.json"  # in every folder `hftl export` wrote: what --force may replace
# Files that show a `model/` folder sits inside a run directory, which the export then protects too.
RUN_FILES = (".hftl_run.json", "metrics.json", "checkpoints")


def export_merged(
    output_dir: str | Path, out: str | Path, *, force: bool = False, atol: float = 1e-4
) -> Path:
    """Writes ``out``: a transformers classification model (+ processor) equal to the hftl model.

    Args:
        output_dir: a finished run's ``output_dir``, its ``model/`` folder, or a Hub repo id.
        out: directory to create.
        force: replace ``out`` when an earlier ``hftl export`` wrote it.
        atol: largest logit difference allowed in the built-in check.

    Returns:
        ``out``; load it with ``AutoModelFor{Sequence,Audio,Image}Classification.from_pretrained(out)``.

    Raises:
        HftlError: the configuration has no exact transformers equivalent; ``out`` overlaps the source,
            or exists and is not empty (without ``force``, or not written by ``hftl export``).
    """
    out = Path(out)
    sources = model_sources(output_dir)
    check_out_dir(out, sources=sources, force=force)
    model, meta = load_model(output_dir)
    encoder = model.encoder
    config = encoder.base_model.config
    head = _head_layers(model.head)
    kind = _check(config.model_type, encoder.pool.method, encoder.layer, head, config)
    inputs = _random_inputs(encoder.modality, config)
    with torch.no_grad():
        expected = model(**inputs).logits  # before merging: the check also covers the LoRA merge
    backbone = encoder.backbone
    if hasattr(backbone, "merge_and_unload"):
        backbone = backbone.merge_and_unload()  # LoRA/IA3 folded into the base weights
    exported = _build(kind, backbone, head, meta["label_names"])
    with torch.no_grad():
        diff = float((exported(**inputs).logits - expected).abs().max())
    if diff > atol:
        raise HftlError(
            f"Internal export error: the exported model's logits differ from hftl's by {diff:.2e} (> {atol}); "
            "nothing was written. Please report this with the model's config.yaml."
        )
    with staged_out_dir(out, sources=sources, force=force, record={"format": "transformers"}) as tmp:
        exported.save_pretrained(tmp)
        if encoder.processor is not None:
            encoder.processor.save_pretrained(tmp)
    return out


def model_sources(output_dir: str | Path) -> list[Path]:
    """The local folders an export reads (resolved): the path given, its model directory, and the run
    directory around a ``model/`` folder. Empty for a Hub reference (``hf://...``)."""
    if isinstance(output_dir, str) and output_dir.startswith("hf://"):
        return []
    path = Path(output_dir)
    if not path.exists():
        return []
    sources = [path.resolve()]
    for candidate in (path, path / MODEL_DIRNAME):
        if (candidate / META_FILE).is_file():
            model_dir = candidate.resolve()
            sources.append(model_dir)
            run = model_dir.parent
            if model_dir.name == MODEL_DIRNAME and any((run / f).exists() for f in RUN_FILES):
                sources.append(run)
    return list(dict.fromkeys(sources))


def check_out_dir(out: Path, *, sources: Iterable[Path], force: bool, marker: str = EXPORT_MARKER) -> None:
    """Refuses an ``--out`` that overlaps a source or that holds files an export did not write.

    Args:
        out: the folder to write.
        sources: resolved folders the export reads (:func:`model_sources`); ``out`` may not be one of them,
            lie inside one, or contain one, whatever ``force`` says.
        force: allow replacing a non-empty ``out`` that holds ``marker`` (an earlier export).
        marker: the file an export writes into its folder.

    Raises:
        HftlError: one line naming ``--out``, what is wrong and the fix.
    """
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        kind = "a symlink" if out.is_symlink() else "a file"
        raise HftlError(
            f"--out {out} is {kind}; pass the path of a new or empty folder (or an earlier export)."
        )
    target = out.resolve()
    for src in sources:
        relation = (
            "is"
            if target == src
            else "lies inside"
            if src in target.parents
            else "contains"
            if target in src.parents
            else None
        )
        if relation:
            raise HftlError(
                f"--out {out} {relation} the model being exported ({src}); writing there could overwrite or "
                "delete it, so it is refused even with --force. Choose a folder outside it."
            )
    if out.is_dir() and any(out.iterdir()):
        if not (out / marker).is_file():
            raise HftlError(
                f"--out {out} is not empty and was not written by `hftl export` (no {marker} in it); hftl "
                "replaces only its own exports, even with --force. Choose a new or empty folder."
            )
        if not force:
            raise HftlError(
                f"--out {out} holds an earlier export; pass --force to replace it, or choose another --out."
            )


@contextlib.contextmanager
def staged_out_dir(
    out: Path, *, sources: Iterable[Path], force: bool, record: dict[str, Any], marker: str = EXPORT_MARKER
) -> Iterator[Path]:
    """Yields an empty temporary sibling of ``out`` to write into; on success it becomes ``out``.

    The ``marker`` file (``record`` + the hftl version) is written last; ``out`` is checked again
    (:func:`check_out_dir`) before an earlier export in it is replaced. On any error the temporary folder
    is removed and ``out`` is left as it was; an ``OSError`` (disk full, permissions) becomes an HftlError.
    """
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.export-", dir=out.parent))
    except OSError as err:
        raise HftlError(
            f"--out {out}: cannot create a folder in {out.parent} ({err.strerror or err}); choose a writable --out."
        ) from None
    try:
        yield tmp
        (tmp / marker).write_text(json.dumps({**record, "hftl_version": __version__}, indent=2) + "\n")
        check_out_dir(out, sources=list(sources), force=force, marker=marker)
        old = None
        if out.exists():  # an empty folder, or an earlier export (checked above)
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
            out.rename(old / "out")
        try:
            tmp.rename(out)
        except BaseException:
            if old is not None:  # put the earlier export back
                (old / "out").rename(out)
                old.rmdir()
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except OSError as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise HftlError(
            f"Writing --out {out} failed ({err.strerror or err}); nothing was written and --out is as it was. "
            "Free space or fix the folder's permissions, then export again."
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _head_layers(head: nn.Module) -> list[nn.Module]:
    """The head's computing layers in order (dropout removed: it is the identity at inference)."""
    layers = list(head) if isinstance(head, nn.Sequential) else [head]
    return [m for m in layers if not isinstance(m, nn.Dropout)]


def _check(model_type: str, pooling: str, layer: int, head: list[nn.Module], config: Any) -> str:
    linear = len(head) == 1 and isinstance(head[0], nn.Linear)
    hidden = getattr(config, "hidden_size", None)
    tanh_mlp = (
        len(head) == 3
        and isinstance(head[0], nn.Linear)
        and isinstance(head[1], nn.Tanh)
        and isinstance(head[2], nn.Linear)
        and head[0].in_features == head[0].out_features == hidden
    )
    problems = []
    if layer != -1:
        problems.append(f"`encoder.layer` is {layer}; transformers classifiers read the last layer (-1)")
    if model_type == "bert" and not (pooling == "cls" and tanh_mlp):
        problems.append(
            f"BertForSequenceClassification classifies tanh(dense(CLS)) (its pooler); this model uses `{pooling}` "
            "pooling and a head that is not one tanh hidden layer of the hidden size"
        )
    elif model_type in AUDIO_TYPES and not (pooling == "mean" and linear):
        problems.append(
            f"{model_type} sequence classification mean-pools then applies linear layers; this model uses "
            f"`{pooling}` pooling and {'a linear' if linear else 'a non-linear'} head"
        )
    elif model_type in VISION_TYPES and not (pooling == "cls" and linear):
        problems.append(
            f"{model_type} image classification applies one linear layer to the CLS token; this model uses "
            f"`{pooling}` pooling and {'a linear' if linear else 'a non-linear'} head"
        )
    elif model_type not in ("bert", *AUDIO_TYPES, *VISION_TYPES):
        problems.append(f"model_type {model_type!r} has no exact export in hftl")
    if problems:
        raise HftlError(
            "Cannot export this model as a plain transformers classifier with identical outputs: "
            + "; ".join(problems)
            + f". Exact exports exist for: {SUPPORTED}. Use the hftl model directory instead "
            "(`hftl.load(OUTPUT_DIR)` or `hftl predict`), which loads it exactly."
        )
    return "text" if model_type == "bert" else "audio" if model_type in AUDIO_TYPES else "image"


def _build(kind: str, backbone: nn.Module, head: list[nn.Module], label_names: list[str]) -> nn.Module:
    from transformers import (
        AutoModelForAudioClassification,
        AutoModelForImageClassification,
        AutoModelForSequenceClassification,
    )

    config = copy.deepcopy(backbone.config)
    config.num_labels = len(label_names)
    config.id2label = dict(enumerate(label_names))
    config.label2id = {name: i for i, name in enumerate(label_names)}
    config.architectures = None
    if kind == "audio":
        config.classifier_proj_size = config.hidden_size  # projector becomes the identity
        config.use_weighted_layer_sum = False
    auto = {
        "text": AutoModelForSequenceClassification,
        "audio": AutoModelForAudioClassification,
        "image": AutoModelForImageClassification,
    }[kind]
    model = auto.from_config(config).eval()
    base = model.base_model
    missing, unexpected = base.load_state_dict(backbone.state_dict(), strict=False)
    unexpected = [k for k in unexpected if not k.startswith("pooler.")]  # ViT: the classifier has no pooler
    missing = [k for k in missing if not (kind == "text" and k.startswith("pooler."))]
    if missing or unexpected:
        raise HftlError(
            f"Internal export error: backbone weights do not match: missing {missing}, unexpected {unexpected}"
        )
    with torch.no_grad():
        if kind == "text":  # pooler dense + tanh = the MLP's hidden layer; classifier = its output layer
            base.pooler.dense.load_state_dict(head[0].state_dict())
            model.classifier.load_state_dict(head[2].state_dict())
        elif kind == "audio":
            model.projector.weight.copy_(torch.eye(config.hidden_size))
            model.projector.bias.zero_()
            model.classifier.load_state_dict(head[0].state_dict())
        else:
            model.classifier.load_state_dict(head[0].state_dict())
    return model


def _random_inputs(modality: str, config: Any) -> dict[str, torch.Tensor]:
    """Two random examples, the second padded, in the encoder's input format."""
    gen = torch.Generator().manual_seed(0)
    if modality == "text":
        ids = torch.randint(5, config.vocab_size, (2, 12), generator=gen)
        mask = torch.ones_like(ids)
        mask[1, 7:] = 0
        return {"input_ids": ids, "attention_mask": mask}
    if modality == "audio":
        mask = torch.ones(2, 8000, dtype=torch.long)
        mask[1, 5000:] = 0
        return {"input_values": torch.randn(2, 8000, generator=gen), "attention_mask": mask}
    size = config.image_size
    return {"pixel_values": torch.randn(2, config.num_channels, size, size, generator=gen)}
