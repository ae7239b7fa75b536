"""Contract checks of a masker (:class:`egl.maskers.Masker`): its map, its gradients, its errors."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from egl.errors import InputError
from egl.testing._common import Subject, expect_gradients, expect_map


def _inputs(device: str) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 12, generator=g)  # images in [0, 1], egl's convention; not square
    mask = torch.rand(2, 1, 8, 6, generator=g)  # another resolution than the image
    return x.to(device), mask.to(device)


def _build(s: Subject) -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        masker = s.build()
    s.expect(isinstance(masker, nn.Module), f"built a {type(masker).__name__}, not an nn.Module")
    for attr in ("needs_mask", "trainable"):
        s.expect(isinstance(getattr(masker, attr, None), bool), f"'{attr}' is {getattr(masker, attr, None)!r}, "
                                                                f"expected a bool (the Masker base class has it)")
    return masker.to(s.device)


def output(s: Subject) -> None:
    """``masker(x, mask)`` is a ``[B, 1, H, W]`` float32 map in [0, 1] at the image's size and device.
    A masker that ``needs_mask`` names ``'mask'`` when it is missing; one that does not takes it anyway."""
    masker = _build(s)
    x, mask = _inputs(s.device)
    expect_map(s, masker(x, mask if masker.needs_mask else None), 2, (16, 12), "masker(x)")
    if masker.needs_mask:
        with s.raises(InputError, "'mask'", "masker(x) without the mask it needs"):
            masker(x)
    else:
        expect_map(s, masker(x, mask), 2, (16, 12), "masker(x, mask) with a mask it does not need")


def gradients(s: Subject) -> None:
    """A ``trainable`` masker's parameters get finite, non-zero gradients; one that is not has none
    that require grad."""
    masker = _build(s)
    params = [p for p in masker.parameters() if p.requires_grad]
    if not masker.trainable:
        s.expect(not params, f"trainable=False, but {len(params)} parameters require grad (ALIGN would "
                             f"leave them untrained; set trainable = True or freeze them)")
        return
    s.expect(params, "trainable=True, but no parameter requires grad")
    x, mask = _inputs(s.device)
    out = masker(x, mask if masker.needs_mask else None)
    (out * torch.rand(out.shape, generator=torch.Generator().manual_seed(1)).to(out.device)).sum().backward()
    expect_gradients(s, [p.grad for p in params], "the masker's parameters")


def rejects_a_non_image(s: Subject) -> None:
    """A 3-D input raises :class:`egl.InputError` naming ``'x'`` (not an error from inside torch)."""
    masker = _build(s)
    with s.raises(InputError, "'x'", "masker(x) with a 3-D x"):
        masker(torch.randn(3, 16, 16, device=s.device), torch.rand(3, 16, 16, device=s.device))


CHECKS = {"output": output, "gradients": gradients, "rejects_a_non_image": rejects_a_non_image}
