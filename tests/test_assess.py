"""``hftl assess`` end to end on tiny random encoders and tiny csv domains."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import yaml

from hftl.assess import score_candidate
from hftl.cli import main as hftl

POSITIVE = ["good film", "great movie", "very good book", "a great film"]
NEGATIVE = ["bad film", "not good movie", "very bad book", "a bad movie"]


def write_domain(path: Path, suffix: str, n: int = 24) -> str:
    rows = ["text,label"]
    for i in range(n):
        words = POSITIVE if i % 2 else NEGATIVE
        rows.append(f"{words[i % 4]} {suffix},{'pos' if i % 2 else 'neg'}")
    path.write_text("\n".join(rows) + "\n")
    return str(path)


@pytest.fixture()
def assess_config(tmp_path: Path, tiny_models: dict[str, str]) -> dict:
    encoder = {"_component_": "hftl.encoders.TextEncoder", "model": tiny_models["bert"], "max_length": 16}
    data = {"_component_": "hftl.data.ClassificationData", "validation_size": 0.25}
    return {
        "encoders": {"tiny_mean": {**encoder, "pooling": "mean"}, "tiny_cls": {**encoder, "pooling": "cls"}},
        "sources": {
            "near": {**data, "path": write_domain(tmp_path / "near.csv", "the book")},
            "far": {**data, "path": write_domain(tmp_path / "far.csv", "of that movie is it")},
        },
        "target": {
            **data,
            "path": write_domain(tmp_path / "target.csv", "the book", n=40),
            "validation_size": 0,
        },
        "assess": {"max_samples": 32, "batch_size": 8, "output": str(tmp_path / "assess.json")},
    }


def run_assess(tmp_path: Path, config: dict, *overrides: str) -> int:
    path = tmp_path / "assess.yaml"
    path.write_text(yaml.safe_dump(config))
    return hftl(["assess", "--config", str(path), *overrides])


def test_assess_ranks_every_encoder_source_pair_label_free(tmp_path, assess_config, capsys):
    assert run_assess(tmp_path, assess_config) == 0
    out = capsys.readouterr().out
    assert "ranked by pad" in out
    result = json.loads(Path(assess_config["assess"]["output"]).read_text())
    rows = result["rows"]
    assert result["rank_by"] == "pad"
    assert {(r["encoder"], r["source"]) for r in rows} == {
        (e, s) for e in ("tiny_mean", "tiny_cls") for s in ("near", "far")
    }
    assert [r["rank"] for r in rows] == [1, 2, 3, 4]
    pads = [r["pad"] for r in rows]
    assert pads == sorted(pads)  # closest domain first
    for r in rows:
        assert r["leep"] is None and r["nce"] is None  # no target labels were read
        assert 0.0 <= r["pad"] <= 2.0 and r["mmd"] >= 0.0 and np.isfinite(r["logme"])
        assert r["encoder"] in out and isinstance(r["warnings"], list)


def test_assess_with_target_labels_ranks_by_leep(tmp_path, assess_config, capsys):
    assert run_assess(tmp_path, assess_config, "assess.target_labeled=16") == 0
    out = capsys.readouterr().out
    rows = json.loads(Path(assess_config["assess"]["output"]).read_text())["rows"]
    assert "ranked by leep" in out
    leeps = [r["leep"] for r in rows]
    assert leeps == sorted(leeps, reverse=True) and all(v <= 0.0 for v in leeps)
    assert all(r["nce"] <= 0.0 and r["leep_gain"] is not None for r in rows)


def test_assess_config_errors_are_named(tmp_path, assess_config, capsys):
    assert run_assess(tmp_path, assess_config, "assess.rank_by=leep") == 2
    assert "assess.target_labeled" in capsys.readouterr().err
    assert run_assess(tmp_path, assess_config, "assess.rank_bye=leep") == 2
    assert "rank_by" in capsys.readouterr().err  # the nearest field name is suggested
    del assess_config["sources"]
    assert run_assess(tmp_path, assess_config) == 2
    assert "`sources`" in capsys.readouterr().err


def test_score_candidate_prefers_the_shifted_source_less():
    rng = np.random.default_rng(0)

    def domain(shift: float, n: int = 300):
        y = rng.integers(0, 2, size=n)
        return rng.normal(size=(n, 6)) + 1.5 * y[:, None] * np.eye(6)[0] + shift, y

    target, y_t = domain(0.0)
    near = score_candidate(
        *domain(0.1), *domain(0.1, 60), target, features_t_labeled=target[:50], labels_t=y_t[:50]
    )
    far = score_candidate(
        *domain(2.0), *domain(2.0, 60), target, features_t_labeled=target[:50], labels_t=y_t[:50]
    )
    assert near["pad"] < far["pad"] and near["mmd"] < far["mmd"]
    assert near["transfer_bound"] < far["transfer_bound"] and near["leep"] > far["leep"]


def test_shipped_config_is_valid(data_dir):
    from hftl.assess import AssessConfig
    from hftl.config import load_config, to_dataclass, validate_config

    cfg = load_config("assess/amazon_sources")
    validate_config(cfg, sections={"assess": AssessConfig}, required=("encoders", "sources", "target"))
    assert to_dataclass(AssessConfig, cfg.assess, key="assess").rank_by == "auto"
    assert set(cfg.sources) == {"books", "dvd", "electronics"}
