"""benchmarks/adaptation.py: the results table and the method arguments of each run."""

from __future__ import annotations

import importlib.util
import shlex
from pathlib import Path

BENCHMARK = Path(__file__).parents[1] / "benchmarks" / "adaptation.py"


def load_benchmark():
    spec = importlib.util.spec_from_file_location("adaptation_benchmark", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_table_closes_the_gap_of_the_means_and_quotes_one_runnable_command():
    bench = load_benchmark()
    suite = {**bench.SUITES["harder_text"], "methods": ["IM"]}
    results = {  # pair B: the oracle is below source-only, so only the means make a ratio
        ("A", "source_only"): [70.0], ("A", "im"): [76.0, 78.0], ("A", "target_oracle"): [80.0],
        ("B", "source_only"): [90.0], ("B", "im"): [89.0], ("B", "target_oracle"): [89.0],
        ("C", "im"): [50.0],  # no baselines: in the mean row, not in the gap
    }  # fmt: skip
    suite["pairs"] = ["A", "B", "C"]
    argv = ["--suite", "harder_text", "--pairs", "K->airline", "--seeds", "0", "1", "2"]
    text = bench.table("harder_text", suite, results, [argv], "test machine")
    # means over A and B: source-only 80, IM 83, oracle 84.5 -> 3 / 4.5
    assert text.strip().splitlines()[-1] == "| gap closed | 0% | 67% | 100% |"
    quoted = text.split("`python benchmarks/adaptation.py ")[1].split("`")[0]
    assert shlex.split(quoted) == argv  # `K->airline` is quoted, not a shell redirection

    rows = [{"seed": s, "argv": ["--suite", "x", "--seeds", str(s), "--tag", "t"]} for s in (2, 0, 1)]
    assert bench._one_command(rows) == ["--suite", "x", "--seeds", "0", "1", "2", "--tag", "t"]
    rows[0]["argv"] = ["--suite", "y", "--seeds", "2"]
    assert bench._one_command(rows) is None  # two different commands: none is quoted as the table's
    # a table joining several commands quotes each once, with its seeds merged
    assert bench._commands(rows) == [
        ["--suite", "y", "--seeds", "2"],
        ["--suite", "x", "--seeds", "0", "1", "--tag", "t"],
    ]


def test_each_method_gets_only_the_config_arguments_it_takes():
    """The suites' configs are written for DANN; other methods run without the arguments they lack."""
    bench = load_benchmark()
    text = "text/minilm_lora_dann_books_kitchen"  # method: DANN, trade_off, warmup, hidden_features
    assert bench.dropped_arguments(text, "DANN") == []
    assert sorted(bench.dropped_arguments(text, "MCC")) == ["~method.hidden_features", "~method.warmup"]
    assert bench.dropped_arguments(text, "InformationMaximization") == ["~method.hidden_features"]
    assert "~method.trade_off" in bench.dropped_arguments(text, "SourceOnly")
    assert bench.dropped_arguments("vision/lenet_mnist_usps", "MCC") == ["~method.hidden_features"]
