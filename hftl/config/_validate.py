"""Checking a config against component signatures and section dataclasses, before anything is built."""

from __future__ import annotations

import collections.abc as cabc
import dataclasses
import difflib
import inspect
import logging
import sys
import types
import typing
from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from hftl.config._instantiate import interpolation_problem, resolve_component
from hftl.config._trust import current_grants, hiding_env_values, remote_code_keys, remote_code_problem
from hftl.errors import ConfigError, HftlError

logger = logging.getLogger(__name__)
T = TypeVar("T")
_UNCHECKED = object()  # the annotation is not one we check
_ABSENT = object()
_SEQUENCES = (list, tuple, cabc.Sequence, cabc.MutableSequence, cabc.Collection, cabc.Iterable)
_MAPPINGS = (dict, cabc.Mapping, cabc.MutableMapping)
_SCALARS = {bool: "bool", int: "int", float: "float", str: "str", type(None): "None"}


def _describe(value: Any) -> str:
    text = repr(value)
    return f"{text[:60]}..." if len(text) > 60 else text


def _is_tensor_type(hint: Any) -> bool:
    """A YAML value can never be a tensor, so a ``float | Tensor`` annotation reads as ``float``."""
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(hint, type) and issubclass(hint, torch.Tensor)


def _expected(value: Any, hint: Any) -> str | None | object:
    """``None`` if ``value`` fits ``hint``; else what was expected; ``_UNCHECKED`` if ``hint`` is not checked."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or hint is object:
        return _UNCHECKED
    if origin is typing.Union or origin is types.UnionType:
        arms = [_expected(value, a) for a in args if not _is_tensor_type(a)]
        if not arms or any(a is None or a is _UNCHECKED for a in arms):
            return None
        return " or ".join(dict.fromkeys(arms))
    if origin is typing.Literal:
        ok = any(value == a and type(value) is type(a) for a in args)
        quote = " (YAML reads a bare no/yes/off/on as a boolean: quote it)" if isinstance(value, bool) else ""
        return None if ok else "one of " + ", ".join(repr(a) for a in args) + quote
    if hint in _SCALARS:  # bool is not an int here; an int is a fine float
        ok = isinstance(value, int | float if hint is float else hint)
        ok = ok and (hint is bool or not isinstance(value, bool))
        return None if ok else _SCALARS[hint]
    container = origin or hint
    if container in _SEQUENCES:
        name = getattr(container, "__name__", "list").lower()
        if not isinstance(value, list | tuple):
            return f"a {name} (YAML list)"
        if container is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                return f"a list of {len(args)} items"
            checks = zip(value, args, strict=True)
        else:
            checks = ((v, args[0]) for v in value) if args else ()
        for i, (v, a) in enumerate(checks):
            bad = _expected(v, a)
            if isinstance(bad, str):
                return f"a {name} whose items are {bad} (item {i} is {_describe(v)})"
        return None
    if container in _MAPPINGS:
        if not isinstance(value, dict):
            return "a mapping"
        for k, v in value.items() if len(args) == 2 else ():
            bad = _expected(v, args[1])
            if isinstance(bad, str):
                return f"a mapping whose values are {bad} (`{k}` is {_describe(v)})"
        return None
    return _UNCHECKED


def _type_problem(key: str, value: Any, hint: Any, default: Any) -> str | None:
    if value is None and default is None:  # `x: int = None` means Optional[int]
        return None
    bad = _expected(value, hint)
    if isinstance(bad, str):
        return f"`{key}`: expected {bad}, got {_describe(value)} ({type(value).__name__})"
    return None


def _unknown(key: str, name: str, valid: list[str], owner: str, what: str = "argument") -> str:
    close = difflib.get_close_matches(name, valid, n=1, cutoff=0.6)
    hint = f"did you mean `{close[0]}`?" if close else "valid names: " + ", ".join(f"`{v}`" for v in valid)
    return f"`{key}`: unknown {what} of {owner}; {hint}"


def _contains_component(value: Any) -> bool:
    if isinstance(value, dict):
        return "_component_" in value or any(_contains_component(v) for v in value.values())
    return isinstance(value, list) and any(_contains_component(v) for v in value)


def _hints(obj: Callable) -> dict[str, Any]:
    """Resolved annotations of a callable's parameters; the ones that cannot be resolved are left out."""
    target = obj.__init__ if isinstance(obj, type) else obj
    for candidate in (target, obj) if dataclasses.is_dataclass(obj) else (target,):
        try:
            return typing.get_type_hints(candidate)
        except Exception:  # an annotation string naming something not importable here
            pass
    hints, namespace = {}, getattr(inspect.unwrap(target), "__globals__", {})
    for name, ann in getattr(target, "__annotations__", {}).items():  # one at a time, as get_type_hints does
        try:
            hints[name] = eval(ann, namespace) if isinstance(ann, str) else ann
        except Exception:
            pass
    return hints


