"""Unit tests for hftl.adaptation.selection: exact scores on hand-made predictions, known orderings on toys."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.special import log_softmax, softmax
from sklearn.datasets import make_blobs

from hftl.adaptation.config import SelectionConfig
from hftl.adaptation.selection import (
    CRITERIA,
    bnm,
    class_ami,
    deep_embedded_validation,
    importance_weights,
    information_maximization,
    regret,
    score,
    select,
    soft_neighborhood_density,
    source_validation_accuracy,
    weighted_spearman,
)
from hftl.adaptation.validators import batch_nuclear_norm
from hftl.config import to_dataclass
from hftl.errors import ConfigError, DataError, HftlError


def one_hot(labels: list[int], num_classes: int) -> np.ndarray:
    return np.eye(num_classes)[labels]


# ---------------------------------------------------------------- source accuracy and IM (exact answers)


def test_source_validation_accuracy_exact_and_accepts_tensors():
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    assert source_validation_accuracy(probs, torch.tensor([0, 1, 1, 1])) == pytest.approx(0.75)
    with pytest.raises(DataError, match="labels_s_val"):
        source_validation_accuracy(probs, [0, 1])


@pytest.mark.parametrize("num_classes", [2, 3, 10])
def test_im_is_log_c_for_confident_predictions_spread_evenly(num_classes):
    probs = one_hot(list(range(num_classes)) * 4, num_classes)
    assert information_maximization(probs) == pytest.approx(math.log(num_classes))


def test_im_is_zero_for_uniform_or_collapsed_predictions():
    assert information_maximization(np.full((12, 4), 0.25)) == pytest.approx(0.0, abs=1e-12)
    assert information_maximization(one_hot([2] * 12, 4)) == pytest.approx(0.0, abs=1e-12)


def test_im_accepts_bfloat16_tensor_and_rejects_logits():
    probs = torch.tensor([[1.0, 0.0], [0.0, 1.0]], dtype=torch.bfloat16)
    assert information_maximization(probs) == pytest.approx(math.log(2))
    logits = torch.randn(64, 5, generator=torch.Generator().manual_seed(0)) * 3
    half = logits.to(torch.bfloat16).softmax(dim=1)  # rows sum to 1 only up to bf16 rounding
    assert information_maximization(half) == pytest.approx(
        information_maximization(logits.softmax(1)), abs=0.02
    )
    with pytest.raises(DataError, match="softmax"):
        information_maximization(np.array([[2.0, -1.0], [0.5, 3.0]]))


# ---------------------------------------------------------------- SND


def test_snd_of_identical_rows_is_log_n_minus_1():
    # every neighbour equally similar -> uniform over the N - 1 others (also the collapse caveat)
    assert soft_neighborhood_density(np.ones((9, 3))) == pytest.approx(math.log(8))


def test_snd_prefers_dense_neighbourhoods_as_the_paper_defines():
    rng = np.random.default_rng(0)
    # 4 tight clusters on the sphere: each sample has ~49 near-identical neighbours -> entropy ~ log(49)
    centres = rng.normal(size=(4, 16))
    clustered = np.repeat(centres, 50, axis=0) + 0.01 * rng.normal(size=(200, 16))
    scattered = rng.normal(size=(200, 16))  # no neighbourhood structure: few close neighbours
    snd_clustered = soft_neighborhood_density(clustered)
    assert snd_clustered == pytest.approx(math.log(49), abs=0.05)
    assert snd_clustered > soft_neighborhood_density(scattered) + 1.0


def test_snd_ignores_row_scaling_and_subsamples_deterministically():
    rng = np.random.default_rng(1)
    features = rng.normal(size=(60, 8))
    scales = rng.uniform(0.1, 10.0, size=(60, 1))
    assert soft_neighborhood_density(features * scales) == pytest.approx(soft_neighborhood_density(features))
    a = soft_neighborhood_density(features, max_samples=30, seed=3)
    assert a == soft_neighborhood_density(features, max_samples=30, seed=3)
    assert a <= math.log(29) + 1e-9
    with pytest.raises(ConfigError, match="temperature"):
        soft_neighborhood_density(features, temperature=0.0)


# ---------------------------------------------------------------- DEV


def test_dev_without_shift_weights_are_one_and_dev_is_the_mean_loss():
    rng = np.random.default_rng(0)
    source_train, source_val, target = (rng.normal(size=(n, 4)) for n in (600, 400, 600))
    weights = importance_weights(source_train, target, source_val)
    assert weights.mean() == pytest.approx(1.0, abs=0.1)
    assert weights.std() < 0.2
    losses = rng.exponential(0.5, size=400)
    assert deep_embedded_validation(source_train, source_val, losses, target) == pytest.approx(
        losses.mean(), rel=0.05
    )


def test_dev_prefers_the_model_that_is_right_where_the_target_lies():
    # source: two regions; target: only the right one. Both models have the same mean source-val loss.
    centres = [(-3.0, 0.0), (3.0, 0.0)]
    source_train, _ = make_blobs(n_samples=[300, 300], centers=centres, cluster_std=1.0, random_state=0)
    source_val, blob = make_blobs(n_samples=[200, 200], centers=centres, cluster_std=1.0, random_state=1)
    target, _ = make_blobs(n_samples=[400], centers=[centres[1]], cluster_std=1.0, random_state=2)
    right = blob == 1
    good_on_target = np.where(right, 0.1, 1.0)
    good_elsewhere = np.where(right, 1.0, 0.1)
    assert good_on_target.mean() == pytest.approx(good_elsewhere.mean())
    dev_a = deep_embedded_validation(source_train, source_val, good_on_target, target)
    dev_b = deep_embedded_validation(source_train, source_val, good_elsewhere, target)
    assert dev_a < 0.3 < 0.8 < dev_b
    inputs = {"features_s_train": source_train, "features_s_val": source_val, "features_t": target}
    candidates = [{**inputs, "losses_s_val": losses} for losses in (good_elsewhere, good_on_target)]
    assert select(candidates, "dev") == 1  # lower is better


def test_dev_rejects_mismatched_inputs():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3))
    with pytest.raises(DataError, match="losses_s_val"):
        deep_embedded_validation(x, x, np.ones(5), x)
    with pytest.raises(DataError, match="widths"):
        deep_embedded_validation(x, x, np.ones(20), rng.normal(size=(20, 4)))


# ---------------------------------------------------------------- BNM (exact answers)


@pytest.mark.parametrize("num_classes", [2, 5, 10])
def test_batch_nuclear_norm_exact_values(num_classes):
    c = num_classes
    assert batch_nuclear_norm(np.eye(c)) == pytest.approx(1.0)  # singular values all 1: C / C
    n = 4 * c
    balanced = one_hot(list(range(c)) * 4, c)  # singular values sqrt(4) each: C * 2 / (4 C)
    assert batch_nuclear_norm(balanced) == pytest.approx(math.sqrt(c / n))
    assert batch_nuclear_norm(one_hot([0] * n, c)) == pytest.approx(1 / math.sqrt(n))  # rank 1
    assert batch_nuclear_norm(np.full((n, c), 1 / c)) == pytest.approx(1 / math.sqrt(n * c))


def test_bnm_sums_source_val_and_target_terms_and_ranks_collapse_last():
    balanced, collapsed = one_hot([0, 1, 2] * 4, 3), one_hot([1] * 12, 3)
    uniform = np.full((12, 3), 1 / 3)
    assert bnm(balanced, collapsed) == pytest.approx(
        batch_nuclear_norm(balanced) + batch_nuclear_norm(collapsed)
    )
    # balanced, confident target predictions > collapsed to one class > uniform (unsure)
    assert bnm(balanced, balanced) > bnm(balanced, collapsed) > bnm(balanced, uniform)
    # a checkpoint that lost the source task is penalised by the source term
    assert bnm(balanced, balanced) > bnm(collapsed, balanced)
    assert select([{"probs_s_val": balanced, "probs_t": p} for p in (collapsed, balanced)], "bnm") == 1


def test_bnm_cannot_tell_right_from_wrong_confident_predictions():
    # The nuclear norm is invariant to permuting rows: a known blind spot (it reads no labels).
    rng = np.random.default_rng(0)
    right = softmax(5 * rng.normal(size=(40, 4)), axis=1)
    assert bnm(right, right[rng.permutation(40)]) == pytest.approx(bnm(right, right))


def test_bnm_accepts_tensors_and_rejects_logits_and_class_mismatch():
    probs = torch.tensor(one_hot([0, 1], 2), dtype=torch.bfloat16)
    assert bnm(probs, probs) == pytest.approx(2.0)
    with pytest.raises(DataError, match="softmax"):
        bnm(one_hot([0, 1], 2), np.array([[3.0, -1.0], [0.2, 2.0]]))
    with pytest.raises(DataError, match="classes"):
        bnm(one_hot([0, 1], 2), one_hot([0, 1], 3))


# ---------------------------------------------------------------- ClassAMI


def blobs(num_classes: int = 4, per_class: int = 50, seed: int = 0) -> dict[str, np.ndarray]:
    """Well-separated class clusters in 8-D; source-val and target drawn from the same centres."""
    rng = np.random.default_rng(seed)
    centres = 8.0 * rng.normal(size=(num_classes, 8))
    y = np.repeat(np.arange(num_classes), per_class)
    return {
        "f_s": centres[y] + rng.normal(size=(len(y), 8)), "y_s": y,
        "f_t": centres[y] + rng.normal(size=(len(y), 8)), "y_t": y,
    }  # fmt: skip


def test_class_ami_is_one_when_predictions_follow_the_feature_clusters():
    d = blobs()
    assert class_ami(d["f_s"], d["y_s"], d["f_t"], one_hot(list(d["y_t"]), 4)) == pytest.approx(1.0)
    # logits work too: only the argmax is read
    assert class_ami(d["f_s"], d["y_s"], d["f_t"], 10 * one_hot(list(d["y_t"]), 4) - 5) == pytest.approx(1.0)


def test_class_ami_ranks_aligned_over_noisy_over_shuffled_and_collapsed():
    d = blobs(seed=1)
    rng = np.random.default_rng(1)
    noisy = d["y_t"].copy()
    flip = rng.random(len(noisy)) < 0.2
    noisy[flip] = rng.integers(0, 4, size=int(flip.sum()))
    scores = {
        name: class_ami(d["f_s"], d["y_s"], d["f_t"], one_hot(list(labels), 4))
        for name, labels in {
            "aligned": d["y_t"], "noisy": noisy, "shuffled": rng.permutation(d["y_t"]),
            "collapsed": np.zeros_like(d["y_t"]),
        }.items()
    }  # fmt: skip
    assert scores["aligned"] > scores["noisy"] + 0.05
    assert scores["noisy"] > scores["shuffled"] + 0.05 and scores["noisy"] > scores["collapsed"] + 0.05
    # features without class structure score ~0 even with matching labels
    unstructured = rng.normal(size=d["f_t"].shape)
    source = rng.normal(size=d["f_s"].shape)
    assert abs(class_ami(source, d["y_s"], unstructured, one_hot(list(d["y_t"]), 4))) < 0.1


def test_class_ami_subsamples_deterministically_and_checks_inputs():
    d = blobs(per_class=100)
    probs = one_hot(list(d["y_t"]), 4)
    a = class_ami(d["f_s"], d["y_s"], d["f_t"], probs, max_samples=120, seed=3)
    assert a == class_ami(d["f_s"], d["y_s"], d["f_t"], probs, max_samples=120, seed=3)
    with pytest.raises(DataError, match="widths"):
        class_ami(d["f_s"], d["y_s"], d["f_t"][:, :4], probs)
    with pytest.raises(DataError, match="probs_t"):
        class_ami(d["f_s"], d["y_s"], d["f_t"], probs[:10])
    with pytest.raises(DataError, match="labels_s_val"):
        class_ami(d["f_s"], d["y_s"] + 4, d["f_t"], probs)
    with pytest.raises(DataError, match="as many rows as classes"):
        class_ami(d["f_s"][:1], d["y_s"][:1], d["f_t"][:1], probs[:1])


# ---------------------------------------------------------------- measuring selection quality


def test_weighted_spearman_exact_values():
    assert weighted_spearman([0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.9]) == pytest.approx(1.0)
    # reversed: strongly negative, but not -1 (rows weigh differently in the two weighted rankings)
    assert -1.0 < weighted_spearman([4, 3, 2, 1], [0.5, 0.6, 0.7, 0.9]) < -0.95
    # weights (max of the normalised dense ranks)^2 = [1/9, 1, 1]; weighted ranks [1/9, 10/9, 19/9] and
    # [1/9, 19/9, 10/9] -> weighted Pearson -5/14 (the unweighted Spearman is +0.5)
    assert weighted_spearman([1, 2, 3], [1, 3, 2]) == pytest.approx(-5 / 14)


def test_weighted_spearman_emphasises_the_top_and_handles_nan_and_ties():
    acc = np.linspace(0.5, 0.9, 10)
    top_swapped, bottom_swapped = np.arange(10.0), np.arange(10.0)
    top_swapped[[8, 9]] = top_swapped[[9, 8]]
    bottom_swapped[[0, 1]] = bottom_swapped[[1, 0]]
    assert weighted_spearman(top_swapped, acc) < weighted_spearman(bottom_swapped, acc) < 1.0
    assert weighted_spearman(np.exp(top_swapped), acc) == pytest.approx(weighted_spearman(top_swapped, acc))
    # a NaN score counts as the worst finite score
    with_nan, as_worst = np.arange(10.0), np.arange(10.0)
    with_nan[0], as_worst[0] = np.nan, 1.0
    assert weighted_spearman(with_nan, acc) == pytest.approx(weighted_spearman(as_worst, acc))
    assert math.isnan(weighted_spearman(np.ones(10), acc))  # constant scores: undefined ranking
    with pytest.raises(DataError, match="accuracies"):
        weighted_spearman([1.0, 2.0], [0.5])


def test_regret_picks_like_select():
    assert regret([0.3, 0.9, 0.5], [0.80, 0.75, 0.85]) == pytest.approx(0.10)
    assert regret([0.9, 0.9, 0.1], [0.70, 0.90, 0.95]) == pytest.approx(0.25)  # tie -> earliest
    assert regret([np.nan, 0.2, 0.1], [0.99, 0.5, 0.6]) == pytest.approx(0.49)  # NaN never picked
    assert regret([1.0, 2.0], [0.5, 0.7]) == 0.0
    assert math.isnan(regret([np.nan, np.nan], [0.5, 0.7]))
    with pytest.raises(DataError, match="NaN"):
        regret([1.0, 2.0], [0.5, np.nan])


# ---------------------------------------------------------------- select()


def test_selection_config_accepts_every_criterion():
    for name in CRITERIA:
        assert to_dataclass(SelectionConfig, {"criterion": name}, key="selection").criterion == name
    with pytest.raises(ConfigError, match="class_ami"):
        to_dataclass(SelectionConfig, {"criterion": "ami"}, key="selection")


def test_select_direction_ties_and_errors():
    confident = {"probs_t": one_hot([0, 1, 2, 0, 1, 2], 3)}
    unsure = {"probs_t": np.full((6, 3), 1 / 3)}
    assert select([unsure, confident, confident], "im") == 1  # higher better; tie -> earliest
    assert select([confident, unsure], "im") == 0
    assert CRITERIA["dev"].higher_is_better is False
    assert CRITERIA["snd"].inputs == ("probs_t",)
    assert CRITERIA["bnm"].inputs == ("probs_s_val", "probs_t")
    assert CRITERIA["class_ami"].inputs == ("features_s_val", "labels_s_val", "features_t", "probs_t")
    with pytest.raises(ConfigError, match="source_val_acc") as info:
        select([confident], "accuracy")
    assert all(name in str(info.value) for name in CRITERIA)
    with pytest.raises(HftlError, match="probs_s_val"):
        select([confident], "source_val_acc")
    with pytest.raises(HftlError, match="no candidates"):
        select([], "im")
    assert score(confident, "im") == pytest.approx(math.log(3))


# ---------------------------------------------------------------- the toy problem from TLlib issue #141

RULE_NORMAL = np.array([1.0, 1.0]) / math.sqrt(2)
TARGET_CENTRE = np.array([2.0, 2.0])


def shift_problem(seed: int) -> dict[str, np.ndarray]:
    """Covariate shift in 2-D: two class blobs, translated along the class boundary for the target.

    Labels come from one rule in both domains: the side of the line through ``TARGET_CENTRE`` normal
    to ``RULE_NORMAL``.
    """
    offset = 1.5 * RULE_NORMAL
    source_centres = [TARGET_CENTRE + (2.0, -2.0) - offset, TARGET_CENTRE + (2.0, -2.0) + offset]
    target_centres = [TARGET_CENTRE - offset, TARGET_CENTRE + offset]
    x_s, _ = make_blobs(n_samples=[300, 300], centers=source_centres, cluster_std=1.2, random_state=seed)
    x_v, _ = make_blobs(n_samples=[200, 200], centers=source_centres, cluster_std=1.2, random_state=seed + 1)
    x_t, _ = make_blobs(n_samples=[200, 200], centers=target_centres, cluster_std=0.8, random_state=seed + 2)

    def label(x):
        return ((x - TARGET_CENTRE) @ RULE_NORMAL > 0).astype(int)

    return {"x_s": x_s, "x_v": x_v, "y_v": label(x_v), "x_t": x_t, "y_t": label(x_t)}


def linear_classifier(angle_deg: float, scale: float = 3.0):
    """Logits of a linear classifier through the target centre, its normal rotated from the rule's."""
    a = math.radians(angle_deg)
    normal = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]]) @ RULE_NORMAL

    def logits(x):
        z = scale * (x - TARGET_CENTRE) @ normal
        return np.stack([-z / 2, z / 2], axis=1)

    return logits


