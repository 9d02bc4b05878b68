"""The Ganin et al. 2016 shallow-DANN benchmark: data counts and one training epoch (fast, real data)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from hftl.losses import DomainAdversarialLoss

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "ganin_dann_amazon.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ganin_dann_amazon", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def root(data_dir: Path) -> Path:
    path = data_dir / "amazon_mds_dann_svmlight"
    if not path.is_dir():
        pytest.skip(f"{path} not found (Amazon svmlight files of Ganin et al. 2016)")
    return path


@pytest.fixture(scope="module")
def pair(bench, root):
    return bench.load_pair(root, "K->E")


def test_counts_match_provenance(bench, root, pair):
    x, y = bench.load_domain(root, "kitchen", "train")
    assert x.shape == (2000, 5000) and x.dtype == torch.float32
    assert int(y.sum()) == 1000  # 1000 positive / 1000 negative
    assert bool((x >= 0).all()) and float(x.max()) > 1  # raw counts, not binarised
    # the K->E split of experiments_amazon.py: last 10 % of the source is the validation set
    assert pair.xs.shape[0] == 1800 and pair.xv.shape[0] == 200 and pair.xt.shape[0] == 2000
    assert pair.xtest.shape == (5681, 5000) and int(pair.ytest.sum()) == 2857  # electronics_test


def test_parse_pair(bench):
    assert bench.parse_pair("bd") == bench.parse_pair("B->D") == "B->D"
    with pytest.raises(Exception, match="unknown pair"):
        bench.parse_pair("B->B")


def test_one_dann_epoch_updates_all_weights(bench, pair):
    torch.manual_seed(0)
    full = pair
    data = bench.PairData(
        full.xs[:40], full.ys[:40], full.xv[:20], full.yv[:20], full.xt[:40], full.xtest[:20], full.ytest[:20]
    )
    model = bench.ShallowNet(5000)
    regressor = nn.Linear(50, 1)
    nn.init.zeros_(regressor.weight)
    nn.init.zeros_(regressor.bias)
    dann = DomainAdversarialLoss(regressor)
    params = list(model.parameters()) + list(dann.parameters())
    before = [p.detach().clone() for p in params]
    optimizer = torch.optim.SGD(params, lr=0.01)
    stats = bench.train_epoch(
        model, dann, optimizer, data, lam=0.1, batch_size=10, generator=torch.Generator().manual_seed(0)
    )
    assert all(not torch.equal(b, p) for b, p in zip(before, params, strict=True))
    # 4 steps of 10 source + 10 target rows: the mean domain accuracy counts each of the 80 rows once
    assert stats["domain_acc"] * 80 == pytest.approx(round(stats["domain_acc"] * 80)) and stats["ce"] > 0


def test_fit_early_stops_and_scores(bench, pair):
    full = pair
    data = bench.PairData(
        full.xs[:100], full.ys[:100], full.xv, full.yv, full.xt[:100], full.xtest[:300], full.ytest[:300]
    )
    result = bench.fit(data, lam=0.1, max_epochs=3, seed=0)
    assert result["epochs"] == 3 and 0 <= result["best_epoch"] < 3
    # percentages of whole rows: 300 test rows (0.33 % each), 200 validation rows (0.5 % each)
    assert result["test_acc"] * 3 == pytest.approx(round(result["test_acc"] * 3))
    assert result["valid_acc"] * 2 == pytest.approx(round(result["valid_acc"] * 2))
