"""Stability of saliency under small input changes: max- and average-sensitivity.

Yeh et al., "On the (In)fidelity and Sensitivity of Explanations", NeurIPS 2019: the largest
change of an explanation over inputs within a radius ``r`` of the image,

    SENS_MAX(x) = max_{|delta|_inf <= r} || Phi(x + delta) - Phi(x) ||,

estimated by Monte Carlo over ``samples`` draws of ``delta`` uniform in the ball (each input
value in ``[-r, r]``), with its average beside it. egl's choices, each configurable:

- ``relative=True`` (default) divides by ``||Phi(x)||`` (Frobenius norms over the map), as
  Quantus does, so that explainers that scale their maps differently compare; ``False`` gives
  Yeh et al.'s raw norm. A trained model's map that is all zero has no relative sensitivity: its
  image is NaN and left out of the means (``valid`` marks the others).
- The class explained is ``target`` or the prediction on the unperturbed image, kept for every
  perturbed copy (a map of another class is not a change of this explanation).
- ``radius`` is in ``x``'s space: on egl's [0, 1] images (normalisation, if any, inside the
  model) the default 0.02 is about 5 / 255 of the pixel range; on images normalised before the
  model by ImageNet's standard deviations (about 0.23), about 1.2 / 255.
- The noise is drawn on the CPU from a generator seeded ``seed``: ``samples`` draws of one
  ``[C, H, W]`` image, the same for every image of the batch, so an image's score does not depend
  on the batch it is in, and results repeat on every device.

The model must be in eval mode: in training mode dropout and batch statistics change the maps by
themselves (and every forward would move BatchNorm's running statistics), so it is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import check_flag, check_int, check_positive, describe, fail
from egl._transfer import upload
from egl.metrics._common import check_labels, model_logits
from egl.metrics._explainers import build_registered, check_kwargs, check_maps, check_model_and_images, check_seed

__all__ = ["sensitivity", "SensitivityResult"]

FN = "egl.metrics.sensitivity"


@dataclass(frozen=True)
class SensitivityResult:
    """Per-image sensitivities ``[B]`` (CPU, float32); NaN where ``valid`` is False.

    Attributes:
        max: the largest change over the samples (Yeh et al.'s SENS_MAX).
        mean: the average change over the samples (average sensitivity).
        valid: the unperturbed map is not all zero (always True with ``relative=False``).
        target: ``[B]`` the classes explained.
        radius: the radius used.
        samples: the number of perturbations per image.
    """

    max: Tensor
    mean: Tensor
    valid: Tensor
    target: Tensor
    radius: float
    samples: int

    def means(self) -> dict[str, float]:
        """``{"max_sensitivity", "avg_sensitivity"}``: means over valid images (NaN if none)."""
        if not bool(self.valid.any()):
            return {"max_sensitivity": float("nan"), "avg_sensitivity": float("nan")}
        return {"max_sensitivity": float(self.max[self.valid].mean()),
                "avg_sensitivity": float(self.mean[self.valid].mean())}


def _explainer(model: nn.Module, explainer: object, kwargs: object) -> Callable[..., Tensor]:
    kw = check_kwargs(kwargs, FN)
    if isinstance(explainer, str):
        return build_registered(explainer, model, kw, FN)  # type: ignore[no-any-return]
    if kw:
        raise fail(FN, "explainer_kwargs", "None when 'explainer' is a callable", repr(kwargs)[:100],
                   "Build the explainer with its arguments, or pass its registered name")
    if isinstance(explainer, nn.Module) or not callable(explainer):
        raise fail(FN, "explainer", "a registered explainer name, or a callable (x, target) -> saliency",
                   describe(explainer), "Pass e.g. explainer='grad_cam', or GradCAM(model, 'layer4')")
    return explainer  # type: ignore[return-value]


def _map(e: Callable[..., Tensor], x: Tensor, target: Tensor, shape: tuple[int, ...] | None) -> Tensor:
    return check_maps(e(x, target), x.shape[0], shape, FN, "for every input").double()


def sensitivity(
    model: nn.Module,
    x: Tensor,
    explainer: str | Callable[[Tensor, Tensor], Tensor] = "grad_cam",
    *,
    radius: float = 0.02,
    samples: int = 10,
    target: Tensor | None = None,
    relative: bool = True,
    seed: int = 0,
    explainer_kwargs: dict[str, Any] | None = None,
) -> SensitivityResult:
    """Max- and average-sensitivity of an explainer's maps (Yeh et al., NeurIPS 2019).

    ``samples + 1`` explainer calls on the batch (the image, then each perturbed copy), and one
    forward for the prediction when ``target`` is None.

    Args:
        model: the classifier (in eval mode).
        x: images in the model's input space.
        explainer: a registered explainer name (built on ``model`` with ``explainer_kwargs``), or
            a callable ``(x, target) -> [B, 1, h, w]`` such as an egl explainer.
        radius: half-width of the uniform noise on every input value (> 0).
        samples: perturbations per image (>= 1).
        target: classes to explain; default: the prediction on ``x``.
        relative: divide each change by the unperturbed map's norm.
        seed: seed of the noise generator.
        explainer_kwargs: the registered explainer's arguments.

    Returns:
        A :class:`SensitivityResult`; ``.means()`` for logging.

    Raises:
        InputError: a model in training mode, bad ``x`` (its device or dtype not the model's too),
            ``radius``, ``samples``, ``target``, ``seed`` or ``explainer_kwargs``, an explainer that is
            not one, or maps of the wrong shape or not finite.

    Shape:
        x: ``B C H W``; target: ``B``; the explainer's maps: ``B 1 h w``; results: ``B``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2)).eval()
        >>> r = sensitivity(net, torch.randn(2, 3, 8, 8), "input_gradient", samples=4)
        >>> r.max.shape, bool((r.max >= r.mean).all())
        (torch.Size([2]), True)
    """
    x = check_model_and_images(model, x, FN)
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise fail(FN, "model", "a model in eval mode (dropout and batch statistics would move the maps by "
                   "themselves)", f"{training[0]!r} in training mode", "Call model.eval() first")
    radius = check_positive(radius, FN, "radius", allow_zero=False)
    check_int(samples, FN, "samples", low=1)
    seed = check_seed(seed, FN)
    check_flag(relative, FN, "relative")
    e = _explainer(model, explainer, explainer_kwargs)
    x = x.detach()
    with torch.no_grad():
        if target is None:
            tgt = model_logits(model, x, FN).argmax(dim=1)
        else:
            num_classes = model_logits(model, x[:1], FN).shape[1]
            tgt = check_labels(target, x, num_classes, FN, "target", batch_arg="x")
    base = _map(e, x, tgt, None)
    shape = tuple(base.shape)
    gen = torch.Generator().manual_seed(seed)
    changes = []
    for _ in range(samples):
        noise = (torch.rand(x.shape[1:], generator=gen) * 2 - 1) * radius  # one draw for every image
        xp = x + upload(noise, x.device, x.dtype)
        changes.append((_map(e, xp, tgt, shape) - base).flatten(1).norm(dim=1))
    change = torch.stack(changes, dim=1).cpu()  # [B, samples]
    norm = base.flatten(1).norm(dim=1).cpu()
    if relative:
        valid = norm > 0
        change = change / torch.where(valid, norm, 1.0)[:, None]
    else:
        valid = torch.ones_like(norm, dtype=torch.bool)
    nan = torch.full_like(norm, float("nan"))
    return SensitivityResult(
        max=torch.where(valid, change.amax(dim=1), nan).float(),
        mean=torch.where(valid, change.mean(dim=1), nan).float(),
        valid=valid, target=tgt.cpu(), radius=radius, samples=samples,
    )
