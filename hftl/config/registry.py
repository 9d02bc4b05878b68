"""What a config may build: the registry of ``_component_`` kinds.

A config is data, possibly written by someone else, so a ``_component_`` path is not an import
statement: it resolves only to a class of a registered kind, named directly in a module of that kind's
namespace (``torch.optim.AdamW``, ``hftl.adapters.Lora``, ``transformers.ViTConfig``). The path may not
walk through a module attribute (``hftl.data.loading.os.system``), a private name (``x._y``) or a
class attribute (``X.from_pretrained``); the object found must be callable, defined in the kind's
package (``obj.__module__``) and accepted by the kind's rule. ``--allow-any-component`` on the user's
own command line is the only way past this.

hftl's own components are listed by kind in :data:`HFTL_COMPONENTS`. To make a new class buildable
from YAML, add its public import path there; nothing else is needed. Keep the list to classes (and
factories returning modules) built from plain values: never a function that calls a callable argument
or returns an arbitrary callable.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import importlib
import inspect
import types
from collections.abc import Callable
from typing import Any

HFTL_COMPONENTS: dict[str, tuple[str, ...]] = {
    "encoder": (
        "hftl.encoders.TextEncoder",
        "hftl.encoders.AudioEncoder",
        "hftl.encoders.VisionEncoder",
        "hftl.embeddings.ContextTextEncoder",
        "hftl.embeddings.ContextAudioEncoder",
    ),
    "encoder config": (
        "hftl.encoders.LeNetConfig",
        "hftl.encoders.SpeechCNNTransformerConfig",
    ),
    "pooling": (
        "hftl.encoders.Pooling",
        "hftl.embeddings.ScalarMix",
        "hftl.embeddings.ContextPooler",
    ),
    "adapter": (
        "hftl.adapters.FullFinetune",
        "hftl.adapters.Frozen",
        "hftl.adapters.Lora",
        "hftl.adapters.IA3",
    ),
    "head": (
        "hftl.models.LinearHead",
        "hftl.models.MLPHead",
        "hftl.losses.DomainDiscriminator",
    ),
    "adaptation method": (
        "hftl.adaptation.SourceOnly",
        "hftl.adaptation.TargetOracle",
        "hftl.adaptation.DANN",
        "hftl.adaptation.CDAN",
        "hftl.adaptation.MDD",
        "hftl.adaptation.MCC",
        "hftl.adaptation.DAN",
        "hftl.adaptation.JAN",
        "hftl.adaptation.CORAL",
        "hftl.adaptation.SelfTraining",
        "hftl.adaptation.ADDA",
        "hftl.adaptation.InformationMaximization",
        "hftl.adaptation.Consistency",
        "hftl.adaptation.ImportanceWeighting",
        "hftl.adaptation.UDALM",
    ),
    "loss": (
        "hftl.losses.DomainAdversarialLoss",
        "hftl.losses.ConditionalDomainAdversarialLoss",
        "hftl.losses.CorrelationAlignmentLoss",
        "hftl.losses.MinimumClassConfusionLoss",
        "hftl.losses.MarginDisparityDiscrepancy",
        "hftl.losses.MultipleKernelMaximumMeanDiscrepancy",
        "hftl.losses.JointMultipleKernelMaximumMeanDiscrepancy",
        "hftl.losses.ConfidenceThresholdSelfTraining",
        "hftl.losses.InformationMaximizationLoss",
        "hftl.losses.ConsistencyLoss",
        "hftl.losses.ImportanceWeighting",
        "hftl.losses.KnowledgeDistillationLoss",
        "hftl.losses.HintLoss",
        "hftl.losses.LwFLoss",
        "hftl.losses.TripletLoss",
        "hftl.losses.BatchHardTripletLoss",
        "hftl.losses.CosineSimilarityLoss",
        "hftl.losses.ContrastiveLoss",
        "hftl.losses.GradientReverseLayer",
        "hftl.losses.GaussianKernel",
        "hftl.losses.gaussian_kernels",
    ),
    "lr scheduler": ("hftl.training.WarmupSchedule",),
    "data": ("hftl.data.ClassificationData",),
    "augmentation": (
        "hftl.data.AudioAugment",
        "hftl.data.AudioAugmentConfig",
    ),
}
"""hftl's own components by kind, by the public path configs use."""

# torch schedulers that exist only to call a function given to them: a config has no functions to give
_CALLABLE_TAKERS = frozenset({"LambdaLR", "MultiplicativeLR"})


