"""Unit tests of hftl.config: loading, overrides, the allow-list, instantiate and validation."""

from __future__ import annotations

import dataclasses
import os
from typing import Literal

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
from omegaconf import OmegaConf

from hftl.config import (
    ALLOWED_PREFIXES,
    _parse,
    apply_overrides,
    get_component,
    granted,
    instantiate,
    list_shipped_configs,
    load_config,
    resolve_config_path,
    to_dataclass,
    validate_config,
)
from hftl.errors import ConfigError, DataError

HERE = __name__  # helper classes below live in this module, outside the allow-list


class Box:
    """A toy component: keeps what it was given."""

    def __init__(self, size: int, *, name: str = "box", scale: float = 1.0, items: list[int] | None = None):
        self.size, self.name, self.scale, self.items = size, name, scale, items


class Pool:
    def __init__(self, mode: Literal["mean", "cls"] = "mean", flag: bool = False):
        self.mode, self.flag = mode, flag


class Holder:
    def __init__(self, children: list, extra: dict | None = None):
        self.children, self.extra = children, extra


class Loose:
    def __init__(self, a: int, **kwargs):
        self.a, self.kwargs = a, kwargs


class Fails:
    def __init__(self, kind: str = "value"):
        if kind == "data":
            raise DataError("column `label` not found")
        raise ValueError("bad value")


@dataclasses.dataclass
class TrainArgs:
    epochs: int
    batch_size: int = 32
    lr: float = 1e-3
    schedule: Literal["linear", "cosine"] = "linear"
    seeds: tuple[int, ...] = (0,)
    tag: str | None = None

    def __post_init__(self):
        if self.epochs < 1:
            raise ValueError(f"`epochs` must be >= 1, got {self.epochs}")


def _cfg(**kw):
    return OmegaConf.create(kw)


def _problems(excinfo) -> list[str]:
    return excinfo.value.problems


# ---- loading and overrides -------------------------------------------------------------------------


def test_load_config_from_path_with_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer:\n  _component_: torch.optim.AdamW\n  lr: 1e-3\ntrain:\n  epochs: 3\n")
    cfg = load_config(str(path), ["optimizer.lr=3e-4", "train.epochs=5", "model.head.dims=[1,2]", "new=true"])
    assert cfg.optimizer.lr == 3e-4 and isinstance(cfg.optimizer.lr, float)
    assert cfg.train.epochs == 5
    assert cfg.model.head.dims == [1, 2]
    assert cfg.new is True


def test_overrides_null_delete_and_list_index():
    cfg = _cfg(a={"b": 1, "c": 2}, cbs=[{"x": 1}, {"x": 2}])
    apply_overrides(cfg, ["a.b=null", "~a.c", "cbs[1].x=7", "cbs.0.x=5", "s='3'"])
    assert cfg.a == {"b": None}
    assert [i.x for i in cfg.cbs] == [5, 7]
    assert cfg.s == "3"


def test_bad_overrides_reported_at_once():
    cfg = _cfg(a={"b": 1}, n=3)
    with pytest.raises(ConfigError) as e:
        apply_overrides(cfg, ["nokey", "~a.missing", "n.sub=1", "=5", "a.b=[1,", "~a.b=2"])
    probs = _problems(e)
    assert len(probs) == 6
    assert "`nokey`: not an override; expected `key.path=value`" in probs[0]
    assert "no key `a.missing`" in probs[1]
    assert "`n.sub`" in probs[2] and "`n`" in probs[2] and "not a section" in probs[2]
    assert "`=5`: not an override" in probs[3]
    assert "not valid YAML" in probs[4]
    assert "`~a.b=2`: not an override" in probs[5]


def test_yaml_syntax_error_names_file_and_line(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("a: 1\nb: : 2\n")
    with pytest.raises(ConfigError) as e:
        load_config(str(path))
    assert e.value.source == str(path)
    assert "line 2" in str(e.value) and "b: : 2" in str(e.value)


def test_top_level_must_be_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(str(path))


def test_shipped_names_and_suggestions(tmp_path, monkeypatch):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "minilm_lora_sst2.yaml").write_text("a: 1\n")
    monkeypatch.setattr(_parse, "shipped_config_dir", lambda: tmp_path)
    assert list_shipped_configs() == ["text/minilm_lora_sst2"]
    assert resolve_config_path("text/minilm_lora_sst2") == tmp_path / "text" / "minilm_lora_sst2.yaml"
    assert resolve_config_path("text/minilm_lora_sst2.yaml").name == "minilm_lora_sst2.yaml"
    with pytest.raises(ConfigError) as e:
        resolve_config_path("text/minilm_lora_sst")
    msg = str(e.value)
    assert "`text/minilm_lora_sst`" in msg and "text/minilm_lora_sst2" in msg and "hftl ls" in msg


