"""Attack class 1: a config's ``_component_`` builds only registered classes, whatever path it names.

The old allow-list took any path under an allowed package and walked it with ``getattr``, so
``hftl.cli.os.system``, a YAML module's ``unsafe_load`` reached through an hftl module, ``torch.load``
with ``weights_only: false`` and a higher-order function fed ``hftl.config.get_component`` all ran code.
These tests name those payloads, walk every attribute path the resolver could be given from the
allowed packages, and check that nothing but a registered class ever resolves.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import sys
import types
from functools import cache
from pathlib import Path

import pytest
import torch
import transformers
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import hftl
from hftl.cli import main as hftl_cli
from hftl.config import get_component, instantiate
from hftl.errors import ConfigError

ALLOWED = ("hftl", "torch", "transformers")
# Anything defined in these modules is a way to run code, read or send files: never a component.
DANGEROUS_MODULES = (
    "os", "posix", "nt", "subprocess", "_posixsubprocess", "pickle", "_pickle", "copyreg", "marshal", "shelve",
    "dill", "cloudpickle", "joblib", "shutil", "socket", "_socket", "ssl", "urllib", "http", "requests", "httpx",
    "importlib", "runpy", "ctypes", "pty", "code", "codeop", "builtins", "yaml", "_yaml", "multiprocessing",
    "torch.hub", "torch.jit", "torch.utils.cpp_extension", "torch.serialization", "torch.package",
    "hftl.config", "hftl.cli", "transformers.dynamic_module_utils",
)  # fmt: skip
DANGEROUS_NAMES = (
    "system", "popen", "spawnl", "execv", "run", "Popen", "check_output", "call", "eval", "exec", "compile",
    "__import__", "open", "load", "loads", "unsafe_load", "full_load", "Loader", "UnsafeLoader", "FullLoader",
    "Unpickler", "import_module", "rmtree", "remove", "unlink", "urlopen", "get", "post", "socket",
    "load_inline", "get_component", "instantiate", "get_class_from_dynamic_module", "from_pretrained",
)  # fmt: skip
VETTED_FUNCTIONS = {"hftl.losses.kernels.gaussian_kernels"}  # factories of modules, registered by name


def _qualified(obj: object) -> str:
    return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', '')}"


def _dangerous(obj: object) -> bool:
    name = obj.__name__ if isinstance(obj, types.ModuleType) else getattr(obj, "__module__", None) or ""
    return any(name == m or name.startswith(m + ".") for m in DANGEROUS_MODULES)


def _resolves(path: str) -> object | None:
    """What the resolver gives for ``path`` (None: refused with a ConfigError)."""
    try:
        return get_component(path)
    except ConfigError:
        return None


def _check_accepted(path: str, obj: object) -> None:
    """What every accepted path must be: a public class (or vetted factory) named directly in a module
    of an allowed package, of a registered kind, and nothing that runs code or touches files."""
    from hftl.config.registry import kind_of

    assert not _dangerous(obj), f"{path} -> {_qualified(obj)} is dangerous"
    assert inspect.isclass(obj) or _qualified(obj) in VETTED_FUNCTIONS, f"{path} -> {obj!r} is not a class"
    assert kind_of(obj) is not None, f"{path} -> {_qualified(obj)} is of no registered kind"
    assert obj.__module__.split(".")[0] in ALLOWED, f"{path} -> defined in {obj.__module__}"
    assert not any(p.startswith("_") for p in path.split(".")), f"{path} has a private segment"
    owner, _, name = path.rpartition(".")
    assert isinstance(sys.modules.get(owner), types.ModuleType), f"{path}: {owner} is not a module"
    assert getattr(sys.modules[owner], name) is obj


# -- the issue's examples, through the CLI and through instantiate -----------------------------------------
@cache
def _module_attribute_path(module_name: str, attribute: str) -> str:
    """``hftl.<some module>.<module_name>.<attribute>``: a path through an hftl module (public ones first)
    that imported ``module_name``."""
    names = sorted(
        (info.name for info in pkgutil.walk_packages(hftl.__path__, "hftl.")), key=lambda n: not _public(n)
    )
    short = module_name.split(".")[-1]
    for name in names:
        module = importlib.import_module(name)
        if getattr(getattr(module, short, None), "__name__", None) == module_name:
            return f"{name}.{short}.{attribute}"
    pytest.skip(f"no hftl module imports {module_name}")


class _Payload:
    """Unpickling this creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _payload(name: str, tmp_path: Path) -> dict:
    """The ``_component_`` node of one attack; running it creates ``tmp_path / "code_ran"``."""
    marker = tmp_path / "code_ran"
    if name == "module-walk-os":
        return {"_component_": _module_attribute_path("os", "system"), "command": f"touch {marker}"}
    if name == "module-walk-subprocess":
        return {"_component_": _module_attribute_path("subprocess", "run"), "args": ["touch", str(marker)]}
    if name == "module-walk-yaml":
        stream = f"!!python/object/apply:pathlib.Path.touch [!!python/object/apply:pathlib.Path ['{marker}']]"
        return {"_component_": _module_attribute_path("yaml", "unsafe_load"), "stream": stream}
    if name == "torch-load-pickle":
        torch.save({"x": _Payload(marker)}, tmp_path / "evil.pt")
        return {"_component_": "torch.load", "f": str(tmp_path / "evil.pt"), "weights_only": False}
    assert name == "higher-order-get-component"  # checkpoint(fn, **kw) calls fn(**kw): os.system(command=...)
    return {
        "_component_": "torch.utils.checkpoint.checkpoint",
        "function": {"_component_": "hftl.config.get_component", "path": "os.system", "allow_any": True},
        "use_reentrant": False,
        "command": f"touch {marker}",
    }


