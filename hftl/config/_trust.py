"""What a config may do on its own say, and what only the user's command line can grant.

A config is data someone else may have written. On its own it can read only a few non-secret
environment variables (:data:`SAFE_ENV_VARS`) and never switches on ``trust_remote_code``; the user
grants more with ``--allow-env NAME`` and ``--trust-remote-code``, which the CLI passes to
:func:`granted` for the length of the command.

Files hftl writes keep environment interpolations as text: :func:`record_config` resolves every other
interpolation and leaves ``${oc.env:NAME}`` (and ``${hftl.data_dir:...}``) as written, so a token read
from the environment never reaches ``model/config.yaml``, a model card or the Hub.

Example:
    >>> with granted(allow_env=["WANDB_PROJECT"]):  # doctest: +SKIP
    ...     cfg = load_config("my.yaml")  # may read ${oc.env:WANDB_PROJECT}
    ...     OmegaConf.save(record_config(cfg), "config.yaml")  # ${oc.env:...} stays literal text
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from omegaconf import DictConfig, OmegaConf

from hftl.errors import ConfigError, HftlError

logger = logging.getLogger(__name__)
SAFE_ENV_VARS: frozenset[str] = frozenset(
    {
        "HFTL_DATA_DIR",  # where the shared data sets live
        "HFTL_SPOKEN_DIGITS",  # the synthetic spoken-digits folder (audio/spoken_digits_synth_to_fsdd)
        "HOME",
        "USER",
        "LOGNAME",
        "TMPDIR",
        "PWD",
        "HF_HOME",
        "XDG_CACHE_HOME",
        "XDG_DATA_HOME",
    }
)
"""Environment variables any config may read: paths and names, never credentials."""

_NO_DEFAULT = object()


@dataclasses.dataclass(frozen=True)
class Grants:
    """What the user's command line allowed beyond a config's own say.

    Args:
        trust_remote_code: ``--trust-remote-code``: a config may set ``trust_remote_code: true``.
        allow_env: ``--allow-env NAME`` (repeatable): more environment variables a config may read.
    """

    trust_remote_code: bool = False
    allow_env: frozenset[str] = frozenset()


_grants = Grants()
_recording: contextvars.ContextVar[bool] = contextvars.ContextVar("hftl_recording", default=False)
_granted_values: dict[str, str] = {}  # values read through --allow-env: scrubbed from messages
_env_reads: contextvars.ContextVar[dict[str, str] | None] = contextvars.ContextVar(
    "hftl_env_reads", default=None
)


def current_grants() -> Grants:
    """The grants in force (the defaults outside :func:`granted`)."""
    return _grants


@contextlib.contextmanager
def granted(*, trust_remote_code: bool = False, allow_env: Iterable[str] = ()) -> Iterator[Grants]:
    """Grant a config more for the duration of a command (the CLI wraps each command in this).

    Args:
        trust_remote_code: let a config switch on ``trust_remote_code``.
        allow_env: names of further environment variables a config may read.

    Raises:
        ConfigError: a name in ``allow_env`` is not a valid environment variable name.
    """
    global _grants
    names = frozenset(allow_env)
    bad = sorted(n for n in names if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", n))
    if bad:
        raise ConfigError(f"--allow-env {bad[0]!r}: not an environment variable name (letters, digits, _)")
    previous, _grants = _grants, Grants(trust_remote_code=trust_remote_code, allow_env=names)
    try:
        yield _grants
    finally:
        _grants = previous


# -- trust_remote_code ---------------------------------------------------------------------------------
def remote_code_keys(value: Any, path: str = "") -> list[str]:
    """Dotted keys in a plain config value that switch on remote code (``trust_remote_code`` not false)."""
    found = []
    if isinstance(value, dict):
        for k, v in value.items():
            sub = f"{path}.{k}" if path else str(k)
            if k == "trust_remote_code" and v not in (False, None):
                found.append(sub)
            else:
                found += remote_code_keys(v, sub)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            found += remote_code_keys(v, f"{path}[{i}]")
    return found


def remote_code_problem(key: str) -> str:
    """The one-line refusal of ``trust_remote_code`` set by a config."""
    return (
        f"`{key}` is true, but a config cannot switch on remote code (transformers or datasets would import "
        "and run Python files from that repo); if you trust the repo, remove the key and pass "
        "`--trust-remote-code` on the command line"
    )


def check_remote_code(value: Any, path: str = "") -> None:
    """Refuse ``trust_remote_code`` in ``value`` unless the command line granted it (then warn).

    Raises:
        ConfigError: naming the first key that sets it.
    """
    keys = remote_code_keys(value, path)
    if keys and not _grants.trust_remote_code:
        raise ConfigError(remote_code_problem(keys[0]))
    for key in keys:
        logger.warning("`%s`: --trust-remote-code: Python files from that repo will be imported and run", key)


# -- the restricted ${oc.env:NAME} -------------------------------------------------------------------
def _literal(resolver: str, *args: Any) -> str:
    """The interpolation text ``${resolver:args}`` that produced a value (how a record shows it)."""
    shown = []
    for arg in args:
        if arg is None:
            shown.append("null")
        elif isinstance(arg, str) and re.fullmatch(r"[\w./\-~+@%]*", arg):
            shown.append(arg)
        else:
            text = str(arg).replace("\\", "\\\\").replace("'", "\\'")
            shown.append(f"'{text}'")
    return "${" + resolver + ":" + ",".join(shown) + "}"


def env_resolver(key: str, default: Any = _NO_DEFAULT) -> str | None:
    """``${oc.env:NAME[,default]}`` limited to :data:`SAFE_ENV_VARS` and the names the user granted."""
    if _recording.get():
        return _literal("oc.env", key) if default is _NO_DEFAULT else _literal("oc.env", key, default)
    if key not in SAFE_ENV_VARS and key not in _grants.allow_env:
        raise ConfigError(
            f"`${{oc.env:{key}}}`: a config may read only the environment variables "
            f"{', '.join(sorted(SAFE_ENV_VARS))}, so it cannot send a secret anywhere; if you mean this "
            f"config to read `{key}`, pass `--allow-env {key}` on the command line"
        )
    value = os.environ.get(key)
    if value is None:
        if default is _NO_DEFAULT:
            raise ConfigError(
                f"`${{oc.env:{key}}}`: environment variable `{key}` is not set; set it or give a default: "
                f"`${{oc.env:{key},VALUE}}`"
            )
        return None if default is None else str(default)
    if key not in SAFE_ENV_VARS:
        _granted_values[key] = value
    reads = _env_reads.get()
    if reads is not None:
        reads[key] = value
    return value


def redact(text: str) -> str:
    """``text`` with every value read through ``--allow-env`` replaced by ``<redacted:NAME>``."""
    for name, value in _granted_values.items():
        if len(value) >= 4:  # shorter values are no secret and would blank ordinary words
            text = text.replace(value, f"<redacted:{name}>")
    return text


@contextlib.contextmanager
def hiding_env_values() -> Iterator[Callable[[str], str]]:
    """Note every value ``${oc.env:...}`` reads inside; yields a function that puts the interpolation
    text back in place of those values in a message (``/root/x`` -> ``${oc.env:HOME}/x``)."""
    reads: dict[str, str] = {}
    token = _env_reads.set(reads)

    def hide(text: str) -> str:
        for name, value in sorted(reads.items(), key=lambda kv: -len(kv[1])):
            if len(value) >= 4:  # shorter values are no secret and would blank ordinary words
                text = text.replace(value, "${oc.env:" + name + "}")
        return redact(text)

    try:
        yield hide
    finally:
        _env_reads.reset(token)


@contextlib.contextmanager
def recording() -> Iterator[None]:
    """Inside, environment resolvers return their own interpolation text instead of a value."""
    token = _recording.set(True)
    try:
        yield
    finally:
        _recording.reset(token)


def is_recording() -> bool:
    """Whether environment resolvers currently return their interpolation text (see :func:`recording`)."""
    return _recording.get()


def _escape(value: Any) -> Any:
    """Escape ``${`` in resolved strings so a record never resolves again (OmegaConf reads ``\\${`` as text)."""
    if isinstance(value, str):
        return re.sub(r"(\\*)\$\{", lambda m: m.group(1) * 2 + "\\${", value)
    if isinstance(value, dict):
        return {k: _escape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_escape(v) for v in value]
    return value


def interpolation_problem(e: Exception) -> str:
    """The readable part of an OmegaConf resolution error (an hftl error raised by a resolver wins)."""
    cause: BaseException | None = e
    while cause is not None:
        if isinstance(cause, HftlError):
            return redact("; ".join(getattr(cause, "problems", None) or [str(cause)]))
        cause = cause.__cause__ or cause.__context__
    first = str(e).splitlines()[0]
    return redact(re.sub(r"^\w+ raised while resolving interpolation: ", "", first).strip('"'))


def record_container(cfg: DictConfig | dict) -> dict[str, Any]:
    """Plain ``dict`` of ``cfg`` for files and cards: interpolations resolved except environment ones.

    ``${oc.env:HF_TOKEN}`` and ``${hftl.data_dir:SST-2}`` come back as that literal text (also when
    another key interpolates them, e.g. ``url: ${data.root}/x`` with ``root: ${oc.env:HOME}``).

    Raises:
        ConfigError: an interpolation cannot be resolved (the message names the key, never a value).
    """
    if not OmegaConf.is_config(cfg):
        cfg = OmegaConf.create(cfg)
    try:
        with recording():
            return OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:  # OmegaConf errors, or a resolver's own
        key = getattr(e, "full_key", None) or "?"
        raise ConfigError(f"`{key}`: cannot resolve interpolation: {interpolation_problem(e)}") from e


def record_config(cfg: DictConfig | dict) -> DictConfig:
    """The config as it should be written to disk: no environment value in it, nothing left to resolve.

    Every interpolation is resolved except the ones whose value comes from this machine's environment
    (``oc.env`` and ``hftl.data_dir``), which stay as the text ``${oc.env:NAME}``, escaped so that neither ``OmegaConf.save(..., resolve=True)`` nor a later
    load resolves them. Call it for every file hftl writes from a config: ``model/config.yaml``,
    cards, run summaries.

    Example:
        >>> cfg = OmegaConf.create({"url": "http://x/${oc.env:HF_TOKEN}", "lr": "${base}", "base": 0.1})
        >>> OmegaConf.to_yaml(record_config(cfg), resolve=True)
        'url: http://x/${oc.env:HF_TOKEN}\\nlr: 0.1\\nbase: 0.1\\n'

    Raises:
        ConfigError: an interpolation cannot be resolved.
    """
    return OmegaConf.create(_escape(record_container(cfg)))
