"""Whether a module may be bypassed (fast paths that call a module's maths directly, instead of
calling the module, are exact only when nothing is attached to it), and whether a model's
submodules changed since a probe's answer was cached."""

from __future__ import annotations

import weakref

from torch import nn

__all__ = ["has_hooks", "bypassable", "structure_stamp"]


def has_hooks(*modules: nn.Module) -> bool:
    """Any module or global forward/backward hook that calling the modules' maths directly would skip."""
    from torch.nn.modules import module as _m

    global_hooks = (_m._global_forward_hooks, _m._global_forward_pre_hooks, _m._global_backward_hooks,
                    _m._global_backward_pre_hooks)
    return any(global_hooks) or any(m._forward_hooks or m._forward_pre_hooks or m._backward_hooks
                                    or m._backward_pre_hooks for m in modules)


def bypassable(*modules: nn.Module) -> bool:
    """No hook on the modules (nor a global one) and no ``forward`` replaced on an instance."""
    return not has_hooks(*modules) and not any("forward" in vars(m) for m in modules)


# -- structure stamps: caches keyed on a model notice a submodule replaced after them ---------

_GENERATION = [0]  # bumped whenever any module anywhere registers a submodule


def _bump(_module: nn.Module, _name: str, _sub: object) -> None:
    _GENERATION[0] += 1


try:  # torch >= 2.0: one global hook, called on every submodule assignment (setattr, add_module)
    from torch.nn.modules.module import register_module_module_registration_hook as _register

    _register(_bump)
    _TRACKED = True
except ImportError:  # pragma: no cover - older torch: compare the module list on every call
    _TRACKED = False

_STAMPS: "weakref.WeakKeyDictionary[nn.Module, tuple[int, tuple[weakref.ref, ...], int]]" = \
    weakref.WeakKeyDictionary()
_NEXT = [0]


def structure_stamp(model: nn.Module) -> int:
    """A number that stays the same while ``model``'s submodules stay the same objects, and
    changes when one is added, removed or replaced (``model.fc = ...``, ``reset_classifier``,
    ``model.global_pool = GeM()``): put it in the key of any cache of a probe's answer.

    O(1) while no module anywhere registered a submodule since the last call (a global
    registration hook counts them); otherwise one walk over ``model.modules()``, compared by
    identity through weak references (a replaced module that died reads as a change).
    """
    seen = _STAMPS.get(model)
    if seen is not None and _TRACKED and seen[0] == _GENERATION[0]:
        return seen[2]
    mods = tuple(model.modules())
    if seen is not None and len(seen[1]) == len(mods) and all(r() is m for r, m in zip(seen[1], mods)):
        stamp = seen[2]
    else:
        _NEXT[0] += 1
        stamp = _NEXT[0]
    _STAMPS[model] = (_GENERATION[0], tuple(weakref.ref(m) for m in mods), stamp)
    return stamp
