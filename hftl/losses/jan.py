"""Joint multi-kernel maximum mean discrepancy (JMMD), the loss of JAN."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hftl.losses.base import LossOutput, check_pair
from hftl.losses.mmd import EQUAL_BATCHES_HINT, mmd_from_kernel_matrix


class JointMultipleKernelMaximumMeanDiscrepancy(nn.Module):
    r"""The joint MMD loss of JAN.

    Long, Zhu, Wang & Jordan, "Deep Transfer Learning with Joint Adaptation Networks", ICML 2017
    (arXiv:1605.06636). Same math as TLlib's ``tllib/alignment/jan.py`` (without the adversarial
    ``Theta`` variant), with the plain biased estimator.

    The MMD of the *joint* distribution of several layers' activations :math:`\mathcal L` (typically the
    features and the softmax predictions): the kernel is the product over layers of each layer's
    summed kernels, :math:`k(z_i, z_j) = \prod_{l \in \mathcal L} \sum_u k^l_u(z^l_i, z^l_j)`, and

    .. math::
        \hat D_{\mathcal L} = \frac{1}{n^2}\sum_{i,j} k(z^s_i, z^s_j)
                           + \frac{1}{n^2}\sum_{i,j} k(z^t_i, z^t_j)
                           - \frac{2}{n^2}\sum_{i,j} k(z^s_i, z^t_j)

    With one layer this is exactly :class:`~hftl.losses.MultipleKernelMaximumMeanDiscrepancy`.

    Args:
        kernels: one sequence of kernel modules per layer, e.g.
            ``[gaussian_kernels((0.5, 1.0, 2.0)), gaussian_kernels((1.0,))]``.
        linear: use the unbiased linear-time estimator (see :func:`~hftl.losses.mmd.mmd_from_kernel_matrix`).

    Raises:
        ValueError: no layers, a layer without kernels, or inputs that do not match the layers.

    Shape:
        - z_s, z_t: sequences of :math:`(n, D_l)` tensors, one per layer, source and target shapes equal.
        - Output: ``LossOutput`` with a scalar ``loss``.

    Example:
        >>> from hftl.losses import gaussian_kernels
        >>> kernels = [gaussian_kernels(), gaussian_kernels((1.0,))]  # features, predictions
        >>> loss_fn = JointMultipleKernelMaximumMeanDiscrepancy(kernels)
        >>> f_s, f_t = torch.randn(8, 16), torch.randn(8, 16) + 1
        >>> p_s, p_t = torch.randn(8, 3).softmax(-1), torch.randn(8, 3).softmax(-1)
        >>> loss_fn((f_s, p_s), (f_t, p_t)).loss.item() > 0
        True
    """

    def __init__(self, kernels: Sequence[Sequence[nn.Module]], *, linear: bool = False):
        super().__init__()
        if len(kernels) == 0 or any(len(layer) == 0 for layer in kernels):
            raise ValueError("`kernels` needs one non-empty sequence of kernel modules per layer")
        self.kernels = nn.ModuleList(nn.ModuleList(layer) for layer in kernels)
        self.linear = linear

    def forward(self, z_s: Sequence[torch.Tensor], z_t: Sequence[torch.Tensor]) -> LossOutput:
        if not len(z_s) == len(z_t) == len(self.kernels):
            raise ValueError(
                f"JAN was built with kernels for {len(self.kernels)} layers; got {len(z_s)} source and "
                f"{len(z_t)} target tensors"
            )
        n = z_s[0].shape[0]
        kernel_matrix = None
        for layer, (layer_s, layer_t, layer_kernels) in enumerate(zip(z_s, z_t, self.kernels, strict=True)):
            check_pair(
                f"z_s[{layer}]", layer_s, f"z_t[{layer}]", layer_t, same_rows=True, hint=EQUAL_BATCHES_HINT
            )
            if layer_s.shape[0] != n:
                raise ValueError(
                    f"every layer needs {n} rows (from z_s[0]); z_s[{layer}] has {tuple(layer_s.shape)}"
                )
            features = torch.cat([layer_s, layer_t])
            layer_matrix = sum(kernel(features) for kernel in layer_kernels)
            kernel_matrix = layer_matrix if kernel_matrix is None else kernel_matrix * layer_matrix
        if self.linear and n < 2:
            raise ValueError(f"the linear JMMD estimator needs batches of 2+ examples; got {n}")
        return LossOutput(loss=mmd_from_kernel_matrix(kernel_matrix, n, linear=self.linear))
