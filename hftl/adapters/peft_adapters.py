"""LoRA and IA3 through peft (every field of peft's config passes through), with default target modules per
architecture."""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import json
import logging
import re
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, ClassVar, Literal

from hftl.adapters.simple import Adapter
from hftl.encoders.base import Encoder, peft_code_field
from hftl.errors import ConfigError, ModelLoadError


@contextmanager
def peft_wrapping() -> Iterator[None]:
    """Around peft wrapping a transformers model: peft reads the model's ``is_gradient_checkpointing``, which
    transformers 5 deprecates with a FutureWarning on every LoRA/IA3 run; the warning is about peft's code,
    not the user's, so it is not shown."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
        yield


logger = logging.getLogger(__name__)

# peft ships defaults for BERT but none for ViT/wav2vec2/HuBERT/WavLM/AST/Whisper. transformers 5 names their
# attention projections q_proj/k_proj/v_proj (ViT and AST too, no longer query/value; checked on tiny configs by
# tests/test_audio_encoders.py): LoRA wraps the query/value projections, as in the LoRA paper.
# WavLM's attention passes q/k/v_proj.weight straight to F.multi_head_attention_forward (the modules' forward
# never runs), so LoRA/IA3 there would train nothing: it adapts the feed-forward layers instead.
_WAV2VEC2_LIKE = ("wav2vec2", "hubert", "data2vec-audio", "unispeech", "unispeech-sat", "sew")
_WAVLM_FFN = ["feed_forward.intermediate_dense", "feed_forward.output_dense"]
LORA_TARGETS: dict[str, list[str]] = {
    "bert": ["query", "value"],
    "roberta": ["query", "value"],
    "xlm-roberta": ["query", "value"],
    "distilbert": ["q_lin", "v_lin"],
    **{
        t: ["q_proj", "v_proj"]
        for t in ("vit", "deit", "audio-spectrogram-transformer", "whisper", *_WAV2VEC2_LIKE)
    },
    "wav2vec2-conformer": ["linear_q", "linear_v"],
    "wavlm": _WAVLM_FFN,
}
# IA3 rescales keys, values and the feed-forward output (Liu et al. 2022).
IA3_TARGETS: dict[str, tuple[list[str], list[str]]] = {
    "bert": (["key", "value", "output.dense"], ["output.dense"]),
    "roberta": (["key", "value", "output.dense"], ["output.dense"]),
    **{
        t: (["k_proj", "v_proj", "fc2"], ["fc2"])
        for t in ("vit", "deit", "audio-spectrogram-transformer", "whisper")
    },
    **{
        t: (["k_proj", "v_proj", "feed_forward.output_dense"], ["feed_forward.output_dense"])
        for t in _WAV2VEC2_LIKE
    },
    "wavlm": (_WAVLM_FFN, ["feed_forward.output_dense"]),
}
# hftl pools the token states itself (hftl.encoders.pooling), so a backbone's own pooler (BERT's and ViT's
# `pooler.dense`) runs but its output is never used: an adapter there gets no gradient and only adds work and
# weights. LoRA/IA3 never wrap it unless a config sets peft's `exclude_modules` itself (a regex, fullmatched
# against module names by peft; target lists such as [query, key, value, dense] would match `pooler.dense`).
UNUSED_MODULES = r"(.*\.)?pooler(\..*)?"


def default_target_modules(model_type: str, method: Literal["lora", "ia3"] = "lora") -> list[str]:
    """Module names LoRA (or IA3) wraps for a transformers ``model_type`` such as ``bert`` or ``vit``."""
    table = LORA_TARGETS if method == "lora" else {k: v[0] for k, v in IA3_TARGETS.items()}
    if model_type not in table:
        raise ConfigError(
            f"`adapter.target_modules`: hftl has no default for model_type {model_type!r}; known: "
            f"{', '.join(sorted(table))}. Set `adapter.target_modules` to the names of its attention "
            "projections (print the model to see them)."
        )
    return list(table[model_type])


# Fields of peft's configs that hftl sets itself: a plain PeftModel (task_type None: its forward passes any
# inputs), built for training, recorded by peft when the adapter is saved.
_MANAGED = ("task_type", "peft_type", "auto_mapping", "peft_version", "base_model_name_or_path", "revision",
            "inference_mode")  # fmt: skip
# Refused from a config: `megatron_core` names a module that peft imports (code, not data).
_REFUSED = {
    "megatron_config": "it makes peft import the module `megatron_core` names; a config may not import code",
    "megatron_core": "peft imports the module it names; a config may not import code",
}
PEFT_DOCS = "https://huggingface.co/docs/peft/package_reference"
# The peft configs hftl writes, by the `peft_type` recorded in adapter_config.json.
_SAVED_TYPES = {"LORA": "LoraConfig", "IA3": "IA3Config"}
_MAX_ADAPTER_CONFIG_BYTES = 1 << 20


def saved_peft_config(directory: str | Path):
    """The peft config saved in ``directory/adapter_config.json``, read as data.

    ``PeftModel.from_pretrained`` would build whatever the file names, and a LoRA config whose
    ``megatron_config`` is set makes peft import the module ``megatron_core`` names. A model directory is
    untrusted, so only the adapter types hftl writes (LoRA, IA3) are accepted, with no field that imports
    code; fields this peft does not know are dropped with a warning (a newer peft wrote them).

    Raises:
        ModelLoadError: the file is missing, not JSON, names another adapter type, or asks peft to import code.
    """
    import peft

    path = Path(directory) / "adapter_config.json"
    try:
        if path.stat().st_size > _MAX_ADAPTER_CONFIG_BYTES:
            raise ValueError(f"larger than {_MAX_ADAPTER_CONFIG_BYTES} bytes")
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise ModelLoadError(
            f"{path}: not a readable adapter config ({(str(err).splitlines() or [''])[0]}). The directory is "
            "damaged; re-download it or re-run training."
        ) from None
    if not isinstance(raw, dict) or raw.get("peft_type") not in _SAVED_TYPES:
        found = raw.get("peft_type") if isinstance(raw, dict) else type(raw).__name__
        raise ModelLoadError(
            f"{path}: `peft_type` is {found!r}; hftl loads the adapters it writes ({', '.join(_SAVED_TYPES)}). "
            "Use a model directory written by hftl."
        )
    config_class = getattr(peft, _SAVED_TYPES[raw["peft_type"]])
    defaults = {f.name: f.default for f in dataclasses.fields(config_class) if f.init}
    field = peft_code_field(raw)
    if field:
        raise ModelLoadError(
            f"{path}: `{field}` is {raw[field]!r}, but {_REFUSED[field]}. hftl refuses it in a model directory; "
            "use an adapter without it."
        )
    unknown = sorted(set(raw) - set(defaults) - {"peft_type"})
    if unknown:
        logger.warning(
            "%s: ignoring fields this peft %s does not know: %s", path, peft.__version__, ", ".join(unknown)
        )
    fields = {k: v for k, v in raw.items() if k in defaults and k not in _REFUSED}
    try:
        return config_class(**fields)
    except (TypeError, ValueError) as err:
        raise ModelLoadError(
            f"{path}: peft.{config_class.__name__} rejects it ({(str(err).splitlines() or [''])[0]}). The "
            "directory is damaged; re-download it or re-run training."
        ) from None


class _PeftSignature(type):
    """Gives a peft adapter class the signature of its peft config, so ``hftl validate`` (which checks a
    node's keys against its component's signature) knows every field before any weights load.

    Computed on first use: importing :mod:`hftl.adapters` does not import peft.
    """

    @property
    def __signature__(cls) -> inspect.Signature:
        own = list(inspect.signature(cls.__init__).parameters.values())[1:]
        own = [p for p in own if p.kind is not p.VAR_KEYWORD]
        names = {p.name for p in own}
        passed = [
            inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=default)
            for name, default in cls.peft_fields().items()
            if name not in names and name not in cls.aliases.values()  # `lora_alpha`: hftl's `alpha`
        ]
        return inspect.Signature(own + passed)


class _PeftAdapter(Adapter, metaclass=_PeftSignature):
    """An adapter that is one peft config: hftl's arguments, and every other field of that config as is.

    Subclasses name their config (``config_class``) and hftl's spellings of its fields (``aliases``).
    """

    kind = "peft"
    config_class: ClassVar[str]  # the peft config, e.g. "LoraConfig"
    aliases: ClassVar[dict[str, str]] = {}  # hftl's argument -> peft's field, e.g. alpha -> lora_alpha

    @classmethod
    def peft_fields(cls) -> dict[str, Any]:
        """The fields of the peft config a config may set, with peft's defaults (``hftl validate`` uses them)."""
        import peft

        config = getattr(peft, cls.config_class)
        return {
            f.name: f.default if f.default is not dataclasses.MISSING else None
            for f in dataclasses.fields(config)
            if f.name not in _MANAGED and f.name not in _REFUSED and f.init
        }

    def _peft_arguments(self, given: dict[str, Any]) -> dict[str, Any]:
        """``given`` (the keyword arguments beyond hftl's own), checked against the peft config's fields."""
        fields = self.peft_fields()
        for name in given:
            if name in _REFUSED:
                raise ConfigError(f"`adapter.{name}` is not accepted: {_REFUSED[name]}. Remove it.")
            if name in _MANAGED:
                raise ConfigError(
                    f"`adapter.{name}` is set by hftl (a trainable adapter on any encoder); remove it."
                )
            if name not in fields:
                close = difflib.get_close_matches(name, list(fields), n=1)
                hint = f" Did you mean `{close[0]}`?" if close else ""
                hftl_names = {peft_name: own for own, peft_name in self.aliases.items()}
                shown = [f"{f} (as `{hftl_names[f]}`)" if f in hftl_names else f for f in fields]
                raise ConfigError(
                    f"`adapter.{name}` is not an argument of hftl.adapters.{type(self).__name__} nor a field of "
                    f"peft.{self.config_class}.{hint} Its fields: {', '.join(shown)} ({PEFT_DOCS})."
                )
        for own, field_name in self.aliases.items():
            if field_name in given:
                raise ConfigError(
                    f"`adapter.{field_name}` and `adapter.{own}` are the same setting; give only `{own}`."
                )
        return dict(given)

    def peft_config(self, model_type: str):
        """The peft config for an encoder of ``model_type`` (default target modules filled in)."""
        raise NotImplementedError

    def _skip_unused(self, config: Any, backbone: Any) -> Any:
        """``config`` with :data:`UNUSED_MODULES` as ``exclude_modules`` when its targets match such a module
        of ``backbone`` (only then: peft warns about an exclusion that excludes nothing) and the config does
        not set ``exclude_modules`` itself."""
        from peft.tuners.tuners_utils import check_target_module_exists

        if "exclude_modules" in self.peft_kwargs:
            return config
        unused = [name for name, _ in backbone.named_modules() if re.fullmatch(UNUSED_MODULES, name)]
        if config.target_modules == "all-linear" or any(
            check_target_module_exists(config, n) for n in unused
        ):
            config.exclude_modules = UNUSED_MODULES if unused else None
        return config

    def _check_config(self) -> None:
        """Builds the peft config once now, so a value peft rejects is a ConfigError before any weights load."""
        try:
            self.peft_config("bert" if self.target_modules is None else "")
        except (TypeError, ValueError) as err:
            reason = (str(err).splitlines() or [type(err).__name__])[0]
            raise ConfigError(
                f"`adapter`: peft.{self.config_class} rejects these settings: {reason}"
            ) from None

    def apply(self, encoder: Encoder) -> Encoder:
        from peft import get_peft_model

        if encoder.from_config:
            raise ConfigError(
                f"`adapter`: {type(self).__name__} needs pretrained weights, but `encoder.model` is a config "
                "(random init). Use hftl.adapters.FullFinetune to train it from scratch."
            )
        from peft.utils.error import NoMatchingPeftModuleError

        config = self._skip_unused(self.peft_config(encoder.backbone.config.model_type), encoder.backbone)
        try:  # task_type None: a plain PeftModel whose forward passes any inputs (input_values, pixel_values)
            with peft_wrapping():
                encoder.backbone = get_peft_model(encoder.backbone, config)
        except NoMatchingPeftModuleError:
            targets = config.target_modules
            shown = targets if isinstance(targets, str) else sorted(targets)
            raise ConfigError(
                f"`adapter.target_modules` {shown} match no module of {encoder.name_or_path!r} that its forward "
                "uses (the pooler is skipped: hftl's pooling never uses it). Name modules of its layers (print "
                "the model to see them)."
            ) from None
        return encoder


