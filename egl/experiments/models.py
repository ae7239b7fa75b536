"""Classifiers for experiments: any timm architecture, random weights or a local weights file.

Nothing is downloaded: ``weights`` is a path to a ``state_dict`` file (``.pt``/``.pth``, or a
checkpoint dict with a ``state_dict``/``model`` entry). Classifier weights whose shape does
not fit the new number of classes are left at their random initialisation.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import torch
from torch import nn

from egl._check import fail

__all__ = ["build_model", "load_weights"]


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load a local weights file into ``model``; returns the keys left at initialisation.

    Raises:
        InputError: the file is missing or holds no state dict, or backbone keys do not match.
    """
    fn = "egl.experiments.load_weights"
    if not os.path.isfile(path):
        raise fail(fn, "weights", "an existing local weights file", repr(os.fspath(path)),
                   "Download the weights once, by hand, and point model.weights at the file")
    obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = obj.get("state_dict") or obj.get("model") or obj
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise fail(fn, "weights", "a state_dict (name -> tensor)", f"{type(obj).__name__} from {path}",
                   "Save weights with torch.save(model.state_dict(), path)")
    own = model.state_dict()
    skipped = [k for k, v in obj.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in obj.items() if k not in skipped}
    result = model.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k not in skipped]
    if unexpected or len(missing) > len(skipped) + 4:
        raise fail(fn, "weights", f"weights for {type(model).__name__}",
                   f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}) and {len(missing)} missing "
                   f"(e.g. {missing[:3]})", "Check that model.arch matches the file")
    if skipped:
        warnings.warn(f"{fn}: kept {skipped} at initialisation (shape differs: new number of classes)",
                      stacklevel=2)
    return skipped + missing


def build_model(model_cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """``timm.create_model(arch, num_classes=..., **kwargs)`` with random weights, then ``weights`` if given."""
    import timm

    arch = model_cfg.get("arch")
    if not isinstance(arch, str) or not timm.is_model(arch):
        raise fail("egl.experiments.build_model", "model.arch", "a timm architecture name", repr(arch),
                   "See timm.list_models(), e.g. 'resnet18'")
    kwargs = model_cfg.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise fail("egl.experiments.build_model", "model.kwargs", "a mapping of keyword arguments for timm",
                   repr(kwargs)[:100], "Set e.g. model.kwargs={drop_rate: 0.1}, or leave it out")
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as e:  # an argument the architecture does not take
        raise fail("egl.experiments.build_model", "model.kwargs", f"keyword arguments that timm's '{arch}' takes",
                   f"{kwargs!r}"[:100] + f" ({e})",
                   "Remove or rename the argument (see the model's class in timm)") from e
    if model_cfg.get("weights"):
        load_weights(model, model_cfg["weights"])
    return model
