"""What a finished ``hftl run`` left on disk, and the readers model cards share.

:class:`RunFiles` is a run as :mod:`hftl.hub.card_contexts` reads it (model directory, run directory,
config as recorded by :func:`read_config`, ``hftl_model.json``, ``metrics.json``); the functions below turn config nodes and files
into what a card shows: readable data names, model-index rows, a component's default arguments, a
model's depth and width.
"""

from __future__ import annotations

import inspect
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from hftl.adaptation.config import SelectionConfig
from hftl.data.episodes import EpisodeConfig
from hftl.embeddings.config import CacheConfig
from hftl.training.meta import MetaConfig
from hftl.training.sections import DistillConfig, FewShotConfig, LwFConfig, MultitaskConfig

ADAPTER_NAMES = {
    "hftl.adapters.Lora": "lora",
    "hftl.adapters.IA3": "ia3",
    "hftl.adapters.FullFinetune": "full fine-tuning",
    "hftl.adapters.Frozen": "frozen encoder (linear probe)",
}
ADAPTER_TITLES = {"lora": "LoRA adapter", "ia3": "(IA)³ adapter"}
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
SIMPLE = (str, int, float, bool, type(None), list, tuple)
# The config sections cards show, with the dataclasses that hold their defaults: the same classes the
# recipes validate them with (tests/test_layering.py checks that), so a card never imports a recipe script.
SECTIONS: dict[str, type] = {
    "cache": CacheConfig, "selection": SelectionConfig, "distill": DistillConfig, "lwf": LwFConfig,
    "multitask": MultitaskConfig, "fewshot": FewShotConfig, "meta": MetaConfig, "episodes": EpisodeConfig,
}  # fmt: skip


class Row(NamedTuple):
    """One model-index result: a metric of the model on one split of one data set."""

    node: dict[str, Any]  # the data's config node (its Hub id, when it has one, is the dataset type)
    name: str
    split: str
    metric: str  # metric type, e.g. accuracy
    title: str  # metric name shown on the Hub
    value: float
    config: str | None = None  # sets results on the same data apart, e.g. the task of a multi-task head


@dataclass(kw_only=True)
class RunFiles:
    """A finished run as the card reads it."""

    model_dir: Path
    run_dir: Path | None
    cfg: DictConfig
    meta: dict[str, Any]
    metrics: dict[str, Any]
    recipe: str

    def section(self, key: str) -> Any:
        """The recipe's config section ``key`` with its defaults filled in (e.g. ``distill``, ``lwf``)."""
        from hftl.config import to_dataclass

        return to_dataclass(SECTIONS[key], self.cfg.get(key), key=key)


def read_config(path: Path) -> DictConfig:
    """A saved ``config.yaml`` as a card shows it: interpolations resolved except environment ones.

    ``${oc.env:NAME}`` and ``${hftl.data_dir:...}`` come back as that text (escaped, so :func:`plain` and
    ``OmegaConf.to_yaml(..., resolve=True)`` show the text and never read the environment).

    Raises:
        ModelLoadError: the file is not a YAML mapping, or one of its interpolations cannot be resolved.
    """
    from hftl.config import record_config
    from hftl.errors import HftlError, ModelLoadError

    try:
        cfg = OmegaConf.load(path)
        if not isinstance(cfg, DictConfig):
            raise ModelLoadError(f"{path}: expected a YAML mapping, found a {type(cfg).__name__}")
        return record_config(cfg)
    except ModelLoadError:
        raise
    except (HftlError, OSError, ValueError, yaml.YAMLError, OmegaConfBaseException) as err:
        reason = (str(err).splitlines() or [type(err).__name__])[0]
        raise ModelLoadError(
            f"{path} cannot be read as an hftl run config ({reason}); the model card needs the config.yaml "
            "that `hftl run` saved: restore it from the run's output_dir."
        ) from None


def plain(node: Any) -> Any:
    return (
        OmegaConf.to_container(node, resolve=True) if node is not None and OmegaConf.is_config(node) else node
    )


def args_of(node: Any) -> dict[str, Any]:
    """A component node's arguments as written in the config."""
    return {k: v for k, v in (plain(node) or {}).items() if k != "_component_"}


def defaults_of(node: Any) -> dict[str, Any]:
    """The default arguments of a node's component (and of its base classes when it passes ``**kwargs``
    on), i.e. what the run used for every argument the config leaves out; ``{}`` when it cannot be imported."""
    from hftl.config import get_component
    from hftl.errors import HftlError

    try:
        obj = get_component(str(plain(node).get("_component_", "")))
    except HftlError:
        return {}
    found: dict[str, Any] = {}
    for owner in obj.__mro__ if isinstance(obj, type) else (obj,):
        if isinstance(obj, type) and "__init__" not in vars(owner):
            continue
        try:
            params = inspect.signature(owner.__init__ if isinstance(obj, type) else owner).parameters.values()
        except (TypeError, ValueError):
            break
        for p in params:
            if p.default is not p.empty and isinstance(p.default, SIMPLE):
                found.setdefault(p.name, p.default)
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return found


def hub_path(node: dict[str, Any]) -> str | None:
    """The data's Hub id when it was loaded by one (then the split names are the Hub's own)."""
    path = str(node.get("path", ""))
    return path if HUB_ID.match(path) and not Path(path).exists() else None


def data_paths(node: dict[str, Any]) -> list[str]:
    files = node.get("data_files")
    files = list(files.values()) if isinstance(files, dict) else [files] if files else []
    return [str(node.get("path", ""))] + [str(f) for f in files]


def data_name(node: dict[str, Any]) -> str:
    """A short readable name: the Hub id, ``hftl:`` data set, or the folder/file the data came from."""
    path = str(node.get("path", ""))
    files = data_paths(node)[1:]
    if path.startswith("hftl:"):
        name = path[5:]
    elif files:
        parents = {Path(f).parent.name for f in files}
        name = parents.pop() if len(parents) == 1 else Path(files[0]).stem
    else:
        name = Path(path).stem if Path(path).suffix else Path(path).name or path
    filters = node.get("filters") or {}
    if filters:
        name += " (" + "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in filters.items()) + ")"
    return name


def split_rows(
    node: dict[str, Any], name: str, splits: dict[str, dict[str, Any]], config: str | None = None
) -> list[Row]:
    """model-index rows of classification reports: accuracy and macro F1 per split."""
    rows: list[Row] = []
    for split, report in splits.items():
        rows.append(Row(node, name, split, "accuracy", "Accuracy", report["accuracy"], config))
        if "macro_f1" in report:
            rows.append(Row(node, name, split, "f1", "Macro F1", report["macro_f1"], config))
    return rows


def model_config(path: str | Path) -> dict[str, Any] | None:
    """Depth, width and type of a transformers model, from its local ``config.json`` (or the local Hub
    cache; nothing is downloaded); ``None`` when it is not available here."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(str(path), local_files_only=True)
    except (OSError, ValueError, KeyError):
        return None
    width = next((getattr(config, k) for k in ("hidden_size", "d_model", "dim") if hasattr(config, k)), None)
    return {
        "model_type": config.model_type,
        "layers": getattr(config, "num_hidden_layers", None),
        "width": width,
    }


def adapter_title(component: str) -> str:
    """``LoRA adapter``, ``full fine-tuning``... for an adapter component path."""
    name = ADAPTER_NAMES.get(component, component.rsplit(".", 1)[-1])
    return ADAPTER_TITLES.get(name, name)


def read_json(path: Path) -> dict[str, Any] | None:
    return json.loads(path.read_text()) if path.is_file() else None
