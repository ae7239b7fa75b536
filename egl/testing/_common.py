"""What the contract checks share: the error, the tiny model, the output and hook checks."""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor, nn

from egl._check import describe, fail
from egl.errors import EGLError

NUM_CLASSES = 5
REDUCTIONS = ("mean", "sum", "none")


class ContractError(EGLError, AssertionError):
    """A component does not do what egl expects of its kind (an ``AssertionError``, so pytest
    reports it as a failed check). The message names the component, the check and what differed."""


class Subject:
    """The component under check: its kind, the class or factory, how to build it, its label."""

    def __init__(self, kind: str, factory: Any, kwargs: dict[str, Any], device: str,
                 on: str | Callable[[], nn.Module] = "test_resnet") -> None:
        self.kind, self.factory, self.kwargs, self.device, self.on = kind, factory, kwargs, device, on
        self.name = getattr(factory, "name", None) or getattr(factory, "__name__", "?")
        self.check = ""
        self.registered: str | None = None

    def __repr__(self) -> str:
        where = f"{getattr(self.factory, '__module__', '?')}.{getattr(self.factory, '__qualname__', '?')}"
        return f"{self.kind} {self.name!r} ({where})"

    def build(self, *args: Any, **extra: Any) -> Any:
        """The component, built with the check's arguments and the user's ``kwargs``."""
        try:
            return self.factory(*args, **{**self.kwargs, **extra})
        except TypeError as e:
            if "argument" not in str(e):
                raise
            raise ContractError(f"{self!r}: building it for egl.testing check '{self.check}' raised TypeError: {e}. "
                                f"Pass the arguments it needs after the component: "
                                f"check_component({self.kind!r}, {self.name!r}, name=value, ...)") from e

    def model(self, *, train: bool = False) -> nn.Module:
        """The classifier the checks run on (``on``: a tiny timm model's name, or a factory of a
        model with ``NUM_CLASSES`` outputs), on the check's device, in train or eval mode. A
        ``test_resnet`` gets ``output_stride=16`` for recipes (4 x 4 maps at 64 px)."""
        if callable(self.on):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(0)
                model = self.on()
        else:
            extra = {"output_stride": 16} if self.kind == "recipe" and self.on == "test_resnet" else {}
            model = tiny_model(self.on, **extra)
        return model.train(train).to(self.device)

    def expect(self, ok: object, what: str) -> None:
        """Raise a :class:`ContractError` naming the component and the check unless ``ok``."""
        if not ok:
            raise ContractError(f"{self!r} fails egl.testing check '{self.check}': {what}")

    @contextlib.contextmanager
    def raises(self, exc: type[BaseException], match: str, doing: str) -> Iterator[None]:
        """The body must raise ``exc`` with a message matching ``match`` (the contract for bad input)."""
        try:
            yield
        except exc as e:
            self.expect(re.search(match, str(e)), f"{doing} raised {type(e).__name__} {str(e)[:300]!r}, "
                                                  f"whose message does not match {match!r}")
        except Exception as e:  # noqa: BLE001 - any other error is the finding
            self.expect(False, f"{doing} raised {type(e).__name__}: {str(e)[:300]}, not an "
                               f"{exc.__name__} whose message matches {match!r}")
        else:
            self.expect(False, f"{doing} raised nothing: expected an {exc.__name__} matching {match!r}")


def tiny_model(name: str = "test_resnet", *, num_classes: int = NUM_CLASSES, seed: int = 0, train: bool = False,
               **kwargs: Any) -> nn.Module:
    """A randomly initialised tiny timm model (``test_resnet``, ``test_vit``, ...; never downloaded),
    seeded without touching the global random state, in eval mode unless ``train``."""
    import timm

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = timm.create_model(name, pretrained=False, num_classes=num_classes, **kwargs)
    return model.train(train)


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def hook_count(model: nn.Module) -> int:
    """Hooks on any submodule of ``model`` (global module hooks, which a profiler may hold, are
    not counted)."""
    return sum(len(getattr(m, d, {})) for m in model.modules() for d in _HOOK_DICTS)


