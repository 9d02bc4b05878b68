"""Finding, loading and overriding YAML configs; the ``hftl.data_dir`` resolver."""

from __future__ import annotations

import difflib
import importlib.resources
import inspect
import io
import pathlib
import re
from collections.abc import Sequence

import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hftl.config._trust import _literal, env_resolver, is_recording
from hftl.errors import ConfigError

_OVERRIDES = "command-line overrides"
_OVERRIDE_FORM = "expected `key.path=value` to set a value or `~key.path` to delete a key"
# a dotted key: `optimizer.lr`, `callbacks[1].name`, `callbacks.1.name`
_KEY_RE = re.compile(r"^[A-Za-z_][\w\-]*(?:\.[\w\-]+|\[\d+\])*$")


def shipped_config_dir() -> pathlib.Path:
    """The folder of configs shipped with hftl (``recipes/configs`` in the repo, ``hftl.recipes`` once installed)."""
    try:
        return pathlib.Path(str(importlib.resources.files("hftl.recipes") / "configs"))
    except ModuleNotFoundError:  # source checkout that is not pip-installed: recipes/ sits next to hftl/
        return pathlib.Path(__file__).resolve().parents[2] / "recipes" / "configs"


def list_shipped_configs() -> list[str]:
    """Names of the shipped configs, e.g. ``["text/minilm_lora_sst2", "vision/digits_vit"]``."""
    root = shipped_config_dir()
    if not root.is_dir():
        return []
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob("*.yaml"))


def resolve_config_path(name_or_path: str) -> pathlib.Path:
    """Find a config: an existing file path wins, else a shipped name with or without ``.yaml``.

    Raises:
        ConfigError: neither exists; the message lists the closest shipped names.
    """
    path = pathlib.Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = name_or_path.removesuffix(".yaml")
    shipped = shipped_config_dir() / f"{name}.yaml"
    if shipped.is_file():
        return shipped
    names = list_shipped_configs()
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.4)
    hint = f" Closest shipped configs: {', '.join(close)}." if close else ""
    raise ConfigError(
        f"config `{name_or_path}` not found: it is neither an existing file nor a shipped config name.{hint} "
        "Run `hftl ls` to list the shipped configs, or pass the path of a YAML file."
    )


def load_config(name_or_path: str, overrides: Sequence[str] = ()) -> DictConfig:
    """Load a YAML config by shipped name or path and apply dotted command-line overrides.

    Args:
        name_or_path: a file path or a shipped config name such as ``text/minilm_lora_sst2``.
        overrides: ``key.path=value`` / ``~key.path`` strings, see :func:`apply_overrides`.

    Returns:
        The config; interpolations are left unresolved.

    Raises:
        ConfigError: the file is missing, too large, not UTF-8, not valid YAML (the message names the line),
            nested too deeply or an alias bomb, its top level is not a mapping, or an override is malformed.
    """
    path = resolve_config_path(name_or_path)
    text = _read_config_text(path)
    try:
        _check_yaml_shape(text, str(path))  # before any recursive YAML code sees it
        top = yaml.load(
            text, Loader=_SAFE_LOADER
        )  # OmegaConf takes a bare scalar for a key, or fails with OSError
        if not isinstance(top, dict | None):
            raise ConfigError(
                f"the top level must be a mapping of `key: value` lines, found a {type(top).__name__}",
                source=str(path),
            )
        _check_interpolation_depth(top or {}, str(path))  # OmegaConf parses each `${...}` as it loads
        cfg = OmegaConf.load(io.StringIO(text))
    except yaml.YAMLError as e:
        raise ConfigError(_yaml_problem(e, text), source=str(path)) from e
    except OmegaConfBaseException as e:
        raise ConfigError(f"cannot load the YAML: {str(e).splitlines()[0]}", source=str(path)) from e
    return apply_overrides(cfg, overrides)


# Limits far above any real config; past them the YAML is an attack or an accident, never a config.
MAX_CONFIG_BYTES = 4 << 20  # 4 MiB
MAX_YAML_DEPTH = 64  # nested mappings/lists
MAX_YAML_VALUES = 10_000  # values after expanding aliases (`*anchor`); OmegaConf's own limit too
MAX_INTERPOLATION_DEPTH = 16  # `${a:${b:...}}` nesting inside one string


def _read_config_text(path: pathlib.Path) -> str:
    size = path.stat().st_size
    if size > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"the file is {size / 2**20:.1f} MiB; a config is at most {MAX_CONFIG_BYTES >> 20} MiB of YAML "
            "(list large data in a data file, not in the config)",
            source=str(path),
        )
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(
            f"not UTF-8 text (byte {e.start}); save the config as UTF-8", source=str(path)
        ) from None