def _parameters(obj: Any) -> tuple[dict[str, inspect.Parameter], bool, dict[str, Any]]:
    """Keyword parameters of ``obj``, following ``**kwargs`` up a class's ``__init__`` chain.

    ``class TextEncoder(Encoder): def __init__(self, model, *, max_length=128, **kwargs)`` forwards
    ``**kwargs`` to ``Encoder.__init__``: its parameters are accepted too, and a key neither takes is
    unknown. The chain stops at the first ``__init__`` without ``**kwargs``; reaching ``object`` keeps
    ``**kwargs`` open (something else consumes them).
    """
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    params = inspect.signature(obj).parameters
    named = {n: p for n, p in params.items() if p.kind in kinds}
    takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in params.values())
    hints = _hints(obj)
    if inspect.isclass(obj) and takes_kwargs:
        seen = {obj.__init__}
        for parent in obj.__mro__[1:]:
            init = parent.__dict__.get("__init__")
            if init is None or init in seen:
                continue
            if parent is object:
                break
            seen.add(init)
            parent_params = inspect.signature(init).parameters
            for n, p in parent_params.items():
                if p.kind in kinds and n != "self" and n not in named:
                    named[n] = p
            hints = {**_hints(parent), **hints}
            takes_kwargs = any(p.kind is p.VAR_KEYWORD for p in parent_params.values())
            if not takes_kwargs:
                break
    return named, takes_kwargs, hints


def _check_component(path: str, node: DictConfig, runtime: Collection[str], allow_any: bool) -> list[str]:
    target = _resolved(node, "_component_")
    if target is _ABSENT:  # reported by the interpolation walk
        return []
    obj, problem = resolve_component(target, allow_any=allow_any)
    if problem:
        return [f"`{path}._component_`: {problem}"]
    try:
        named, takes_kwargs, hints = _parameters(obj)
    except (TypeError, ValueError):  # builtins without a signature: nothing more to check
        return []
    problems: list[str] = []
    keys = [k for k in node.keys() if k != "_component_"]
    for k in keys:
        key = f"{path}.{k}"
        if k in runtime:
            problems.append(f"`{key}`: set by the recipe at run time; remove it from the config")
        elif k not in named and not takes_kwargs:
            problems.append(_unknown(key, str(k), list(named), target))
        elif k in named and k in hints:
            value = _resolved(node, k)
            if value is not _ABSENT and not _contains_component(value):
                problems.append(_type_problem(key, value, hints[k], named[k].default))
    for n, p in named.items():
        if p.default is p.empty and n not in keys and n not in runtime:
            problems.append(
                f"`{path}.{n}`: required argument of {target} is missing; add `{n}: ...` under `{path}`"
            )
    return [p for p in problems if p]


def _resolved(node: DictConfig | ListConfig, k: Any) -> Any:
    try:
        value = node[k]
        return OmegaConf.to_container(value, resolve=True) if OmegaConf.is_config(value) else value
    except (OmegaConfBaseException, RecursionError):  # reported by the interpolation walk
        return _ABSENT


class _Unresolved(typing.NamedTuple):
    raw: Any
    problem: str


def _walk(node: DictConfig | ListConfig, path: str, visit: Callable[[str, Any], None]) -> None:
    """Call ``visit(path, value)`` on every value, paths like ``encoder.head`` and ``callbacks[1]``."""
    items = node.keys() if isinstance(node, DictConfig) else range(len(node))
    for k in items:
        sub = f"{path}[{k}]" if isinstance(node, ListConfig) else (f"{path}.{k}" if path else str(k))
        try:
            value = node[k]
        except MissingMandatoryValue:
            visit(sub, MissingMandatoryValue)
            continue
        except (OmegaConfBaseException, RecursionError) as e:
            raw = OmegaConf.to_container(node, resolve=False)[k]
            visit(sub, _Unresolved(raw, interpolation_problem(e)))
            continue
        visit(sub, value)
        if isinstance(value, DictConfig | ListConfig) and not OmegaConf.is_interpolation(node, k):
            _walk(value, sub, visit)


def _check_fields(cls: type, values: Mapping, key: str) -> list[str]:
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
    problems = [
        _unknown(f"{key}.{k}", str(k), list(fields), cls.__name__, "field") for k in values if k not in fields
    ]
    for name, f in fields.items():
        sub = f"{key}.{name}"
        if name not in values:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                problems.append(f"`{sub}`: required field of {cls.__name__} is missing; add `{name}: ...`")
        elif name in hints:
            default = None if f.default is dataclasses.MISSING else f.default
            problems.append(_type_problem(sub, values[name], hints[name], default))
    return [p for p in problems if p]


def _section_values(node: Any, cls: type, key: str) -> tuple[dict, list[str]]:
    if node is None:
        return {}, _check_fields(cls, {}, key)
    if OmegaConf.is_config(node):
        try:
            node = OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as e:
            return {}, [f"`{getattr(e, 'full_key', '') or key}`: cannot resolve: {interpolation_problem(e)}"]
    if not isinstance(node, Mapping):
        names = ", ".join(f.name for f in dataclasses.fields(cls))
        return {}, [f"`{key}`: expected a section with fields {names}, got {_describe(node)}"]
    values = dict(node)
    return values, _check_fields(cls, values, key)


