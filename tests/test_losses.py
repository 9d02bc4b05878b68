"""Unit tests of hftl.losses: exact checks on toy tensors, then short training runs on shifted Gaussians."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from hftl.losses import (
    AdversarialClassifier,
    AdversarialDiscriminativeLoss,
    BatchHardTripletLoss,
    ConditionalDomainAdversarialLoss,
    ConfidenceThresholdSelfTraining,
    ContrastiveLoss,
    CorrelationAlignmentLoss,
    CosineSimilarityLoss,
    DomainAdversarialLoss,
    DomainDiscriminator,
    GaussianKernel,
    GradientReverseLayer,
    HintLoss,
    JointMultipleKernelMaximumMeanDiscrepancy,
    KnowledgeDistillationLoss,
    LossOutput,
    LwFLoss,
    MarginDisparityDiscrepancy,
    MinimumClassConfusionLoss,
    MultipleKernelMaximumMeanDiscrepancy,
    TripletLoss,
    certainty_weights,
    entropy,
    gaussian_kernels,
    grl_coefficient,
)

D64 = torch.float64


def randn(*shape: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=D64)


# --- gradient reversal -------------------------------------------------------------------------------


@pytest.mark.parametrize("coeff", [0.0, 0.3, 1.0, 2.5])
def test_grl_is_identity_forward_and_scaled_negation_backward(coeff):
    x, upstream = randn(5, 3).requires_grad_(), randn(5, 3, seed=1)
    out = GradientReverseLayer()(x, coeff)
    assert torch.equal(out, x)
    out.backward(upstream)
    assert torch.equal(x.grad, upstream * -coeff)


def test_grl_jacobian_of_linear_function_is_negated():
    w = randn(2, 3)
    jac = torch.autograd.functional.jacobian(lambda x: GradientReverseLayer()(x @ w.T, 0.7), randn(3))
    torch.testing.assert_close(jac, -0.7 * w, rtol=0, atol=1e-15)


def test_grl_coefficient_schedule():
    assert grl_coefficient(0.0) == 0.0
    assert (
        grl_coefficient(1.0) == pytest.approx(2 / (1 + math.exp(-10)) - 1) == pytest.approx(0.99991, abs=1e-5)
    )
    values = [grl_coefficient(p / 20) for p in range(21)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False))
    scaled = [grl_coefficient(p / 20, low=0.2, high=0.5) for p in range(21)]
    assert scaled[0] == 0.2 and all(0.2 <= v < 0.5 for v in scaled)
    with pytest.raises(ValueError, match="progress"):
        grl_coefficient(1.5)


# --- DANN ----------------------------------------------------------------------------------------------


class _SignOfFirstFeature(nn.Module):
    """A perfect discriminator when source rows have x0 > 0 and target rows x0 < 0."""

    def forward(self, f):
        return 50.0 * f[:, :1]


def test_discriminator_layout():
    d = DomainDiscriminator(6, hidden_features=8, num_layers=2, batch_norm=False, dropout=0.1)
    assert [type(m).__name__ for m in d] == [
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
        "ReLU",
        "Dropout",
        "Linear",
    ]
    assert d(torch.randn(3, 6)).shape == (3, 1)
    assert isinstance(DomainDiscriminator(6, num_layers=1)[1], nn.BatchNorm1d)
    with pytest.raises(ValueError, match="dropout"):
        DomainDiscriminator(6, dropout=1.0)


def test_dann_perfect_discriminator():
    f_s, f_t = randn(4, 3).abs(), -randn(6, 3).abs()
    out = DomainAdversarialLoss(_SignOfFirstFeature())(f_s, f_t)
    assert isinstance(out, LossOutput) and out.metrics == {"domain_acc": 1.0}
    assert out.loss.item() < 1e-3


def test_dann_reverses_feature_gradient_but_not_discriminator_gradient():
    disc = nn.Linear(3, 1).to(D64)
    f_s, f_t = randn(4, 3).requires_grad_(), randn(5, 3, seed=1).requires_grad_()
    DomainAdversarialLoss(disc)(f_s, f_t, coeff=0.7).loss.backward()
    grads = (f_s.grad.clone(), f_t.grad.clone(), disc.weight.grad.clone())
    f_s.grad = f_t.grad = disc.weight.grad = None
    d_s, d_t = disc(f_s), disc(f_t)  # the same loss without reversal
    ref = 0.5 * (
        F.binary_cross_entropy_with_logits(d_s, torch.ones_like(d_s))
        + F.binary_cross_entropy_with_logits(d_t, torch.zeros_like(d_t))
    )
    ref.backward()
    torch.testing.assert_close(grads[0], -0.7 * f_s.grad)
    torch.testing.assert_close(grads[1], -0.7 * f_t.grad)
    torch.testing.assert_close(grads[2], disc.weight.grad)


def test_dann_weights():
    loss_fn = DomainAdversarialLoss(nn.Linear(3, 1).to(D64))
    f_s, f_t = randn(4, 3), randn(4, 3, seed=1)
    base = loss_fn(f_s, f_t).loss
    torch.testing.assert_close(
        loss_fn(f_s, f_t, w_s=torch.full((4,), 2.0, dtype=D64), w_t=2 * torch.ones(4, dtype=D64)).loss,
        2 * base,
    )
    d_t = loss_fn.discriminator(f_t)
    target_only = 0.5 * F.binary_cross_entropy_with_logits(d_t, torch.zeros_like(d_t))
    torch.testing.assert_close(loss_fn(f_s, f_t, w_s=torch.zeros(4, dtype=D64)).loss, target_only)


# --- CDAN ----------------------------------------------------------------------------------------------


def _cdan(**kwargs) -> ConditionalDomainAdversarialLoss:
    width = ConditionalDomainAdversarialLoss.discriminator_in_features(
        num_classes=3, features_dim=4, randomized=kwargs.get("randomized", False), randomized_dim=16
    )
    return ConditionalDomainAdversarialLoss(
        nn.Linear(width, 1).to(D64), num_classes=3, features_dim=4, randomized_dim=16, **kwargs
    ).to(D64)


def test_cdan_discriminator_in_features():
    kw = {"num_classes": 3, "features_dim": 4, "randomized_dim": 16}
    assert ConditionalDomainAdversarialLoss.discriminator_in_features(randomized=False, **kw) == 12
    assert ConditionalDomainAdversarialLoss.discriminator_in_features(randomized=True, **kw) == 16


def test_cdan_multilinear_map():
    f, p = randn(5, 4), randn(5, 3).softmax(-1)
    h = _cdan().multilinear_map(f, p)
    assert h.shape == (5, 12)
    torch.testing.assert_close(h[2, 1 * 4 + 3], p[2, 1] * f[2, 3])


def test_cdan_randomized_map_is_fixed_and_checkpointed():
    loss_fn = _cdan(randomized=True)
    f, p = randn(5, 4), randn(5, 3).softmax(-1)
    h = loss_fn.multilinear_map(f, p)
    assert h.shape == (5, 16) and torch.equal(h, loss_fn.multilinear_map(f, p))
    torch.testing.assert_close(h, (f @ loss_fn.r_f) * (p @ loss_fn.r_g) / 4.0)
    assert {"r_f", "r_g"} <= set(loss_fn.state_dict())
    other = _cdan(randomized=True)
    other.load_state_dict(loss_fn.state_dict())
    assert torch.equal(other.multilinear_map(f, p), h)


def test_cdan_entropy_weights_normalised_per_domain():
    w = certainty_weights(randn(7, 3).softmax(-1))
    torch.testing.assert_close(w.sum(), torch.tensor(7.0, dtype=D64))
    torch.testing.assert_close(
        certainty_weights(torch.tensor([[1.0, 0.0], [0.5, 0.5]])), torch.tensor([8, 6]) / 7
    )
    loss_fn = _cdan(entropy_conditioning=True)
    g_s, f_s, g_t, f_t = randn(4, 3), randn(4, 4, seed=1), 3 * randn(6, 3, seed=2), randn(6, 4, seed=3)
    out = loss_fn(g_s, f_s, g_t, f_t)
    d_s = loss_fn.discriminator(loss_fn.multilinear_map(f_s, g_s.softmax(-1)))
    d_t = loss_fn.discriminator(loss_fn.multilinear_map(f_t, g_t.softmax(-1)))
    w_s, w_t = certainty_weights(g_s.softmax(-1)), certainty_weights(g_t.softmax(-1))
    ref = 0.5 * (
        (w_s * F.softplus(-d_s.squeeze(1))).mean() + (w_t * F.softplus(d_t.squeeze(1))).mean()
    )  # BCE(d, 1) = softplus(-d), BCE(d, 0) = softplus(d)
    torch.testing.assert_close(out.loss, ref)
    with pytest.raises(ValueError, match=r"g_s \(N_s, 3\), .* got \(4, 2\), \(4, 4\)"):
        loss_fn(randn(4, 2), f_s, g_t, f_t)


# --- MDD -----------------------------------------------------------------------------------------------


def test_mdd_hand_computed_value_and_sign():
    # source: main head predicts class 0, adversary uniform -> CE = log 2;
    # target: main head predicts class 1, adversary uniform -> -log(1 - 1/2) = log 2.
    y_s, y_t = torch.tensor([[2.0, 0.0]], dtype=D64), torch.tensor([[0.0, 1.0]], dtype=D64)
    adv_s, adv_t = torch.zeros(1, 2, dtype=D64), torch.zeros(1, 2, dtype=D64)
    out = MarginDisparityDiscrepancy(margin=4.0)(y_s, adv_s, y_t, adv_t)
    torch.testing.assert_close(out.loss.item(), 5 * math.log(2), rtol=0, atol=1e-5)  # the 1e-6 shift
    assert out.metrics["mdd"] == pytest.approx(-out.loss.item())


def test_mdd_adversary_minimising_loss_raises_discrepancy():
    torch.manual_seed(0)
    f_s, f_t = torch.randn(8, 4), torch.randn(8, 4) + 1
    y_s, y_t = torch.randn(8, 3, requires_grad=True), torch.randn(8, 3)
    adv_head, loss_fn = nn.Linear(4, 3), MarginDisparityDiscrepancy(margin=2.0)
    before = loss_fn(y_s, adv_head(f_s), y_t, adv_head(f_t))
    before.loss.backward()
    assert y_s.grad is None  # argmax of the main head carries no gradient
    with torch.no_grad():
        for p in adv_head.parameters():
            p -= 0.1 * p.grad
    after = loss_fn(y_s, adv_head(f_s), y_t, adv_head(f_t))
    assert after.metrics["mdd"] > before.metrics["mdd"]


def test_mdd_adversarial_classifier_reverses_only_the_feature_gradient():
    torch.manual_seed(0)
    head = AdversarialClassifier(4, 3, hidden_features=5, dropout=0.0).double()
    f = randn(6, 4).requires_grad_()
    head(f, coeff=0.3).square().sum().backward()
    reversed_grads = (f.grad.clone(), [p.grad.clone() for p in head.parameters()])
    f.grad = None
    head.zero_grad()
    nn.Sequential(*head)(f).square().sum().backward()  # the same layers without the reversal
    torch.testing.assert_close(reversed_grads[0], -0.3 * f.grad)
    for got, plain in zip(reversed_grads[1], head.parameters(), strict=True):
        torch.testing.assert_close(got, plain.grad)  # the head itself is trained normally


# --- ADDA ----------------------------------------------------------------------------------------------


def test_adda_losses_hand_computed():
    disc = nn.Linear(2, 1, bias=False).to(D64)
    with torch.no_grad():
        disc.weight.copy_(torch.tensor([[1.0, 0.0]]))  # D(f) = f[0]: source has f[0] > 0
    f_s, f_t = torch.tensor([[2.0, 0.0]], dtype=D64), torch.tensor([[-1.0, 5.0], [3.0, 0.0]], dtype=D64)
    out = AdversarialDiscriminativeLoss(disc)(f_s, f_t)
    bce = F.binary_cross_entropy_with_logits
    d_t = torch.tensor([[-1.0], [3.0]], dtype=D64)
    expected_d = 0.5 * (
        bce(torch.tensor([[2.0]], dtype=D64), torch.ones(1, 1, dtype=D64)) + bce(d_t, torch.zeros_like(d_t))
    )
    torch.testing.assert_close(out.discriminator_loss, expected_d)
    torch.testing.assert_close(out.loss, bce(d_t, torch.ones_like(d_t)))  # inverted labels
    assert out.metrics["domain_acc"].item() == 0.75  # source right; target: one of two right


def test_adda_terms_reach_disjoint_parameters():
    disc = DomainDiscriminator(3, hidden_features=4, batch_norm=False).to(D64)
    f_s, f_t = randn(5, 3).requires_grad_(), randn(4, 3, seed=1).requires_grad_()
    out = AdversarialDiscriminativeLoss(disc)(f_s, f_t)
    params = list(disc.parameters())
    d_grads = torch.autograd.grad(
        out.discriminator_loss, [f_s, f_t, *params], allow_unused=True, retain_graph=True
    )
    assert (
        d_grads[0] is None
        and d_grads[1] is None
        and all(g is not None and g.abs().sum() > 0 for g in d_grads[2:])
    )
    m_grads = torch.autograd.grad(out.loss, [f_s, f_t, *params], allow_unused=True)
    assert m_grads[0] is None and m_grads[1].abs().sum() > 0 and all(g is None for g in m_grads[2:])
    assert all(p.requires_grad for p in params)  # switched back on after the encoder's term


# --- every loss returns its metrics as detached scalar tensors -------------------------------------------


def _metric_outputs() -> dict[str, LossOutput]:
    torch.manual_seed(0)
    x, y = randn(8, 4).requires_grad_(), randn(8, 4, seed=1).requires_grad_()
    logits = randn(8, 3, seed=2).requires_grad_()
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 0, 1])
    cdan = ConditionalDomainAdversarialLoss(nn.Linear(12, 1).to(D64), num_classes=3, features_dim=4)
    return {
        "dann": DomainAdversarialLoss(nn.Linear(4, 1).to(D64))(x, y),
        "cdan": cdan(logits, x, logits, y),
        "mdd": MarginDisparityDiscrepancy()(logits, logits * 2, logits, logits * 3),
        "self_training": ConfidenceThresholdSelfTraining(threshold=0.3)(logits),
        "adda": AdversarialDiscriminativeLoss(nn.Linear(4, 1).to(D64))(x, y),
        "kd": KnowledgeDistillationLoss()(logits, logits * 2, labels),
        "hint": HintLoss(4, 4).to(D64)([x], [y]),
        "lwf": LwFLoss()(logits, labels, logits * 2, logits),
        "triplet": TripletLoss()(x, y, x.flip(0)),
        "batch_hard": BatchHardTripletLoss()(x, labels),
        "cosine": CosineSimilarityLoss()(x, y, (labels == 0).double()),
        "contrastive": ContrastiveLoss()(x, y, (labels == 0).long()),
    }


def test_metrics_are_detached_scalar_tensors():
    """Read to the host by the training loop at log steps only: no ``.item()`` inside a loss."""
    for name, out in _metric_outputs().items():
        assert out.metrics, name
        for key, value in out.metrics.items():
            assert isinstance(value, torch.Tensor) and value.dim() == 0, (name, key, value)
            assert not value.requires_grad and value.is_floating_point(), (name, key)


def test_pair_metric_without_pairs_of_one_kind_is_nan():
    out = CosineSimilarityLoss()(torch.ones(2, 2), torch.ones(2, 2), torch.ones(2))
    assert out.metrics["cos_pos"].item() == pytest.approx(1.0) and out.metrics["cos_neg"].isnan()


# --- MCC -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_mcc_uniform_predictions(num_classes):
    out = MinimumClassConfusionLoss()(torch.zeros(6, num_classes, dtype=D64))
    torch.testing.assert_close(out.loss.item(), (num_classes - 1) / num_classes)


def test_mcc_confident_distinct_classes_have_no_confusion():
    out = MinimumClassConfusionLoss(temperature=2.5)(100 * torch.eye(4, dtype=D64))
    assert out.loss.item() < 1e-12


def test_mcc_hand_computed_two_by_two():
    # rows (3/4, 1/4), (1/4, 3/4): equal entropies -> weights 1; column sums 1; off-diagonal 2 * 2a(1 - a) / 2
    logits = torch.tensor([[math.log(3), 0.0], [0.0, math.log(3)]], dtype=D64)
    torch.testing.assert_close(MinimumClassConfusionLoss(temperature=1.0)(logits).loss.item(), 0.375)
    # random predictions against the formula in NumPy (TLlib's mcc.py): entropy weights, column normalisation
    logits = randn(16, 4) * 3
    p = np.exp(logits.numpy() / 2.5 - np.logaddexp.reduce(logits.numpy() / 2.5, axis=1, keepdims=True))
    w = 1 + np.exp((p * np.log(p)).sum(1))  # 1 + e^{-H}
    c = (p * (len(p) * w / w.sum())[:, None]).T @ p
    c = c / c.sum(0, keepdims=True)
    expected = (c.sum() - np.trace(c)) / 4
    assert MinimumClassConfusionLoss()(logits).loss.item() == pytest.approx(expected, rel=1e-9)


# --- kernels, MMD, JAN ---------------------------------------------------------------------------------


def test_gaussian_kernel_values():
    x = torch.tensor([[0.0], [2.0]], dtype=D64)
    fixed = GaussianKernel(sigma=1.0, track_running_stats=False)(x)
    torch.testing.assert_close(fixed[0, 1].item(), math.exp(-2.0))
    adaptive = GaussianKernel(alpha=1.0)(x)  # sigma^2 = mean([0, 4, 4, 0]) = 2 -> exp(-4 / 4)
    torch.testing.assert_close(adaptive, torch.tensor([[1.0, math.exp(-1)], [math.exp(-1), 1.0]], dtype=D64))
    with pytest.raises(ValueError, match="sigma"):
        GaussianKernel(track_running_stats=False)


def test_mmd_of_batch_with_itself_is_zero_and_grows_with_shift():
    loss_fn = MultipleKernelMaximumMeanDiscrepancy(gaussian_kernels())
    z = randn(8, 5)
    assert loss_fn(z, z).loss.item() == 0.0
    fixed = MultipleKernelMaximumMeanDiscrepancy([GaussianKernel(sigma=2.0, track_running_stats=False)])
    values = [fixed(z, randn(8, 5, seed=1) + shift).loss.item() for shift in (0.0, 0.5, 1.0, 2.0)]
    assert all(a < b for a, b in zip(values, values[1:], strict=False)), values


def test_mmd_linear_estimator_is_unbiased():
    kernels = [GaussianKernel(sigma=1.0, track_running_stats=False)]
    biased = MultipleKernelMaximumMeanDiscrepancy(kernels)
    linear = MultipleKernelMaximumMeanDiscrepancy(kernels, linear=True)
    pairs = [
        (randn(16, 2, seed=2 * i), randn(16, 2, seed=2 * i + 1)) for i in range(500)
    ]  # same distribution
    lin = torch.stack([linear(a, b).loss for a, b in pairs])
    quad = torch.stack([biased(a, b).loss for a, b in pairs])
    stderr = lin.std() / math.sqrt(len(pairs))
    assert lin.mean().abs() < 3 * stderr
    assert quad.mean() > 10 * quad.std() / math.sqrt(len(pairs))  # the V-statistic is biased upwards


def test_mmd_rejects_unequal_batches():
    with pytest.raises(ValueError, match=r"\(4, 3\) and \(5, 3\)"):
        MultipleKernelMaximumMeanDiscrepancy(gaussian_kernels())(torch.randn(4, 3), torch.randn(5, 3))


@pytest.mark.parametrize("linear", [False, True])
def test_jan_with_one_layer_equals_mmd(linear):
    z_s, z_t = randn(8, 5), randn(8, 5, seed=1) + 1
    mmd = MultipleKernelMaximumMeanDiscrepancy(gaussian_kernels(), linear=linear)(z_s, z_t).loss
    jmmd = JointMultipleKernelMaximumMeanDiscrepancy([gaussian_kernels()], linear=linear)((z_s,), (z_t,)).loss
    torch.testing.assert_close(jmmd, mmd)


def test_jan_identical_inputs_give_zero():
    loss_fn = JointMultipleKernelMaximumMeanDiscrepancy([gaussian_kernels(), gaussian_kernels((1.0,))])
    z = (randn(8, 5), randn(8, 3, seed=1).softmax(-1))
    assert loss_fn(z, z).loss.item() == 0.0
    with pytest.raises(ValueError, match="2 layers"):
        loss_fn(z[:1], z[:1])


# --- CORAL, self-training, entropy ---------------------------------------------------------------------


def test_coral_values():
    f_s = randn(10, 3)
    assert abs(CorrelationAlignmentLoss()(f_s, f_s + 5.0).loss.item()) < 1e-24  # same covariance
    f_s = torch.tensor([[1.0, 0.0], [-1.0, 0.0]], dtype=D64)  # C_s = diag(2, 0)
    f_t = torch.tensor([[0.0, 1.0], [0.0, -1.0]], dtype=D64)  # C_t = diag(0, 2)
    assert CorrelationAlignmentLoss()(f_s, f_t).loss.item() == 0.5  # (4 + 4) / (4 * 2^2)


def test_self_training_masks_confident_rows():
    logits = torch.tensor([[5.0, 0.0], [0.1, 0.0], [0.0, 4.0], [0.0, 0.0]], dtype=D64, requires_grad=True)
    out = ConfidenceThresholdSelfTraining(threshold=0.9)(logits)
    ce = F.cross_entropy(logits, torch.tensor([0, 0, 1, 0]), reduction="none")
    torch.testing.assert_close(out.loss, (ce[0] + ce[2]) / 4)
    assert out.metrics == {"pseudo_ratio": 0.5}
    out.loss.backward()
    assert (
        torch.equal(logits.grad[[1, 3]], torch.zeros(2, 2, dtype=D64)) and logits.grad[[0, 2]].abs().sum() > 0
    )
    boundary = ConfidenceThresholdSelfTraining(threshold=0.5)(
        torch.zeros(3, 2)
    )  # confidence == threshold counts
    assert boundary.metrics["pseudo_ratio"] == 1.0


def test_self_training_pseudo_logits_get_no_gradient():
    logits, teacher = randn(6, 3).requires_grad_(), (5 * randn(6, 3, seed=1)).requires_grad_()
    out = ConfidenceThresholdSelfTraining(threshold=0.6)(logits, teacher)
    out.loss.backward()
    assert teacher.grad is None and logits.grad is not None
    confident = teacher.softmax(-1).max(-1).values >= 0.6
    assert out.metrics["pseudo_ratio"] == pytest.approx(confident.double().mean().item())


def test_entropy():
    for c in (2, 3, 10):
        assert entropy(torch.full((1, c), 1 / c, dtype=D64)).item() == pytest.approx(math.log(c), rel=1e-15)
    assert entropy(torch.tensor([[1.0, 0.0, 0.0]])).item() == 0.0
    assert entropy(torch.full((4, 2), 0.5), reduction="mean").shape == ()
    with pytest.raises(ValueError, match="reduction"):
        entropy(torch.ones(1, 2), reduction="sum")


def test_statistics_stay_float32_under_autocast():
    f_s, f_t = torch.randn(8, 4), torch.randn(8, 4) * 2
    with torch.autocast("cpu", dtype=torch.bfloat16):
        lin = nn.Linear(4, 4)
        coral = CorrelationAlignmentLoss()(lin(f_s), lin(f_t)).loss
        mcc = MinimumClassConfusionLoss()(lin(f_t)).loss
    assert coral.dtype == mcc.dtype == torch.float32


# --- a few SGD steps on shifted Gaussians --------------------------------------------------------------


def _domains(n: int = 32, dim: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    x_s = randn(n, dim, seed=10).float()
    x_t = randn(n, dim, seed=11).float() * torch.tensor([3.0, 1.0, 0.5, 1.0]) + 2.0  # shifted and stretched
    return x_s, x_t


def _train(loss_of, params, steps: int = 30, lr: float = 0.05) -> list[LossOutput]:
    opt = torch.optim.SGD(params, lr=lr)
    history = []
    for _ in range(steps):
        out = loss_of()
        opt.zero_grad()
        out.loss.backward()
        opt.step()
        history.append(out)
    history.append(loss_of())
    return history


@pytest.mark.parametrize("name", ["mmd", "jan", "coral", "mcc", "self_training"])
def test_non_adversarial_losses_decrease(name):
    torch.manual_seed(0)
    x_s, x_t = _domains()
    feat, head = nn.Linear(4, 4), nn.Linear(4, 3)
    loss_fns = {
        "mmd": lambda: MultipleKernelMaximumMeanDiscrepancy(gaussian_kernels())(feat(x_s), feat(x_t)),
        "jan": lambda: JointMultipleKernelMaximumMeanDiscrepancy(
            [gaussian_kernels(), gaussian_kernels((1.0,))]
        )((feat(x_s), head(feat(x_s)).softmax(-1)), (feat(x_t), head(feat(x_t)).softmax(-1))),
        "coral": lambda: CorrelationAlignmentLoss()(feat(x_s), feat(x_t)),
        "mcc": lambda: MinimumClassConfusionLoss()(head(feat(x_t))),
        "self_training": lambda: ConfidenceThresholdSelfTraining(threshold=0.01)(head(feat(x_t))),
    }
    history = _train(loss_fns[name], [*feat.parameters(), *head.parameters()])
    losses = [h.loss.item() for h in history]
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("name", ["dann", "cdan", "cdan_e_randomized"])
def test_adversarial_losses_train(name):
    torch.manual_seed(0)
    x_s, x_t = _domains()
    feat, head = nn.Linear(4, 8), nn.Linear(8, 3)
    if name == "dann":
        loss_fn = DomainAdversarialLoss(DomainDiscriminator(8, hidden_features=16))

        def call(coeff):
            return loss_fn(feat(x_s), feat(x_t), coeff=coeff)

    else:
        randomized = name.endswith("randomized")
        width = ConditionalDomainAdversarialLoss.discriminator_in_features(
            num_classes=3, features_dim=8, randomized=randomized, randomized_dim=32
        )
        loss_fn = ConditionalDomainAdversarialLoss(
            DomainDiscriminator(width, hidden_features=16), num_classes=3, features_dim=8,
            entropy_conditioning=randomized, randomized=randomized, randomized_dim=32,
        )  # fmt: skip

        def call(coeff):
            f_s, f_t = feat(x_s), feat(x_t)
            return loss_fn(head(f_s), f_s, head(f_t), f_t, coeff=coeff)

    params = [*feat.parameters(), *head.parameters(), *loss_fn.parameters()]
    reversed_run = _train(lambda: call(1.0), params, steps=10)
    assert all(math.isfinite(h.loss.item()) for h in reversed_run)
    trained = [*feat.parameters(), *loss_fn.parameters()]  # the head gets no gradient: CDAN detaches p
    assert all(p.grad is not None and p.grad.isfinite().all() for p in trained)
    # with the reversed gradient switched off, the discriminator wins on these separable domains
    plain_run = _train(lambda: call(0.0), params, steps=30, lr=0.1)
    accs = [h.metrics["domain_acc"] for h in plain_run]
    assert accs[-1] > accs[0] and accs[-1] >= 0.9, accs
