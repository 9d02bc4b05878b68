"""Unit tests with exact checks for information maximization, consistency self-training and importance weighting."""

from __future__ import annotations

import inspect
import math

import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from hftl.losses import (
    ConfidenceThresholdSelfTraining,
    ConsistencyLoss,
    DomainDiscriminator,
    ImportanceWeighting,
    InformationMaximizationLoss,
    align_distribution,
    shot_pseudo_labels,
)

BIG = 60.0  # logits this far apart give one-hot probabilities in float32


def one_hot_logits(classes: list[int], num_classes: int) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(classes), num_classes).float() * BIG


# -- information maximization -------------------------------------------------------------------------------
@pytest.mark.parametrize("num_classes", [2, 4, 10])
def test_im_uniform_predictions_have_entropy_log_k_and_no_diversity_term(num_classes):
    out = InformationMaximizationLoss()(torch.zeros(6, num_classes))
    assert float(out.metrics["entropy"]) == pytest.approx(math.log(num_classes), abs=1e-6)
    assert float(out.metrics["diversity"]) == pytest.approx(0.0, abs=1e-6)
    assert out.loss.item() == pytest.approx(math.log(num_classes), abs=1e-6)


def test_im_one_hot_predictions_of_one_class_pay_the_full_diversity_term():
    out = InformationMaximizationLoss()(one_hot_logits([2, 2, 2, 2], 4))
    assert float(out.metrics["entropy"]) == pytest.approx(0.0, abs=1e-6)
    # KL(e_2 || uniform) = log K
    assert float(out.metrics["diversity"]) == pytest.approx(math.log(4), abs=1e-6)


def test_im_confident_and_balanced_predictions_reach_the_minimum_zero():
    out = InformationMaximizationLoss()(one_hot_logits([0, 1, 2, 3, 0, 1, 2, 3], 4))
    assert out.loss.item() == pytest.approx(0.0, abs=1e-6)


def test_im_weights_combine_the_two_terms_linearly():
    logits = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    plain = InformationMaximizationLoss()(logits)
    weighted = InformationMaximizationLoss(entropy_weight=2.0, diversity_weight=0.5)(logits)
    expected = 2.0 * float(plain.metrics["entropy"]) + 0.5 * float(plain.metrics["diversity"])
    assert weighted.loss.item() == pytest.approx(expected, rel=1e-6)


def test_im_diversity_is_measured_against_the_class_prior():
    prior = [0.7, 0.2, 0.1]
    logits = torch.tensor(prior).log().expand(5, 3)  # every prediction equals the prior
    out = InformationMaximizationLoss(class_prior=prior)(logits)
    assert float(out.metrics["diversity"]) == pytest.approx(0.0, abs=1e-6)
    assert float(out.metrics["entropy"]) == pytest.approx(-sum(p * math.log(p) for p in prior), abs=1e-6)
    assert InformationMaximizationLoss()(logits).metrics["diversity"] > 0.2  # against uniform it is not 0


def test_im_trains_a_biased_classifier_to_confident_balanced_clusters():
    gen = torch.Generator().manual_seed(0)
    truth = torch.arange(64) % 4
    x = torch.eye(4)[truth] * 3 + 0.3 * torch.randn(64, 4, generator=gen)  # four clusters
    model = nn.Linear(4, 4)  # a "source hypothesis" with some signal, biased towards class 0 (as in SHOT)
    with torch.no_grad():
        model.weight.copy_(0.5 * torch.eye(4) + 0.1 * torch.randn(4, 4, generator=gen))
        model.bias.copy_(torch.tensor([3.0, 0.0, 0.0, 0.0]))
    loss_fn, optimizer = InformationMaximizationLoss(), torch.optim.SGD(model.parameters(), lr=1.0)
    assert (model(x).argmax(1) == 0).float().mean() > 0.5  # most predictions start on class 0
    before = loss_fn(model(x)).metrics
    for _ in range(300):
        optimizer.zero_grad()
        loss_fn(model(x)).loss.backward()
        optimizer.step()
    after = loss_fn(model(x)).metrics
    assert float(after["diversity"]) < 0.05 < float(before["diversity"])  # the classes are all used
    assert float(after["entropy"]) < 0.2  # and predicted confidently
    predicted = model(x).argmax(1)
    assert all(len(set(predicted[truth == k].tolist())) == 1 for k in range(4))  # one class per cluster
    assert len(set(predicted.tolist())) == 4


def test_loss_metrics_are_detached_scalar_tensors():
    logits = torch.randn(4, 3, requires_grad=True)
    outputs = [
        InformationMaximizationLoss()(logits),
        ConsistencyLoss(relative_threshold=True)(logits, logits, logits_source=logits),
        ImportanceWeighting(_Logit())(logits, logits),
    ]
    for out in outputs:
        for value in out.metrics.values():
            assert isinstance(value, torch.Tensor) and value.dim() == 0 and not value.requires_grad