def _check_yaml_shape(text: str, source: str) -> None:
    """Refuse YAML nested deeper than :data:`MAX_YAML_DEPTH` or expanding (through aliases) to more than
    :data:`MAX_YAML_VALUES` values, reading parser events only (no recursion, no object built)."""
    sizes: dict[str, int] = {}  # anchor -> expanded size
    stack: list[list] = [[0, None]]  # per open collection: [expanded size so far, its anchor]
    for event in yaml.parse(text, Loader=_SAFE_LOADER):
        if isinstance(event, yaml.CollectionStartEvent):
            if len(stack) > MAX_YAML_DEPTH:
                line = event.start_mark.line + 1
                raise ConfigError(
                    f"the YAML nests mappings/lists more than {MAX_YAML_DEPTH} levels deep (line {line}); "
                    "a config is a few levels of sections",
                    source=source,
                )
            stack.append([1, event.anchor])
            continue
        if isinstance(event, yaml.CollectionEndEvent):
            size, anchor = stack.pop()
        elif isinstance(event, yaml.AliasEvent):
            size, anchor = sizes.get(event.anchor, 1), None
        elif isinstance(event, yaml.ScalarEvent):
            size, anchor = 1, event.anchor
        else:
            continue
        if anchor:
            sizes[anchor] = size
        stack[-1][0] += size
        if stack[-1][0] > MAX_YAML_VALUES:
            raise ConfigError(
                f"the YAML holds more than {MAX_YAML_VALUES:,} values once aliases (`*name`) are expanded: "
                "an alias bomb, or data that belongs in a data file the config names",
                source=source,
            )


