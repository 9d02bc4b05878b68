"""What a model directory may ask hftl to build: registered classes with plain keyword values.

``hftl_model.json`` (format 2) describes the encoder and the head as ``{"class": NAME, "kwargs": {...}}``.
``NAME`` must be a key of :data:`ENCODERS` / :data:`HEADS` (or one of the listed qualified names for it);
hftl imports only the modules written in those tables, never a path taken from the file. Every keyword
must be a field of that class in :data:`FIELDS`, with a JSON scalar of the listed type, range or choice;
anything else is refused with a :class:`~hftl.errors.ModelLoadError` naming the file and the key. The
weights, the model/processor and ``trust_remote_code`` are never keywords: the loader supplies them.

Format-1 directories (hftl before this schema) described the encoder and head only as ``_component_``
nodes of ``config.yaml``; :func:`legacy_spec` maps such a node onto the same tables.

Example:
    >>> describe_head(LinearHead(384, 2), {"_component_": "hftl.models.LinearHead", "dropout": 0.2})
    {'class': 'LinearHead', 'kwargs': {'dropout': 0.2}}
    >>> cls, kwargs = resolve_spec({"class": "LinearHead", "kwargs": {"dropout": 0.2}}, "head", where="m.json")
"""

from __future__ import annotations

import importlib
import inspect
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from hftl.errors import ConfigError, ModelLoadError

logger = logging.getLogger(__name__)

Kind = Literal["encoder", "head"]


@dataclass(frozen=True)
class Field:
    """A keyword value a model directory may set: its JSON type and its allowed choices or range."""

    types: tuple[type, ...]
    choices: tuple[str, ...] = ()
    low: float | None = None
    high: float | None = None
    nullable: bool = False

    def describe(self) -> str:
        if self.choices:
            text = "one of " + ", ".join(self.choices)
        elif self.types == (bool,):
            text = "true or false"
        else:
            kind = "an integer" if self.types == (int,) else "a number"
            text = f"{kind} in [{self.low:g}, {self.high:g}]" if self.low is not None else kind
        return text + (" or null" if self.nullable else "")


_INT, _NUM = (int,), (int, float)
# Every keyword any registered class may receive from a model directory. Bounds keep a tampered file from
# asking for absurd allocations (a 10^9-wide layer) before any weight is compared.
FIELDS: dict[str, Field] = {
    "pooling": Field((str,), choices=("cls", "mean", "attention", "stats")),
    "layer": Field(_INT, low=-1025, high=1024),
    "max_length": Field(_INT, low=1, high=1_048_576),
    "pretokenize": Field((bool,)),
    "max_duration": Field(_NUM, low=0, high=86_400, nullable=True),
    "freeze_feature_encoder": Field((bool,)),
    "seed": Field(_INT, low=-(2**63), high=2**63 - 1),
    "normalize": Field((str,), choices=("none", "peak", "rms")),
    "token_head": Field((str,), choices=("mean", "attention", "transformer", "bilstm")),
    "hidden_features": Field(_INT, low=1, high=65_536),
    "num_heads": Field(_INT, low=1, high=1024),
    "num_layers": Field(_INT, low=0, high=64),
    "dropout": Field(_NUM, low=0, high=1),
    "layer_norm": Field((bool,)),
    "activation": Field((str,), choices=("gelu", "relu", "tanh")),
}


@dataclass(frozen=True)
class Registered:
    """A class a model directory may name: where hftl defines it and the keywords it may set."""

    module: str
    fields: tuple[str, ...]
    aliases: tuple[str, ...] = ()