@pytest.mark.parametrize(
    "kwargs", [{"entropy_weight": -1.0}, {"class_prior": [0.5, 0.6]}, {"class_prior": [1.0, 0.0]}]
)
def test_im_rejects_bad_arguments(kwargs):
    with pytest.raises(ValueError):
        InformationMaximizationLoss(**kwargs)


def test_im_rejects_logits_of_another_class_count_than_the_prior():
    with pytest.raises(ValueError, match="class_prior"):
        InformationMaximizationLoss(class_prior=[0.5, 0.5])(torch.zeros(2, 3))


def test_shot_pseudo_labels_follow_the_feature_clusters_and_skip_unpredicted_classes():
    gen = torch.Generator().manual_seed(0)
    centres = torch.tensor([[4.0, 0.0, 0.0], [0.0, 4.0, 0.0]])
    truth = torch.arange(40) % 2
    features = centres[truth] + 0.3 * torch.randn(40, 3, generator=gen)
    logits = torch.zeros(40, 3)
    logits[torch.arange(40), truth] = 1.0
    flipped = torch.arange(0, 40, 5)  # 20 % of the classifier's predictions are wrong
    logits[flipped] = logits[flipped][:, [1, 0, 2]]
    labels = shot_pseudo_labels(features, logits)
    assert labels.tolist() == truth.tolist()  # the clusters correct every flipped prediction
    assert 2 not in labels.tolist()  # class 2 is predicted by no example: it gets no centroid


# -- consistency (FixMatch / AdaMatch) ------------------------------------------------------------------------
def test_consistency_rows_below_the_threshold_get_zero_weight():
    weak = torch.tensor([[3.0, 0.0], [0.1, 0.0], [0.0, 5.0], [0.0, 0.2]])  # confidences .95 .52 .99 .55
    strong = torch.randn(4, 2, generator=torch.Generator().manual_seed(0), requires_grad=True)
    out = ConsistencyLoss(threshold=0.9)(strong, weak)
    ce = torch.nn.functional.cross_entropy(strong, torch.tensor([0, 0, 1, 1]), reduction="none")
    assert out.loss.item() == pytest.approx((ce[0] + ce[2]).item() / 4, rel=1e-6)  # FixMatch: / batch size
    assert float(out.metrics["pseudo_ratio"]) == 0.5
    out.loss.backward()
    assert strong.grad[[1, 3]].abs().sum() == 0  # rows under the threshold do not train


def test_consistency_never_reads_labels_and_pseudo_labels_carry_no_gradient():
    names = set(inspect.signature(ConsistencyLoss.forward).parameters)
    assert not {n for n in names if "label" in n or n in {"y", "target", "targets"}}
    weak = torch.tensor([[4.0, 0.0]], requires_grad=True)
    strong = torch.zeros(1, 2, requires_grad=True)
    ConsistencyLoss(threshold=0.5)(strong, weak).loss.backward()
    assert weak.grad is None and strong.grad is not None


def test_consistency_without_options_equals_the_existing_self_training_loss():
    gen = torch.Generator().manual_seed(1)
    weak, strong = torch.randn(16, 3, generator=gen) * 3, torch.randn(16, 3, generator=gen)
    ours = ConsistencyLoss(threshold=0.8)(strong, weak)
    reference = ConfidenceThresholdSelfTraining(threshold=0.8)(strong, weak)
    assert ours.loss.item() == pytest.approx(reference.loss.item(), rel=1e-6)


def test_relative_threshold_is_scaled_by_the_mean_source_confidence():
    source = torch.tensor([[2.0, 0.0], [0.0, 0.0]])  # confidences 0.8808 and 0.5
    weak = torch.tensor([[1.0, 0.0], [3.0, 0.0]])  # 0.7311 and 0.9526
    out = ConsistencyLoss(threshold=0.9, relative_threshold=True)(
        torch.zeros(2, 2), weak, logits_source=source
    )
    expected = 0.9 * (torch.sigmoid(torch.tensor(2.0)).item() + 0.5) / 2
    assert float(out.metrics["threshold"]) == pytest.approx(expected, rel=1e-6)  # 0.6214
    assert float(out.metrics["pseudo_ratio"]) == 1.0  # both pass 0.6214; at 0.9 only one would
    with pytest.raises(ValueError, match="logits_source"):
        ConsistencyLoss(relative_threshold=True)(torch.zeros(2, 2), weak)


def test_distribution_alignment_moves_predictions_to_the_prior():
    prior = torch.tensor([0.5, 0.3, 0.2])
    same = torch.tensor([0.6, 0.3, 0.1]).expand(4, 3)
    assert torch.allclose(align_distribution(same, prior), prior.expand(4, 3), atol=1e-6)  # p·π/p̄ = π exactly
    probs = torch.softmax(
        torch.randn(64, 3, generator=torch.Generator().manual_seed(0)) + torch.tensor([2.0, 0, 0]), 1
    )
    aligned = align_distribution(probs, prior)
    assert torch.allclose(aligned.sum(1), torch.ones(64), atol=1e-6)
    assert (aligned.mean(0) - prior).abs().sum() < (probs.mean(0) - prior).abs().sum() / 3


