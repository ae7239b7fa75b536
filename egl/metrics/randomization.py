"""Sanity check of saliency: the model parameter randomisation test.

Adebayo et al., "Sanity Checks for Saliency Maps", NeurIPS 2018. An explanation that stays the
same when the model's weights are replaced by random ones does not explain the model (an edge
detector passes for a saliency method on natural images). The test re-initialises the model's
layers, from the output towards the input, and compares the maps of the randomised model with
the trained model's maps of the same images and classes:

- ``order="cascading"`` (the paper's main test): the layers are randomised one after another
  and stay random, so the ``i``-th step has the top ``i + 1`` layers random;
- ``order="independent"``: each step randomises one layer of the trained model.

Similarities, per image and step (the paper's):

- ``spearman``: Spearman rank correlation of the two maps (ties get average ranks);
- ``spearman_abs``: the same on absolute values (it differs from ``spearman`` only for signed
  maps: egl's explainers give non-negative maps unless built with ``normalize=False`` and, for
  ``input_gradient``, ``absolute=False``);
- ``ssim``: structural similarity of the two maps after per-image min-max scaling to [0, 1]
  (Gaussian window of 11 pixels, sigma 1.5, or the largest odd size the map holds);
- ``hog`` (with ``hog=True``: computed on the CPU, one map at a time): Pearson correlation of the
  two maps' histograms of oriented gradients (scikit-image's ``hog`` with its defaults: 9
  unsigned orientations, cells of 8 x 8 pixels, blocks of 3 x 3 cells, L2-Hys; the authors'
  code imports scikit-image) after the same min-max scaling. The maps must be at least 24
  pixels a side (one block); rows and columns beyond a multiple of 8 are not seen; the
  orientations are unsigned, so a map and its negation have the same HOG (read it beside
  ``spearman``).

A faithful explanation's similarity falls towards 0 as the cascade reaches the input. egl's
choices where the paper is silent, each configurable:

- The layers: ``layers="blocks"`` (default) takes the model's children that hold parameters,
  opening plain containers (``nn.Sequential``, ``nn.ModuleList``, ``nn.ModuleDict``), so a timm
  ResNet gives ``fc, layer4.1, layer4.0, ..., bn1, conv1`` and a ViT ``head, norm, blocks.11, ...``;
  ``"leaves"`` every module that owns parameters; or a list of module names. The automatic lists
  take registration order, reversed, as the output-to-input order (true of timm models and
  ``nn.Sequential``; pass names for a model built otherwise). Parameters the model holds itself
  (a ViT's ``cls_token`` and ``pos_embed``) are the last step of both lists, named ``"<own>"``
  (a name that also works in a list), so that the full cascade leaves no trained parameter.
- Re-initialisation (``init="reset"``): every module of the layer that has ``reset_parameters``
  (convolutions, linear layers, norms: BatchNorm's running statistics go back to 0 and 1) calls
  it, under ``torch.manual_seed(seed + step)`` with the global generator restored afterwards;
  parameters of other modules (a timm ``LayerScale``) are drawn from a truncated normal of
  standard deviation 0.02. A norm layer's reset is the identity (weight 1, bias 0): its step
  changes maps through its statistics only. ``init`` may instead be a callable
  ``(name, module) -> None`` that re-initialises ``module`` in place (for ``"<own>"`` it gets the
  model and must re-initialise only ``model.parameters(recurse=False)``).
- The class explained at every step is ``target``, or the trained model's prediction.
- A constant map (a dead Grad-CAM: a random head often gives one) has no ranking: two constant
  maps count as identical (Spearman 1), one constant map against a varying one as unrelated
  (Spearman 0), and likewise for HOG's correlation. ``constant`` marks the steps where the
  randomised map is constant, so that a fall to 0 by death can be told from a fall by change.

The user's model is not touched: the test runs on a deep copy, in eval mode. The re-initialisation
draws under a forked generator (the CPU's and every CUDA device's), so the global generators are
where they were; draws an explainer makes itself (``smoothed`` without a ``seed``) advance them as
any call of it would.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import check_finite, check_flag, check_shape, check_tensor, describe, fail
from egl.explainers.base import explained_model
from egl.metrics._common import check_labels, model_logits
from egl.metrics._explainers import build_registered, check_kwargs, check_maps, check_model_and_images, check_seed

__all__ = ["parameter_randomization", "RandomizationResult", "randomization_layers", "map_similarity", "ORDERS",
           "SIMILARITIES", "OWN"]

ORDERS = ("cascading", "independent")
SIMILARITIES = ("spearman", "spearman_abs", "ssim")
#: scikit-image ``hog`` settings of the ``hog`` similarity (one block: 24 pixels a side).
HOG = {"orientations": 9, "pixels_per_cell": (8, 8), "cells_per_block": (3, 3), "block_norm": "L2-Hys"}
CONTAINERS = (nn.Sequential, nn.ModuleList, nn.ModuleDict)
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
FALLBACK_STD = 0.02
#: The step of the parameters the model holds itself, beside its submodules' (a ViT's ``pos_embed``).
OWN = "<own>"

FN = "egl.metrics.parameter_randomization"


@dataclass(frozen=True)
class RandomizationResult:
    """What :func:`parameter_randomization` measured. Tensors are on the CPU.

    Attributes:
        layers: the layers, in the order randomised (output first).
        order: ``"cascading"`` or ``"independent"``.
        spearman: ``[L, B]`` rank correlation of each step's map with the trained model's map.
        spearman_abs: ``[L, B]`` the same on absolute values.
        ssim: ``[L, B]`` structural similarity of the min-max scaled maps.
        constant: ``[L, B]`` bool, the randomised model's map is constant.
        trained_constant: ``[B]`` bool, the trained model's own map is constant.
        target: ``[B]`` the classes explained.
        maps: ``[L + 1, B, 1, h, w]`` the trained model's maps, then each step's (``keep_maps=True``),
            else None.
        hog: ``[L, B]`` Pearson correlation of the HOG features (``hog=True``), else None.
    """

    layers: tuple[str, ...]
    order: str
    spearman: Tensor
    spearman_abs: Tensor
    ssim: Tensor
    constant: Tensor
    trained_constant: Tensor
    target: Tensor
    maps: Tensor | None = None
    hog: Tensor | None = None

    def means(self) -> dict[str, dict[str, float]]:
        """``{layer: {"spearman", "spearman_abs", "ssim", "constant"}}`` (and ``"hog"`` when measured):
        means over images (``constant`` is the share of images whose randomised map is constant)."""
        return {name: {"spearman": float(self.spearman[i].mean()),
                       "spearman_abs": float(self.spearman_abs[i].mean()),
                       "ssim": float(self.ssim[i].mean()),
                       **({"hog": float(self.hog[i].mean())} if self.hog is not None else {}),
                       "constant": float(self.constant[i].float().mean())}
                for i, name in enumerate(self.layers)}


def randomization_layers(model: nn.Module, layers: str | Sequence[str] = "blocks") -> tuple[str, ...]:
    """The names of the layers :func:`parameter_randomization` re-initialises, output first.

    Args:
        model: the classifier.
        layers: ``"blocks"``, ``"leaves"`` or module names (returned as given, after checking).

    Returns:
        The names, output first; ``"<own>"`` last where the model holds parameters itself.

    Raises:
        InputError: ``model`` not a module or without parameters, or ``layers`` not one of the
            forms above (unknown, repeated or parameterless names).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 2))
        >>> randomization_layers(net)
        ('3', '0')
    """
    fn = "egl.metrics.randomization_layers"
    if not isinstance(model, nn.Module):
        raise fail(fn, "model", "a torch.nn.Module", describe(model), "Pass the classifier module itself")
    return _layer_names(model, layers, fn)


def _opened(model: nn.Module) -> tuple[nn.Module, str]:
    """The model inside wrappers whose one child holds every parameter (``nn.DataParallel``'s
    ``module``, ``torch.compile``'s ``_orig_mod``, a model kept as ``self.backbone``), and the
    prefix of its names: its blocks are the cascade's."""
    prefix = ""
    while not _owns_parameters(model):
        held = [(n, c) for n, c in model.named_children() if _holds_parameters(c)]
        if len(held) != 1 or _owns_parameters(held[0][1]) or not any(_holds_parameters(c)
                                                                      for c in held[0][1].children()):
            break
        model, prefix = held[0][1], f"{prefix}{held[0][0]}."
    return model, prefix


def _layer_names(model: nn.Module, layers: object, fn: str) -> tuple[str, ...]:
    modules = dict(model.named_modules())
    own = (OWN,) if _owns_parameters(model) else ()
    if layers == "blocks":
        names = tuple(reversed(_blocks(*_opened(model)))) + own
    elif layers == "leaves":
        names = tuple(reversed([n for n, m in modules.items() if n and _owns_parameters(m)])) + own
    elif isinstance(layers, Sequence) and not isinstance(layers, str) and len(layers) > 0:
        names = tuple(layers)
        unknown = [n for n in names if not isinstance(n, str) or not n or (n not in modules and n != OWN)]
        if unknown:
            shown = ", ".join([*_blocks(model, "")[:12], *own])
            raise fail(fn, "layers", f"names of the model's submodules (or {OWN!r})",
                       f"{unknown[0]!r}, not one of them",
                       f"Pick names from model.named_modules(), e.g. {shown}")
        if len(set(names)) != len(names):
            raise fail(fn, "layers", "distinct module names", repr(names), "Remove the repeated names")
        empty = [n for n in names if not (_owns_parameters(model) if n == OWN else _holds_parameters(modules[n]))]
        if empty:
            raise fail(fn, "layers", "modules that hold parameters", f"{empty[0]!r}, which holds none",
                       "Leave parameterless modules (activations, pooling) out")
    else:
        raise fail(fn, "layers", "'blocks', 'leaves' or a non-empty list of module names", repr(layers)[:100],
                   "Pass layers='blocks' or e.g. layers=['fc', 'layer4']")
    if not names:
        raise fail(fn, "model", "a model with parameters to randomise", f"{type(model).__name__} with none",
                   "Pass a trained classifier")
    return names


def _holds_parameters(m: nn.Module) -> bool:
    return any(True for _ in m.parameters())


def _owns_parameters(m: nn.Module) -> bool:
    return any(True for _ in m.parameters(recurse=False))


def _blocks(module: nn.Module, prefix: str) -> list[str]:
    """Children holding parameters, plain containers opened; a module that owns parameters
    itself (beside its children) is one block."""
    out: list[str] = []
    for name, child in module.named_children():
        full = f"{prefix}{name}"
        if not _holds_parameters(child):
            continue
        if isinstance(child, CONTAINERS) and not _owns_parameters(child):
            out.extend(_blocks(child, full + "."))
        else:
            out.append(full)
    return out


def _reset(name: str, module: nn.Module) -> None:
    """egl's default re-initialisation (see the module docstring); for :data:`OWN`, ``module`` is
    the model and only the parameters it holds itself are drawn."""
    covered: set[int] = set()
    if name != OWN:
        for m in module.modules():
            reset = getattr(m, "reset_parameters", None)
            if callable(reset):
                reset()
                covered.update(id(p) for p in m.parameters(recurse=False))
    with torch.no_grad():
        for p in module.parameters(recurse=name != OWN):
            if id(p) not in covered:
                nn.init.trunc_normal_(p, std=FALLBACK_STD, a=-2 * FALLBACK_STD, b=2 * FALLBACK_STD)


def _average_ranks(v: Tensor) -> Tensor:
    """1-based ranks along dim 1, ties averaged."""
    s = torch.sort(v, dim=1).values
    below = torch.searchsorted(s, v, right=False)
    at_or_below = torch.searchsorted(s, v, right=True)
    return (below + at_or_below + 1).to(torch.float64) / 2.0


def _centred_ranks(v: Tensor) -> tuple[Tensor, Tensor]:
    """Average ranks of each row, centred, and their norms (0 for a constant row)."""
    r = _average_ranks(v.contiguous())
    r = r - r.mean(1, keepdim=True)
    return r, r.norm(dim=1)


def _spearman(a: Tensor, b: Tensor, ranked_a: tuple[Tensor, Tensor] | None = None) -> Tensor:
    """Per-row rank correlation of ``[B, N]`` maps (``ranked_a``: ``a``'s :func:`_centred_ranks`,
    when it was ranked before); see the module docstring for constant rows."""
    ra, na = ranked_a if ranked_a is not None else _centred_ranks(a)
    rb, nb = _centred_ranks(b)
    flat_a, flat_b = na == 0, nb == 0
    rho = (ra * rb).sum(1) / (na * nb).clamp_min(1e-300)
    rho = torch.where(flat_a | flat_b, (flat_a & flat_b).to(rho.dtype), rho)
    return rho.clamp(-1.0, 1.0).float()


def _unit_range(m: Tensor) -> Tensor:
    lo = m.amin(dim=(-2, -1), keepdim=True)
    hi = m.amax(dim=(-2, -1), keepdim=True)
    span = hi - lo
    return torch.where(span > 0, (m - lo) / torch.where(span > 0, span, 1.0), torch.zeros_like(m))


def _ssim(a: Tensor, b: Tensor) -> Tensor:
    """Mean SSIM per image of ``[B, 1, h, w]`` maps scaled to [0, 1], in float64: in float32 the
    variances (``E[x^2] - E[x]^2`` against ``C2 = 9e-4``) lose digits, and a property test found a
    batch of one differing from its row of a batch beyond 1e-6 (float32 was 1.6x faster here, a
    small share of the test's time)."""
    from kornia.metrics import ssim

    size = min(SSIM_WINDOW, *a.shape[-2:])
    size -= 1 - size % 2  # odd
    if size < 3:  # too small for a window: fall back to the single-window (global) form
        return _global_ssim(a, b)
    return ssim(a, b, size, max_val=1.0, eps=0.0).mean(dim=(1, 2, 3)).float()  # (eps 0: two equal maps give 1)


def _global_ssim(a: Tensor, b: Tensor) -> Tensor:
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    a, b = a.flatten(1), b.flatten(1)
    ma, mb = a.mean(1), b.mean(1)
    va, vb = a.var(1, unbiased=False), b.var(1, unbiased=False)
    cov = ((a - ma[:, None]) * (b - mb[:, None])).mean(1)
    return (((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))).float()


def map_similarity(a: Tensor, b: Tensor, *, hog: bool = False) -> dict[str, Tensor]:
    """The test's similarities of two sets of maps, per image: ``{"spearman", "spearman_abs", "ssim"}``
    (and ``"hog"`` with ``hog=True``) of ``[B]`` tensors on the CPU (see the module docstring for
    constant maps).

    Use it for the paper's data randomisation test: the maps of a model trained on permuted labels
    against those of the model trained on the true ones, for the same images and classes.

    Args:
        a: maps ``[B, 1, h, w]``.
        b: maps of the same shape.
        hog: also the Pearson correlation of their histograms of oriented gradients (maps of at
            least 24 x 24 pixels).

    Raises:
        InputError: bad shapes, shapes that differ, values that are not finite, or maps too small
            for ``hog``.

    Example:
        >>> import torch
        >>> a = torch.rand(2, 1, 8, 8)
        >>> {k: [round(float(t), 4) for t in v] for k, v in map_similarity(a, 2 * a + 1).items()}
        {'spearman': [1.0, 1.0], 'spearman_abs': [1.0, 1.0], 'ssim': [1.0, 1.0]}
    """
    fn = "egl.metrics.map_similarity"
    a = check_shape(a, "B 1 h w", fn, "a")
    b = check_shape(b, "B 1 h w", fn, "b")
    if a.shape != b.shape:
        raise fail(fn, "b", f"maps of a's shape {list(a.shape)}", describe(b),
                   "Compare maps of the same images at one resolution (resize one with F.interpolate)")
    check_finite(a.detach(), fn, "a")
    check_finite(b.detach(), fn, "b")
    check_flag(hog, fn, "hog")
    if hog:
        _check_hog_size(a, fn, "a")
    return _similarities(a.detach().cpu(), b.detach().cpu(), hog=hog)


def _similarities(a: Tensor, b: Tensor, ranked: dict[str, Any] | None = None, *,
                  hog: bool = False) -> dict[str, Tensor]:
    """The similarities of ``a`` and ``b``; ``ranked`` caches ``a``'s ranks (and HOG features) over
    calls with one ``a`` (the trained maps, against every step's). Two non-negative sets of maps
    have ``spearman_abs == spearman`` (taken, not recomputed)."""
    ranked = {} if ranked is None else ranked
    fa, fb = a.flatten(1).double(), b.flatten(1).double()
    if "plain" not in ranked:
        ranked["plain"] = _centred_ranks(fa)
        ranked["non_negative"] = bool((fa >= 0).all())
        ranked["abs"] = ranked["plain"] if ranked["non_negative"] else _centred_ranks(fa.abs())
    spearman = _spearman(fa, fb, ranked["plain"])
    same = ranked["non_negative"] and bool((fb >= 0).all())
    abs_rho = spearman.clone() if same else _spearman(fa.abs(), fb.abs(), ranked["abs"])  # (own tensor: returned)
    out = {"spearman": spearman, "spearman_abs": abs_rho,
           "ssim": _ssim(_unit_range(a.double()), _unit_range(b.double()))}
    if hog:
        if "hog" not in ranked:
            ranked["hog"] = _hog_features(a)
        out["hog"] = _pearson_rows(ranked["hog"], _hog_features(b))
    return out


def _check_hog_size(m: Tensor, fn: str, arg: str) -> None:
    side = HOG["pixels_per_cell"][0] * HOG["cells_per_block"][0]
    if min(m.shape[-2:]) < side:
        raise fail(fn, arg, f"maps of at least {side} x {side} pixels for hog=True (one HOG block)",
                   f"maps of {list(m.shape[-2:])}", "Upsample the maps to the image size (egl's explainers do by "
                   "default), or leave hog out")


def _hog_features(m: Tensor) -> Tensor:
    """``[B, F]`` float64 HOG features of min-max scaled ``[B, 1, h, w]`` maps (scikit-image's)."""
    from skimage.feature import hog

    scaled = _unit_range(m.double())[:, 0].numpy()
    return torch.stack([torch.from_numpy(hog(img, feature_vector=True, **HOG)) for img in scaled])


def _pearson_rows(a: Tensor, b: Tensor) -> Tensor:
    """Per-row Pearson correlation; a constant row: 1 against a constant row, 0 against another."""
    ca, cb = a - a.mean(1, keepdim=True), b - b.mean(1, keepdim=True)
    na, nb = ca.norm(dim=1), cb.norm(dim=1)
    flat_a, flat_b = na == 0, nb == 0
    r = (ca * cb).sum(1) / torch.where(flat_a | flat_b, 1.0, na * nb)
    r = torch.where(flat_a & flat_b, 1.0, torch.where(flat_a | flat_b, 0.0, r))
    return r.clamp(-1.0, 1.0).float()


def _explainer_factory(explainer: object, kwargs: object) -> Callable[[nn.Module], Any]:
    from egl.explainers.base import Explainer

    kw = check_kwargs(kwargs, FN)
    if isinstance(explainer, str):
        from egl.registry import _lookup

        _lookup("explainer", explainer, FN, "explainer")  # "did you mean" before any work
        return lambda m: build_registered(explainer, m, kw, FN)
    if kw:
        raise fail(FN, "explainer_kwargs", "None when 'explainer' is a callable", repr(kwargs)[:100],
                   "Bind the arguments in the callable, or pass the explainer's registered name")
    if isinstance(explainer, Explainer):
        raise fail(FN, "explainer", "a registered explainer name, or a callable model -> explainer (the test builds "
                   "the explainer on every randomised copy)", f"an explainer bound to one model ({explainer!r})",
                   f"Pass a factory, e.g. lambda m: {type(explainer).__name__}(m, ...), or the registered name")
    if isinstance(explainer, nn.Module) or not callable(explainer):
        raise fail(FN, "explainer", "a registered explainer name, or a callable model -> explainer",
                   describe(explainer), "Pass e.g. explainer='grad_cam', or lambda m: GradCAM(m, 'layer4')")
    return explainer  # type: ignore[return-value]


def _maps(make: Callable[[nn.Module], Any], model: nn.Module, x: Tensor, target: Tensor,
          shape: tuple[int, ...] | None) -> Tensor:
    try:
        e = make(model)
    except TypeError as err:
        raise fail(FN, "explainer", "a callable model -> explainer (called with the randomised model)",
                   f"one that raised TypeError: {err}"[:300],
                   "Pass a factory such as lambda m: GradCAM(m, 'layer4'); sensitivity takes the explainer itself, "
                   "this test a way to build it") from None
    if not callable(e):
        raise fail(FN, "explainer", "a factory returning a callable (x, target) -> saliency",
                   f"one returning {describe(e)}", "Return the explainer built on the model it is given")
    bound = getattr(e, "model", model)
    if isinstance(bound, nn.Module) and bound is not model and bound is not explained_model(model):
        raise fail(FN, "explainer", "a factory that builds the explainer on the model it is given",
                   "an explainer of another model (the trained one?): its maps would never change",
                   "Build it inside the factory: lambda m: GradCAM(m, ...), not lambda m: cam")
    s = e(x, target)
    s = check_maps(s, x.shape[0], shape, FN, "at every step")
    remove = getattr(e, "remove_hooks", None)
    if callable(remove):
        remove()
    return s.detach().float().cpu()


def parameter_randomization(
    model: nn.Module,
    x: Tensor,
    explainer: str | Callable[[nn.Module], Callable[[Tensor, Tensor], Tensor]] = "grad_cam",
    *,
    target: Tensor | None = None,
    order: str = "cascading",
    layers: str | Sequence[str] = "blocks",
    init: str | Callable[[str, nn.Module], None] = "reset",
    seed: int = 0,
    explainer_kwargs: dict[str, Any] | None = None,
    keep_maps: bool = False,
    hog: bool = False,
) -> RandomizationResult:
    """Adebayo et al.'s model parameter randomisation test of an explainer on ``model``.

    One explainer call on ``x`` for the trained model and one per layer: ``len(layers) + 1``
    calls (plus one forward for the prediction when ``target`` is None).

    Args:
        model: the trained classifier (not modified: the test works on a deep copy in eval mode).
        x: images in the model's input space, on the model's device.
        explainer: a registered explainer name (built on each randomised copy with
            ``explainer_kwargs``), or a callable that builds an explainer on the model it is
            given; the explainer is called as ``e(x, target)`` and returns ``[B, 1, h, w]``.
        target: classes to explain; default: the trained model's prediction, kept at every step.
        order: ``"cascading"`` (the top layers stay random) or ``"independent"`` (one at a time).
        layers: ``"blocks"``, ``"leaves"``, or module names in the order to randomise them.
        init: ``"reset"`` (see the module docstring) or a callable ``(name, module) -> None``.
        seed: step ``i`` re-initialises under ``torch.manual_seed(seed + i)`` (an int in
            ``[0, 2**63 - L]``).
        explainer_kwargs: the registered explainer's arguments (e.g. ``{"layer": "layer3"}``).
        keep_maps: keep every step's maps in the result (for figures).
        hog: also the HOG similarity (``result.hog``; maps of at least 24 x 24 pixels; computed on
            the CPU, one map at a time).

    Returns:
        A :class:`RandomizationResult`; ``.means()`` per layer.

    Raises:
        InputError: bad ``x`` (its device or dtype not the model's too), ``target``, ``order``,
            ``layers``, ``init``, ``seed``, ``explainer_kwargs``, an explainer that is not a way to
            build one (an explainer bound to the trained model never changes), or maps of the wrong
            shape or not finite.

    Shape:
        x: ``B C H W``; target: ``B``; the explainer's maps: ``B 1 h w``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(),
        ...                     nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
        >>> r = parameter_randomization(net, torch.randn(2, 3, 8, 8), "grad_cam",
        ...                             explainer_kwargs={"layer": "1"})
        >>> r.layers, r.spearman.shape
        (('4', '0'), torch.Size([2, 2]))
    """
    x = check_model_and_images(model, x, FN)
    if order not in ORDERS:
        raise fail(FN, "order", f"one of {list(ORDERS)}", repr(order), "Pass order='cascading' or 'independent'")
    check_flag(keep_maps, FN, "keep_maps")
    check_flag(hog, FN, "hog")
    if init == "reset":
        reinit: Callable[[str, nn.Module], None] = _reset
    elif callable(init) and not isinstance(init, str):
        reinit = init
    else:
        raise fail(FN, "init", "'reset' or a callable (name, module) -> None", repr(init)[:100],
                   "Pass init='reset', or a function that re-initialises the module in place")
    make = _explainer_factory(explainer, explainer_kwargs)
    names = _layer_names(model, layers, FN)
    seed = check_seed(seed, FN, steps=len(names))

    work = copy.deepcopy(model).eval()
    x = x.detach()
    if target is None:
        with torch.no_grad():
            tgt = model_logits(work, x, FN).argmax(dim=1)
    else:
        check_tensor(target, FN, "target")
        with torch.no_grad():
            k = model_logits(work, x[:1], FN).shape[1]
        tgt = check_labels(target, x, k, FN, "target", batch_arg="x")
    trained = _maps(make, work, x, tgt, None)
    if hog:
        _check_hog_size(trained, FN, "hog")
    shape = tuple(trained.shape)
    original = {k: v.clone() for k, v in work.state_dict().items()} if order == "independent" else None
    modules = {**dict(work.named_modules()), OWN: work}
    devices = sorted({p.device for p in work.parameters() if p.device.type == "cuda"}, key=str)

    num = len(names)
    sims: dict[str, list[Tensor]] = {k: [] for k in (*SIMILARITIES, "hog")}
    ranked: dict[str, Any] = {}  # the trained maps' ranks, computed once
    constant, kept = [], []
    for i, name in enumerate(names):
        if original is not None and i > 0:
            work.load_state_dict(original)
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(seed + i)
            reinit(name, modules[name])
        step = _maps(make, work, x, tgt, shape)  # similarities step by step: only [L, B] is kept
        for k, v in _similarities(trained, step, ranked, hog=hog).items():
            sims[k].append(v)
        flat = step.flatten(1)
        constant.append(flat.amax(1) == flat.amin(1))
        if keep_maps:
            kept.append(step)
    tflat = trained.flatten(1)
    return RandomizationResult(
        layers=names, order=order, spearman=torch.stack(sims["spearman"]).view(num, -1),
        spearman_abs=torch.stack(sims["spearman_abs"]).view(num, -1), ssim=torch.stack(sims["ssim"]).view(num, -1),
        constant=torch.stack(constant), trained_constant=tflat.amax(1) == tflat.amin(1), target=tgt.cpu(),
        maps=torch.stack([trained, *kept]) if keep_maps else None,
        hog=torch.stack(sims["hog"]).view(num, -1) if hog else None,
    )
