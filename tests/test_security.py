"""Security: no unpickling of weights, no remote code unless asked, the `_component_` allow-list, no token leaks."""

from __future__ import annotations

import ast
import logging
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from hftl.cli import main as hftl

REPO = Path(__file__).resolve().parents[1]
SOURCES = sorted([*(REPO / "hftl").rglob("*.py"), *(REPO / "recipes").glob("*.py")])
SECRET = "hf_SECRETtokenNEVERprinted0123456789"


def _calls(path: Path):
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Call):
            yield node


def _name(func: ast.expr) -> str:
    return ast.unparse(func)


def _kw_true(call: ast.Call, name: str) -> bool:
    return any(
        k.arg == name and isinstance(k.value, ast.Constant) and k.value.value is True for k in call.keywords
    )


# -- static checks over the package source -------------------------------------------------------------------
def test_every_torch_load_is_weights_only():
    offenders = [
        f"{path.relative_to(REPO)}:{call.lineno}"
        for path in SOURCES
        for call in _calls(path)
        if _name(call.func) == "torch.load" and not _kw_true(call, "weights_only")
    ]
    assert not offenders, f"torch.load without weights_only=True at {offenders}"


def test_no_pickle_loading_in_the_package():
    offenders = [
        f"{path.relative_to(REPO)}:{call.lineno}"
        for path in SOURCES
        for call in _calls(path)
        if _name(call.func) in ("pickle.load", "pickle.loads", "dill.load", "joblib.load")
        or (_name(call.func) in ("np.load", "numpy.load") and _kw_true(call, "allow_pickle"))
    ]
    assert not offenders, f"unpickling at {offenders}"


def test_remote_code_is_never_switched_on_in_the_source():
    offenders = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and _kw_true(node, "trust_remote_code"):
                offenders.append(f"{path.relative_to(REPO)}:{node.lineno} trust_remote_code=True")
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                args = node.args
                named = [*args.posonlyargs, *args.args][-len(args.defaults) :] if args.defaults else []
                pairs = [
                    *zip(named, args.defaults, strict=True),
                    *zip(args.kwonlyargs, args.kw_defaults, strict=True),
                ]
                for arg, default in pairs:
                    if arg.arg != "trust_remote_code" or default is None:  # None: keyword-only, no default
                        continue
                    if not (isinstance(default, ast.Constant) and default.value is False):
                        offenders.append(
                            f"{path.relative_to(REPO)}:{node.lineno} default {ast.unparse(default)}"
                        )
    assert not offenders, offenders


def test_the_static_checks_catch_offenders(tmp_path):
    """The checks above would fail on code that does these things."""
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import torch\n"
        "def f(p, trust_remote_code=True):\n"
        "    torch.load(p)\n"
        "    torch.load(p, weights_only=False)\n"
        "    g(trust_remote_code=True)\n"
    )
    loads = [c for c in _calls(bad) if _name(c.func) == "torch.load" and not _kw_true(c, "weights_only")]
    assert len(loads) == 2
    assert sum(_kw_true(c, "trust_remote_code") for c in _calls(bad)) == 1


