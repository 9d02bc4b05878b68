"""Gaussian kernels for the MMD losses (DAN, JAN)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from hftl.losses.base import at_least_float32


class GaussianKernel(nn.Module):
    r"""Gaussian (RBF) kernel matrix :math:`k(x_i, x_j) = \exp\big(-\|x_i - x_j\|^2 / (2\sigma^2)\big)`.

    Same math as TLlib's ``tllib/modules/kernels.py``. With ``track_running_stats=True`` the bandwidth
    follows the data, as in DAN (Long et al., ICML 2015, arXiv:1502.02791):
    :math:`\sigma^2 = \alpha \cdot \mathrm{mean}_{ij} \|x_i - x_j\|^2`, computed (without gradient) from the
    batch being kernelised. The name follows TLlib; nothing is stored between calls, so the module is
    stateless. With ``track_running_stats=False`` the fixed ``sigma`` is used.

    Squared distances are computed pairwise (``cdist`` without the matrix-product shortcut), so two
    identical rows give exactly identical kernel rows; inputs in half precision are upcast to float32.

    Args:
        sigma: the fixed bandwidth (required when ``track_running_stats`` is False).
        track_running_stats: set :math:`\sigma^2` from each batch instead of using ``sigma``.
        alpha: multiplier of the mean squared distance when ``track_running_stats`` is True.

    Raises:
        ValueError: no ``sigma`` without ``track_running_stats``, or a non-positive ``sigma``/``alpha``.

    Shape:
        - x: :math:`(N, D)`.
        - Output: :math:`(N, N)`, symmetric with ones on the diagonal.

    Example:
        >>> k = GaussianKernel(sigma=1.0, track_running_stats=False)
        >>> k(torch.tensor([[0.0], [1.0]]))
        tensor([[1.0000, 0.6065],
                [0.6065, 1.0000]])
    """

    def __init__(self, *, sigma: float | None = None, track_running_stats: bool = True, alpha: float = 1.0):
        super().__init__()
        if not track_running_stats and sigma is None:
            raise ValueError(
                "GaussianKernel needs `sigma` when `track_running_stats` is False; pass e.g. sigma=1.0"
            )
        if (sigma is not None and sigma <= 0) or alpha <= 0:
            raise ValueError(
                f"GaussianKernel `sigma` and `alpha` must be > 0; got sigma={sigma}, alpha={alpha}"
            )
        self.sigma, self.track_running_stats, self.alpha = sigma, track_running_stats, alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 2:
            raise ValueError(f"GaussianKernel expects (N, D) inputs; got shape {tuple(x.shape)}")
        x = at_least_float32(x)
        sq_dist = torch.cdist(x, x, compute_mode="donot_use_mm_for_euclid_dist").square()
        if self.track_running_stats:
            sigma_sq = (self.alpha * sq_dist.detach().mean()).clamp_min(torch.finfo(x.dtype).tiny)
        else:
            sigma_sq = torch.tensor(self.sigma**2, dtype=x.dtype, device=x.device)
        return torch.exp(-sq_dist / (2.0 * sigma_sq))

    def extra_repr(self) -> str:
        if self.track_running_stats:
            return f"alpha={self.alpha}"
        return f"sigma={self.sigma}"


def gaussian_kernels(alphas: Sequence[float] = (0.5, 1.0, 2.0)) -> list[GaussianKernel]:
    """Data-driven Gaussian kernels, one per bandwidth multiple ``alpha`` (DAN: ``2**k``, k = -3..1).

    Example:
        >>> [k.alpha for k in gaussian_kernels()]
        [0.5, 1.0, 2.0]
    """
    return [GaussianKernel(alpha=float(a)) for a in alphas]
