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

from egl._check import describe, fail

__all__ = ["build_model", "load_weights", "check_model", "check_model_builds", "apply_normalize", "NORMALIZE"]

#: ``model.normalize``'s named values (or ``{mean: [...], std: [...]}``).
NORMALIZE = ("auto", "none", "timm", "imagenet")


def check_model(model_cfg: object, fn: str = "egl.experiments") -> None:
    """The config's ``model`` section, without building anything: ``model.arch`` is a name timm
    knows (``timm.is_model``, no download), ``model.kwargs`` a mapping and ``model.weights`` null
    or an existing file (both failed only when the first run built its model, in a made folder)."""
    import timm

    if not isinstance(model_cfg, dict):
        raise fail(fn, "model", "a mapping with arch, kwargs and weights", repr(model_cfg)[:100],
                   "Set e.g. model.arch=resnet18, or leave the model section out")
    arch = model_cfg.get("arch")
    if not isinstance(arch, str) or not timm.is_model(arch):
        import difflib

        close = difflib.get_close_matches(arch, timm.list_models(), n=3) if isinstance(arch, str) else []
        hint = f"Did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        raise fail(fn, "model.arch", "a timm architecture name", repr(arch)[:100],
                   f"{hint}Set e.g. model.arch=resnet18 (any name in timm.list_models())")
    kwargs = model_cfg.get("kwargs") or {}
    if not isinstance(kwargs, dict):
        raise fail(fn, "model.kwargs", "a mapping of keyword arguments for timm",
                   repr(kwargs)[:100], "Set e.g. model.kwargs={drop_rate: 0.1}, or leave it out")
    weights = model_cfg.get("weights")
    if weights is not None and not isinstance(weights, (str, os.PathLike)):
        raise fail(fn, "model.weights", "a path to a local weights file, or null", describe(weights),
                   "Set model.weights=/path/to/weights.pt, or model.weights=null for random weights")
    check_normalize(model_cfg.get("normalize", "auto"), fn)
    if weights and not os.path.isfile(weights):
        raise fail(fn, "model.weights", "an existing local weights file", repr(os.fspath(weights)),
                   "Download the weights once, by hand, and set model.weights to the file's path "
                   "(or model.weights=null for random weights)")


def check_normalize(value: object, fn: str) -> None:
    """``model.normalize``: one of :data:`NORMALIZE` or ``{mean: [...], std: [...]}`` of numbers."""
    if isinstance(value, str) and value in NORMALIZE:
        return
    numbers_ = (lambda v: isinstance(v, list) and len(v) > 0  # noqa: E731
                and all(isinstance(t, (int, float)) and not isinstance(t, bool) for t in v))
    if not (isinstance(value, dict) and set(value) == {"mean", "std"} and numbers_(value["mean"])
            and numbers_(value["std"]) and len(value["mean"]) == len(value["std"])
            and all(t > 0 for t in value["std"])):
        raise fail(fn, "model.normalize", f"one of {list(NORMALIZE)} or {{mean: [...], std: [...]}} (one value "
                   "per input channel, std > 0)", repr(value)[:100],
                   "Set model.normalize=timm (the weights' own mean and std), imagenet, none, or "
                   "model.normalize={mean: [0.5, 0.5, 0.5], std: [0.5, 0.5, 0.5]}")


def resolved_normalize(model_cfg: dict[str, Any]) -> Any:
    """``model.normalize`` with ``auto`` resolved: ``timm`` when ``model.weights`` is set, else ``none``."""
    value = model_cfg.get("normalize", "auto")
    if value == "auto":
        value = "timm" if model_cfg.get("weights") else "none"
    return value


def apply_normalize(model: nn.Module, model_cfg: dict[str, Any]) -> nn.Module:
    """Put ``model.normalize``'s normalisation in ``model``'s stem (:func:`egl.normalization.normalize_inputs`):
    ``auto`` is ``timm`` (the mean and std the weights were trained with) when ``model.weights`` is
    set and ``none`` otherwise (random weights learn from [0, 1] images as they are). Returns ``model``."""
    from egl.normalization import normalize_inputs

    value = resolved_normalize(model_cfg)
    if value == "none":
        return model
    if isinstance(value, dict):
        return normalize_inputs(model, value["mean"], value["std"])
    return normalize_inputs(model, value)


def check_model_builds(model_cfg: dict[str, Any], num_classes: int,
                       eval_cfg: dict[str, Any] | None = None) -> nn.Module:
    """Build the model once, on the CPU, and load ``model.weights`` into it: arguments timm's
    architecture does not take, and a weights file torch cannot read or that holds another
    architecture's weights, are named before any folder is made (not when the first run starts).
    With ``eval_cfg``, the evaluation's explainer is built on it too (``eval.explainer_kwargs`` it
    does not take are named now, not after the training). Returns the model (on the CPU)."""
    with warnings.catch_warnings():  # (the runs warn of classifier weights kept at initialisation)
        warnings.simplefilter("ignore", UserWarning)
        model = build_model(model_cfg, num_classes)
    if eval_cfg is not None:
        check_explainer_builds(model, eval_cfg)
    return model


