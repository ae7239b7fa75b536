"""Input checks shared by every public entry point (after kornia's KORNIA_CHECK_*).

Messages follow one form:
``<function>: '<argument>' expected <what>, got <what arrived>. <how to fix>.``
"""

from __future__ import annotations

import contextlib
import operator
import re
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from torch import Tensor

from egl._deferred import active
from egl.errors import InputError, UnsupportedModelError

__all__ = [
    "fail",
    "check_tensor",
    "check_shape",
    "check_same_batch",
    "check_range",
    "check_finite",
    "check_choice",
    "check_positive",
    "check_logits",
    "check_flag",
    "check_device",
    "check_size",
    "check_known_keys",
    "describe",
    "check_eval_mode",
    "model_input_errors",
]


def describe(value: object) -> str:
    """Short human description of a value for error messages."""
    if isinstance(value, Tensor):
        return f"a {value.dtype} tensor of shape {list(value.shape)} on {value.device}"
    if isinstance(value, (list, tuple)):
        return f"a {type(value).__name__} of length {len(value)}"
    return f"{type(value).__name__} {value!r}"[:200]


def fail(fn: str, arg: str, expected: str, got: str, fix: str) -> InputError:
    """Build (not raise) an :class:`InputError` in the package's message format."""
    fix = fix.rstrip(".")
    return InputError(f"{fn}: '{arg}' expected {expected}, got {got}. {fix}.")


def check_tensor(x: object, fn: str, arg: str, *, floating: bool = False) -> Tensor:
    """Raise unless ``x`` is a tensor (of floating dtype when ``floating``)."""
    if not isinstance(x, Tensor):
        raise fail(fn, arg, "a torch.Tensor", describe(x), f"Pass '{arg}' as a tensor")
    if floating and not x.is_floating_point():
        raise fail(fn, arg, "a floating-point tensor", describe(x), f"Convert with {arg}.float()")
    return x


def check_shape(x: object, shape: str, fn: str, arg: str, *, floating: bool = True) -> Tensor:
    """Check ``x`` against a shape string such as ``"B 1 H W"``.

    Letters name free dimensions, integers fix them; the same string serves the
    docstring's ``Shape:`` section.
    """
    x = check_tensor(x, fn, arg, floating=floating)
    dims = shape.split()
    if x.dim() != len(dims):
        raise fail(
            fn, arg, f"a {len(dims)}-D tensor of shape [{', '.join(dims)}]", describe(x),
            f"Reshape '{arg}' to [{', '.join(dims)}]",
        )
    for i, (d, n) in enumerate(zip(dims, x.shape)):
        if d.isdigit() and int(d) != n:
            raise fail(
                fn, arg, f"shape [{', '.join(dims)}] with dimension {i} equal to {d}", describe(x),
                f"Give '{arg}' {d} entries along dimension {i}",
            )
    return x


def check_same_batch(fn: str, **tensors: Tensor) -> int:
    """All tensors share their first dimension; returns it. Blames the first one that differs."""
    sizes = {k: int(v.shape[0]) for k, v in tensors.items()}
    names = list(sizes)
    first = sizes[names[0]]
    for name in names[1:]:
        if sizes[name] != first:
            raise fail(
                fn, name, f"the same batch size as '{names[0]}' ({first})",
                f"batch size {sizes[name]} ({', '.join(f'{k}={v}' for k, v in sizes.items())})",
                "Pass tensors that describe the same samples",
            )
    return first


def check_range(x: Tensor, lo: float, hi: float, fn: str, arg: str, fix: str = "") -> Tensor:
    """Raise unless every value of ``x`` lies in ``[lo, hi]`` (NaN fails too).

    Inside :func:`egl._deferred.deferred_checks` the check is queued and judged later, without
    a device-to-host read here.
    """
    if x.numel() == 0:
        return x

    def verdict(v: Sequence[float]) -> InputError | None:
        bad, xmin, xmax = v
        if bad or not (lo <= xmin and xmax <= hi):  # NaN compares False and fails here
            return fail(fn, arg, f"values in [{lo}, {hi}]", f"values in [{xmin:.4g}, {xmax:.4g}]",
                        fix or f"Rescale '{arg}' into [{lo}, {hi}] (for example with torch.sigmoid or min-max)")
        return None

    xmin, xmax = x.min(), x.max()
    bad = ~((xmin >= lo) & (xmax <= hi))  # judged in x's own precision
    stats = torch.stack([bad.float(), xmin.float(), xmax.float()])
    checks = active()
    if checks is not None:
        checks.add(stats, verdict)
        return x
    err = verdict(stats.tolist())  # one device-to-host read
    if err is not None:
        raise err
    return x


