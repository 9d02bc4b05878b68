"""Transferability scores against hand-computed values, a reference LogME and the evidence itself."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from hftl.adaptation.transferability import (
    estimate_target_prior,
    h_score,
    label_entropy,
    leep,
    logme,
    logme_evidence,
    mmd,
    nce,
    proxy_a_distance,
)
from hftl.assess import AssessConfig, rank, resolve_rank_by, warnings_for
from hftl.errors import ConfigError, DataError


def test_h_score_closed_form_on_4x2():
    # f = [[1,0],[3,0],[0,1],[0,3]], y = [0,0,1,1]. Mean (1,1); centred rows (0,-1),(2,-1),(-1,0),(-1,2):
    # cov(f) = [[6,-4],[-4,6]] / 3. Class means (2,0) and (0,2), so E[f|y] centred = ±(1,-1):
    # cov(g) = [[4,-4],[-4,4]] / 3. cov(f)^-1 = 9/20 [[2,4/3],[4/3,2]];
    # tr(cov(f)^-1 cov(g)) = 9/20 * 4/3 * (2/3 + 2/3) = 0.8
    f = np.array([[1.0, 0.0], [3.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    assert h_score(f, [0, 0, 1, 1]) == pytest.approx(0.8, abs=1e-12)
    assert h_score(f, np.array(["a", "a", "b", "b"])) == pytest.approx(0.8, abs=1e-12)  # any label values
    assert h_score(f, [1, 1, 0, 0]) == pytest.approx(0.8, abs=1e-12)  # renaming classes changes nothing
    assert h_score(np.vstack([f, f]), [0, 0, 0, 0, 1, 1, 1, 1]) == pytest.approx(
        0.0, abs=1e-12
    )  # equal means


@pytest.mark.parametrize("n, d", [(30, 10), (10, 30)])
def test_h_score_matches_the_covariance_formula(n, d):
    from sklearn.covariance import LedoitWolf

    rng = np.random.default_rng(d)
    f, y = rng.normal(size=(n, d)), np.arange(n) % 3
    g = np.stack([f[y == c].mean(axis=0) for c in range(3)])[y]  # E[f | y] per row
    plain = np.trace(np.linalg.pinv(np.cov(f, rowvar=False), rcond=1e-15) @ np.cov(g, rowvar=False))
    gc = g - g.mean(axis=0)
    shrunk = np.trace(np.linalg.pinv(LedoitWolf().fit(f).covariance_) @ (gc.T @ gc / n))
    assert h_score(f, y) == pytest.approx(plain, rel=1e-9)
    assert h_score(f, y, shrinkage=True) == pytest.approx(shrunk, rel=1e-9)


def test_h_score_shrinkage_rewards_separable_features():
    rng = np.random.default_rng(0)
    y = np.arange(200) % 2
    noise = rng.normal(size=(200, 50))
    good, bad = noise + 2.0 * y[:, None], noise
    assert h_score(good, y, shrinkage=True) > h_score(bad, y, shrinkage=True) + 0.5


def reference_logme(f: np.ndarray, y: np.ndarray, iters: int = 2000) -> tuple[float, float, float]:
    """LogME's Algorithm 1 written with explicit D x D matrices (no SVD shortcut)."""
    n, d = f.shape
    eig = np.linalg.eigvalsh(f.T @ f)
    alpha, beta = 1.0, 1.0
    for _ in range(iters):
        gamma = np.sum(beta * eig / (alpha + beta * eig))
        a = alpha * np.eye(d) + beta * f.T @ f
        m = beta * np.linalg.solve(a, f.T @ y)
        new_alpha, new_beta = gamma / (m @ m), (n - gamma) / np.sum((f @ m - y) ** 2)
        done = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 1e-10
        alpha, beta = new_alpha, new_beta
        if done:
            break
    a = alpha * np.eye(d) + beta * f.T @ f
    m = beta * np.linalg.solve(a, f.T @ y)
    evidence = (
        n / 2 * np.log(beta) + d / 2 * np.log(alpha) - n / 2 * np.log(2 * np.pi)
        - beta / 2 * np.sum((f @ m - y) ** 2) - alpha / 2 * (m @ m) - 0.5 * np.linalg.slogdet(a)[1]
    )  # fmt: skip
    return evidence / n, alpha, beta


@pytest.mark.parametrize("n, d", [(40, 6), (12, 20)])  # n > D, and n < D (zero eigenvalues of F^T F)
def test_logme_matches_reference_and_the_evidence(n, d):
    rng = np.random.default_rng(n)
    w = rng.normal(size=d)
    f = rng.normal(size=(n, d))
    y = f @ w + 0.5 * rng.normal(size=n)  # a regression target (LogME's one-target case)
    fit = logme_evidence(f, y, tol=1e-10, max_iter=2000)
    ref_evidence, ref_alpha, ref_beta = reference_logme(f, y)
    assert fit.evidence == pytest.approx(ref_evidence, rel=1e-6)
    assert fit.alpha == pytest.approx(ref_alpha, rel=1e-4) and fit.beta == pytest.approx(ref_beta, rel=1e-4)

    def direct(alpha: float, beta: float) -> float:  # y ~ N(0, I/beta + F F^T / alpha), per row
        return multivariate_normal.logpdf(y, mean=np.zeros(n), cov=np.eye(n) / beta + f @ f.T / alpha) / n

    assert fit.evidence == pytest.approx(direct(fit.alpha, fit.beta), rel=1e-9)
    for da, db in ((1.2, 1.0), (0.8, 1.0), (1.0, 1.2), (1.0, 0.8)):  # the fixed point is a maximum
        assert direct(fit.alpha * da, fit.beta * db) < fit.evidence


