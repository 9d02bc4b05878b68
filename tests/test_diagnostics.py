"""Unit tests for hftl.adaptation.diagnostics: proxy A-distance on known cases, domain plots as real PNGs."""

from __future__ import annotations

import builtins

import numpy as np
import pytest
import torch

from hftl.adaptation.diagnostics import plot_domains, proxy_a_distance
from hftl.errors import ConfigError, DataError, HftlError

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def gaussians(shift: float, n: int = 400, dim: int = 8, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, dim)), rng.normal(size=(n, dim)) + shift


def test_pad_near_zero_for_identical_distributions():
    source, target = gaussians(0.0)
    assert proxy_a_distance(source, target) < 0.3


def test_pad_near_two_for_separated_domains_and_grows_with_the_shift():
    assert proxy_a_distance(*gaussians(3.0)) > 1.8
    small, large = proxy_a_distance(*gaussians(0.2)), proxy_a_distance(*gaussians(0.6))
    assert 0.0 <= small < large <= 2.0


def test_pad_is_deterministic_given_the_seed_and_accepts_tensors():
    source, target = gaussians(0.3, n=300)
    pad = proxy_a_distance(source, target, seed=5)
    assert proxy_a_distance(torch.from_numpy(source), torch.from_numpy(target), seed=5) == pad
    assert proxy_a_distance(source, target, seed=5, max_samples=100) == proxy_a_distance(
        source, target, seed=5, max_samples=100
    )


def test_pad_rejects_bad_inputs():
    source, target = gaussians(0.0, n=20)
    with pytest.raises(DataError, match="columns"):
        proxy_a_distance(source, target[:, :3])
    with pytest.raises(DataError, match="at least 8 rows"):
        proxy_a_distance(source[:4], target)


@pytest.mark.parametrize("method", ["pca", "tsne"])
@pytest.mark.parametrize("with_labels", [False, True])
def test_plot_domains_writes_a_png(tmp_path, method, with_labels):
    source, target = gaussians(2.0, n=60, dim=5)
    labels = {}
    if with_labels:
        labels = {"labels_s": np.arange(60) % 3, "labels_t": torch.arange(60) % 3}
    path = plot_domains(source, target, tmp_path / "plots" / f"{method}.png", method=method, **labels)
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 1024
    assert sorted(p.name for p in path.parent.iterdir()) == [f"{method}.png"]  # no temp file left


def test_plot_domains_many_classes_and_subsampling(tmp_path):
    source, target = gaussians(1.0, n=80, dim=3)
    labels_s = np.arange(80) % 12
    path = plot_domains(
        source, target, tmp_path / "many.png", labels_s=labels_s, method="pca", max_samples=50
    )
    assert path.read_bytes()[:8] == PNG_MAGIC


def test_plot_domains_errors(tmp_path, monkeypatch):
    source, target = gaussians(0.0, n=10, dim=3)
    with pytest.raises(ConfigError, match="tsne"):
        plot_domains(source, target, tmp_path / "x.png", method="umap")
    with pytest.raises(DataError, match="labels_t"):
        plot_domains(source, target, tmp_path / "x.png", labels_t=np.zeros(3), method="pca")

    real_import = builtins.__import__

    def no_matplotlib(name, *args, **kwargs):
        if name.startswith("matplotlib"):
            raise ImportError(f"No module named {name!r}")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(HftlError, match="pip install matplotlib"):
        plot_domains(source, target, tmp_path / "x.png", method="pca")