def check_finite(x: Tensor, fn: str, arg: str) -> Tensor:
    """Raise if ``x`` holds NaN or infinite values."""
    if not bool(torch.isfinite(x).all()):
        bad = int((~torch.isfinite(x)).sum())
        raise fail(fn, arg, "finite values", f"{bad} NaN/Inf values in {describe(x)}",
                   f"Check what produced '{arg}'")
    return x


def check_choice(value: object, choices: Sequence[object], fn: str, arg: str) -> None:
    """Raise unless ``value`` is one of ``choices``."""
    if value not in choices:
        raise fail(fn, arg, f"one of {list(choices)}", repr(value), f"Pick one of {list(choices)}")


def check_positive(value: float, fn: str, arg: str, *, allow_zero: bool = True) -> float:
    """Raise unless ``value`` is a finite number >= 0 (> 0 when not ``allow_zero``)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and value == value
    ok = ok and (value >= 0 if allow_zero else value > 0) and value != float("inf")
    if not ok:
        expected = "a finite number >= 0" if allow_zero else "a finite number > 0"
        raise fail(fn, arg, expected, repr(value), f"Pass '{arg}' as {expected}")
    return float(value)


def check_logits(out: object, batch: int, fn: str) -> Tensor:
    """Raise :class:`~egl.errors.UnsupportedModelError` unless a model's output is a ``[batch, K]``
    tensor of class scores (a tuple, a dict, a 4-D map or a 1-D vector are named, not crashed on)."""
    if isinstance(out, Tensor) and out.dim() == 2 and out.shape[0] == batch:
        return out
    raise UnsupportedModelError(
        f"{fn}: the model returned {describe(out)}; expected logits of shape [{batch}, num_classes]. "
        "Wrap the model so that its forward returns one [B, num_classes] tensor of class scores "
        "(e.g. take the logits out of a tuple or dict output, or pool a dense prediction).")


def check_flag(value: object, fn: str, arg: str) -> bool:
    """Raise unless ``value`` is ``True`` or ``False`` (``bool("false")`` is True: a string or a
    number would be read silently as the wrong switch)."""
    import numpy

    if isinstance(value, numpy.bool_):  # (np.True_: a real switch)
        value = bool(value)
    if not isinstance(value, bool):
        raise fail(fn, arg, "True or False", repr(value)[:100], f"Pass {arg}=True or {arg}=False")
    return value


def check_int(value: object, fn: str, arg: str, *, low: int = 0, fix: str = "", or_none: bool = False,
              note: str = "") -> Any:
    """Raise unless ``value`` is an int >= ``low`` (a bool is not; ``None`` passes with ``or_none``).

    ``note`` follows the expectation in the message (e.g. what ``None`` means); ``fix`` defaults
    to "Pass '<arg>' as an int >= <low>"."""
    if (value is None and or_none) or (isinstance(value, int) and not isinstance(value, bool) and value >= low):
        return value
    expected = f"an int >= {low}" + (" or None" if or_none else "") + (f" {note}" if note else "")
    raise fail(fn, arg, expected, repr(value), fix or f"Pass '{arg}' as an int >= {low}")


def check_model_dtype(model: torch.nn.Module, x: Tensor, fn: str, arg: str) -> None:
    """Raise unless floating ``x`` has the dtype of ``model``'s parameters (under autocast, which
    casts both, any of float32 / float16 / bfloat16): float64 images from NumPy into a float32
    model crash deep inside a convolution."""
    if not x.is_floating_point():
        return
    want = next((p.dtype for p in model.parameters() if p.is_floating_point()), None)
    if want is None or x.dtype == want:
        return
    if torch.is_autocast_enabled(x.device.type) and torch.float64 not in (x.dtype, want):
        return
    numpy = " (images from NumPy are float64)" if x.dtype == torch.float64 else ""
    autocast = "" if torch.float64 in (x.dtype, want) else ", or run under torch.autocast"
    raise fail(fn, arg, f"images of the model's dtype ({want})", describe(x),
               f"Convert them with x.to({want}){numpy}, or convert the model{autocast}")


@contextlib.contextmanager
def batch_of_one(fn: str, arg: str) -> Iterator[None]:
    """Name torch's error for a BatchNorm layer in training mode given one value per channel (a
    batch of one image reaching a 1 x 1 map, or a ``BatchNorm1d``): usually a loader's last batch."""
    try:
        yield
    except ValueError as e:
        if isinstance(e, InputError) or "Expected more than 1 value per channel when training" not in str(e):
            raise  # (an InputError: named already, by an inner call)
        raise fail(fn, arg, "at least 2 images while the model's BatchNorm layers are in training mode (a "
                   "batch of one gives them one value per channel to normalise)", f"torch's error: {e}",
                   "Pass drop_last=True to the DataLoader (its last batch can hold one image), use a batch "
                   "size of 2 or more, or put the model in eval mode (model.eval()) to explain single images") from e


