"""The cached-feature path (`hftl run embed` with a `method:`) weighs the transfer term like `hftl run adapt`:
``method.weight(progress)``, so an adversarial method's Ganin warm-up starts it at 0."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from hftl.adaptation import DANN
from hftl.embeddings.train import EmbeddingModel, _loss


class Features:
    """A :class:`~hftl.embeddings.features.FeatureSource` over an in-memory tensor."""

    def __init__(self, x: torch.Tensor, labels: torch.Tensor | None = None):
        self.x, self.labels = x, labels

    def __len__(self) -> int:
        return len(self.x)

    def batch(self, indices: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"features": self.x[indices]}


@pytest.mark.parametrize("warmup", ["ganin", "none"])
def test_cached_feature_loss_follows_the_methods_warmup(warmup):
    torch.manual_seed(0)
    head = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    method = DANN(in_features=5, num_classes=3, hidden_features=8, trade_off=0.7, warmup=warmup)
    model = EmbeddingModel(head, method=method)
    source = Features(torch.randn(8, 6), torch.randint(0, 3, (8,)))
    target = Features(torch.randn(8, 6) + 2)
    idx = torch.arange(8)
    features, logits = model(source.batch(idx))
    ce = nn.functional.cross_entropy(logits, source.labels)
    f_t, logits_t = model(target.batch(idx))
    for progress in (0.0, 0.3):
        transfer = method(f_s=features, f_t=f_t, logits_s=logits, logits_t=logits_t, progress=progress).loss
        expected = ce + method.weight(progress) * transfer
        torch.testing.assert_close(_loss(model, source, idx, target, idx, progress), expected)
    at_start = _loss(model, source, idx, target, idx, 0.0)
    if warmup == "ganin":  # weight 0 at the first step: plain cross-entropy
        torch.testing.assert_close(at_start, ce)
    else:
        assert (at_start - ce).abs() > 1e-3