def test_data_dir_resolver(tmp_path, monkeypatch):
    monkeypatch.setenv("HFTL_DATA_DIR", str(tmp_path))
    cfg = _cfg(root="${hftl.data_dir:}", f="${hftl.data_dir:}/SST-2/train.tsv", sub="${hftl.data_dir:sst2}")
    assert cfg.root == str(tmp_path)
    assert cfg.f == f"{tmp_path}/SST-2/train.tsv"
    assert cfg.sub == str(tmp_path / "sst2")


def test_data_dir_resolver_fails_with_advice(tmp_path, monkeypatch):
    monkeypatch.delenv("HFTL_DATA_DIR", raising=False)
    monkeypatch.chdir(tmp_path)
    import hftl.config.data_dir as data_dir  # owns the search order the resolver uses

    monkeypatch.setattr(data_dir, "__file__", str(tmp_path / "a" / "b" / "c" / "data_dir.py"))
    cfg = _cfg(data={"path": "${hftl.data_dir:}/x.csv"})
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert "`data.path`" in str(e.value) and "HFTL_DATA_DIR" in str(e.value)


# ---- components ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["os.system", "subprocess.run", "builtins.eval", "torchx.foo"])
def test_allow_list_refuses_other_modules(path):
    with pytest.raises(ConfigError) as e:
        get_component(path)
    assert "--allow-any-component" in str(e.value) and f"`{path}`" in str(e.value)


def test_get_component_allowed_and_allow_any():
    assert "torch" in ALLOWED_PREFIXES
    assert get_component("torch.optim.AdamW") is torch.optim.AdamW
    assert get_component("torch.nn.Linear") is torch.nn.Linear
    assert get_component("os.path.join", allow_any=True) is os.path.join
    assert get_component(f"{HERE}.Box", allow_any=True) is Box


def test_get_component_import_failure_suggests_names():
    with pytest.raises(ConfigError) as e:
        get_component("torch.optim.AdamX")
    assert "`torch.optim` has no attribute `AdamX`" in str(
        e.value
    ) and "did you mean `torch.optim.Adam`" in str(e.value)
    with pytest.raises(ConfigError, match="`torch.float32` is not a registered component"):
        get_component("torch.float32")
    with pytest.raises(ConfigError, match="not callable"):
        get_component("torch.float32", allow_any=True)


def test_instantiate_allowed_with_runtime_kwargs():
    lin = instantiate(_cfg(_component_="torch.nn.Linear", out_features=2), in_features=4)
    assert isinstance(lin, torch.nn.Linear) and lin.weight.shape == (2, 4)
    cfg = _cfg(optimizer={"_component_": "torch.optim.AdamW", "lr": "${lr}"}, lr=0.5)
    opt = instantiate(cfg.optimizer, params=lin.parameters())
    assert opt.param_groups[0]["lr"] == 0.5


def test_instantiate_refuses_without_allow_any():
    with pytest.raises(ConfigError, match="--allow-any-component"):
        instantiate({"_component_": f"{HERE}.Box", "size": 1})


def test_instantiate_recurses_into_lists_and_dicts():
    node = _cfg(
        _component_=f"{HERE}.Holder",
        children=[
            {"_component_": f"{HERE}.Box", "size": 1},
            {"_component_": f"{HERE}.Pool", "mode": "cls"},
            3,
        ],
        extra={"p": {"_component_": f"{HERE}.Pool"}, "plain": {"k": [1, 2]}},
    )
    obj = instantiate(node, allow_any=True)
    assert isinstance(obj.children[0], Box) and obj.children[0].size == 1
    assert isinstance(obj.children[1], Pool) and obj.children[1].mode == "cls"
    assert obj.children[2] == 3
    assert isinstance(obj.extra["p"], Pool)
    assert obj.extra["plain"] == {"k": [1, 2]} and type(obj.extra["plain"]) is dict


def test_instantiate_positional_args_and_kwargs_override():
    obj = instantiate({"_component_": f"{HERE}.Box", "name": "yaml"}, 5, allow_any=True, name="rt")
    assert (obj.size, obj.name) == (5, "rt")