def to_dataclass(cls: type[T], node: DictConfig | Mapping | None, *, key: str) -> T:
    """Build a dataclass from a config section, checking field names and types first.

    Args:
        cls: the dataclass type.
        node: the section; ``None`` gives all defaults.
        key: the section's dotted key, used in messages.

    Raises:
        ConfigError: listing every unknown field (with the nearest name), missing field and wrong type, or the
            error raised by the dataclass's ``__post_init__``.
    """
    values, problems = _section_values(node, cls, key)
    if problems:
        raise ConfigError(problems)
    hints = _hints(cls)
    for name, value in values.items():  # YAML has no tuples
        if isinstance(value, list) and (typing.get_origin(hints.get(name)) or hints.get(name)) is tuple:
            values[name] = tuple(value)
    try:
        return cls(**values)
    except HftlError:
        raise
    except (TypeError, ValueError) as e:
        raise ConfigError(f"`{key}`: {e}") from e


def validate_config(
    cfg: DictConfig,
    *,
    runtime_args: Mapping[str, Collection[str]] = {},  # noqa: B006 - read only
    sections: Mapping[str, type] = {},  # noqa: B006 - read only
    required: Collection[str] = (),
    top_level: Collection[str] | None = None,
    allow_any: bool = False,
    source: str | None = None,
) -> None:
    """Check a whole config without importing weights or building anything; report every problem at once.

    Args:
        cfg: the loaded config.
        runtime_args: per component path (``"optimizer"``, ``"callbacks[1]"``), the arguments the recipe
            passes at run time; they may be missing from the YAML and must not be set there.
        sections: dotted key -> dataclass that the plain section must fit.
        required: keys (dotted allowed) that must exist.
        top_level: every top-level key the recipe reads; any other (a misspelt section) is a problem.
            None skips the check.
        allow_any: allow any importable callable as a component, not only registered ones (the user's
            ``--allow-any-component``).
        source: the config file, named in the error.

    Raises:
        ConfigError: one error listing every problem found. Besides the checks above: components that are
            not registered (:mod:`hftl.config.registry`), ``trust_remote_code`` switched on without the
            user's ``--trust-remote-code``, environment variables the user did not allow. No message shows
            a value read from the environment.
    """
    with hiding_env_values() as hide:
        problems = _remote_code_problems(cfg)
        problems += _problems(cfg, runtime_args, sections, required, top_level, allow_any)
        if problems:
            raise ConfigError([hide(p) for p in dict.fromkeys(problems)], source=source)


def _remote_code_problems(cfg: DictConfig) -> list[str]:
    """``trust_remote_code`` set anywhere (also through an interpolation): refused, or warned about when the
    command line granted it (:func:`hftl.config.granted`)."""
    keys = []
    for key in cfg:
        try:
            value = (
                OmegaConf.to_container(cfg[key], resolve=True) if OmegaConf.is_config(cfg[key]) else cfg[key]
            )
        except (OmegaConfBaseException, RecursionError):  # unresolvable: reported by the walk
            value = OmegaConf.to_container(cfg, resolve=False)[key]
        keys += remote_code_keys({key: value})
    if current_grants().trust_remote_code:
        for key in keys:
            logger.warning(
                "`%s`: --trust-remote-code: Python files from that repo will be imported and run", key
            )
        return []
    return [remote_code_problem(k) for k in keys]


def _problems(
    cfg: DictConfig,
    runtime_args: Mapping[str, Collection[str]],
    sections: Mapping[str, type],
    required: Collection[str],
    top_level: Collection[str] | None,
    allow_any: bool,
) -> list[str]:
    problems: list[str] = []
    if top_level is not None:
        for key in cfg:
            if key not in top_level:
                close = difflib.get_close_matches(str(key), sorted(top_level), n=1)
                hint = f"did you mean `{close[0]}`?" if close else f"allowed: {', '.join(sorted(top_level))}"
                problems.append(f"`{key}`: unknown section, this recipe never reads it; {hint}")
    for key in required:
        try:
            found = OmegaConf.select(cfg, key, default=_ABSENT, throw_on_resolution_failure=False)
        except MissingMandatoryValue:
            found = _ABSENT
        if found is _ABSENT:
            problems.append(f"`{key}`: required key is missing; add it to the config or pass `{key}=...`")

    def visit(path: str, value: Any) -> None:
        if value is MissingMandatoryValue:
            if path not in required:
                problems.append(f"`{path}`: has no value (`???`); set it in the config or pass `{path}=...`")
        elif isinstance(value, _Unresolved):
            problems.append(f"`{path}`: cannot resolve `{value.raw}`: {value.problem}")
        elif isinstance(value, DictConfig) and "_component_" in value:
            runtime = runtime_args.get(path, ())
            runtime = {runtime} if isinstance(runtime, str) else set(runtime)
            problems.extend(_check_component(path, value, runtime, allow_any))

    _walk(cfg, "", visit)
    for key, cls in sections.items():
        try:
            node = OmegaConf.select(cfg, key, throw_on_missing=False)
            node = OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node
        except (OmegaConfBaseException, RecursionError):  # reported by the walk
            continue
        problems.extend(_section_values(node, cls, key)[1])
    return problems