@dataclasses.dataclass(frozen=True)
class Kind:
    """One kind of object a config may build.

    Args:
        name: what it is called in messages, with an example path (``"optimizers (`torch.optim.X`)"``).
        namespaces: module prefixes its paths start with (``("torch.optim",)``); the resolver imports
            nothing outside the namespaces of all kinds.
        package: ``obj.__module__`` must start with this.
        accepts: the rule an object found there must pass.
    """

    name: str
    namespaces: tuple[str, ...]
    package: str
    accepts: Callable[[Any], bool]


def _torch_optimizer(obj: Any) -> bool:
    import torch

    return inspect.isclass(obj) and issubclass(obj, torch.optim.Optimizer)


def _torch_scheduler(obj: Any) -> bool:
    from torch.optim import lr_scheduler

    bases = (lr_scheduler.LRScheduler, lr_scheduler.ReduceLROnPlateau)
    return inspect.isclass(obj) and issubclass(obj, bases) and obj.__name__ not in _CALLABLE_TAKERS


def _torch_module(obj: Any) -> bool:
    import torch

    return inspect.isclass(obj) and issubclass(obj, torch.nn.Module)


def _transformers_config(obj: Any) -> bool:
    from transformers import PretrainedConfig

    return inspect.isclass(obj) and issubclass(obj, PretrainedConfig)


def _transformers_feature_extractor(obj: Any) -> bool:
    from transformers import FeatureExtractionMixin, ImageProcessingMixin

    return inspect.isclass(obj) and issubclass(obj, FeatureExtractionMixin | ImageProcessingMixin)


def _hftl_registered(obj: Any) -> bool:
    """Whether ``obj`` is one of :data:`HFTL_COMPONENTS` (imports only the entries of the same name)."""
    name = getattr(obj, "__name__", None)
    return any(obj is _import_path(p) for p in registered_hftl_paths() if p.rpartition(".")[2] == name)


KINDS: tuple[Kind, ...] = (
    Kind(
        "the encoders, adapters, heads, losses, methods and data sources in `hftl.config.registry.HFTL_COMPONENTS`",
        ("hftl",),
        "hftl.",
        _hftl_registered,
    ),
    Kind("optimizers (`torch.optim.X`)", ("torch.optim",), "torch.optim", _torch_optimizer),
    Kind(
        "LR schedulers (`torch.optim.lr_scheduler.X`)",
        ("torch.optim.lr_scheduler", "torch.optim"),
        "torch.optim",
        _torch_scheduler,
    ),
    Kind("layers, activations and losses (`torch.nn.X`)", ("torch.nn",), "torch.nn.modules.", _torch_module),
    Kind(
        "model configs (`transformers.XConfig`)",
        ("transformers",),
        "transformers.models.",
        _transformers_config,
    ),
    Kind(
        "feature extractors and image processors (`transformers.X`)",
        ("transformers",),
        "transformers.models.",
        _transformers_feature_extractor,
    ),
)
"""Every kind a config may build; a path that no kind accepts is refused."""

ALLOWED_PREFIXES: tuple[str, ...] = tuple(
    dict.fromkeys(ns.split(".")[0] for k in KINDS for ns in k.namespaces)
)
"""Packages components come from (``hftl``, ``torch``, ``transformers``)."""


@functools.cache
def _import_path(path: str) -> Any:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def registered_hftl_paths() -> list[str]:
    """Every registered hftl path, in table order."""
    return [p for paths in HFTL_COMPONENTS.values() for p in paths]


def _namespace(path: str) -> str | None:
    """The longest namespace ``path`` lies in, or None."""
    found = [ns for k in KINDS for ns in k.namespaces if path == ns or path.startswith(ns + ".")]
    return max(found, key=len) if found else None


def _kinds_of(namespace: str) -> list[Kind]:
    return [k for k in KINDS if namespace in k.namespaces]


def _accepted_kind(obj: Any, namespace: str) -> Kind | None:
    for kind in _kinds_of(namespace):
        module, qualname = getattr(obj, "__module__", None) or "", getattr(obj, "__qualname__", "")
        if not module.startswith(kind.package) or not qualname.isidentifier() or qualname.startswith("_"):
            continue  # defined elsewhere (a re-export), nested, or private
        if kind.accepts(obj):
            return kind
    return None


def _close(word: str, candidates: list[str], n: int, cutoff: float) -> list[str]:
    """``difflib`` matches, a different-case spelling first (``Dann`` finds ``DANN``)."""
    by_lower: dict[str, list[str]] = {}
    for c in candidates:
        by_lower.setdefault(c.lower(), []).append(c)
    found = [
        *by_lower.get(word.lower(), []),
        *difflib.get_close_matches(word, candidates, n=n, cutoff=cutoff),
    ]
    found += [
        c
        for f in difflib.get_close_matches(word.lower(), list(by_lower), n=n, cutoff=cutoff)
        for c in by_lower[f]
    ]
    return list(dict.fromkeys(found))[:n]


