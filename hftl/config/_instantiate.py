"""Building objects from ``_component_`` nodes: only registered components (see :mod:`hftl.config.registry`)."""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hftl.config._trust import check_remote_code, interpolation_problem, redact
from hftl.config.registry import resolve_registered
from hftl.errors import ConfigError, HftlError

_MAX_PATH = 300  # a dotted path longer than this is not a class name


def resolve_component(path: Any, *, allow_any: bool = False) -> tuple[Callable | None, str | None]:
    """Find the callable named by ``path``; return ``(callable, None)`` or ``(None, problem)``.

    Without ``allow_any`` only registered components resolve (:func:`~hftl.config.registry.resolve_registered`);
    with it (the user's ``--allow-any-component``), any importable callable does.
    """
    if (
        not isinstance(path, str)
        or len(path) > _MAX_PATH
        or not all(part.isidentifier() for part in path.split("."))
    ):
        shown = repr(path) if len(repr(path)) <= 80 else repr(path)[:77] + "..."
        return None, f"`_component_` must be a dotted import path like `torch.optim.AdamW`, got {shown}"
    if not allow_any:
        return resolve_registered(path)
    return _import_any(path)


def _import_any(path: str) -> tuple[Callable | None, str | None]:
    """Import any callable by path (``--allow-any-component``): a module prefix, then attributes."""
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
            return None, f"cannot import `{path}`: `{'.'.join(parts[:j])}` has no attribute `{parts[j]}`"
        obj = getattr(obj, parts[j])
    if not callable(obj):
        return None, f"`{path}` is not callable (it is a {type(obj).__name__})"
    return obj, None


def get_component(path: str, *, allow_any: bool = False) -> Callable:
    """Import a callable by its dotted path, e.g. ``"torch.optim.AdamW"``.

    Args:
        path: the dotted import path.
        allow_any: allow any importable callable, not only registered components (the user's
            ``--allow-any-component``).

    Returns:
        The class (or, with ``allow_any``, any callable).

    Raises:
        ConfigError: the path is not a registered component, cannot be imported (the message suggests the
            nearest registered names), or is not callable.
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
    where = node._get_full_key(None) if isinstance(node, DictConfig) else ""
    try:
        plain = _to_plain(node)
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or where or "?"
        raise ConfigError(f"`{key}`: cannot resolve interpolation: {interpolation_problem(e)}") from e
    except RecursionError as e:
        raise ConfigError(f"`{where or '?'}`: interpolations nested too deeply to resolve") from e
    target = plain.pop("_component_")
    component = target if callable(target) else get_component(target, allow_any=allow_any)
    check_remote_code({k: v for k, v in plain.items() if not is_component_node(v)}, where)
    call_kwargs = {k: _build(v, allow_any) for k, v in plain.items()}
    call_kwargs.update(kwargs)
    try:
        return component(*args, **call_kwargs)
    except HftlError:
        raise
    except Exception as e:
        name = target if isinstance(target, str) else getattr(target, "__qualname__", repr(target))
        raise ConfigError(redact(f"building `{name}` failed: {type(e).__name__}: {e}")) from e
