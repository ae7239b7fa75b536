"""Input normalisation inside the model, so that egl keeps handling images in [0, 1].

Pretrained backbones expect their training data's normalisation, ``(x - mean) / std`` per
channel (ImageNet's mean 0.485, 0.456, 0.406 and std 0.229, 0.224, 0.225 for most timm
weights; timm's ``model.pretrained_cfg`` names them). egl's data, maskers and metrics work on
images in [0, 1]: a removed pixel is black (0), ROAD imputes in pixel space, the grayscale
masker reads colours, the background swap pastes pixels. :func:`normalize_inputs` puts the
normalisation in the model instead, as the first thing its *stem* (the first module that
receives the input: ``conv1``, ``patch_embed``, ``stem``...) does, so every path into the
network normalises: ``model(x)``, ``model.forward_features(x)`` (SGDrop, class maps), and the
gradient with respect to ``x`` (input gradients, RRR, SGT, ALIGN's masker phase) is the
gradient with respect to the [0, 1] image.

Choices:

* A forward pre-hook on the stem, with ``mean`` and ``std`` as non-persistent buffers of it:
  they move with ``.to()``, are copied by ``copy.deepcopy`` (the parameter randomisation test),
  and stay out of ``state_dict()`` (checkpoints and weight files are unchanged; egl's
  experiments re-apply the config's ``model.normalize`` when they rebuild a model).
* The stem is found by one forward pass of a blank image (the patch embedding's ``img_size``,
  ``pretrained_cfg["input_size"]``, or 224 px; ``probe_size=``) under ``torch.no_grad()`` in eval
  mode (each module's own mode put back after): the innermost module of the first chain called
  with the input tensor itself (``conv1``; ``patch_embed.proj``; a wrapper's ``net.conv1``, so
  that ``forward_features`` of the inner model normalises too). A second pass of a constant
  image checks that no other module receives the image as it is (a multi-scale model's second
  branch, a skip from the image): such a model is refused, as is one that changes its input
  before any submodule sees it.
* The normalisation runs in the input's dtype; applying it again replaces the previous one.

Example:
    >>> import timm, torch
    >>> from egl.normalization import normalize_inputs, input_normalization
    >>> model = normalize_inputs(timm.create_model("test_resnet", num_classes=3), "imagenet")
    >>> input_normalization(model)
    ('conv1.0', (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
"""

from __future__ import annotations

import math
import numbers
import weakref
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import check_size, describe, fail
from egl._transfer import host_tensor

__all__ = ["normalize_inputs", "input_normalization", "stem_mean", "IMAGENET_MEAN", "IMAGENET_STD"]

FN = "egl.normalization.normalize_inputs"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN, _STD = "egl_input_mean", "egl_input_std"


def normalize_inputs(model: nn.Module, mean: str | Sequence[float] = "timm",
                     std: Sequence[float] | None = None, *, probe_size: Sequence[int] | None = None) -> nn.Module:
    """Make ``model`` normalise its [0, 1] input, ``(x - mean) / std`` per channel, in its stem.

    Args:
        model: the classifier (a timm model, or any module whose first submodule takes the image).
        mean: ``"timm"`` (the model's ``pretrained_cfg`` mean and std: those of its default
            weights; weights of another tag, CLIP's or augreg's 0.5, need their own values),
            ``"imagenet"``, or one value per input channel (then ``std`` too).
        std: one positive value per input channel, with a sequence ``mean`` only.
        probe_size: ``(H, W)`` of the blank image sent through the model to find its stem
            (default: the patch embedding's ``img_size``, else ``pretrained_cfg["input_size"]``,
            else 224 px).

    Returns:
        ``model`` itself, changed in place.
    """
    if not isinstance(model, nn.Module):
        raise fail(FN, "model", "a torch.nn.Module", describe(model), "Pass the classifier module")
    m, s = _values(model, mean, std)
    size = None if probe_size is None else check_size(probe_size, FN, "probe_size")
    first_conv = next((mod for mod in model.modules() if isinstance(mod, nn.Conv2d)), None)
    if first_conv is not None and first_conv.in_channels != len(m):
        raise fail(FN, "mean", f"one value per input channel ({first_conv.in_channels}: the first convolution's)",
                   f"{len(m)} values", f"Pass {first_conv.in_channels} means and stds")
    done = [(n, mod) for n, mod in model.named_modules() if isinstance(getattr(mod, _MEAN, None), Tensor)]
    name, stem = done[0] if done else _stem(model, len(m), size)  # (normalised already: its stem, whose hook hides it)
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    stem.register_buffer(_MEAN, host_tensor(m, device, torch.float32).view(1, -1, 1, 1), persistent=False)
    stem.register_buffer(_STD, host_tensor(s, device, torch.float32).view(1, -1, 1, 1), persistent=False)
    _VERSION[0] += 1
    handle = None
    if not any(h is _normalize for h in stem._forward_pre_hooks.values()):
        handle = stem.register_forward_pre_hook(_normalize)
    try:
        _check_single_entry(model, name, len(m), size)
    except Exception:
        if handle is not None:  # (left as it was)
            handle.remove()
            del stem._buffers[_MEAN], stem._buffers[_STD]
            _VERSION[0] += 1
        raise
    return model


