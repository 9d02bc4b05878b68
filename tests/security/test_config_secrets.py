"""A shared config is data: it reads no secret, switches on no remote code, and no YAML makes hftl crash.

Attack class 5 for configs (``${oc.env:...}`` values in written files and messages), ``trust_remote_code``
taken from a config, and pathological YAML from class 7 (deep nesting, alias bombs, huge files, Python
tags), each through the real CLI where a user would meet it.
"""

from __future__ import annotations

import ast
import importlib
import logging
from pathlib import Path

import pytest
import yaml
from omegaconf import OmegaConf

from hftl.cli import main as hftl
from hftl.config import granted, instantiate, load_config, record_config, record_container, validate_config
from hftl.errors import ConfigError

REPO = Path(__file__).resolve().parents[2]
SECRET = "hf_SECRETfromTHEenvironment0123456789"
VAR = "HFTL_TEST_SECRET"
REF = "${oc.env:HFTL_TEST_SECRET}"  # how a config reads it


@pytest.fixture(autouse=True)
def secret_env(monkeypatch):
    monkeypatch.setenv(VAR, SECRET)


def _text_config(tmp_path: Path, model: str, **sections) -> dict:
    train = tmp_path / "train.csv"
    train.write_text("text,label\n" + "".join(f"good movie {i},pos\nbad movie {i},neg\n" for i in range(8)))
    cfg = {
        "recipe": "finetune",
        "output_dir": str(tmp_path / "out"),
        "encoder": {"_component_": "hftl.encoders.TextEncoder", "model": model, "max_length": 16},
        "adapter": {"_component_": "hftl.adapters.FullFinetune"},
        "head": {"_component_": "hftl.models.LinearHead"},
        "data": {"_component_": "hftl.data.ClassificationData", "path": "csv", "data_files": str(train)},
        "optimizer": {"_component_": "torch.optim.AdamW", "lr": 1e-3},
        "train": {"epochs": 1, "batch_size": 8},
    }
    for key, value in sections.items():
        cfg[key] = {**cfg.get(key, {}), **value} if isinstance(value, dict) else value
    return cfg


def _write(tmp_path: Path, cfg: dict | str, name: str = "shared.yaml") -> str:
    path = tmp_path / name
    path.write_text(cfg if isinstance(cfg, str) else yaml.safe_dump(cfg))
    return str(path)


def _error(capsys) -> str:
    out = capsys.readouterr()
    assert "Traceback" not in out.err
    return out.err


# -- ${oc.env:...}: only safe variables, or the ones the user names ----------------------------------------
def test_a_config_cannot_read_an_unlisted_variable(tmp_path, tiny_models, capsys):
    cfg = _text_config(tmp_path, tiny_models["bert"], data={"missing_hint": f"https://evil.example/?t={REF}"})
    assert hftl(["validate", "--config", _write(tmp_path, cfg)]) == 2
    err = _error(capsys)
    assert SECRET not in err and len(err.strip().splitlines()) == 1
    assert "`data.missing_hint`" in err and f"`{VAR}`" in err and f"--allow-env {VAR}" in err


def test_run_refuses_before_anything_is_written(tmp_path, tiny_models, capsys):
    cfg = _text_config(tmp_path, tiny_models["bert"], data={"missing_hint": REF})
    assert hftl(["run", "finetune", "--config", _write(tmp_path, cfg)]) == 2
    assert SECRET not in _error(capsys)
    assert not (tmp_path / "out").exists()


def test_safe_variables_resolve_and_grants_are_scoped(monkeypatch, tmp_path):
    monkeypatch.setenv("HFTL_DATA_DIR", str(tmp_path))
    cfg = OmegaConf.create({"root": "${oc.env:HFTL_DATA_DIR}/x", "token": REF, "d": "${oc.env:NOPE,7}"})
    assert cfg.root == f"{tmp_path}/x"
    with pytest.raises(Exception, match=f"--allow-env {VAR}"):
        _ = cfg.token
    with granted(allow_env=[VAR, "NOPE"]):
        assert cfg.token == SECRET and cfg.d == "7"
    with pytest.raises(Exception, match="--allow-env NOPE"):  # the grant ended with its command
        _ = cfg.d
    with pytest.raises(ConfigError, match="not an environment variable name"), granted(allow_env=["A B"]):
        pass


def test_validation_messages_never_show_env_values(tmp_path, tiny_models, capsys, monkeypatch):
    monkeypatch.setenv("HOME", "/home/someone-private")
    cfg = _text_config(
        tmp_path, tiny_models["bert"],
        train={"epochs": REF, "batch_size": "${oc.env:HOME}"},
        optimizer={"lr": REF, "betas": [REF, 0.9]},
    )  # fmt: skip
    assert hftl(["validate", "--config", _write(tmp_path, cfg), "--allow-env", VAR]) == 2
    err = _error(capsys)
    assert SECRET not in err and "someone-private" not in err
    assert "`train.epochs`" in err and "`optimizer.lr`" in err and REF in err


