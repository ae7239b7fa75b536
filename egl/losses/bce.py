"""Binary cross-entropy between a saliency map and a mask: ALIGN's explanation loss
(Hong et al., "ALIGN", AAAI 2026, Eq. 16: ``BCE(GradCAM_y(x), M(x))``).

``BCE(s, m) = -(m log s' + (1 - m) log(1 - s'))`` with ``s' = eps + (1 - 2 eps) s``: a
min-max normalised map is exactly 0 and 1 somewhere, and the squeeze keeps log finite
and the gradient alive there (clamping would zero it). The minimum over ``s`` sits at
``s = m`` for binary masks (and within ``eps`` of ``m`` for soft ones). Default ``eps=1e-6``.
Computed in float32 at least: in a 16-bit type ``1 - 2 eps`` rounds to 1 and the log to -inf.
"""

from __future__ import annotations

import torch
from torch import Tensor

from egl._check import fail
from egl.losses._reduction import reduce
from egl.losses.base import AlignmentLoss, prepare

__all__ = ["bce_alignment", "BCEAlignmentLoss"]


def bce_alignment(saliency: Tensor, mask: Tensor, *, reduction: str = "mean", eps: float = 1e-6) -> Tensor:
    """BCE of saliency against a (soft) mask, mask resized to the saliency's resolution.

    Args:
        saliency: maps in [0, 1].
        mask: ``[B, H, W]`` or ``[B, 1, H, W]``, bool or float in [0, 1], any resolution.
        reduction: ``"mean"``, ``"sum"`` or ``"none"`` (per-sample).
        eps: squeeze of the saliency into ``[eps, 1 - eps]``.

    Shape:
        saliency: ``B 1 h w``; mask: ``B 1 H W`` or ``B H W``.

    Example:
        >>> import torch
        >>> m = (torch.rand(2, 1, 8, 8) > 0.5).float()
        >>> float(bce_alignment(m, m)) < 1e-4
        True
    """
    fn = "egl.losses.bce_alignment"
    _check_eps(eps, fn)
    s, m = prepare(saliency, mask, fn)
    dt = torch.promote_types(s.dtype, torch.float32)  # a 16-bit map: 1 - 2 eps rounds to 1, log(0)
    s, m = s.to(dt), m.to(dt)
    s = eps + (1.0 - 2.0 * eps) * s
    elem = -(m * torch.log(s) + (1.0 - m) * torch.log1p(-s))
    return reduce(elem, reduction, fn)


def _check_eps(eps: float, fn: str) -> float:
    """``0 < eps < 0.5``: 0 gives log(0) (NaN) on an exact map, 0.5 a constant loss (no
    gradient), more than 0.5 a loss that prefers the inverted map."""
    ok = isinstance(eps, (int, float)) and not isinstance(eps, bool) and 0.0 < eps < 0.5
    if not ok:
        raise fail(fn, "eps", "a number in (0, 0.5)", repr(eps), "Keep the default eps=1e-6, or a small positive value")
    return float(eps)


class BCEAlignmentLoss(AlignmentLoss):
    """Module form of :func:`bce_alignment`."""

    name = "bce"

    def __init__(self, reduction: str = "mean", eps: float = 1e-6) -> None:
        super().__init__(reduction)
        self.eps = _check_eps(eps, "egl.losses.BCEAlignmentLoss")

    def forward(self, saliency: Tensor, mask: Tensor) -> Tensor:
        return bce_alignment(saliency, mask, reduction=self.reduction, eps=self.eps)
