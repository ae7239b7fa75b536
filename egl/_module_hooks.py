"""Whether a module may be bypassed: fast paths that call a module's maths directly (instead of
calling the module) are exact only when nothing is attached to it."""

from __future__ import annotations

from torch import nn

__all__ = ["has_hooks", "bypassable"]


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