def input_normalization(model: nn.Module) -> tuple[str, tuple[float, ...], tuple[float, ...]] | None:
    """``(stem name, mean, std)`` of the normalisation :func:`normalize_inputs` put in ``model``; None if none.

    The values are those stored, each as the shortest decimal that rounds to it in the buffers'
    dtype (``0.485``, not float32's ``0.48500001430511475``)."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, _MEAN, None), Tensor):
            return name, _shortest(getattr(module, _MEAN)), _shortest(getattr(module, _STD))
    return None


def _shortest(values: Tensor) -> tuple[float, ...]:
    """``values`` as Python floats, each the shortest decimal that converts back to it in ``values.dtype``."""
    out = []
    for v in values.flatten().tolist():
        if math.isfinite(v):  # (17 significant digits always convert back)
            v = next(c for c in (float(f"{v:.{p}g}") for p in range(1, 18))
                     if torch.tensor(c, dtype=values.dtype).item() == v)
        out.append(v)
    return tuple(out)


#: Which module of a model holds the normalisation, per (structure stamp, normalisation version):
#: the search walks every module, and ALIGN asks at every masker step.
_STEMS: "weakref.WeakKeyDictionary[nn.Module, tuple[int, int, weakref.ref | None]]" = weakref.WeakKeyDictionary()
_VERSION = [0]  # bumped whenever normalize_inputs adds or removes a normalisation anywhere


def stem_mean(model: nn.Module) -> Tensor | None:
    """The mean colour :func:`normalize_inputs` subtracts in ``model``'s stem, ``[1, C, 1, 1]`` on
    the model's device (no host read): the image that is zero in the model's normalised space, the
    ``"zero"`` baseline of egl's perturbation metrics. None if the model does not normalise.
    Cached per model (a dict lookup while its modules and normalisation stay as they are)."""
    from egl._module_hooks import structure_stamp

    key = (structure_stamp(model), _VERSION[0])
    seen = _STEMS.get(model)
    if seen is None or seen[:2] != key:
        found = next((m for m in model.modules() if isinstance(getattr(m, _MEAN, None), Tensor)), None)
        seen = (*key, None if found is None else weakref.ref(found))
        _STEMS[model] = seen
    stem = seen[2]() if seen[2] is not None else None
    mean = getattr(stem, _MEAN, None) if stem is not None else None
    return mean.reshape(1, -1, 1, 1) if isinstance(mean, Tensor) else None


def _normalize(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    mean, std = getattr(module, _MEAN), getattr(module, _STD)
    if isinstance(x, Tensor) and x.dim() == 4 and x.shape[1] != mean.shape[1]:  # (it would broadcast)
        raise fail("egl.normalization", "x", f"images with the {mean.shape[1]} channels the model normalises",
                   describe(x), f"Pass [B, {mean.shape[1]}, H, W] images (channels second; grayscale "
                                f"repeated: x.expand(-1, {mean.shape[1]}, -1, -1))")
    return ((x - mean.to(x.dtype)) / std.to(x.dtype), *args[1:])


def _values(model: nn.Module, mean: Any, std: Any) -> tuple[tuple[float, ...], tuple[float, ...]]:
    if isinstance(mean, str):
        if mean not in ("timm", "imagenet"):
            raise fail(FN, "mean", "'timm', 'imagenet' or one value per channel", repr(mean),
                       "Pass mean='timm' (the weights' own), 'imagenet', or e.g. mean=(0.5, 0.5, 0.5), "
                       "std=(0.5, 0.5, 0.5)")
        if std is not None:
            raise fail(FN, "std", f"None with mean={mean!r} (it names both)", describe(std), "Leave std out")
        if mean == "imagenet":
            return IMAGENET_MEAN, IMAGENET_STD
        cfg = getattr(model, "pretrained_cfg", None) or {}
        if "mean" not in cfg or "std" not in cfg:
            raise fail(FN, "mean", "'timm' for a timm model whose pretrained_cfg names its mean and std",
                       f"{type(model).__name__} without them", "Pass mean='imagenet' or the values themselves")
        mean, std = cfg["mean"], cfg["std"]
    good = (isinstance(mean, Sequence) and isinstance(std, Sequence) and len(mean) == len(std) > 0
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v) for v in mean)
            and all(isinstance(v, numbers.Real) and not isinstance(v, bool) and v > 0 and math.isfinite(v)
                    for v in std))
    if not good:  # (a sequence mean without std: std is named)
        raise fail(FN, "mean" if std is not None else "std", "one finite mean and one positive std per input "
                   "channel", f"mean={mean!r}, std={std!r}"[:200],
                   "Pass e.g. mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)")
    return tuple(float(v) for v in mean), tuple(float(v) for v in std)


def _probe(model: nn.Module, channels: int, size: tuple[int, int] | None, value: float,
           see: Any) -> None:
    """One forward pass of a constant ``[1, channels, *size]`` image, in eval mode and without
    gradients, with ``see(name, module, args, probe)`` as every submodule's pre-hook; every
    module's mode is put back afterwards."""
    ref = next(model.parameters(), None)
    kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    size = size or _probe_size(model)
    probe = torch.full((1, channels, *size), value, **kw)  # (made there: no host-to-device copy)
    names = {id(m): n for n, m in model.named_modules()}
    handles = [m.register_forward_pre_hook(lambda mod, args: see(names[id(mod)], mod, args, probe))
               for m in model.modules() if m is not model]
    modes = {m: m.training for m in model.modules()}
    try:
        with torch.no_grad():
            model.eval()(probe)
    except Exception as exc:  # noqa: BLE001 - a model that cannot take the probe: name it
        raise fail(FN, "model", f"a model that takes a blank [1, {channels}, {size[0]}, {size[1]}] image "
                   "(to find the module that receives the input)", f"{type(model).__name__}, which raised "
                   f"{type(exc).__name__}: {exc}"[:300], "Pass probe_size=(H, W), a size the model takes") from exc
    finally:
        for m, mode in modes.items():  # (each module's own: a BatchNorm kept in eval mode stays so)
            m.training = mode
        for h in handles:
            h.remove()


