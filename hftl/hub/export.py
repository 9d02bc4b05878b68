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
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hftl.errors import HftlError
from hftl.models.io import load_model

AUDIO_TYPES = ("wav2vec2", "hubert", "wavlm")
VISION_TYPES = ("vit", "deit")
SUPPORTED = (
    "text `bert` with `encoder.pooling: cls` and `head: {_component_: hftl.models.MLPHead, num_layers: 1, "
    "activation: tanh, hidden_features: <hidden size>}`; audio `wav2vec2`/`hubert`/`wavlm` with `pooling: mean` "
    "and a linear head; vision `vit`/`deit` with `pooling: cls` and a linear head (all with `encoder.layer: -1`)"
)


def export_merged(
    output_dir: str | Path, out: str | Path, *, force: bool = False, atol: float = 1e-4
) -> Path:
    """Writes ``out``: a transformers classification model (+ processor) equal to the hftl model.

    Args:
        output_dir: a finished run's ``output_dir``, its ``model/`` folder, or a Hub repo id.
        out: directory to create.
        force: replace ``out`` when it exists.
        atol: largest logit difference allowed in the built-in check.

    Returns:
        ``out``; load it with ``AutoModelFor{Sequence,Audio,Image}Classification.from_pretrained(out)``.

    Raises:
        HftlError: the configuration has no exact transformers equivalent, or ``out`` exists.
    """
    out = Path(out)
    if out.exists() and any(out.iterdir()) and not force:
        raise HftlError(f"--out {out} exists and is not empty; pass --force to replace it, or another --out.")
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
    if out.exists():
        shutil.rmtree(out)
    exported.save_pretrained(out)
    if encoder.processor is not None:
        encoder.processor.save_pretrained(out)
    return out


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