def _suggest(path: str, owner: Any, name: str, namespace: str) -> str:
    """` did you mean ...?` among registered names close to ``path``, or ``""``."""
    if namespace == "hftl":
        close = _close(path, registered_hftl_paths(), n=3, cutoff=0.75)
    else:  # check only a few close names: getattr on `transformers` imports the model's module
        names = [n for n in dir(owner) if not n.startswith("_")]
        prefix = path.rpartition(".")[0]
        close = [
            f"{prefix}.{n}"
            for n in _close(name, names, n=8, cutoff=0.6)
            if _safe_accepted(owner, n, namespace)
        ][:3]
    return f"; did you mean {', '.join(f'`{c}`' for c in close)}?" if close else ""


def _safe_accepted(owner: Any, name: str, namespace: str) -> bool:
    try:
        return _accepted_kind(getattr(owner, name), namespace) is not None
    except Exception:  # a lazy attribute whose import fails
        return False


def _what_is_registered(package: str) -> str:
    """``"from torch a config may build only optimizers (...), ... and ..."``."""
    kinds = [k.name for k in KINDS if k.namespaces[0].split(".")[0] == package]
    listed = kinds[0] if len(kinds) == 1 else f"{', '.join(kinds[:-1])} and {kinds[-1]}"
    return f"from {package} a config may build only {listed}"


def _import_longest(path: str, namespace: str) -> tuple[types.ModuleType | None, str, str | None]:
    """Import the longest module prefix of ``path`` inside ``namespace``: ``(module, its name, problem)``."""
    parts = path.split(".")
    for i in range(len(parts), len(namespace.split(".")) - 1, -1):
        name = ".".join(parts[:i])
        try:
            return importlib.import_module(name), name, None
        except ModuleNotFoundError as e:
            if e.name is None or not (name == e.name or name.startswith(e.name + ".")):
                return None, name, f"importing `{name}` for `{path}` failed: {e}"
        except Exception as e:  # the module exists but raised while importing
            return None, name, f"importing `{name}` for `{path}` failed: {type(e).__name__}: {e}"
    return None, namespace, f"cannot import `{path}`: there is no module named `{namespace}`"


def resolve_registered(path: str) -> tuple[Callable | None, str | None]:
    """The registered class named by ``path``: ``(obj, None)``, or ``(None, problem)`` naming the fix."""
    fix = "pass `--allow-any-component` to run code from other modules"
    package, namespace = path.split(".")[0], _namespace(path)
    if package not in ALLOWED_PREFIXES:
        return None, f"`{path}` is not from an allowed package ({', '.join(ALLOWED_PREFIXES)}); {fix}"
    if namespace is None:
        return None, f"`{path}` is not a registered component: {_what_is_registered(package)}; or {fix}"
    private = [p for p in path.split(".") if p.startswith("_")]
    if private:
        return (
            None,
            f"`{path}` goes through the private name `{private[0]}`: a config names public classes; or {fix}",
        )
    module, module_name, problem = _import_longest(path, namespace)
    if problem:
        return None, problem
    rest = path[len(module_name) + 1 :].split(".") if path != module_name else []
    if not rest:
        return None, f"`{path}` is a module, not a component; name a class in it, e.g. `{path}.ClassName`"
    if not hasattr(module, rest[0]):
        hint = _suggest(path, module, rest[0], namespace)
        return None, f"cannot import `{path}`: `{module_name}` has no attribute `{rest[0]}`{hint}"
    obj = getattr(module, rest[0])
    if isinstance(obj, types.ModuleType):
        return None, (
            f"`{path}`: `{module_name}.{rest[0]}` is the module `{obj.__name__}` imported there, not a component; "
            f"{_what_is_registered(package)}; or {fix}"
        )
    if len(rest) > 1:
        return None, (
            f"`{path}`: `{'.'.join(rest[1:])}` is an attribute of `{module_name}.{rest[0]}`; a component is "
            f"the class itself (`{module_name}.{rest[0]}`), built with the node's keys as arguments"
        )
    if not callable(obj):
        return None, f"`{path}` is not callable (it is a {type(obj).__name__})"
    if _accepted_kind(obj, namespace) is None:
        return None, f"`{path}` is not a registered component: {_what_is_registered(package)}; or {fix}"
    return obj, None


def kind_of(obj: Any) -> str | None:
    """The registered kind of ``obj`` (``"optimizers (`torch.optim.X`)"``), or None if a config may not build it."""
    namespace = _namespace(getattr(obj, "__module__", None) or "")
    kind = _accepted_kind(obj, namespace) if namespace else None
    return kind.name if kind else None
