"""Never silently worse: the fallback's decision on toy scores, then the adapt recipe end to end keeping the
source-only model when the adapted one is made worse on purpose (and saying so in metrics, report and card)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from helpers import adapt_config

import hftl as hftl_api
from hftl.adaptation.fallback import decide
from hftl.cli import main as hftl


def _results(so: float, ad: float, so_acc: float = 0.9, ad_acc: float = 0.8, **extra) -> dict:
    """Final scores: ``im`` and ``dev`` both ``so``/``ad``, source-val accuracy ``so_acc``/``ad_acc``."""
    return {
        "source_only": {"final_scores": {"im": so, "dev": so, "source_val_acc": so_acc}},
        "dann": {"final_scores": {"im": ad, "dev": ad, "source_val_acc": ad_acc}, **extra},
    }


def test_decide_compares_by_the_criterion_in_its_direction():
    assert decide(_results(0.4, 0.5), "dann", criterion="im")["kept"] == "dann"
    worse = decide(_results(0.4, 0.3), "dann", criterion="im")
    assert worse["kept"] == "source_only" and worse["scores"] == {"source_only": 0.4, "dann": 0.3}
    assert "source_only scores better by `im` (0.4000 vs dann 0.3000)" in worse["reasons"]
    # lower is better (dev): the same numbers flip the call
    assert decide(_results(0.4, 0.3), "dann", criterion="dev")["kept"] == "dann"
    assert decide(_results(0.3, 0.4), "dann", criterion="dev")["kept"] == "source_only"


def test_decide_falls_back_only_when_the_confirming_validator_agrees():
    confirmed = decide(_results(0.4, 0.3), "dann", criterion="im", confirm="source_val_acc")
    assert confirmed["kept"] == "source_only" and confirmed["confirm_scores"] == {
        "source_only": 0.9,
        "dann": 0.8,
    }
    assert "and by `source_val_acc` (0.9000 vs 0.8000)" in confirmed["reasons"][0]
    # the adapted model keeps its source accuracy: im's worse score alone does not make the call
    overruled = decide(_results(0.4, 0.3, ad_acc=0.9), "dann", criterion="im", confirm="source_val_acc")
    assert overruled["kept"] == "dann" and overruled["reasons"] == []
    assert overruled["overruled"] == [
        "source_only scores better by `im` (0.4000 vs dann 0.3000), but not by `source_val_acc` (0.9000 vs 0.9000)"
    ]
    # a better criterion score never falls back, whatever the confirming validator says
    assert (
        decide(_results(0.4, 0.5, ad_acc=0.1), "dann", criterion="im", confirm="source_val_acc")["kept"]
        == "dann"
    )


def test_decide_falls_back_on_collapse_even_when_the_criterion_prefers_the_method():
    collapsed = lambda s: "one class" if s["im"] > 0.45 else None  # noqa: E731  (toy signal)
    call = decide(_results(0.4, 0.5), "dann", criterion="im", confirm="source_val_acc", collapsed=collapsed)
    assert (
        call["kept"] == "source_only"
        and "final target predictions collapsed: one class" in call["reasons"][0]
    )
    no_checkpoint = {"collapse": {"collapsed": True, "pre_collapse_checkpoint": False, "first_step": 50}}
    call = decide(_results(0.4, 0.5, **no_checkpoint), "dann", criterion="im", confirm="source_val_acc")
    assert call["kept"] == "source_only" and "step 50" in call["reasons"][0]


def _run(tmp_path: Path, cfg: dict, *args: str) -> dict:
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(tmp_path / "cfg.yaml"), "--allow-any-component", *args]) == 0
    return json.loads((Path(cfg["output_dir"]) / "metrics.json").read_text())


@pytest.fixture(scope="module")
def worse_run(tmp_path_factory, tiny_models) -> tuple[Path, Path, dict]:
    """helpers.OneClass, guard off, fallback at its default: the adapted model predicts one class."""
    tmp = tmp_path_factory.mktemp("fallback")
    cfg = adapt_config(tmp, tiny_models["bert"], "helpers.OneClass", trade_off=5.0)
    cfg["train"]["epochs"] = 4
    cfg["report"]["baselines"] = ["source_only"]  # fallback: auto -> on
    cfg["selection"] = {"collapse_guard": False}  # let the adapted model end collapsed
    return tmp, Path(cfg["output_dir"]), _run(tmp, cfg)


def test_fallback_keeps_source_only_when_adaptation_is_made_worse(worse_run):
    tmp, out, metrics = worse_run
    results = metrics["results"]
    assert results["one_class"]["final_scores"]["target_top_share"] == 1.0  # made worse: one class
    assert metrics["kept"] == "source_only" and metrics["fallback"]["kept"] == "source_only"
    assert any("collapsed" in r for r in metrics["fallback"]["reasons"])
    # the saved model is the source-only one: its target test accuracy is source-only's, not one_class's
    saved = json.loads((out / "model" / "metrics.json").read_text())
    assert (
        saved["target_test_acc"] == results["source_only"]["target_test_acc"]
        and saved["kept"] == "source_only"
    )
    rows = [line.rsplit(",", 1) for line in (tmp / "target_test.csv").read_text().splitlines()[1:]]  # fmt: skip
    predicted = [p["label"] for p in hftl_api.load(out, device="cpu")([text for text, _ in rows])]
    accuracy = sum(p == label for p, (_, label) in zip(predicted, rows, strict=True)) / len(rows)
    assert accuracy == pytest.approx(results["source_only"]["target_test_acc"])
    assert accuracy != pytest.approx(results["one_class"]["target_test_acc"])


def test_the_card_says_which_model_was_kept(worse_run):
    _, out, _ = worse_run
    assert hftl(["card", str(out)]) == 0
    text = (out / "model" / "README.md").read_text()
    assert "**This model is the source-only baseline**" in text and "**source_only** (this model)" in text
    assert "Negative transfer" not in text  # the model shipped is not the worse one


@pytest.mark.parametrize(
    "kept", ["source_only", "one_class"]
)  # the fallback's reasons / an overruled criterion
def test_fallback_text_from_metrics_renders_as_text_in_the_card(worse_run, tmp_path, kept):
    """metrics.json may come from someone else's run folder: the fallback's strings are escaped like every value."""
    import re
    import shutil

    MarkdownIt = pytest.importorskip("markdown_it").MarkdownIt  # noqa: N806  (a CommonMark parser)
    out = tmp_path / "run"
    shutil.copytree(worse_run[1], out)
    hostile = "<script>alert(1)</script> [x](javascript:alert(1)) ![i](http://e/x.png)"
    metrics = json.loads((out / "metrics.json").read_text())
    metrics["kept"] = kept
    metrics["fallback"].update(reasons=[hostile] if kept == "source_only" else [], overruled=[hostile])
    (out / "metrics.json").write_text(json.dumps(metrics))
    assert hftl(["card", str(out), "--force"]) == 0
    html = MarkdownIt("commonmark").render((out / "model" / "README.md").read_text().split("\n---\n", 1)[1])
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html and "<script" not in html
    assert "javascript:" not in " ".join(re.findall(r'(?:href|src)="([^"]*)"', html))
    assert "http://e/x.png" not in " ".join(re.findall(r'src="([^"]*)"', html))


def test_fallback_off_keeps_the_adapted_model(tmp_path, tiny_models, capsys):
    cfg = adapt_config(tmp_path, tiny_models["bert"], "helpers.OneClass", trade_off=5.0)
    cfg["report"]["baselines"] = ["source_only"]
    cfg["selection"] = {"collapse_guard": False, "fallback": "off"}
    metrics = _run(tmp_path, cfg)
    assert metrics["kept"] == "one_class" and "fallback" not in metrics
    assert "Kept source_only" not in capsys.readouterr().out


def test_fallback_source_only_needs_the_baseline(tmp_path, tiny_models, capsys):
    cfg = adapt_config(tmp_path, tiny_models["bert"], "hftl.adaptation.CORAL")
    cfg["selection"] = {"fallback": "source_only"}  # report.baselines is [] in adapt_config
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert hftl(["run", "adapt", "--config", str(tmp_path / "cfg.yaml")]) == 2
    assert "`selection.fallback: source_only`" in capsys.readouterr().err


def test_the_report_says_why_a_worse_criterion_was_overruled():
    from hftl.adaptation.scoring import format_report

    results = _results(0.4, 0.3, ad_acc=0.9)
    for name, acc in (("source_only", 0.70), ("dann", 0.75)):
        results[name].update(target_test_acc=acc, source_val_acc=0.9)
    fallback = decide(results, "dann", criterion="im", confirm="source_val_acc")
    metrics = {
        "method": "dann",
        "selection_criterion": "im",
        "results": results,
        "kept": "dann",
        "fallback": fallback,
    }
    expected = (
        "Kept dann: not predicted to hurt (source_only scores better by `im` (0.4000 vs dann 0.3000), "
        "but not by `source_val_acc` (0.9000 vs 0.9000))."
    )
    assert expected in format_report(metrics)


@pytest.mark.parametrize(("value", "ok"), [(None, True), ("bnm", True), ("accuracy", False)])
def test_fallback_confirm_is_a_criterion_or_null(value, ok):
    from hftl.adaptation.config import SelectionConfig
    from hftl.config import to_dataclass
    from hftl.errors import ConfigError

    if ok:
        assert (
            to_dataclass(SelectionConfig, {"fallback_confirm": value}, key="selection").fallback_confirm
            == value
        )
    else:
        with pytest.raises(ConfigError, match="selection.fallback_confirm"):
            to_dataclass(SelectionConfig, {"fallback_confirm": value}, key="selection")
