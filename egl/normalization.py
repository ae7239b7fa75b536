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
* The stem is found by one forward pass of a blank image (``pretrained_cfg["input_size"]``, or
  224 px) under ``torch.no_grad()`` in eval mode: the first submodule called with the input
  tensor itself. A model that changes its input before any submodule sees it is refused.
* The normalisation runs in the input's dtype; applying it again replaces the previous one.

Example:
    >>> import timm, torch
    >>> from egl.normalization import normalize_inputs, input_normalization
    >>> model = normalize_inputs(timm.create_model("test_resnet", num_classes=3), "imagenet")
    >>> input_normalization(model)[0]
    'conv1'
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import describe, fail
from egl._transfer import host_tensor

__all__ = ["normalize_inputs", "input_normalization", "IMAGENET_MEAN", "IMAGENET_STD"]

FN = "egl.normalization.normalize_inputs"
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_MEAN, _STD = "egl_input_mean", "egl_input_std"


def normalize_inputs(model: nn.Module, mean: str | Sequence[float] = "timm",
                     std: Sequence[float] | None = None) -> nn.Module:
    """Make ``model`` normalise its [0, 1] input, ``(x - mean) / std`` per channel, in its stem.

    Args:
        model: the classifier (a timm model, or any module whose first submodule takes the image).
        mean: ``"timm"`` (the model's ``pretrained_cfg`` mean and std: those its weights were
            trained with), ``"imagenet"``, or one value per input channel (then ``std`` too).
        std: one positive value per input channel, with a sequence ``mean`` only.

    Returns:
        ``model`` itself, changed in place.
    """
    if not isinstance(model, nn.Module):
        raise fail(FN, "model", "a torch.nn.Module", describe(model), "Pass the classifier module")
    m, s = _values(model, mean, std)
    done = [mod for mod in model.modules() if isinstance(getattr(mod, _MEAN, None), Tensor)]
    stem = done[0] if done else _stem(model, len(m))[1]  # (normalised already: its stem, whose hook would hide it)
    ref = next(model.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    stem.register_buffer(_MEAN, host_tensor(m, device, torch.float32).view(1, -1, 1, 1), persistent=False)
    stem.register_buffer(_STD, host_tensor(s, device, torch.float32).view(1, -1, 1, 1), persistent=False)
    if not any(h is _normalize for h in stem._forward_pre_hooks.values()):
        stem.register_forward_pre_hook(_normalize)
    return model


def input_normalization(model: nn.Module) -> tuple[str, tuple[float, ...], tuple[float, ...]] | None:
    """``(stem name, mean, std)`` of the normalisation :func:`normalize_inputs` put in ``model``; None if none."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, _MEAN, None), Tensor):
            mean, std = getattr(module, _MEAN), getattr(module, _STD)
            return name, tuple(mean.flatten().tolist()), tuple(std.flatten().tolist())
    return None


def _normalize(module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
    x = args[0]
    mean, std = getattr(module, _MEAN), getattr(module, _STD)
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


def _stem(model: nn.Module, channels: int) -> tuple[str, nn.Module]:
    """The first submodule ``model``'s forward calls with the input tensor itself."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    size = tuple(cfg.get("input_size", (channels, 224, 224)))[-2:]
    ref = next(model.parameters(), None)
    kw = {} if ref is None else {"device": ref.device, "dtype": ref.dtype}
    probe = torch.zeros(1, channels, *size, **kw)  # (made there: no host-to-device copy)
    found: list[tuple[str, nn.Module]] = []
    names = {id(m): n for n, m in model.named_modules()}

    def see(module: nn.Module, args: tuple[Any, ...]) -> None:
        if not found and module is not model and args and args[0] is probe:
            found.append((names.get(id(module), "?"), module))

    handles = [m.register_forward_pre_hook(see) for m in model.modules()]
    mode = model.training
    try:
        with torch.no_grad():
            model.eval()(probe)
    except Exception as exc:  # noqa: BLE001 - a model that cannot take the probe: name it
        raise fail(FN, "model", f"a model that takes a blank [1, {channels}, {size[0]}, {size[1]}] image "
                   "(to find the module that receives the input)", f"{type(model).__name__}, which raised "
                   f"{type(exc).__name__}: {exc}"[:300], "Set pretrained_cfg['input_size'] to a size it takes") from exc
    finally:
        model.train(mode)
        for h in handles:
            h.remove()
    if not found:
        raise fail(FN, "model", "a model whose first submodule receives the input image as it is",
                   f"{type(model).__name__}, whose forward changes the input before any submodule sees it",
                   "Normalise the images yourself, e.g. in the data set, and leave normalize_inputs out")
    return found[0]