@pytest.mark.parametrize("seed", [0, 1])
def test_label_free_criteria_pick_the_best_target_classifier(seed):
    data = shift_problem(seed)
    candidates, target_acc = [], []
    for angle in (35.0, 0.0, 70.0):  # the best one (angle 0) is in the middle of the list
        model = linear_classifier(angle)
        logits_v = model(data["x_v"])
        probs_t = softmax(model(data["x_t"]), axis=1)
        losses_v = -log_softmax(logits_v, axis=1)[np.arange(len(data["y_v"])), data["y_v"]]
        candidates.append(
            {
                "probs_t": torch.from_numpy(probs_t),
                "probs_s_val": softmax(logits_v, axis=1),
                "labels_s_val": data["y_v"],
                "features_s_train": data["x_s"],
                "features_s_val": data["x_v"],
                "losses_s_val": losses_v,
                "features_t": data["x_t"],
            }
        )
        target_acc.append(float(np.mean(probs_t.argmax(axis=1) == data["y_t"])))  # only to verify
    best = int(np.argmax(target_acc))
    assert best == 1 and target_acc[best] > 0.99 and max(target_acc[0], target_acc[2]) < 0.96
    for criterion in ("im", "snd", "dev", "source_val_acc", "bnm", "class_ami"):
        assert select(candidates, criterion) == best, criterion