PAYLOADS = ["module-walk-os", "module-walk-subprocess", "module-walk-yaml", "torch-load-pickle",
            "higher-order-get-component"]  # fmt: skip


def _config(tmp_path: Path, model: str, data: dict) -> Path:
    cfg = {
        "recipe": "finetune",
        "output_dir": str(tmp_path / "out"),
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": model},
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead"},
        "data": data,
        "optimizer": {"_component_": "torch.optim.AdamW"},
    }
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.parametrize("payload", PAYLOADS)
@pytest.mark.parametrize("command", ["validate", "run", "assess"])
def test_issue_payloads_are_refused_before_anything_runs(tmp_path, tiny_models, capsys, payload, command):
    node = _payload(payload, tmp_path)
    path = _config(tmp_path, tiny_models["bert"], node)
    if command == "assess":  # `hftl assess` checks its own config: candidate sources and the target
        path.write_text(yaml.safe_dump({
            "recipe": "assess", "target": node, "sources": {"s": node},
            "encoders": {"a": {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"]}},
        }))  # fmt: skip
    argv = {
        "validate": ["validate", "--config", str(path)],
        "run": ["run", "finetune", "--config", str(path)],
        "assess": ["assess", "--config", str(path)],
    }[command]
    assert hftl_cli(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "--allow-any-component" in err
    assert node["_component_"] in err
    assert not (tmp_path / "code_ran").exists()
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("payload", PAYLOADS)
def test_instantiate_refuses_the_payloads(tmp_path, payload):
    node = _payload(payload, tmp_path)
    with pytest.raises(ConfigError, match="--allow-any-component"):
        instantiate(node)
    assert not (tmp_path / "code_ran").exists()


@pytest.mark.parametrize(
    "path",
    [
        "builtins.eval", "builtins.exec", "builtins.__import__", "os.system", "subprocess.Popen", "pickle.loads",
        "yaml.load", "yaml.unsafe_load", "yaml.full_load", "yaml.Loader", "yaml.UnsafeLoader", "importlib.import_module",
        "shutil.rmtree", "socket.socket", "urllib.request.urlopen", "requests.get", "torch.load", "torch.jit.load",
        "torch.jit.script", "torch.hub.load", "torch.hub.download_url_to_file", "torch.utils.cpp_extension.load_inline",
        "torch.serialization.load", "torch.utils.checkpoint.checkpoint", "torch.nn.modules.module.Module.load_state_dict",
        "hftl.config.get_component", "hftl.config.instantiate", "hftl.config._instantiate.get_component",
        "transformers.AutoModel.from_pretrained", "transformers.dynamic_module_utils.get_class_from_dynamic_module",
        "transformers.pipeline", "transformers.AutoConfig", "torch.optim.lr_scheduler.LambdaLR",
        "torch.nn.DataParallel", "torch.nn.functional.relu", "hftl.models.io.load_model",
    ],
)  # fmt: skip
def test_dangerous_paths_are_refused(path):
    assert _resolves(path) is None
    with pytest.raises(ConfigError, match="--allow-any-component|private name|attribute of"):
        get_component(path)


def test_allow_any_component_is_the_only_way_past():
    import os

    path = _module_attribute_path("os", "system")
    assert _resolves(path) is None
    assert get_component(path, allow_any=True) is os.system
    assert get_component("builtins.eval", allow_any=True) is eval


# -- registered components keep working, with helpful errors ---------------------------------------------------
@pytest.mark.parametrize(
    "path",
    [
        "torch.optim.AdamW", "torch.optim.adamw.AdamW", "torch.optim.lr_scheduler.CosineAnnealingLR",
        "torch.nn.Linear", "torch.nn.modules.linear.Linear", "torch.nn.CrossEntropyLoss", "transformers.ViTConfig",
        "transformers.ViTImageProcessor", "transformers.Speech2TextFeatureExtractor", "hftl.adaptation.DANN",
        "hftl.adaptation.methods.DANN", "hftl.encoders.TextEncoder", "hftl.data.ClassificationData",
    ],
)  # fmt: skip
def test_registered_components_resolve(path):
    obj = _resolves(path)
    assert obj is not None
    _check_accepted(path, obj)


def test_every_registered_hftl_component_is_a_safe_class():
    from hftl.config.registry import HFTL_COMPONENTS

    for kind, paths in HFTL_COMPONENTS.items():
        for path in paths:
            obj = _resolves(path)
            assert obj is not None, f"registered {kind} `{path}` does not resolve"
            _check_accepted(path, obj)


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("torch.optim.AdamX", "did you mean `torch.optim.Adam`"),
        ("hftl.models.NoSuchHead", "`hftl.models` has no attribute `NoSuchHead`"),
        ("hftl.adaptation.Dann", "did you mean `hftl.adaptation.DANN`"),
        ("transformers.ViTConfg", "did you mean `transformers.ViTConfig`"),
        ("transformers.AutoModel.from_pretrained", "the class itself"),
        ("torch.load", "from torch a config may build only optimizers"),
        ("hftl.cli.os.system", "is the module `os` imported there"),
        ("hftl.config._parse.yaml", "private name `_parse`"),
    ],
)
def test_refusals_explain_the_fix(path, fragment):
    with pytest.raises(ConfigError) as e:
        get_component(path)
    assert fragment in str(e.value) and len(str(e.value).splitlines()) == 1


# -- every path the resolver could be given ----------------------------------------------------------------
def _public(name: str) -> bool:
    return not any(p.startswith("_") for p in name.split("."))


@cache
def _root_modules() -> tuple[types.ModuleType, ...]:
    """Every hftl module, the torch/transformers modules the resolver may import, the loaders an attacker
    would aim at, and the top of the other libraries hftl uses."""
    import torch.nn
    import torch.optim
    import transformers

    names = [info.name for info in pkgutil.walk_packages(hftl.__path__, "hftl.")]
    names += [
        info.name
        for info in pkgutil.iter_modules(importlib.import_module("hftl.recipes").__path__, "hftl.recipes.")
    ]
    for package in (torch.nn, torch.optim):
        names += [
            i.name for i in pkgutil.walk_packages(package.__path__, package.__name__ + ".") if _public(i.name)
        ]
    names += ["torch", "torch.nn", "torch.optim", "torch.hub", "torch.jit", "torch.utils", "torch.serialization",
              "torch.utils.cpp_extension", "torch.utils.checkpoint", "transformers", "transformers.dynamic_module_utils",
              "transformers.modeling_utils", "transformers.utils.hub", "peft", "accelerate", "datasets"]  # fmt: skip
    names += [
        n for n in list(sys.modules) if n.split(".")[0] in ("peft", "accelerate", "datasets") and _public(n)
    ]
    modules = []
    for name in dict.fromkeys(names):
        try:
            modules.append(importlib.import_module(name))
        except Exception:  # optional dependency missing: nothing there to resolve either
            continue
    assert transformers in modules
    return tuple(modules)


def _attributes(obj: object) -> list[str]:
    """Names an attribute walk could take from ``obj`` (a lazy module: only what it has loaded)."""
    if isinstance(obj, types.ModuleType) and obj.__name__ == "transformers":
        return sorted(vars(obj))
    try:
        return sorted(dir(obj))
    except Exception:
        return []


@pytest.mark.filterwarnings("ignore::UserWarning")  # getattr on deprecated torch names warns
def test_no_attribute_path_from_the_allowed_packages_reaches_code():
    """Every ``module.name`` and ``module.name.attribute`` (attributes of classes, and the dangerous names
    of modules imported into them) from the root modules: refused, or a registered class."""
    accepted, reached = {}, set()
    seen_classes: set[int] = set()
    for module in _root_modules():
        for name in _attributes(module):
            value = getattr(module, name, None)
            paths = [f"{module.__name__}.{name}"]
            if isinstance(value, types.ModuleType):
                paths += [f"{paths[0]}.{n}" for n in DANGEROUS_NAMES if hasattr(value, n)]
            elif inspect.isclass(value) and id(value) not in seen_classes:
                seen_classes.add(id(value))
                paths += [f"{paths[0]}.{n}" for n in _attributes(value)]
            for path in paths:
                if _dangerous(_walk(path)):
                    reached.add(path)
                obj = _resolves(path)
                if obj is not None:
                    accepted[path] = obj
    for path, obj in accepted.items():
        _check_accepted(path, obj)
    # the walk met the attacks (so it would have caught the old resolver) and the real components
    assert any(p.endswith(".os.system") for p in reached) and any(".yaml." in p for p in reached)
    assert "torch.optim.AdamW" in accepted and "hftl.adaptation.DANN" in accepted


def _walk(path: str) -> object:
    parts = path.split(".")
    for i in range(len(parts), 0, -1):
        module = sys.modules.get(".".join(parts[:i]))
        if module is not None:
            obj = module
            for part in parts[i:]:
                obj = getattr(obj, part, None)
            return obj
    return None


@st.composite
def attribute_walks(draw) -> str:
    """A dotted path made of real attribute names, from a root module, 1 to 5 steps deep."""
    roots = _root_modules()
    module = roots[draw(st.integers(0, len(roots) - 1))]
    obj, parts = module, [module.__name__]
    for _ in range(draw(st.integers(1, 5))):
        names = [n for n in _attributes(obj) if n.isidentifier()]
        if not names:
            break
        name = draw(st.sampled_from(names))
        parts.append(name)
        obj = getattr(obj, name, None)
    return ".".join(parts)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(path=attribute_walks())
def test_random_attribute_walks_resolve_only_to_registered_classes(path):
    obj = _resolves(path)
    if obj is not None:
        _check_accepted(path, obj)


@settings(max_examples=150, deadline=None)
@given(name=st.sampled_from(sorted(n for n in dir(transformers) if n.isidentifier())))
def test_transformers_top_level_names_resolve_only_to_configs_and_processors(name):
    """``transformers.X`` for the names its lazy module offers (a sample: each import takes time)."""
    obj = _resolves(f"transformers.{name}")
    if obj is not None:
        _check_accepted(f"transformers.{name}", obj)


def test_validate_run_and_instantiate_share_one_check(tmp_path, tiny_models, monkeypatch):
    """``hftl validate``, ``hftl run`` and ``instantiate`` all ask :func:`resolve_registered`."""
    from hftl.config import _instantiate

    asked = []

    def spy(path):
        asked.append(path)
        return None, f"`{path}` refused by the spy; pass `--allow-any-component`"

    monkeypatch.setattr(_instantiate, "resolve_registered", spy)
    path = _config(
        tmp_path, tiny_models["bert"], {"_component_": "hftl.data.ClassificationData", "path": "x"}
    )
    assert hftl_cli(["validate", "--config", str(path)]) == 2
    assert hftl_cli(["run", "finetune", "--config", str(path)]) == 2
    with pytest.raises(ConfigError, match="spy"):
        instantiate({"_component_": "torch.nn.Linear", "in_features": 1, "out_features": 1})
    assert asked.count("hftl.data.ClassificationData") == 2 and "torch.nn.Linear" in asked