def test_logme_averages_one_hot_classes_and_ranks_features():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, size=90)
    f = rng.normal(size=(90, 8))
    per_class = [logme_evidence(f, (y == c).astype(float)).evidence for c in range(3)]
    assert logme(f, y) == pytest.approx(np.mean(per_class))
    informative = f + 2.0 * np.eye(8)[y]  # the class shifts its own coordinate
    assert logme(informative, y) > logme(f, y)
    with pytest.raises(DataError, match="two classes"):
        logme(f, np.zeros(90))
    with pytest.raises(DataError, match="one per row"):
        logme(f, y[:10])


def test_leep_and_nce_on_a_toy_with_known_conditional():
    # Hard source predictions z = [0,0,0,1] for y = [0,0,1,1]: P(y|z=0) = (2/3, 1/3), P(y|z=1) = (0, 1).
    theta = np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    y = np.array([0, 0, 1, 1])
    expected = (2 * math.log(2 / 3) + math.log(1 / 3) + math.log(1.0)) / 4
    assert leep(theta, y) == pytest.approx(expected)
    assert nce(theta.argmax(1), y) == pytest.approx(expected)  # hard predictions: NCE = LEEP
    # Soft predictions: the definition written out with loops.
    theta = np.array([[0.8, 0.2], [0.6, 0.4], [0.3, 0.7], [0.1, 0.9]])
    joint = np.zeros((2, 2))
    for i in range(4):
        for z in range(2):
            joint[y[i], z] += theta[i, z] / 4
    cond = joint / joint.sum(axis=0)
    by_hand = np.mean([math.log(sum(cond[y[i], z] * theta[i, z] for z in range(2))) for i in range(4)])
    assert leep(theta, y) == pytest.approx(by_hand)


def test_uninformative_source_scores_minus_label_entropy():
    y = np.array([0, 0, 0, 1, 1, 2])
    uniform = np.full((6, 4), 0.25)
    assert leep(uniform, y) == pytest.approx(-label_entropy(y))
    assert nce(np.zeros(6), y) == pytest.approx(-label_entropy(y))
    assert nce(y, y) == 0.0  # a perfect source: no uncertainty left
    with pytest.raises(DataError, match="softmax"):
        leep(np.array([[2.0, -1.0]]), [0])


def test_domain_distances_grow_with_the_shift():
    rng = np.random.default_rng(0)
    source = rng.normal(size=(400, 8))
    target = rng.normal(size=(400, 8))
    shifts = (0.0, 0.3, 0.6, 1.0)
    pads = [proxy_a_distance(source, target + s) for s in shifts]
    mmds = [mmd(source, target + s, max_samples=300) for s in shifts]
    assert all(a < b for a, b in zip(pads, pads[1:], strict=False)), pads
    assert all(a < b for a, b in zip(mmds, mmds[1:], strict=False)), mmds
    assert mmd(source, source) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(DataError, match="columns"):
        mmd(source, target[:, :4])


def test_bbse_recovers_a_known_label_shift():
    rng = np.random.default_rng(0)

    # A fixed 80 %-accurate binary classifier: P(pred = y) = 0.8 on both domains.
    def predict(y):
        flip = rng.random(len(y)) < 0.2
        pred = np.where(flip, 1 - y, y)
        return np.eye(2)[pred]

    y_val = rng.integers(0, 2, size=4000)  # source prior (0.5, 0.5)
    y_t = (rng.random(4000) < 0.8).astype(int)  # target prior (0.2, 0.8)
    prior = estimate_target_prior(predict(y_val), y_val, predict(y_t))
    assert prior == pytest.approx([0.2, 0.8], abs=0.03)


def test_rank_warnings_and_rank_by():
    rows = [{"encoder": "e", "source": s, "leep": v, "pad": p, "label_shift": 0.0, "leep_gain": g}
            for s, v, p, g in (("a", -0.6, 1.0, 0.05), ("b", -0.4, 0.1, 0.2), ("c", -0.69, 1.5, 0.001))]  # fmt: skip
    ranked = rank(rows, rank_by="leep")
    assert [r["source"] for r in ranked] == ["b", "a", "c"] and [r["rank"] for r in ranked] == [1, 2, 3]
    assert [r["source"] for r in rank(rows, rank_by="pad")] == ["b", "a", "c"]  # lower distance first
    cfg = AssessConfig()
    assert [w.split(":")[0] for w in warnings_for(rows[2], cfg)] == ["no-signal"]
    assert [w.split(":")[0] for w in warnings_for(rows[1], cfg)] == ["aligned"]
    assert warnings_for({**rows[0], "label_shift": 0.3}, cfg)[0].startswith("label-shift")
    assert resolve_rank_by("auto", labeled=True) == "leep"
    assert resolve_rank_by("auto", labeled=False) == "pad"
    with pytest.raises(ConfigError, match="target_labeled"):
        resolve_rank_by("nce", labeled=False)
    with pytest.raises(ConfigError, match="assess.target_labeled"):
        AssessConfig(target_labeled=3)
