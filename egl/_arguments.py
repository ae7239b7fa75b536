"""Constructor arguments, recorded and described: what ``Recipe.config()`` (and so a run's log
header and the resume check) says of a recipe and of every component given to it."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = ["records_arguments", "readable", "record_subclass_arguments"]


def records_arguments(init: Callable[..., None]) -> Callable[..., None]:
    """Wrap an ``__init__`` so that the outermost call stores its bound arguments (defaults
    applied, ``**kwargs`` flattened) in ``self._init_arguments``."""
    if getattr(init, "__egl_records__", False):
        return init
    sig = inspect.signature(init)
    var_kw = [n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.VAR_KEYWORD]

    @functools.wraps(init)
    def wrapper(self: Any, *args: Any, **kwargs: Any) -> None:
        if "_init_arguments" not in self.__dict__:  # the most derived __init__ runs first
            try:
                bound = sig.bind(self, *args, **kwargs)
            except TypeError:  # init itself raises the real error
                pass
            else:
                bound.apply_defaults()
                arguments = dict(list(bound.arguments.items())[1:])  # drop self
                for name in var_kw:
                    arguments.update(arguments.pop(name, {}))
                object.__setattr__(self, "_init_arguments", arguments)
        init(self, *args, **kwargs)

    wrapper.__egl_records__ = True  # type: ignore[attr-defined]
    return wrapper


def record_subclass_arguments(cls: type) -> None:
    """From a base class's ``__init_subclass__``: record the arguments of ``cls``'s own ``__init__``."""
    if "__init__" in cls.__dict__:
        cls.__init__ = records_arguments(cls.__dict__["__init__"])  # type: ignore[misc]


def readable(value: Any) -> Any:
    """A JSON-friendly, human-readable form of a constructor argument.

    A component built with recorded arguments (an egl masker, explainer, loss or regularizer)
    reads as its name and every argument, ``{"name": "bce", "kwargs": {"reduction": "mean",
    "eps": 1e-06}}`` (the form :func:`egl.resolve` builds from), so two built alike read alike and
    two built otherwise do not (an explainer's ``model``, the recipe's own, is left out). Other
    modules read as their class and architecture (``"ResNet(test_resnet)"``), tensors as shape and
    dtype, other objects their repr.
    """
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return [readable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): readable(v) for k, v in value.items()}
    args = getattr(value, "__dict__", {}).get("_init_arguments")
    name = getattr(type(value), "name", None)
    if isinstance(args, dict) and isinstance(name, str) and name:
        from egl.explainers.base import Explainer

        skip = ("model",) if isinstance(value, Explainer) else ()
        return {"name": name, "kwargs": {str(k): readable(v) for k, v in args.items() if k not in skip}}
    if isinstance(value, nn.Module):
        cfg = getattr(value, "pretrained_cfg", None) or {}
        detail = cfg.get("architecture") if isinstance(cfg, dict) else None
        detail = detail or getattr(value, "name", None)
        return f"{type(value).__name__}({detail})" if isinstance(detail, str) and detail else type(value).__name__
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={list(value.shape)}, dtype={value.dtype})"
    return repr(value)[:200]

