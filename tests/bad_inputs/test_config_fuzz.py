"""Property tests of the config parser: any YAML text and any override either works or raises ConfigError.

A traceback from deep inside OmegaConf or PyYAML on a typo is a bug: the user must get one message that
names the file or the override.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from omegaconf import OmegaConf

from hftl.config import apply_overrides, load_config, validate_config
from hftl.errors import ConfigError

SETTINGS = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
KEY = st.from_regex(r"[a-z_~\[\]0-9.$=]{1,12}", fullmatch=True)
VALUE = st.one_of(st.text(max_size=12), st.integers(), st.floats(allow_nan=True), st.booleans(), st.none())
BASE = {
    "output_dir": "out",
    "train": {"epochs": 1, "batch_size": 8},
    "optimizer": {"lr": 0.1, "betas": [0.9, 0.99]},
}


@SETTINGS
@given(text=st.text(max_size=200))
def test_any_yaml_text_loads_or_raises_config_error(tmp_path: Path, text: str):
    path = tmp_path / "fuzz.yaml"
    path.write_text(text, encoding="utf-8", errors="surrogatepass") if "\ud800" not in text else None
    if not path.exists():
        return
    try:
        cfg = load_config(str(path))
    except ConfigError as err:
        assert "fuzz.yaml" in str(err) or "mapping" in str(err).lower()
    else:
        assert OmegaConf.is_dict(cfg)


@SETTINGS
@given(key=KEY, value=VALUE)
def test_any_override_applies_or_raises_config_error(key: str, value):
    cfg = OmegaConf.create(BASE)
    try:
        apply_overrides(cfg, [f"{key}={value}"])
    except ConfigError as err:
        assert str(err)


@SETTINGS
@given(
    overrides=st.lists(
        st.from_regex(r"[a-z_.~]{1,10}(=[a-z0-9_.\[\],{}:]{0,10})?", fullmatch=True), max_size=4
    )
)
def test_override_lists_then_validation_never_crash(overrides: list[str]):
    cfg = OmegaConf.create(BASE)
    try:
        apply_overrides(cfg, overrides)
        validate_config(cfg, required=("output_dir",))
    except ConfigError:
        pass


@pytest.mark.parametrize("text", ["[1, 2]", "just a string", "42", "- a\n- b"])
def test_non_mapping_yaml_is_a_config_error(tmp_path: Path, text: str):
    path = tmp_path / "list.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="list.yaml"):
        load_config(str(path))
