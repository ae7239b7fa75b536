"""The recipes' default optimisers: Adam (DomainBed's and ALIGN's), AdamW, or SGD with momentum.

Every recipe takes ``optimizer=`` beside ``lr`` and ``weight_decay``; it chooses the optimiser
that :meth:`egl.recipes.Recipe.configure_optimizers` builds for each phase:

* ``"adam"`` (default) -- ``torch.optim.Adam``: DomainBed's and the ALIGN paper's. Its
  ``weight_decay`` is an L2 term added to the gradient, so Adam's per-parameter scaling shrinks
  it where gradients are large (Loshchilov & Hutter, ICLR 2019).
* ``"adamw"`` -- ``torch.optim.AdamW``: the decay applied to the weights directly, decoupled
  from the gradient's scaling (Loshchilov & Hutter; timm's default optimiser).
* ``"sgd"`` -- ``torch.optim.SGD`` with ``momentum=0.9`` (our default for it: the ResNet
  papers' and Sagawa et al.'s GroupDRO setting; the paper is silent).

A dict sets the optimiser's own options too: ``{"name": "sgd", "momentum": 0.0}``,
``{"name": "adamw", "betas": [0.9, 0.99]}``. Options: ``betas``, ``eps``, ``amsgrad`` (Adam,
AdamW); ``momentum``, ``dampening``, ``nesterov`` (SGD); and for each,
``decay_norm_and_bias`` (``True``, torch's and DomainBed's: ``weight_decay`` applies to every
parameter; ``False``: not to 1-D parameters, the biases and normalisation scales, nor to what a
module's ``no_weight_decay()`` names (a timm ViT's position embedding and class token), as
timm's optimisers do by default; they then form a second param group). The choice applies to every phase's
default optimiser (ALIGN's masker too); for per-phase choices pass your own ``optimizers=`` to
:func:`egl.train.fit`.

Example:
    >>> import timm
    >>> from egl import recipes
    >>> recipe = recipes.erm(timm.create_model("test_resnet", num_classes=3), optimizer="adamw", weight_decay=0.01)
    >>> type(recipe.configure_optimizers()["classifier"]).__name__
    'AdamW'
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterable
from typing import Any

import torch
from torch import nn

from egl._check import check_choice, check_known_keys, describe, fail

__all__ = ["OPTIMIZERS", "check_optimizer", "describe_optimizer", "build_optimizer", "no_weight_decay_ids"]

_ADAM_DEFAULTS = {"betas": (0.9, 0.999), "eps": 1e-8, "amsgrad": False}  # torch's
#: name -> (class, the options a dict may set with their defaults: torch's, but SGD's momentum 0.9)
OPTIMIZERS: dict[str, tuple[type[torch.optim.Optimizer], dict[str, Any]]] = {
    "adam": (torch.optim.Adam, {**_ADAM_DEFAULTS, "decay_norm_and_bias": True}),
    "adamw": (torch.optim.AdamW, {**_ADAM_DEFAULTS, "decay_norm_and_bias": True}),
    "sgd": (torch.optim.SGD, {"momentum": 0.9, "dampening": 0.0, "nesterov": False, "decay_norm_and_bias": True}),
}
#: options of ours, not the torch optimiser's
_OURS = ("decay_norm_and_bias",)


def check_optimizer(spec: object, fn: str, arg: str = "optimizer") -> dict[str, Any]:
    """``spec`` (a name or ``{"name": ..., option: value}``) as a full dict: the name and every
    option, our defaults filled in. Raises :class:`egl.InputError` naming the bad part."""
    names = list(OPTIMIZERS)
    if isinstance(spec, str):
        check_choice(spec, names, fn, arg)
        spec = {"name": spec}
    if not isinstance(spec, dict):
        raise fail(fn, arg, f"one of {names} or a dict such as {{'name': 'sgd', 'momentum': 0.9}}",
                   describe(spec), "Pass e.g. optimizer='adamw'")
    name = spec.get("name")
    if name is None:
        raise fail(fn, arg, "a dict with a 'name' key", f"keys {sorted(map(str, spec))}",
                   f"Add 'name': one of {names}")
    check_choice(name, names, fn, f"{arg}.name")
    defaults = OPTIMIZERS[name][1]
    options = {k: v for k, v in spec.items() if k != "name"}
    check_known_keys(options, list(defaults), fn, arg, f"the options of '{name}'")
    options = {**defaults, **options}
    for key, value in options.items():
        options[key] = _check_option(name, key, value, fn, f"{arg}.{key}")
    if options.get("nesterov") and (options["momentum"] <= 0 or options["dampening"] != 0):
        raise fail(fn, f"{arg}.nesterov", "momentum > 0 and dampening 0 (Nesterov momentum needs both)",
                   f"momentum {options['momentum']}, dampening {options['dampening']}",
                   "Set a momentum > 0 and leave dampening at 0, or nesterov=False")
    return {"name": name, **options}


def describe_optimizer(spec: dict[str, Any]) -> str | dict[str, Any]:
    """The short form of a checked ``spec``: its name when every option is at its default, else
    the name and the options that differ (``"sgd"`` and ``{"name": "sgd", "momentum": 0.9}``
    read alike, so a resume does not take them for different arguments)."""
    defaults = OPTIMIZERS[spec["name"]][1]
    changed = {k: (list(v) if isinstance(v, tuple) else v) for k, v in spec.items()
               if k != "name" and v != defaults[k]}
    return {"name": spec["name"], **changed} if changed else spec["name"]


def _check_option(name: str, key: str, value: object, fn: str, arg: str) -> Any:
    def number(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    if key in ("amsgrad", "nesterov", "decay_norm_and_bias"):
        if not isinstance(value, bool):
            raise fail(fn, arg, "True or False", describe(value), f"Pass {arg}: true or false")
        return value
    if key == "betas":
        ok = isinstance(value, (list, tuple)) and len(value) == 2 and all(number(b) and 0 <= b < 1 for b in value)
        if not ok:
            raise fail(fn, arg, "two numbers in [0, 1) (the moments' decay rates)", repr(value)[:100],
                       "Pass e.g. betas: [0.9, 0.999] (Adam's defaults)")
        return (float(value[0]), float(value[1]))  # type: ignore[index]
    if key == "eps":
        if not (number(value) and value > 0):  # type: ignore[operator]
            raise fail(fn, arg, "a finite number > 0", repr(value)[:100], "Pass e.g. eps: 1.0e-8 (Adam's default)")
        return float(value)  # type: ignore[arg-type]
    upper = 1.0 if key == "dampening" else math.inf  # momentum, dampening
    if not (number(value) and 0 <= value <= upper):  # type: ignore[operator]
        expected = "a number in [0, 1]" if key == "dampening" else "a finite number >= 0"
        raise fail(fn, arg, expected, repr(value)[:100], f"Pass e.g. {key}: {0.9 if key == 'momentum' else 0}")
    return float(value)  # type: ignore[arg-type]


def no_weight_decay_ids(modules: Iterable[nn.Module]) -> set[int]:
    """The ids of the parameters the modules' own ``no_weight_decay()`` names (timm's ViTs: the
    position embedding and class token), found by their names in each module. Only the phase's
    own modules are asked, as timm asks the model (a ViT wrapped in another module is not)."""
    out: set[int] = set()
    for m in modules:
        names = set(m.no_weight_decay()) if callable(getattr(m, "no_weight_decay", None)) else set()
        out.update(id(p) for n, p in m.named_parameters() if n in names)
    return out


def build_optimizer(params: Iterable[nn.Parameter], spec: dict[str, Any], *, lr: float,
                    weight_decay: float, no_decay: Collection[int] = ()) -> torch.optim.Optimizer:
    """The optimiser ``spec`` (from :func:`check_optimizer`) over ``params``; with
    ``decay_norm_and_bias=False`` the 1-D parameters and those in ``no_decay`` (ids, from
    :func:`no_weight_decay_ids`) form a second param group without weight decay (timm's rule)."""
    cls = OPTIMIZERS[spec["name"]][0]
    options = {k: v for k, v in spec.items() if k != "name" and k not in _OURS}
    params = list(params)
    if spec.get("decay_norm_and_bias", True) or weight_decay == 0:
        return cls(params, lr=lr, weight_decay=weight_decay, **options)
    plain = [p for p in params if p.dim() <= 1 or id(p) in no_decay]
    held = {id(p) for p in plain}
    groups = [{"params": [p for p in params if id(p) not in held]}, {"params": plain, "weight_decay": 0.0}]
    return cls([g for g in groups if g["params"]], lr=lr, weight_decay=weight_decay, **options)