def check_device(device: object, fn: str, arg: str, *, verb: str = "Pass",
                 spell: Callable[[str], str] = lambda v: f"device='{v}'", ints: bool = True) -> torch.device:
    """``device`` as a ``torch.device``: a name (or, with ``ints``, an index) torch reads, of a device
    this machine has (``cuda`` without a GPU, or ``cuda:2`` with two, failed later inside torch).
    ``verb`` and ``spell`` word the fix as the caller takes the value (``Set`` / ``train.device=cpu``)."""
    try:
        index = ints and isinstance(device, int) and not isinstance(device, bool)
        ok = isinstance(device, (str, torch.device)) or index
        dev = torch.device(device) if ok else None  # type: ignore[arg-type]
    except RuntimeError:
        dev = None
    if dev is None:
        raise fail(fn, arg, "a torch device name such as 'cpu', 'cuda' or 'cuda:1'", repr(device)[:100],
                   f"{verb} {spell('cpu')}, {spell('cuda')} or {spell('cuda:N')} (N: a GPU index)")
    if dev.type == "meta":  # (torch takes it, and a training step then fails inside a layer)
        raise fail(fn, arg, "a device that computes", f"{str(device)!r}: its tensors hold shapes, no values",
                   f"{verb} {spell('cpu')} or {spell('cuda')}")
    if dev.type == "cuda":
        count, kind = (torch.cuda.device_count() if torch.cuda.is_available() else 0), "CUDA GPU"
        where = "torch.cuda.is_available() is True (a GPU, its driver and a CUDA build of torch)"
    elif dev.type == "mps":
        count, kind = (1 if torch.backends.mps.is_available() else 0), "Apple MPS device"
        where = "torch.backends.mps.is_available() is True"
    else:  # cpu, or a backend torch checks itself
        return dev
    if (dev.index or 0) < count:
        return dev
    if count == 0:
        raise fail(fn, arg, "a device this machine has", f"{str(device)!r}, but torch finds no {kind} here",
                   f"{verb} {spell('cpu')}, or run where {where}")
    have = f"{dev.type}:0" if count == 1 else f"{dev.type}:0 to {dev.type}:{count - 1}"
    raise fail(fn, arg, "a device this machine has",
               f"{str(device)!r}, but torch finds {count} {kind}{'s' if count > 1 else ''} here ({have})",
               f"{verb} {spell(f'{dev.type}:{count - 1}')} or lower, or {spell('cpu')}")


def check_per_channel(t: object, x: Tensor, fn: str, arg: str, fix: str) -> Tensor:
    """``t``: a ``[C]`` tensor for the ``C`` channels of ``x [N, C, H, W]``, on ``x``'s device."""
    if not isinstance(t, Tensor) or t.shape != (x.shape[1],) or t.device != x.device:
        got = f"a tensor of shape {list(t.shape)} on {t.device}" if isinstance(t, Tensor) else repr(t)[:60]
        raise fail(fn, arg, f"a [{x.shape[1]}] tensor (one value per channel of x) on {x.device}", got, fix)
    return t


def check_known_keys(spec: Any, known: Sequence[str], fn: str, arg: str, what: str) -> None:
    """Raise unless every key of the settings dict ``spec`` is in ``known``; the error names the key
    as ``<arg>.<key>`` with the closest known one (``data.augment.flips``: "Did you mean ...flip")."""
    import difflib

    for k in spec:
        if k not in known:
            close = difflib.get_close_matches(str(k), list(known), n=1)
            raise fail(fn, f"{arg}.{k}", f"one of {what} {list(known)}", f"the unknown key '{k}'",
                       f"Did you mean '{arg}.{close[0]}'?" if close else "Remove it")


