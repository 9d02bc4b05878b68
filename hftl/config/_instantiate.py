"""Building objects from ``_component_`` nodes, limited to an allow-list of modules."""

from __future__ import annotations

import difflib
import importlib
import re
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hftl.errors import ConfigError, HftlError

ALLOWED_PREFIXES: tuple[str, ...] = ("hftl", "torch", "transformers", "peft", "accelerate", "datasets")

_ALLOW_FLAG = "--allow-any-component"


def is_allowed(path: str) -> bool:
    """Whether ``path`` lies in an allowed package (``torch.x`` is, ``torchx.y`` is not)."""
    return any(path == p or path.startswith(p + ".") for p in ALLOWED_PREFIXES)


def resolve_component(path: Any, *, allow_any: bool = False) -> tuple[Callable | None, str | None]:
    """Import the callable named by ``path``; return ``(callable, None)`` or ``(None, problem)``."""
    if not isinstance(path, str) or not all(part.isidentifier() for part in path.split(".")):
        return None, f"`_component_` must be a dotted import path like `torch.optim.AdamW`, got {path!r}"
    if not allow_any and not is_allowed(path):
        return None, (
            f"`{path}` is not from an allowed package ({', '.join(ALLOWED_PREFIXES)}); "
            f"pass `{_ALLOW_FLAG}` to run code from other modules"
        )
    parts = path.split(".")
    for i in range(len(parts), 0, -1):  # longest importable module prefix, then attributes
        module_name = ".".join(parts[:i])
        try:
            obj = importlib.import_module(module_name)
            break
        except ModuleNotFoundError as e:
            if e.name is None or not (module_name == e.name or module_name.startswith(e.name + ".")):
                return None, f"importing `{module_name}` for `{path}` failed: {e}"
        except Exception as e:  # the module exists but raised while importing
            return None, f"importing `{module_name}` for `{path}` failed: {type(e).__name__}: {e}"
    else:
        return None, f"cannot import `{path}`: there is no module named `{parts[0]}`"
    for j in range(i, len(parts)):
        if not hasattr(obj, parts[j]):
            owner = ".".join(parts[:j])
            names = [n for n in dir(obj) if not n.startswith("_")]
            close = difflib.get_close_matches(parts[j], names, n=3, cutoff=0.6)
            hint = f"; did you mean {', '.join(f'`{owner}.{c}`' for c in close)}?" if close else ""
            return None, f"cannot import `{path}`: `{owner}` has no attribute `{parts[j]}`{hint}"
        obj = getattr(obj, parts[j])
    if not callable(obj):
        return None, f"`{path}` is not callable (it is a {type(obj).__name__})"
    return obj, None


def get_component(path: str, *, allow_any: bool = False) -> Callable:
    """Import a callable by its dotted path, e.g. ``"torch.optim.AdamW"``.

    Args:
        path: the dotted import path.
        allow_any: also allow modules outside :data:`ALLOWED_PREFIXES`.

    Returns:
        The class or function.

    Raises:
        ConfigError: the path is outside the allow-list, cannot be imported (the message suggests the nearest
            names in the parent module), or is not callable.
    """
    obj, problem = resolve_component(path, allow_any=allow_any)
    if problem:
        raise ConfigError(problem)
    return obj


def is_component_node(value: Any) -> bool:
    """Whether ``value`` is a mapping with a ``_component_`` key."""
    return isinstance(value, Mapping | DictConfig) and "_component_" in value


def _to_plain(value: Any) -> Any:
    if OmegaConf.is_config(value):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_to_plain(v) for v in value)
    return value


def _build(value: Any, allow_any: bool) -> Any:
    """Instantiate every ``_component_`` node inside a plain value, depth first."""
    if is_component_node(value):
        return instantiate(value, allow_any=allow_any)
    if isinstance(value, Mapping):
        return {k: _build(v, allow_any) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_build(v, allow_any) for v in value)
    return value


def interpolation_problem(e: Exception) -> str:
    """The readable part of an OmegaConf resolution error (an hftl error raised by a resolver wins)."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, HftlError):
            return "; ".join(getattr(cause, "problems", None) or [str(cause)])
        cause = cause.__cause__ or cause.__context__
    first = str(e).splitlines()[0]
    return re.sub(r"^\w+ raised while resolving interpolation: ", "", first).strip('"')


def instantiate(node: DictConfig | Mapping, *args: Any, allow_any: bool = False, **kwargs: Any) -> Any:
    """Build the object described by a ``_component_`` node.

    Nested ``_component_`` nodes (also inside lists and dicts) are built first; other values become plain
    dicts and lists with interpolations resolved. ``kwargs`` (run-time values such as ``params``) override or
    extend the node's keys; ``args`` are passed positionally.

    Example:
        >>> cfg = OmegaConf.create({"_component_": "torch.nn.Linear", "out_features": 2})
        >>> instantiate(cfg, in_features=4)
        Linear(in_features=4, out_features=2, bias=True)

    Raises:
        ConfigError: the node has no ``_component_``, an interpolation fails, the component cannot be
            imported, or its constructor raised (the original exception is chained; hftl errors pass through).
    """
    if not is_component_node(node):
        found = list(node.keys()) if isinstance(node, Mapping | DictConfig) else type(node).__name__
        raise ConfigError(f"instantiate needs a node with a `_component_` key, got {found}")
    try:
        plain = _to_plain(node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"`{key}`: cannot resolve interpolation: {interpolation_problem(e)}") from e
    target = plain.pop("_component_")
    component = target if callable(target) else get_component(target, allow_any=allow_any)
    call_kwargs = {k: _build(v, allow_any) for k, v in plain.items()}
    call_kwargs.update(kwargs)
    try:
        return component(*args, **call_kwargs)
    except HftlError:
        raise
    except Exception as e:
        name = target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))
        raise ConfigError(f"building `{name}` failed: {type(e).__name__}: {e}") from e