def check_explainer_builds(model: torch.nn.Module, eval_cfg: dict[str, Any]) -> None:
    """Build ``eval.explainer`` with ``eval.explainer_kwargs`` on ``model``: an argument it does not
    take, or a bad value, is named as the config key (with the explainer's own message)."""
    from egl.errors import InputError
    from egl.experiments.evaluate import saliency_explainer

    name, kwargs = eval_cfg.get("explainer", "grad_cam"), eval_cfg.get("explainer_kwargs") or {}
    try:
        saliency_explainer(model, name, kwargs=kwargs)
    except InputError as exc:
        raise fail("egl.experiments", "eval.explainer_kwargs", f"arguments the explainer {name!r} takes",
                   f"{kwargs!r}, refused: {exc}", "Fix eval.explainer_kwargs (or eval.explainer)") from exc


def _read_state_dict(path: str | os.PathLike[str], fn: str, arg: str, fix_path: str) -> dict[str, torch.Tensor]:
    """The ``state_dict`` in the file at ``path`` (a checkpoint's ``state_dict``/``model`` entry too)."""
    if not os.path.isfile(path):
        raise fail(fn, arg, "an existing local weights file", repr(os.fspath(path)),
                   f"Download the weights once, by hand, and {fix_path}")
    try:
        obj: Any = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated, foreign or pickled-object file: name it
        raise fail(fn, arg, "a weights file torch.load reads (weights_only=True: tensors, no pickled objects)",
                   f"{os.fspath(path)!r}, which it could not read ({type(exc).__name__}: {exc})"[:300],
                   "Save the weights with torch.save(model.state_dict(), path)") from exc
    if isinstance(obj, dict) and not all(isinstance(v, torch.Tensor) for v in obj.values()):
        obj = obj.get("state_dict") or obj.get("model") or obj
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise fail(fn, arg, "a state_dict (name -> tensor)", f"{type(obj).__name__} from {path}",
                   "Save weights with torch.save(model.state_dict(), path)")
    return obj


def _load(model: nn.Module, path: str | os.PathLike[str], fn: str, arg: str, fix_path: str) -> list[str]:
    obj = _read_state_dict(path, fn, arg, fix_path)
    own = model.state_dict()
    skipped = [k for k, v in obj.items() if k in own and own[k].shape != v.shape]
    state = {k: v for k, v in obj.items() if k not in skipped}
    result = model.load_state_dict(state, strict=False)
    unexpected = list(result.unexpected_keys)
    missing = [k for k in result.missing_keys if k not in skipped]
    if unexpected or len(missing) > len(skipped) + 4:
        raise fail(fn, arg, f"weights for {type(model).__name__}",
                   f"{len(unexpected)} unexpected keys (e.g. {unexpected[:3]}) and {len(missing)} missing "
                   f"(e.g. {missing[:3]})", "Check that model.arch matches the file")
    if skipped:
        warnings.warn(f"{fn}: kept {skipped} at initialisation (shape differs: new number of classes)",
                      stacklevel=3)
    return skipped + missing


def load_weights(model: nn.Module, path: str | os.PathLike[str]) -> list[str]:
    """Load a local weights file into ``model``; returns the keys left at initialisation.

    Raises:
        InputError: the file is missing, unreadable or holds no state dict, or backbone keys do not match.
    """
    return _load(model, path, "egl.experiments.load_weights", "path", "pass the file's path")


def build_model(model_cfg: dict[str, Any], num_classes: int) -> nn.Module:
    """``timm.create_model(arch, num_classes=..., **kwargs)`` with random weights, then ``weights`` if
    given, then ``normalize``'s input normalisation (:func:`apply_normalize`)."""
    import timm

    fn = "egl.experiments.build_model"
    check_model(model_cfg, fn)
    arch, kwargs = model_cfg["arch"], model_cfg.get("kwargs") or {}
    try:
        model = timm.create_model(arch, pretrained=False, num_classes=num_classes, **kwargs)
    except TypeError as e:  # an argument the architecture does not take
        raise fail(fn, "model.kwargs", f"keyword arguments that timm's '{arch}' takes",
                   f"{kwargs!r}"[:100] + f" ({e})",
                   "Remove or rename the argument (see the model's class in timm)") from e
    if model_cfg.get("weights"):
        _load(model, model_cfg["weights"], fn, "model.weights", "set model.weights to the file's path")
    return apply_normalize(model, model_cfg)