def test_build_and_cli_errors_never_show_granted_values(tmp_path, tiny_models, capsys):
    with granted(allow_env=[VAR]), pytest.raises(ConfigError) as e:
        node = {"_component_": "torch.nn.Conv1d", "in_channels": 1, "out_channels": 1, "kernel_size": 1}
        instantiate(OmegaConf.create({**node, "padding": REF}))  # torch's ValueError quotes the value
    assert SECRET not in str(e.value) and f"<redacted:{VAR}>" in str(e.value)
    cfg = _text_config(tmp_path, tiny_models["bert"], encoder={"model": f"/nonexistent/{REF}"})
    assert hftl(["run", "finetune", "--config", _write(tmp_path, cfg), "--allow-env", VAR]) == 2
    line = next(line for line in _error(capsys).splitlines() if line.startswith("error:"))
    assert "/nonexistent/" in line and SECRET not in line and f"<redacted:{VAR}>" in line


# -- written files keep environment interpolations as text ---------------------------------------------------
def test_record_config_resolves_everything_but_the_environment(tmp_path):
    cfg = OmegaConf.create({
        "url": f"https://x.example/?t={REF}", "copy": "${url}", "lr": "${base}", "base": 0.1,
        "root": "${oc.env:HOME}", "files": ["${root}/a.csv", "${hftl.data_dir:SST-2}/train.tsv"],
        "unset": "${oc.env:HFTL_NEVER_SET_VAR,fallback}", "literal": r"\${not.an.interpolation}",
    })  # fmt: skip
    record = record_config(cfg)
    plain = record_container(cfg)
    assert plain["url"] == plain["copy"] == f"https://x.example/?t={REF}"
    assert plain["lr"] == 0.1 and plain["files"] == [
        "${oc.env:HOME}/a.csv",
        "${hftl.data_dir:SST-2}/train.tsv",
    ]
    assert (
        plain["unset"] == "${oc.env:HFTL_NEVER_SET_VAR,fallback}"
        and plain["literal"] == "${not.an.interpolation}"
    )
    for resolve in (True, False):  # neither way of saving writes the value
        path = tmp_path / f"config_{resolve}.yaml"
        OmegaConf.save(record, path, resolve=resolve)
        assert SECRET not in path.read_text() and f"?t={REF}" in path.read_text().replace("\\$", "$")
    with granted(allow_env=[VAR]):  # saved unresolved, it stays text even where the variable may be read
        again = OmegaConf.to_container(OmegaConf.load(tmp_path / "config_False.yaml"), resolve=True)
    assert again == plain


def test_a_trained_model_directory_holds_no_env_value(tmp_path, tiny_models, capsys):
    cfg = _text_config(tmp_path, tiny_models["bert"], data={"missing_hint": f"ask {REF}"})
    assert hftl(["run", "finetune", "--config", _write(tmp_path, cfg), "--allow-env", VAR]) == 0, _error(
        capsys
    )
    assert hftl(["card", str(tmp_path / "out")]) == 0, _error(capsys)
    written = [p for p in (tmp_path / "out").rglob("*") if p.is_file()]
    assert written and not [p for p in written if SECRET.encode() in p.read_bytes()]
    assert REF in (tmp_path / "out" / "model" / "config.yaml").read_text()


# -- trust_remote_code only from the user's command line -----------------------------------------------------
@pytest.mark.parametrize(
    ("sections", "key"),
    [
        ({"encoder": {"trust_remote_code": True}}, "encoder.trust_remote_code"),
        ({"data": {"trust_remote_code": True}}, "data.trust_remote_code"),
        ({"encoder": {"trust_remote_code": "${remote}"}, "remote": True}, "encoder.trust_remote_code"),
        (
            {
                "extra": [
                    {"_component_": "hftl.data.ClassificationData", "path": "x", "trust_remote_code": True}
                ]
            },
            "extra[0].trust_remote_code",
        ),  # fmt: skip
    ],
)
def test_a_config_cannot_switch_on_remote_code(tmp_path, tiny_models, capsys, caplog, sections, key):
    cfg = _text_config(tmp_path, tiny_models["bert"], **sections)
    path = _write(tmp_path, cfg)
    assert hftl(["validate", "--config", path]) == 2
    err = _error(capsys)
    assert f"`{key}`" in err and "--trust-remote-code" in err
    assert hftl(["run", "finetune", "--config", path]) == 2
    assert not (tmp_path / "out").exists()
    caplog.set_level(logging.WARNING)
    runtime = importlib.import_module("hftl.recipes.finetune").RECIPE.RUNTIME_ARGS
    with granted(trust_remote_code=True):  # the user's own flag: allowed, with a warning naming the key
        validate_config(OmegaConf.create(cfg), runtime_args=runtime)
    assert key in caplog.text and "--trust-remote-code" in caplog.text