def test_instantiate_errors():
    with pytest.raises(ConfigError) as e:
        instantiate({"_component_": f"{HERE}.Fails"}, allow_any=True)
    assert "Fails" in str(e.value) and "ValueError: bad value" in str(e.value)
    assert isinstance(e.value.__cause__, ValueError)
    with pytest.raises(DataError, match="label"):  # hftl errors pass through unchanged
        instantiate({"_component_": f"{HERE}.Fails", "kind": "data"}, allow_any=True)
    with pytest.raises(ConfigError, match="_component_"):
        instantiate({"size": 1})


# ---- validation ------------------------------------------------------------------------------------


def test_validate_accepts_good_config():
    cfg = _cfg(
        output_dir="out",
        optimizer={"_component_": "torch.optim.AdamW", "lr": 3e-4, "betas": [0.9, 0.99], "fused": None},
        head={"_component_": "torch.nn.Linear", "bias": False},
        train={"epochs": 2},
        anything={"recipes": "own their keys"},
    )
    validate_config(
        cfg,
        runtime_args={"optimizer": {"params"}, "head": {"in_features", "out_features"}},
        sections={"train": TrainArgs},
        required=["output_dir", "optimizer"],
    )


def test_unknown_key_with_suggestion_and_listing():
    cfg = _cfg(optimizer={"_component_": "torch.optim.AdamW", "lrr": 1e-3, "zzz": 1})
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, runtime_args={"optimizer": {"params"}})
    probs = _problems(e)
    assert probs[0] == "`optimizer.lrr`: unknown argument of torch.optim.AdamW; did you mean `lr`?"
    assert probs[1].startswith(
        "`optimizer.zzz`: unknown argument of torch.optim.AdamW; valid names: `params`"
    )


def test_wrong_types():
    cfg = _cfg(
        optimizer={"_component_": "torch.optim.AdamW", "lr": "abc", "amsgrad": 1, "betas": [0.9]},
        pool={"_component_": f"{HERE}.Pool", "mode": "max", "flag": "yes"},
        box={"_component_": f"{HERE}.Box", "size": True, "scale": 2, "items": [1, "x"]},
    )
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, runtime_args={"optimizer": {"params"}}, allow_any=True)
    assert _problems(e) == [
        "`optimizer.lr`: expected float, got 'abc' (str)",
        "`optimizer.amsgrad`: expected bool, got 1 (int)",
        "`optimizer.betas`: expected a list of 2 items, got [0.9] (list)",
        "`pool.mode`: expected one of 'mean', 'cls', got 'max' (str)",
        "`pool.flag`: expected bool, got 'yes' (str)",
        "`box.size`: expected int, got True (bool)",
        "`box.items`: expected a list whose items are int (item 1 is 'x') or None, got [1, 'x'] (list)",
    ]


def test_missing_required_and_runtime_args():
    cfg = _cfg(head={"_component_": "torch.nn.Linear", "in_features": 4})
    with pytest.raises(ConfigError) as e:
        validate_config(cfg)
    assert _problems(e) == [
        "`head.out_features`: required argument of torch.nn.Linear is missing; add `out_features: ...` under `head`"
    ]
    validate_config(cfg, runtime_args={"head": ["out_features"]})  # passed by the recipe: fine
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, runtime_args={"head": ["in_features", "out_features"]})
    assert _problems(e) == ["`head.in_features`: set by the recipe at run time; remove it from the config"]


def test_nested_components_and_list_paths():
    cfg = _cfg(
        model={"_component_": f"{HERE}.Holder", "children": [{"_component_": f"{HERE}.Box", "sise": 1}]},
        callbacks=[{"_component_": f"{HERE}.Pool"}, {"_component_": "os.system", "command": "ls"}],
        loose={"_component_": f"{HERE}.Loose", "a": 1, "whatever": 2},
    )
    with pytest.raises(ConfigError) as e:
        validate_config(cfg, allow_any=False)
    probs = _problems(e)
    assert any(p.startswith("`model._component_`:") and "--allow-any-component" in p for p in probs)
    with pytest.raises(ConfigError) as e:
        validate_config(
            cfg, allow_any=True, runtime_args={"model.children[0]": {"size"}, "callbacks[1]": {"command"}}
        )
    probs = _problems(e)
    assert probs == [
        f"`model.children[0].sise`: unknown argument of {HERE}.Box; did you mean `size`?",
        "`callbacks[1].command`: set by the recipe at run time; remove it from the config",
    ]