def test_distribution_alignment_changes_pseudo_labels_of_a_skewed_target():
    weak = torch.tensor([[2.0, 0.0], [2.0, 0.0], [2.0, 0.0], [0.5, 0.0]])  # skewed to class 0
    prior = torch.tensor([0.5, 0.5])
    loss_fn = ConsistencyLoss(threshold=0.5, distribution_alignment=True)
    strong = torch.zeros(4, 2, requires_grad=True)
    loss_fn(strong, weak, prior=prior).loss.backward()
    # the weakest class-0 row becomes class 1 after alignment: its gradient pushes logit 1 up
    assert strong.grad[3, 1] < 0 < strong.grad[0, 1]
    with pytest.raises(ValueError, match="prior"):
        loss_fn(strong, weak)


# -- importance weighting ---------------------------------------------------------------------------------------
class _Logit(nn.Module):
    """A fixed 'discriminator' whose logit is the first feature."""

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f[:, :1]


def _fit(iw: ImportanceWeighting, sample_s, sample_t, *, steps: int = 300) -> None:
    optimizer = torch.optim.Adam(iw.parameters(), lr=0.02)
    for step in range(steps):
        optimizer.zero_grad()
        iw(sample_s(step), sample_t(step)).loss.backward()
        optimizer.step()


def test_importance_weights_are_clipped_self_normalised_and_detached():
    iw = ImportanceWeighting(_Logit(), clip=4.0)
    f_s = torch.tensor([[10.0], [0.0], [-10.0]], requires_grad=True)
    out = iw(f_s, torch.zeros(2, 1))
    ratios = torch.tensor([4.0, 1.0, 0.25])  # e^10 and e^-10 clipped to c and 1/c
    assert torch.allclose(out.weights, ratios / ratios.mean(), atol=1e-6)
    assert out.weights.mean().item() == pytest.approx(1.0, abs=1e-6) and not out.weights.requires_grad
    assert out.weights.max() / out.weights.min() == pytest.approx(16.0, rel=1e-5)  # at most c² apart


def test_importance_discriminator_never_trains_the_features():
    iw = ImportanceWeighting(DomainDiscriminator(4, hidden_features=8, batch_norm=False))
    f_s, f_t = torch.randn(6, 4, requires_grad=True), torch.randn(6, 4, requires_grad=True)
    iw(f_s, f_t).loss.backward()
    assert f_s.grad is None and f_t.grad is None
    assert all(p.grad is not None for p in iw.discriminator.parameters())


def test_importance_weights_are_one_when_source_and_target_match():
    torch.manual_seed(0)
    iw = ImportanceWeighting(DomainDiscriminator(2, hidden_features=16, num_layers=1, batch_norm=False))
    same = [torch.randn(64, 2) for _ in range(300)]
    _fit(iw, lambda s: same[s], lambda s: same[s])
    w = iw.weights(torch.randn(256, 2))
    assert (w - 1).abs().max() < 0.05
    assert iw(same[0], same[0]).metrics["effective_sample_size"] > 0.999


def test_importance_weights_grow_where_the_target_is_denser():
    torch.manual_seed(0)
    shift = torch.tensor([1.0, 0.0])  # source N(0, I), target N(shift, I): p_t/p_s = exp(x1 - 1/2)
    iw = ImportanceWeighting(
        DomainDiscriminator(2, hidden_features=16, num_layers=1, batch_norm=False), clip=50.0
    )
    _fit(iw, lambda s: torch.randn(128, 2), lambda s: torch.randn(128, 2) + shift, steps=400)
    f_s = torch.randn(512, 2)
    w = iw.weights(f_s)
    true = torch.exp(f_s[:, 0] - 0.5)
    assert spearmanr(w.numpy(), true.numpy()).statistic > 0.9
    assert w[f_s[:, 0] > 1].mean() > 2 * w[f_s[:, 0] < -1].mean()
    assert w.mean().item() == pytest.approx(1.0, abs=1e-5)


def test_importance_weighting_rejects_a_clip_not_above_one():
    with pytest.raises(ValueError, match="clip"):
        ImportanceWeighting(_Logit(), clip=1.0)


def test_configs_can_build_the_new_losses():
    from hftl.config import instantiate

    im = instantiate({"_component_": "hftl.losses.InformationMaximizationLoss", "diversity_weight": 0.5})
    fixmatch = instantiate(
        {"_component_": "hftl.losses.ConsistencyLoss", "threshold": 0.9, "relative_threshold": True}
    )
    iw = instantiate({
        "_component_": "hftl.losses.ImportanceWeighting", "clip": 5.0,
        "discriminator": {"_component_": "hftl.losses.DomainDiscriminator", "in_features": 8, "hidden_features": 16},
    })  # fmt: skip
    assert im.diversity_weight == 0.5 and fixmatch.relative_threshold and iw.clip == 5.0
    assert isinstance(iw.discriminator, DomainDiscriminator)