def test_validate_flag_grants_remote_code(tmp_path, tiny_models, capsys):
    cfg = _text_config(tmp_path, tiny_models["bert"], encoder={"trust_remote_code": True})
    path = _write(tmp_path, cfg)
    assert hftl(["validate", "--config", path, "--trust-remote-code"]) == 0, _error(capsys)
    assert hftl(["validate", "--config", path, "encoder.trust_remote_code=false"]) == 0


def test_instantiate_refuses_remote_code_on_its_own():
    node = {"_component_": "hftl.data.ClassificationData", "path": "x", "trust_remote_code": True}
    with pytest.raises(ConfigError, match="`trust_remote_code` is true.*--trust-remote-code"):
        instantiate(node)
    with granted(trust_remote_code=True):
        assert instantiate(node).trust_remote_code is True


# -- YAML that is not a config: one line, never a traceback --------------------------------------------------
def _alias_bomb() -> str:
    lines = ["a: &a [x, x, x, x, x, x, x, x, x]"]
    for prev, cur in zip("abcdefg", "bcdefgh", strict=True):
        lines.append(f"{cur}: &{cur} [" + ", ".join([f"*{prev}"] * 9) + "]")
    return "\n".join(lines) + "\n"


PATHOLOGICAL = {
    "deep-lists": ("train: " + "[" * 10_000 + "]" * 10_000 + "\n", "levels deep"),
    "deep-mappings": ("train: " + "{a: " * 10_000 + "1" + "}" * 10_000 + "\n", "levels deep"),
    "deep-block": (
        "".join(" " * (2 * i) + f"k{i}:\n" for i in range(200)) + " " * 400 + "v: 1\n",
        "levels deep",
    ),
    "alias-bomb": (_alias_bomb(), "aliases"),
    "huge-file": ("notes: '" + "x" * (5 << 20) + "'\n", "MiB"),
    "python-tag": ("data: !!python/object/apply:os.system ['touch {marker}']\n", "python/object/apply"),
    "deep-interpolation": ("x: " + "${oc.decode:" * 500 + "1" + "}" * 500 + "\n", "interpolations nested"),
    "not-utf8": (None, "UTF-8"),
}


@pytest.mark.parametrize("case", list(PATHOLOGICAL))
def test_pathological_yaml_is_one_config_error(tmp_path, capsys, case):
    text, fragment = PATHOLOGICAL[case]
    path = tmp_path / "c.yaml"
    marker = tmp_path / "code_ran"
    path.write_bytes(b"a: caf\xe9\n" if text is None else text.replace("{marker}", str(marker)).encode())
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert fragment in str(e.value) and e.value.source == str(path)
    assert hftl(["validate", "--config", str(path)]) == 2
    err = _error(capsys)
    assert err.startswith("error:") and fragment in err and len(err.strip().splitlines()) == 1
    assert not marker.exists()


def test_deep_override_is_one_config_error(tmp_path):
    path = _write(tmp_path, "a: 1\n")
    with pytest.raises(ConfigError, match="too deeply"):
        load_config(path, ["x=" + "[" * 5000 + "]" * 5000])


UNSAFE_YAML = {"unsafe_load", "unsafe_load_all", "full_load", "full_load_all", "Loader", "UnsafeLoader",
               "FullLoader", "CLoader", "CUnsafeLoader", "CFullLoader"}  # fmt: skip


def _unsafe_yaml_uses(path: Path) -> list[str]:
    """Calls of ``yaml.load``/``load_all`` without a safe loader, and any use of an unsafe yaml name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "yaml":
            if node.attr in UNSAFE_YAML:
                found.append(f"{path.name}:{node.lineno} yaml.{node.attr}")
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("yaml.load", "yaml.load_all"):
            loader = next((k.value for k in node.keywords if k.arg == "Loader"), None)
            if loader is None or "Safe" not in ast.unparse(loader) and "SAFE" not in ast.unparse(loader):
                found.append(f"{path.name}:{node.lineno} {ast.unparse(node)[:60]}")
    return found


def test_yaml_is_only_read_with_safe_loaders():
    sources = sorted([*(REPO / "hftl").rglob("*.py"), *(REPO / "recipes").glob("*.py")])
    assert not [use for path in sources for use in _unsafe_yaml_uses(path)]


def test_the_yaml_check_catches_offenders(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(
        "import yaml\nyaml.load(s)\nyaml.load(s, Loader=yaml.Loader)\nyaml.unsafe_load(s)\n"
        "yaml.load(s, Loader=yaml.SafeLoader)\nyaml.safe_load(s)\n"
    )
    assert len(_unsafe_yaml_uses(bad)) == 4  # two bare loads, yaml.Loader, unsafe_load