# ---------------------------------------------------------------- benchmarks/selection.py on fabricated runs

BENCHMARK = Path(__file__).resolve().parents[1] / "benchmarks" / "selection.py"


def fake_run(root: Path, name: str, accs: list[float], method: str = "dann") -> None:
    """A run directory as benchmarks/adaptation.py lays it out, with a metrics.json history in which
    `im` follows the accuracy, `dev` (lower is better) its negative and `snd` runs against it."""
    history = [
        {
            "step": 10 * (i + 1), "eval_target_test_acc": a, "eval_im": a, "eval_dev": -a, "eval_snd": -a,
            "eval_source_val_acc": 0.9,
        }
        for i, a in enumerate(accs)
    ]  # fmt: skip
    oracle = {"history": [{"step": 10, "eval_target_test_acc": 1.0, "eval_im": 9.0}]}
    (root / name).mkdir(parents=True)
    metrics = {"results": {method: {"history": history}, "target_oracle": oracle}}
    (root / name / "metrics.json").write_text(json.dumps(metrics))


def test_selection_benchmark_scores_fabricated_runs(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("selection_benchmark", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    fake_run(tmp_path / "digits", "M-U_dann_s0", [0.60, 0.80, 0.70])
    fake_run(tmp_path / "digits", "M-U_mcc_s0", [0.50, 0.65, 0.90], method="mcc")
    fake_run(tmp_path / "fsdd", "_to_nicolas_dann_s1", [0.4, 0.5])
    (tmp_path / "digits" / "notarun").mkdir()
    (tmp_path / "digits" / "notarun" / "metrics.json").write_text("{}")
    (tmp_path / "digits" / "M-U_dann_s0" / "model").mkdir()  # the run's saved model has a metrics.json too
    (tmp_path / "digits" / "M-U_dann_s0" / "model" / "metrics.json").write_text('{"results": {}}')
    rows = bench.collect([tmp_path])
    err = capsys.readouterr().err
    assert "notarun" in err and "model" not in err
    assert len(rows) == 8  # the oracle is no candidate, the odd directory is skipped
    assert {(r["family"], r["pair"], r["seed"]) for r in rows} == {
        ("digits", "M-U", 0),
        ("fsdd", "->nicolas", 1),
    }
    stats = bench.analyse(rows)["digits"]
    assert stats["im"]["spearman"] == [pytest.approx(1.0)] and stats["im"]["run"] == [0.0, 0.0]
    assert stats["dev"]["run"] == [0.0, 0.0]  # lower is better: negated before ranking
    assert stats["snd"]["run"] == [pytest.approx(20.0), pytest.approx(40.0)]  # picks the worst step
    assert stats["snd"]["pool"] == [pytest.approx(40.0)]  # 0.90 is best, snd keeps the 0.50 checkpoint
    assert stats["last checkpoint"]["run"] == [pytest.approx(10.0), pytest.approx(0.0)]
    assert all(np.isnan(x) for x in stats["bnm"]["run"])  # older runs without a validator: NaN, not 0
    # records of two commands in one table (`--table-from A.jsonl B.jsonl`): each named, with its plan
    rows = [
        {**r, "argv": ["--runs", "x"] if r["family"] == "digits" else ["--quick"], "machine": "test machine"}
        for r in rows
    ]
    text = bench.table(rows, [])
    assert "| `im` | +1.00 |" in text and "needs GPU" in text  # no text runs
    assert "digits: `python benchmarks/selection.py --runs x` (test machine)" in text
    assert "fsdd: `python benchmarks/selection.py --quick` (test machine)" in text
    assert "* fsdd: ->nicolas × MCC (+ source_only) × seeds 1;" in text and "* digits:" not in text


def final_only_run(root: Path, name: str, results: dict[str, tuple[float, float, float]]) -> None:
    """A run recorded without the target curve: each method's one evaluation at its selected step,
    ``(im, source_val_acc, target_test_acc)``; the target accuracy is in the results only."""
    metrics = {
        "results": {
            m: {
                "selected_step": 30, "target_test_acc": acc,
                "history": [{"step": 30, "eval_im": im, "eval_source_val_acc": sva}],
            }
            for m, (im, sva, acc) in results.items()
        }
    }  # fmt: skip
    (root / name).mkdir(parents=True)
    (root / name / "metrics.json").write_text(json.dumps(metrics))


def test_fallback_judges_on_runs_without_target_curve(tmp_path):
    spec = importlib.util.spec_from_file_location("selection_benchmark", BENCHMARK)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    a, b = tmp_path / "a", tmp_path / "b"
    # root a: IM helps and scores itself higher; consistency helps but scores lower by im, not by source-val
    final_only_run(a / "digits", "M-U_consistency_s0", {"source_only": (0.5, 0.90, 0.60), "consistency": (0.4, 0.91, 0.70)})  # fmt: skip
    final_only_run(a / "digits", "M-U_informationmaximization_s0", {"information_maximization": (0.8, 0.89, 0.80)})  # fmt: skip
    # root b: another budget of the same pair and seed, whose source-only must not join root a's pool
    final_only_run(b / "digits", "M-U_dann_s0", {"source_only": (0.9, 0.95, 0.99), "dann": (0.2, 0.60, 0.50)})
    rows = bench.collect([a, b])
    assert len(rows) == 5 and {r["target_acc"] for r in rows} == {0.60, 0.70, 0.80, 0.99, 0.50}
    assert bench.analyse(rows)["digits"]["im"]["run"] == []  # one checkpoint per run: no step to choose
    calls = {c["method"]: c for c in bench.fallback_calls(rows, agree=None)}  # im alone
    assert calls["dann"]["source_only_acc"] == pytest.approx(99.0) and calls["dann"]["fallback"]
    assert calls["consistency"]["source_only_acc"] == pytest.approx(60.0)
    assert calls["consistency"]["fallback"] and not calls["information_maximization"]["fallback"]
    by_sva = {
        c["method"]: c["fallback"] for c in bench.fallback_calls(rows, judge="source_val_acc", agree=None)
    }
    assert by_sva == {"consistency": False, "information_maximization": True, "dann": True}
    agree = {c["method"]: c["fallback"] for c in bench.fallback_calls(rows, agree="source_val_acc")}
    assert agree == {"consistency": False, "information_maximization": False, "dann": True}
    # the default replays the recipe: im, confirmed by source-val accuracy (selection.fallback_confirm)
    assert {c["method"]: c["fallback"] for c in bench.fallback_calls(rows)} == agree
    text = "\n".join(bench.judges_section(rows))
    assert "| `im` | 1 | 0 | 1 (100%) | +0.00 | 2 | 2 | 1 (50%) | +19.50 |" in text
    assert (
        "| `im` and `source_val_acc` agree (the recipe's default) | 1 | 0 | 1 (100%) | +0.00 | 2 | 1 | 2 (100%) | +24.50 |"
        in text
    )