# -- weights: safetensors, or pickles through weights_only only ----------------------------------------------
class _Payload:
    """Unpickling this runs code: it creates ``marker``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _pickle_only_copy(src: str, dest: Path, extra: dict | None = None) -> Path:
    """A copy of the tiny BERT whose weights are only a pickled ``pytorch_model.bin``."""
    from transformers import AutoTokenizer

    dest.mkdir()
    (dest / "config.json").write_text((Path(src) / "config.json").read_text())
    AutoTokenizer.from_pretrained(src).save_pretrained(dest)
    state = load_file(str(Path(src) / "model.safetensors"))
    torch.save({**state, **(extra or {})}, dest / "pytorch_model.bin")
    return dest


def test_pickle_only_weights_load_only_through_weights_only(tmp_path, tiny_models):
    from hftl.encoders import TextEncoder
    from hftl.errors import ModelLoadError

    plain = _pickle_only_copy(tiny_models["bert"], tmp_path / "plain")
    encoder = TextEncoder(
        str(plain)
    )  # plain tensors: transformers' torch.load(weights_only=True) accepts them
    expected = load_file(str(Path(tiny_models["bert"]) / "model.safetensors"))
    got = encoder.backbone.state_dict()
    assert all(torch.equal(got[k], v) for k, v in expected.items() if k in got)

    marker = tmp_path / "code_ran"
    evil = _pickle_only_copy(tiny_models["bert"], tmp_path / "evil", {"x": _Payload(marker)})
    with pytest.raises(ModelLoadError, match="safetensors"):  # torch's weights_only refusal, explained
        TextEncoder(str(evil))
    assert not marker.exists(), "unpickling the checkpoint ran code"


# -- the `_component_` allow-list ----------------------------------------------------------------------------
@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run"])
def test_validate_refuses_components_outside_the_allow_list(tmp_path, tiny_models, capsys, target):
    marker = tmp_path / "ran"
    cfg = {
        "recipe": "finetune",
        "output_dir": str(tmp_path / "out"),
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"]},
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead"},
        "data": {"_component_": target, "command": f"touch {marker}"},
        "optimizer": {"_component_": "torch.optim.AdamW"},
    }
    path = tmp_path / "cfg.yaml"
    path.write_text(yaml.safe_dump(cfg))
    assert hftl(["validate", "--config", str(path)]) != 0
    err = capsys.readouterr().err
    assert target in err and "--allow-any-component" in err
    assert not marker.exists()


@pytest.mark.parametrize("target", ["os.system", "builtins.eval", "subprocess.run"])
def test_instantiate_refuses_before_importing_or_calling(tmp_path, target):
    from hftl.config import instantiate
    from hftl.errors import ConfigError

    marker = tmp_path / "ran"
    with pytest.raises(ConfigError, match="allowed package"):
        instantiate({"_component_": target}, f"touch {marker}")
    assert not marker.exists()


# -- Hub tokens ----------------------------------------------------------------------------------------------
class _FakeApi:
    """Records the calls `hftl push` makes; fails with a 401 when ``fail`` is set."""

    calls: list[tuple[str, dict]] = []
    fail = False

    def __init__(self, *args, **kwargs):
        _FakeApi.calls.append(("__init__", kwargs))

    def __getattr__(self, name):
        def call(*args, **kwargs):
            _FakeApi.calls.append((name, kwargs))
            if _FakeApi.fail:
                from huggingface_hub.errors import HfHubHTTPError
                from requests import Response

                response = Response()
                response.status_code = 401
                raise HfHubHTTPError(
                    "401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create",
                    response=response,
                )
            return type("Info", (), {"pr_url": None, "commit_url": "https://huggingface.co/me/x/commit/1"})()

        return call


@pytest.fixture
def model_dir(tmp_path, tiny_models) -> Path:
    from omegaconf import OmegaConf

    from hftl.encoders import TextEncoder
    from hftl.models import Classifier, LinearHead
    from hftl.models.io import save_model

    encoder = TextEncoder(tiny_models["bert"], max_length=16)
    cfg = OmegaConf.create({
        "recipe": "finetune", "output_dir": str(tmp_path / "run"),
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16},
        "adapter": {"_component_": "hftl.adapters.FullFinetune"}, "head": {"_component_": "hftl.models.LinearHead"},
        "data": {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": "train.csv"},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3}, "train": {"epochs": 1},
    })  # fmt: skip
    model = Classifier(encoder, LinearHead(in_features=encoder.out_features, num_labels=2), ["neg", "pos"])
    save_model(model, tmp_path / "run" / "model", adapter_kind="full", config=cfg, metrics={})
    return tmp_path / "run"


@pytest.mark.parametrize("fail", [False, True])
def test_push_never_prints_or_logs_the_token(model_dir, monkeypatch, capsys, caplog, fail):
    import huggingface_hub
    from huggingface_hub import constants

    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    monkeypatch.setattr(_FakeApi, "calls", [])
    monkeypatch.setattr(_FakeApi, "fail", fail)
    caplog.set_level(logging.DEBUG)
    rc = hftl(["push", str(model_dir), "--repo-id", "me/x"])
    assert rc == (2 if fail else 0)
    out = capsys.readouterr()
    text = out.out + out.err + caplog.text
    assert SECRET not in text
    assert ("HTTP 401" in out.err) if fail else ("Pushed" in out.out)
    # hftl hands no token to the client: huggingface_hub reads it from its own sources
    assert all(SECRET not in repr(kwargs) for _, kwargs in _FakeApi.calls)
    assert not any(SECRET in p.read_text(errors="ignore") for p in model_dir.rglob("*") if p.is_file())