_TEXT = ("max_length", "pretokenize")
_AUDIO = ("max_duration", "freeze_feature_encoder", "seed", "normalize")
_CONTEXT = ("token_head", "hidden_features", "num_heads", "dropout", "layer_norm")
ENCODERS: dict[str, Registered] = {
    "TextEncoder": Registered("hftl.encoders.text", ("pooling", "layer", *_TEXT), ("hftl.encoders.TextEncoder",)),
    "AudioEncoder": Registered("hftl.encoders.audio", ("pooling", "layer", *_AUDIO), ("hftl.encoders.AudioEncoder",)),
    "VisionEncoder": Registered("hftl.encoders.vision", ("pooling", "layer"), ("hftl.encoders.VisionEncoder",)),
    "ContextTextEncoder": Registered(
        "hftl.embeddings.encoders", (*_TEXT, *_CONTEXT), ("hftl.embeddings.ContextTextEncoder",)
    ),
    "ContextAudioEncoder": Registered(
        "hftl.embeddings.encoders", (*_AUDIO, *_CONTEXT), ("hftl.embeddings.ContextAudioEncoder",)
    ),
}  # fmt: skip
HEADS: dict[str, Registered] = {
    "LinearHead": Registered("hftl.models.heads", ("dropout",), ("hftl.models.LinearHead",)),
    "MLPHead": Registered(
        "hftl.models.heads",
        ("hidden_features", "num_layers", "dropout", "activation"),
        ("hftl.models.MLPHead",),
    ),
}
TABLES: dict[str, dict[str, Registered]] = {"encoder": ENCODERS, "head": HEADS}
# What an encoder stores about itself: read from the built object when saving (it is what was trained).
_OBJECT_ATTRIBUTES = ("layer", "max_length", "pretokenize", "max_duration", "seed", "normalize")
# Keys of a format-1 `_component_` node that are not rebuilding values (the loader supplies or drops them).
LEGACY_IGNORED = frozenset({"_component_", "model", "processor", "revision", "trust_remote_code", "freeze_modules", "augment"})  # fmt: skip


def _lookup(kind: Kind, name: Any) -> tuple[str, Registered] | None:
    if not isinstance(name, str):
        return None
    for key, reg in TABLES[kind].items():
        if name in (key, f"{reg.module}.{key}", *reg.aliases):
            return key, reg
    return None


def registered_class(kind: Kind, name: str) -> type:
    """Imports the class registered as ``name`` (a key of the table: the module comes from the table)."""
    key, reg = _lookup(kind, name) or (None, None)
    if reg is None:
        raise KeyError(name)
    return getattr(importlib.import_module(reg.module), key)


def _name_of(kind: Kind, cls: type) -> str | None:
    for key, reg in TABLES[kind].items():
        if cls.__module__ == reg.module and cls.__qualname__ == key:
            return key
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def check_value(key: str, value: Any, *, where: str) -> Any:
    """Returns ``value`` when it fits :data:`FIELDS` ``[key]``; raises ModelLoadError naming ``where`` otherwise."""
    spec = FIELDS[key]
    if value is None and spec.nullable:
        return None
    if spec.types == (bool,):
        ok = isinstance(value, bool)
    else:
        ok = isinstance(value, spec.types) and not isinstance(value, bool)
        if ok and isinstance(value, float):
            ok = math.isfinite(value)
        if ok and spec.choices:
            ok = value in spec.choices
        if ok and spec.low is not None:
            ok = spec.low <= value <= spec.high
    if not ok:
        raise ModelLoadError(
            f"{where}: `{key}` is {_short(value)}; allowed: {spec.describe()}. The model directory is damaged "
            "or was edited by hand; re-download it or re-run training."
        )
    return value


def resolve_spec(spec: Any, kind: Kind, *, where: str) -> tuple[type, dict[str, Any]]:
    """Checks a ``{"class", "kwargs"}`` spec against the tables; returns the class and its checked keywords.

    Raises:
        ModelLoadError: the spec is not a mapping of exactly ``class`` and ``kwargs``, names a class outside
            the table, or has a keyword that is unknown for that class or of the wrong type.
    """
    if (
        not isinstance(spec, Mapping)
        or set(spec) != {"class", "kwargs"}
        or not isinstance(spec["kwargs"], Mapping)
    ):
        raise ModelLoadError(
            f"{where}: `{kind}` must be an object with exactly `class` and `kwargs` (an object); got "
            f"{_short(spec)}. The model directory is damaged; re-download it or re-run training."
        )
    found = _lookup(kind, spec["class"])
    if found is None:
        names = ", ".join(TABLES[kind])
        raise ModelLoadError(
            f"{where}: `{kind}.class` = {_short(spec['class'])} is not a registered hftl {kind} class "
            f"(a model directory may name only {names}; hftl never imports a class a file names). Use a model "
            "saved by hftl, or rebuild this one in your own code."
        )
    name, reg = found
    kwargs = {}
    for key, value in spec["kwargs"].items():
        if key not in reg.fields:
            raise ModelLoadError(
                f"{where}: `{kind}.kwargs.{key}` is not a value {name} takes from a model directory (allowed: "
                f"{', '.join(reg.fields)}). The directory is damaged or was edited; re-download it."
            )
        kwargs[key] = check_value(key, value, where=f"{where} `{kind}.kwargs`")
    return registered_class(kind, name), kwargs