class Lora(_PeftAdapter):
    """Low-rank adaptation (Hu et al. 2021, arXiv:2106.09685) through ``peft.LoraConfig``.

    Every field of ``peft.LoraConfig`` is accepted as is (``use_dora``, ``modules_to_save``,
    ``layers_to_transform``, ``init_lora_weights``, ...: peft's documentation applies); the arguments below
    are hftl's (``alpha`` and ``dropout`` are peft's ``lora_alpha`` and ``lora_dropout``, with hftl's defaults). An unknown name is a :class:`~hftl.errors.ConfigError` listing
    the fields. A backbone's pooler, which hftl's pooling never uses, is not wrapped (:data:`UNUSED_MODULES`)
    unless the config sets ``exclude_modules``.

    Args:
        r: rank of the update ``ΔW = B A`` (``A: r×in``, ``B: out×r``).
        alpha: scale (peft's ``lora_alpha``); the update is multiplied by ``alpha / r``.
        dropout: dropout on the LoRA input (peft's ``lora_dropout``). 0 by default, as in peft: with
            dropout, peft runs the LoRA branch on a dropped-out copy of every wrapped layer's input, which
            cost 100–160 ms per forward of all-MiniLM-L6-v2 at batch 32, length 128 on CPU (issue 17). Set
            it (0.1 was hftl's earlier default) where the extra regularization is worth that time.
        target_modules: module names to wrap (or a regex, or ``all-linear``); ``None`` = hftl's default for
            the architecture (:data:`LORA_TARGETS`).
        bias: which biases train: ``none``, ``all`` or ``lora_only``.
        use_rslora: scale by ``alpha / sqrt(r)`` (rank-stabilized LoRA).
        **peft_kwargs: any other ``peft.LoraConfig`` field, e.g. ``use_dora=True``.

    Example:
        >>> Lora(r=4, use_dora=True, modules_to_save=["classifier"]).peft_config("bert").use_dora
        True
    """

    config_class = "LoraConfig"
    aliases = {"alpha": "lora_alpha", "dropout": "lora_dropout"}

    def __init__(
        self,
        *,
        r: int = 8,
        alpha: int = 16,
        dropout: float = 0.0,
        target_modules: list[str] | str | None = None,
        bias: Literal["none", "all", "lora_only"] = "none",
        use_rslora: bool = False,
        **peft_kwargs: Any,
    ):
        if r < 1:
            raise ConfigError(f"`adapter.r` must be >= 1; got {r}")
        self.r, self.alpha, self.dropout, self.target_modules = r, alpha, dropout, target_modules
        self.bias, self.use_rslora = bias, use_rslora
        self.peft_kwargs = self._peft_arguments(peft_kwargs)
        self._check_config()

    def peft_config(self, model_type: str):
        from peft import LoraConfig

        return LoraConfig(
            r=self.r,
            lora_alpha=self.alpha,
            lora_dropout=self.dropout,
            target_modules=self.target_modules or default_target_modules(model_type, "lora"),
            bias=self.bias,
            use_rslora=self.use_rslora,
            **self.peft_kwargs,
        )