def functional_form(cls: type) -> Callable[..., Any] | None:
    """The function beside a component class: same stem as its name (``bce`` -> ``bce_alignment``),
    in its module's ``__all__``; None when there is none."""
    mod = sys.modules.get(cls.__module__)
    name = getattr(cls, "name", "")
    if mod is None or not name:
        return None
    names = [n for n in getattr(mod, "__all__", dir(mod)) if inspect.isfunction(getattr(mod, n, None))]
    for n in sorted(names, key=lambda n: (n != name, n)):
        if n == name or n.startswith(f"{name}_"):
            return getattr(mod, n)
    return None


def expect_map(s: Subject, out: object, b: int, hw: tuple[int, int], what: str) -> None:
    """``out`` is a finite float32 ``[b, 1, *hw]`` map in [0, 1] on the subject's device."""
    s.expect(isinstance(out, Tensor), f"{what} returned {describe(out)}, not a tensor")
    assert isinstance(out, Tensor)
    s.expect(tuple(out.shape) == (b, 1, *hw), f"{what} returned shape {list(out.shape)}, expected {[b, 1, *hw]}")
    s.expect(out.dtype == torch.float32, f"{what} returned {out.dtype}, expected torch.float32")
    s.expect(out.device.type == torch.device(s.device).type, f"{what} returned a tensor on {out.device}, "
                                                             f"expected the input's device {s.device}")
    s.expect(bool(torch.isfinite(out).all()), f"{what} returned non-finite values")
    lo, hi = float(out.detach().min()), float(out.detach().max())
    s.expect(0.0 <= lo and hi <= 1.0, f"{what} returned values in [{lo:.4g}, {hi:.4g}], expected [0, 1]")


def expect_loss(s: Subject, out: object, b: int, reduction: str, what: str) -> None:
    """``out`` is a finite, non-negative float32 loss: ``[b]`` for ``reduction="none"``, else 0-d."""
    s.expect(isinstance(out, Tensor), f"{what} returned {describe(out)}, not a tensor")
    assert isinstance(out, Tensor)
    shape = (b,) if reduction == "none" else ()
    s.expect(tuple(out.shape) == shape, f"{what} with reduction={reduction!r} returned shape {list(out.shape)}, "
                                        f"expected {list(shape)}")
    s.expect(out.dtype == torch.float32, f"{what} returned {out.dtype}, expected torch.float32")
    s.expect(out.device.type == torch.device(s.device).type, f"{what} returned a tensor on {out.device}, "
                                                             f"expected {s.device}")
    s.expect(bool(torch.isfinite(out).all()), f"{what} returned non-finite values")
    s.expect(float(out.detach().min()) >= 0.0, f"{what} returned a negative loss")


def expect_close(s: Subject, a: Tensor, b: Tensor, what: str, **tol: float) -> None:
    """``a`` equals ``b`` within ``torch.testing``'s float32 tolerances (or ``tol``)."""
    try:
        torch.testing.assert_close(a, b, **tol)
    except AssertionError as e:
        s.expect(False, f"{what}: {e}")


def expect_gradients(s: Subject, grads: list[Tensor | None], what: str) -> None:
    """Every gradient is there and finite, and not all are zero."""
    s.expect(grads and all(g is not None for g in grads), f"no gradient reached {what}")
    s.expect(all(bool(torch.isfinite(g).all()) for g in grads if g is not None), f"non-finite gradient in {what}")
    s.expect(sum(float(g.abs().sum()) for g in grads if g is not None) > 0, f"only zero gradients reached {what}")


def resolve(kind: str, component: object, fn: str) -> Any:
    """A registered name becomes its class or factory; a class or factory is taken as it is."""
    from egl import registry

    if isinstance(component, str):
        return registry.get_component(kind, component)
    if not (isinstance(component, type) or inspect.isfunction(component)):
        raise fail(fn, "component", f"a registered {kind} name or the {kind}'s class (or factory)",
                   describe(component), "Pass the class, not an instance; its arguments go in **kwargs")
    return component