def check_size(size: object, fn: str, arg: str = "size") -> tuple[int, int]:
    """``size`` as ``(H, W)`` of Python ints >= 1, from a tuple, list or ``torch.Size`` of two
    integers (NumPy's and 0-D tensors' too: Triton takes Python ints only); a bool, a float or a
    single int is refused."""
    pair = None
    if isinstance(size, (tuple, list)) and len(size) == 2 and not any(isinstance(v, bool) for v in size):
        try:
            pair = (operator.index(size[0]), operator.index(size[1]))
        except TypeError:  # a float or another non-integer entry
            pass
    if pair is None or min(pair) < 1:
        raise fail(fn, arg, "an output size (H, W): two ints >= 1", repr(size)[:100],
                   "Pass a pair such as x.shape[-2:] (or (n, n) for a square)")
    return pair


def check_eval_mode(model: object, fn: str, *, batchnorm_only: bool = False,
                    why: str = "batch statistics and dropout would move the scores of the perturbed images by "
                               "themselves", fix: str = "Call model.eval() first") -> None:
    """Refuse a module in training mode whose outputs depend on it (batch normalisation, dropout,
    stochastic depth; ``batchnorm_only``: batch normalisation alone, whose training mode also mixes
    the images of a batch and moves the running statistics). A plain callable, or a module with no
    such layer (a linear model), is left alone."""
    if not isinstance(model, torch.nn.Module):
        return
    for name, m in _mode_dependent(model, batchnorm_only):
        if m.training:
            raise fail(fn, "model", f"a model in eval mode ({why})", f"{name or type(model).__name__!r} "
                       f"({type(m).__name__}) in training mode", fix)


_MODE_DEPENDENT: "weakref.WeakKeyDictionary[torch.nn.Module, dict[bool, tuple[int, list]]]" = \
    weakref.WeakKeyDictionary()


def _mode_dependent(model: torch.nn.Module, batchnorm_only: bool) -> list[tuple[str, torch.nn.Module]]:
    """The modules whose output depends on training mode (cached per structure stamp: ALIGN's
    masker step asks at every step; ``p`` and ``drop_prob`` are read when the list is made)."""
    from egl._module_hooks import structure_stamp

    stamp = structure_stamp(model)
    cache = _MODE_DEPENDENT.setdefault(model, {})
    seen = cache.get(batchnorm_only)
    if seen is None or seen[0] != stamp:
        found = [(name, m) for name, m in model.named_modules()
                 if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) or not batchnorm_only and (
                     (isinstance(m, torch.nn.modules.dropout._DropoutNd) and m.p > 0)
                     or float(getattr(m, "drop_prob", 0.0) or 0.0) > 0)]  # (timm's DropPath; Dropout(0.): no)
        seen = (stamp, found)
        cache[batchnorm_only] = seen
    return seen[1]


_CHANNELS = re.compile(r"expected input\[([\d, ]+)\] to have (\d+) channels, but got (\d+) channels")


@contextlib.contextmanager
def model_input_errors(fn: str, arg: str, x: object, inp: object = None) -> Iterator[None]:
    """Name images of the wrong channel count (channels-last ``[B, H, W, C]`` images, grayscale into
    an RGB model) where the first convolution refuses them, instead of torch's error from inside it.
    ``x`` is what the user passed; ``inp`` what the model was called with, if another batch made
    from it (perturbed copies, masked halves)."""
    try:
        yield
    except RuntimeError as e:
        found = _CHANNELS.search(str(e))
        called = inp if inp is not None else x
        shape = list(x.shape) if isinstance(x, Tensor) else None
        if found is None or shape is None or not isinstance(called, Tensor) \
                or [int(s) for s in found.group(1).split(",")] != list(called.shape):
            raise
        want = int(found.group(2))
        fix = (f"Put the channels second: {arg}.permute(0, 3, 1, 2)" if len(shape) == 4 and shape[-1] == want
               else f"Pass images with {want} channels")
        raise fail(fn, arg, f"images [B, {want}, H, W] (the model's first convolution takes {want} channels)",
                   describe(x), fix) from e