class IA3(_PeftAdapter):
    """(IA)^3: learned rescaling of keys, values and feed-forward activations (Liu et al. 2022), through
    ``peft.IA3Config``; every other field of it (``modules_to_save``, ``init_ia3_weights``, ...) is accepted
    as is. A backbone's pooler is not rescaled (:data:`UNUSED_MODULES`).

    Args:
        target_modules: modules to rescale; ``None`` = hftl's default for the architecture.
        feedforward_modules: the subset of ``target_modules`` that are feed-forward layers
            (scaled on their input rather than output).
        **peft_kwargs: any other ``peft.IA3Config`` field.
    """

    config_class = "IA3Config"

    def __init__(
        self,
        *,
        target_modules: list[str] | None = None,
        feedforward_modules: list[str] | None = None,
        **peft_kwargs: Any,
    ):
        self.target_modules, self.feedforward_modules = target_modules, feedforward_modules
        self.peft_kwargs = self._peft_arguments(peft_kwargs)
        self._check_config()

    def peft_config(self, model_type: str):
        from peft import IA3Config

        if self.target_modules is None:
            if model_type not in IA3_TARGETS:
                default_target_modules(model_type, "ia3")  # raises the explanatory error
            targets, feedforward = IA3_TARGETS[model_type]
        else:
            targets, feedforward = self.target_modules, self.feedforward_modules or []
        return IA3Config(target_modules=targets, feedforward_modules=feedforward, **self.peft_kwargs)
