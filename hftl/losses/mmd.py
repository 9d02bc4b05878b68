"""Multi-kernel maximum mean discrepancy (MK-MMD), the loss of DAN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hftl.losses.base import LossOutput, check_pair


def mmd_from_kernel_matrix(
    kernel_matrix: torch.Tensor, batch_size: int, *, linear: bool = False
) -> torch.Tensor:
    """MMD² estimate from the kernel matrix of ``cat([z_s, z_t])`` (both halves ``batch_size`` rows).

    Quadratic (biased, V-statistic, always >= 0): ``mean(K_ss) + mean(K_tt) - 2 mean(K_st)``.
    Linear (unbiased, Gretton et al. 2012, DAN eq. 6, pairing each example with the next one cyclically):
    ``mean_i k(s_i, s_i') + k(t_i, t_i') - k(s_i, t_i') - k(s_i', t_i)`` with ``i' = (i + 1) mod n``.
    """
    n = batch_size
    if not linear:
        k_ss, k_tt, k_st = kernel_matrix[:n, :n], kernel_matrix[n:, n:], kernel_matrix[:n, n:]
        return k_ss.mean() + k_tt.mean() - 2.0 * k_st.mean()
    i = torch.arange(n, device=kernel_matrix.device)
    j = (i + 1) % n
    h = kernel_matrix[i, j] + kernel_matrix[n + i, n + j] - kernel_matrix[i, n + j] - kernel_matrix[j, n + i]
    return h.mean()


EQUAL_BATCHES_HINT = " The estimator pairs examples: draw equal batches or truncate the larger one."


class MultipleKernelMaximumMeanDiscrepancy(nn.Module):
    r"""The MK-MMD loss of DAN.

    Long, Cao, Wang & Jordan, "Learning Transferable Features with Deep Adaptation Networks", ICML 2015
    (arXiv:1502.02791). Same math as TLlib's ``tllib/alignment/dan.py``, with the plain biased estimator
    (TLlib uses within-domain off-diagonal means plus a ``2 / (n - 1)`` offset instead).

    The squared distance between the kernel mean embeddings of the two domains, for the sum of kernels
    :math:`k = \sum_u k_u`:

    .. math::
        \hat D_k = \frac{1}{n^2}\sum_{i,j} k(z^s_i, z^s_j) + \frac{1}{n^2}\sum_{i,j} k(z^t_i, z^t_j)
                 - \frac{2}{n^2}\sum_{i,j} k(z^s_i, z^t_j)

    ``linear=True`` gives the unbiased linear-time statistic instead (see :func:`mmd_from_kernel_matrix`);
    it is still computed from the full kernel matrix, which the data-driven bandwidth needs anyway.

    Args:
        kernels: kernel modules mapping :math:`(N, D)` to :math:`(N, N)`, e.g.
            :func:`~hftl.losses.gaussian_kernels`; their matrices are summed.
        linear: use the linear-time estimator.

    Raises:
        ValueError: ``kernels`` is empty.

    Shape:
        - z_s, z_t: :math:`(n, D)`, the same shape (equal batch sizes: truncate the larger one).
        - Output: ``LossOutput`` with a scalar ``loss``.

    Example:
        >>> from hftl.losses import gaussian_kernels
        >>> loss_fn = MultipleKernelMaximumMeanDiscrepancy(gaussian_kernels((0.5, 1.0, 2.0)))
        >>> z = torch.randn(8, 16)
        >>> loss_fn(z, z).loss.item()
        0.0
    """

    def __init__(self, kernels: Sequence[nn.Module], *, linear: bool = False):
        super().__init__()
        if len(kernels) == 0:
            raise ValueError("`kernels` must hold at least one kernel module, e.g. gaussian_kernels()")
        self.kernels = nn.ModuleList(kernels)
        self.linear = linear

    def forward(self, z_s: torch.Tensor, z_t: torch.Tensor) -> LossOutput:
        check_pair("z_s", z_s, "z_t", z_t, same_rows=True, hint=EQUAL_BATCHES_HINT)
        if self.linear and z_s.shape[0] < 2:
            raise ValueError(f"the linear MMD estimator needs batches of 2+ examples; got {tuple(z_s.shape)}")
        features = torch.cat([z_s, z_t])
        kernel_matrix = sum(kernel(features) for kernel in self.kernels)
        return LossOutput(loss=mmd_from_kernel_matrix(kernel_matrix, z_s.shape[0], linear=self.linear))