def _check_interpolation_depth(top: dict, source: str | None) -> None:
    """Refuse a string whose ``${...}`` nest deeper than :data:`MAX_INTERPOLATION_DEPTH` (OmegaConf's
    grammar would exhaust the stack)."""
    pending: list[tuple[str, object]] = [("", top)]
    while pending:
        key, value = pending.pop()
        if isinstance(value, dict):
            pending += [(f"{key}.{k}" if key else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            pending += [(f"{key}[{i}]", v) for i, v in enumerate(value)]
        elif isinstance(value, str) and "${" in value:
            depth = deepest = 0
            for part in re.findall(r"\$\{|\}", value):
                depth = depth + 1 if part == "${" else max(depth - 1, 0)
                deepest = max(deepest, depth)
            if deepest > MAX_INTERPOLATION_DEPTH:
                raise ConfigError(
                    f"`{key}`: interpolations nested {deepest} deep; at most {MAX_INTERPOLATION_DEPTH} are resolved",
                    source=source,
                )


def _too_deep(e: yaml.YAMLError) -> bool:
    """libyaml >= 0.2.6 (PyYAML 6.0.4 wheels) stops deep flow nesting in its scanner, before
    :func:`_check_yaml_shape` sees the events: the same refusal, in its words."""
    return "maximum nesting depth" in str(e)


def _yaml_problem(e: yaml.YAMLError, text: str) -> str:
    mark = getattr(e, "problem_mark", None)
    what = getattr(e, "problem", None) or str(e)
    if _too_deep(e):
        line = f" (line {mark.line + 1})" if mark is not None else ""
        return (
            f"the YAML nests mappings/lists more than {MAX_YAML_DEPTH} levels deep{line}; "
            "a config is a few levels of sections"
        )
    if mark is None:
        return f"invalid YAML: {what}"
    lines = text.splitlines()
    shown = lines[mark.line].strip() if mark.line < len(lines) else ""
    return f"invalid YAML at line {mark.line + 1}, column {mark.column + 1}: {what} (line reads `{shown}`)"


# YAML 1.1 reads these words as booleans; on the command line they are meant as words (only true/false
# are booleans there, as in YAML 1.2).
_SAFE_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml when built with it: same rules, faster

_YAML11_BOOLEANS = {"yes", "no", "on", "off", "y", "n"}


def _parse_value(raw: str):
    """Parse an override's value as YAML (OmegaConf's dialect: ``3e-4`` is a float); ``a=`` gives ``""``."""
    if raw.strip() == "":
        return ""
    if raw.strip().lower() in _YAML11_BOOLEANS:  # `train.mixed_precision=no` means the string "no"
        return raw.strip()
    parsed = OmegaConf.from_dotlist([f"v={raw}"])
    return OmegaConf.to_container(parsed, resolve=False)["v"]


def _parts(key: str) -> list[str]:
    return key.replace("[", ".").replace("]", "").split(".")


def _walk_to_parent(cfg: DictConfig, parts: list[str], *, create: bool) -> DictConfig | ListConfig | str:
    """Return the container holding ``parts[-1]``, or a problem string."""
    node = cfg
    for i, part in enumerate(parts[:-1]):
        here = ".".join(parts[: i + 1])
        if isinstance(node, ListConfig):
            if not part.isdigit() or int(part) >= len(node):
                return f"`{here}`: `{'.'.join(parts[:i]) or 'list'}` is a list of {len(node)} items"
            child = node[int(part)]
        elif part in node and not OmegaConf.is_missing(node, part):
            child = node[part]
        elif create:
            node[part] = {}
            child = node[part]
        else:
            return f"`{'.'.join(parts)}`: no key `{here}` in the config"
        if child is None and create:
            node[part] = {}
            child = node[part]
        if not isinstance(child, DictConfig | ListConfig):
            return f"`{'.'.join(parts)}`: cannot set a key under `{here}`, which is a value ({child!r}), not a section"
        node = child
    return node


def apply_overrides(cfg: DictConfig, overrides: Sequence[str]) -> DictConfig:
    """Apply dotted overrides to ``cfg`` in place, in order.

    ``optimizer.lr=3e-4`` sets a value (parsed as YAML: ``3e-4`` is a float, ``true`` a bool, ``[1,2]`` a
    list, ``null`` None; new keys are allowed) and ``~optimizer.weight_decay`` deletes a key.

    Args:
        cfg: the config to change.
        overrides: the override strings.

    Returns:
        ``cfg`` itself.

    Raises:
        ConfigError: listing every malformed or inapplicable override at once.
    """
    problems = []
    for ov in overrides:
        delete = ov.startswith("~")
        key, sep, raw = ov.removeprefix("~").partition("=")
        key = key.strip()
        if not _KEY_RE.match(key) or delete == bool(sep):
            problems.append(f"`{ov}`: not an override; {_OVERRIDE_FORM}")
            continue
        try:
            value = None if delete else _parse_value(raw)
            _check_interpolation_depth({key: value}, None)
        except ConfigError as e:
            problems += e.problems
            continue
        except (RecursionError, yaml.YAMLError, OmegaConfBaseException) as e:
            if isinstance(e, RecursionError) or isinstance(e, yaml.YAMLError) and _too_deep(e):
                problems.append(
                    f"`{key}`: the value nests lists/mappings or interpolations too deeply to read"
                )
            else:
                problems.append(
                    f"`{ov}`: the value `{raw}` is not valid YAML ({str(e).splitlines()[0]}); quote it"
                )
            continue
        parts = _parts(key)
        parent = _walk_to_parent(cfg, parts, create=not delete)
        if isinstance(parent, str):
            problems.append(parent)
            continue
        last = parts[-1]
        if isinstance(parent, ListConfig):
            if not last.isdigit() or int(last) >= len(parent):
                problems.append(f"`{key}`: index out of range of a list of {len(parent)} items")
            elif delete:
                del parent[int(last)]
            else:
                parent[int(last)] = value
        elif delete:
            if last in parent:
                del parent[last]
            else:
                problems.append(f"`{ov}`: no key `{key}` in the config to delete")
        else:
            parent[last] = value
    if problems:
        raise ConfigError(problems, source=_OVERRIDES)
    return cfg


def _data_dir(sub: str = "") -> str:
    """Resolver ``${hftl.data_dir:}``: the folder holding the data sets, optionally joined with ``sub``."""
    from hftl.config.data_dir import shared_data_dir
    from hftl.errors import DataError

    if is_recording():  # a machine's own path: written files keep the interpolation
        return _literal("hftl.data_dir", sub) if sub else "${hftl.data_dir:}"
    try:
        found = shared_data_dir()
    except DataError as err:
        raise ConfigError(f"`${{hftl.data_dir:}}`: {err}") from err
    return str(found / sub) if sub else str(found)


def register_resolvers() -> None:
    """Register ``hftl.data_dir`` and the restricted ``oc.env`` with OmegaConf (idempotent)."""
    resolvers = {"hftl.data_dir": _data_dir, "oc.env": env_resolver}
    for name, fn in resolvers.items():
        if "replace" in inspect.signature(OmegaConf.register_resolver).parameters:  # omegaconf >= 2.4
            OmegaConf.register_resolver(name, fn, replace=True, use_cache=False)
        else:
            OmegaConf.register_new_resolver(name, fn, replace=True, use_cache=False)