def build(spec: Any, kind: Kind, *, where: str, **runtime: Any) -> Any:
    """Builds the class ``spec`` names with its checked keywords plus ``runtime`` ones (model, sizes, ...).

    Raises:
        ModelLoadError: the spec is refused (see :func:`resolve_spec`), or the constructor refuses a value.
    """
    cls, kwargs = resolve_spec(spec, kind, where=where)
    try:
        return cls(**runtime, **kwargs)
    except (ConfigError, ValueError, TypeError) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(
            f"{where}: the {kind}'s values are refused ({reason}). Re-download the model."
        ) from None


def legacy_spec(node: Any, kind: Kind, *, where: str) -> dict[str, Any]:
    """The format-2 spec of a format-1 ``_component_`` node read as plain YAML data (nothing is built).

    Keys the loader supplies itself (:data:`LEGACY_IGNORED`: model, processor, revision, trust_remote_code,
    ...) are dropped; any other key must be a field of the registered class.
    """
    if not isinstance(node, Mapping) or "_component_" not in node:
        raise ModelLoadError(
            f"{where}: `{kind}` is not a `_component_` node; this format-1 model directory cannot be rebuilt. "
            "Re-run training with this hftl version."
        )
    name = _lookup(kind, node["_component_"])
    kwargs = {k: v for k, v in node.items() if k not in LEGACY_IGNORED}
    spec = {"class": name[0] if name else node["_component_"], "kwargs": kwargs}
    resolve_spec(spec, kind, where=where)  # every refusal reads the same as for format 2
    return spec


def _defaults(cls: type) -> dict[str, Any]:
    """Keyword defaults of ``cls`` and of the classes its ``**kwargs`` reach (its MRO)."""
    found: dict[str, Any] = {}
    for klass in cls.__mro__:
        init = klass.__dict__.get("__init__")
        if init is None:
            continue
        for p in inspect.signature(init).parameters.values():
            if p.default is not inspect.Parameter.empty:
                found.setdefault(p.name, p.default)
    return found


def _plain(value: Any) -> Any:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value


def _describe(kind: Kind, obj: Any, node: Any, actual: dict[str, Any]) -> dict[str, Any]:
    cls = type(obj)
    name = _name_of(kind, cls)
    if name is None:
        logger.warning(
            "%s %s.%s is not a registered hftl %s class: its weights are saved, but hftl.load cannot rebuild "
            "it (register it in hftl.models.spec or load the weights in your own code).",
            kind.capitalize(), cls.__module__, cls.__qualname__, kind,
        )  # fmt: skip
        return {"class": f"{cls.__module__}.{cls.__qualname__}", "kwargs": {}}
    defaults = _defaults(cls)
    kwargs = {}
    for key in TABLES[kind][name].fields:
        if key in actual:
            value = actual[key]
        elif isinstance(node, Mapping) and key in node:
            value = _plain(node[key])  # resolves this one value of the user's own config, nothing else
        elif key in defaults:
            value = defaults[key]
        else:
            continue
        kwargs[key] = check_value(key, value, where=f"saving {name}")
    return {"class": name, "kwargs": kwargs}


def describe_encoder(encoder: Any, node: Any = None) -> dict[str, Any]:
    """The spec of a built encoder: what it stores about itself, then its config ``node``, then defaults."""
    actual = {k: getattr(encoder, k) for k in _OBJECT_ATTRIBUTES if k in vars(encoder)}
    method = getattr(getattr(encoder, "pool", None), "method", None)
    if method is not None:
        actual["pooling"] = method
    return _describe("encoder", encoder, node, actual)


def describe_head(head: Any, node: Any = None) -> dict[str, Any]:
    """The spec of a built head: its config ``node``'s values for the head's fields, then defaults."""
    return _describe("head", head, node, {})


def component_node(spec: Mapping[str, Any], kind: Kind, **extra: Any) -> dict[str, Any]:
    """A checked spec as a config ``_component_`` node (for the config record of a run that reuses it)."""
    name, reg = _lookup(kind, spec["class"])  # type: ignore[misc]
    return {
        "_component_": reg.aliases[0] if reg.aliases else f"{reg.module}.{name}",
        **extra,
        **spec["kwargs"],
    }