def _probe_size(model: nn.Module) -> tuple[int, int]:
    """The input size the model takes: its patch embedding's (a ViT built with img_size=64), else
    timm's ``pretrained_cfg["input_size"]``, else 224 px."""
    img_size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if isinstance(img_size, int):
        return (img_size, img_size)
    if isinstance(img_size, (tuple, list)) and len(img_size) == 2:
        return (int(img_size[0]), int(img_size[1]))
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("input_size", (3, 224, 224)))[-2:]  # type: ignore[return-value]


def _stem(model: nn.Module, channels: int, size: tuple[int, int] | None) -> tuple[str, nn.Module]:
    """The innermost submodule of the first chain that receives the input tensor itself
    (``conv1``; ``patch_embed.proj``; a wrapper's ``net.conv1``)."""
    seen: list[tuple[str, nn.Module]] = []

    def see(name: str, module: nn.Module, args: tuple[Any, ...], probe: Tensor) -> None:
        if args and args[0] is probe:
            seen.append((name, module))

    _probe(model, channels, size, 0.0, see)
    if not seen:
        raise fail(FN, "model", "a model whose first submodule receives the input image as it is",
                   f"{type(model).__name__}, whose forward changes the input before any submodule sees it",
                   "Normalise the images yourself, e.g. in the data set, and leave normalize_inputs out")
    first = seen[0][0]
    chain = [(n, m) for n, m in seen if n == first or n.startswith(first + ".")]
    return max(chain, key=lambda nm: nm[0].count("."))


def _check_single_entry(model: nn.Module, stem_name: str, channels: int, size: tuple[int, int] | None) -> None:
    """Refuse a model that reads its input somewhere else too (a second branch of a multi-scale
    model, a skip from the image): there the image would arrive un-normalised. A constant image
    is sent through; no module but the stem's ancestors may receive a tensor of that constant."""
    value = 0.3141592
    raw: list[str] = []
    ancestors = {".".join(stem_name.split(".")[:i]) for i in range(1, stem_name.count(".") + 1)}

    def see(name: str, module: nn.Module, args: tuple[Any, ...], probe: Tensor) -> None:
        x = args[0] if args else None
        if (not raw and name not in ancestors and name != stem_name and isinstance(x, Tensor)
                and x.is_floating_point() and x.numel() and bool((x == value).all())):
            raw.append(name)

    _probe(model, channels, size, value, see)
    if raw:
        raise fail(FN, "model", f"a model that reads its input through one module ({stem_name!r}, normalised)",
                   f"{type(model).__name__}, whose {raw[0]!r} receives the image as it is too",
                   "Normalise the images yourself, e.g. in the data set, and leave normalize_inputs out")
