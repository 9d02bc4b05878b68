"""Recipe configs: torchtune-style YAML on OmegaConf.

Objects are ``_component_`` nodes built by :func:`instantiate`; plain sections are checked against
dataclasses by :func:`to_dataclass`; :func:`validate_config` checks a whole config against the callables'
signatures before any weights load and reports every problem at once.

Example:
    >>> cfg = load_config("text/minilm_lora_sst2", ["optimizer.lr=1e-4"])
    >>> validate_config(cfg, runtime_args={"optimizer": {"params"}, "head": {"in_features", "num_labels"}})
    >>> optimizer = instantiate(cfg.optimizer, params=model.parameters())  # doctest: +SKIP

A config is untrusted data: it builds only registered components (:mod:`hftl.config.registry`), reads
only the environment variables the user allows, and is written to disk through :func:`record_config`.
"""

from __future__ import annotations

from hftl.config._instantiate import get_component, instantiate
from hftl.config._parse import (
    apply_overrides,
    list_shipped_configs,
    load_config,
    register_resolvers,
    resolve_config_path,
    shipped_config_dir,
)
from hftl.config._trust import (
    SAFE_ENV_VARS,
    Grants,
    current_grants,
    granted,
    record_config,
    record_container,
    redact,
)
from hftl.config._validate import to_dataclass, validate_config
from hftl.config.registry import ALLOWED_PREFIXES, HFTL_COMPONENTS

register_resolvers()

__all__ = [
    "ALLOWED_PREFIXES",
    "HFTL_COMPONENTS",
    "SAFE_ENV_VARS",
    "Grants",
    "current_grants",
    "granted",
    "record_config",
    "record_container",
    "redact",
    "apply_overrides",
    "get_component",
    "instantiate",
    "list_shipped_configs",
    "load_config",
    "resolve_config_path",
    "shipped_config_dir",
    "to_dataclass",
    "validate_config",
]