def test_several_problems_in_one_error(monkeypatch):
    monkeypatch.delenv("HFTL_NOPE_VAR", raising=False)
    cfg = _cfg(
        optimizer={"_component_": "torch.optim.AdamW", "lrr": 1e-3, "params": []},
        data={"path": "${oc.env:HFTL_NOPE_VAR}"},
        head={"_component_": "torch.nn.Linaer"},
        train={"epoch": 1, "lr": "fast"},
        todo="???",
    )
    with pytest.raises(ConfigError) as e:
        validate_config(
            cfg,
            runtime_args={"optimizer": {"params"}},
            sections={"train": TrainArgs},
            required=["output_dir", "model.name"],
            source="my.yaml",
        )
    probs = _problems(e)
    assert e.value.source == "my.yaml" and str(e.value).startswith(f"{len(probs)} config errors in my.yaml:")
    expected_parts = [
        "`output_dir`: required key is missing",
        "`model.name`: required key is missing",
        "`optimizer.lrr`: unknown argument",
        "`optimizer.params`: set by the recipe at run time",
        "`data.path`: cannot resolve `${oc.env:HFTL_NOPE_VAR}`: `${oc.env:HFTL_NOPE_VAR}`: a config may read only",
        "`head._component_`: cannot import `torch.nn.Linaer`",
        "`todo`: has no value",
        "`train.epoch`: unknown field of TrainArgs; did you mean `epochs`?",
        "`train.epochs`: required field of TrainArgs is missing",
        "`train.lr`: expected float, got 'fast' (str)",
    ]
    assert len(probs) == len(expected_parts)
    for part in expected_parts:
        assert any(p.startswith(part) for p in probs), part
    assert "HFTL_NOPE_VAR" in next(p for p in probs if p.startswith("`data.path`"))


# ---- dataclass sections ----------------------------------------------------------------------------


def test_to_dataclass_builds_and_checks():
    args = to_dataclass(TrainArgs, _cfg(epochs=3, lr=1, schedule="cosine", seeds=[1, 2]), key="train")
    assert args == TrainArgs(epochs=3, lr=1, schedule="cosine", seeds=(1, 2))
    assert to_dataclass(TrainArgs, {"epochs": 1}, key="train").batch_size == 32
    with pytest.raises(ConfigError) as e:
        to_dataclass(TrainArgs, _cfg(epochs=1.5, schedule="step", batchsize=8), key="train")
    assert _problems(e) == [
        "`train.batchsize`: unknown field of TrainArgs; did you mean `batch_size`?",
        "`train.epochs`: expected int, got 1.5 (float)",
        "`train.schedule`: expected one of 'linear', 'cosine', got 'step' (str)",
    ]
    with pytest.raises(ConfigError, match="`train`: `epochs` must be >= 1"):
        to_dataclass(TrainArgs, {"epochs": 0}, key="train")


def test_to_dataclass_none_gives_defaults():
    @dataclasses.dataclass
    class Opts:
        a: int = 1
        b: list[str] = dataclasses.field(default_factory=list)

    assert to_dataclass(Opts, None, key="opts") == Opts()
    validate_config(_cfg(), sections={"opts": Opts})  # an absent section whose fields all have defaults
    with pytest.raises(ConfigError, match="`train.epochs`: required field"):
        validate_config(_cfg(), sections={"train": TrainArgs})


def test_interpolation_problems_name_the_key(monkeypatch):
    monkeypatch.delenv("HFTL_NOPE_VAR", raising=False)
    cfg = _cfg(
        head={"_component_": "torch.nn.Linear", "in_features": "${oc.env:HFTL_NOPE_VAR}", "out_features": 2},
        train={"epochs": "${nowhere}"},
    )
    with pytest.raises(ConfigError) as e, granted(allow_env=["HFTL_NOPE_VAR"]):
        instantiate(cfg.head)
    assert str(e.value).startswith("Config error: `head.in_features`: cannot resolve interpolation")
    with pytest.raises(ConfigError) as e, granted(allow_env=["HFTL_NOPE_VAR"]):
        validate_config(cfg, sections={"train": TrainArgs}, runtime_args={"head": "bias"})
    assert _problems(e) == [
        "`head.in_features`: cannot resolve `${oc.env:HFTL_NOPE_VAR}`: `${oc.env:HFTL_NOPE_VAR}`: "
        "environment variable `HFTL_NOPE_VAR` is not set; set it or give a default: `${oc.env:HFTL_NOPE_VAR,VALUE}`",
        "`train.epochs`: cannot resolve `${nowhere}`: Interpolation key 'nowhere' not found",
    ]


def test_yaml11_boolean_words_stay_words_on_the_command_line():
    from hftl.config import load_config

    cfg = load_config("text/minilm_lora_sst2", ["train.mixed_precision=no", "train.resume=false", "x=off"])
    assert cfg.train.mixed_precision == "no" and cfg.train.resume is False and cfg.x == "off"
