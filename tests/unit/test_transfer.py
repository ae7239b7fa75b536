"""Host-to-device copies without a stream synchronisation (egl._transfer), and no blocking upload
anywhere in egl.

A GPU is not needed to see which copy an upload dispatches: the ``meta`` device stands in for
one (the same ``_to_copy`` with its ``non_blocking`` flag). ``torch.tensor(data, device=...)``
copies inside the constructor, where no dispatch mode sees it, and synchronises a CUDA stream
(``memcpy_and_sync``), so egl's source is checked for it.
"""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from egl._transfer import host_tensor, upload
from egl.explainers._targets import targets

EGL = Path(__file__).resolve().parents[2] / "egl"


@pytest.fixture(autouse=True)
def _meta_stands_in_for_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("egl._transfer.STAGED_DEVICE_TYPES", frozenset({"cuda", "meta"}))


class _Copies(TorchDispatchMode):
    """Every ``_to_copy`` / ``copy_`` dispatched, as ``(source device, target device, non_blocking)``."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: list[tuple[str, str, bool]] = []

    def __torch_dispatch__(self, func: Any, types: Any, args: Any = (), kwargs: Any = None) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if func is torch.ops.aten._to_copy.default:
            self.seen.append((args[0].device.type, out.device.type, bool(kwargs.get("non_blocking", False))))
        elif func is torch.ops.aten.copy_.default:
            self.seen.append((args[1].device.type, args[0].device.type, bool(args[2] if len(args) > 2 else False)))
        return out


def test_upload_from_the_host_does_not_block() -> None:
    with _Copies() as log:
        out = upload(torch.arange(4), "meta", torch.float32)
    assert out.device.type == "meta" and out.dtype == torch.float32
    assert log.seen == [("cpu", "meta", True)]


def test_other_devices_keep_the_blocking_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Only CUDA stages a pageable source before returning (on MPS a non-blocking copy of a
    temporary can deliver wrong values: pytorch/pytorch#139550)."""
    monkeypatch.setattr("egl._transfer.STAGED_DEVICE_TYPES", frozenset({"cuda"}))
    with _Copies() as log:
        upload(torch.arange(4), "meta")
        host_tensor([1, 2], "meta", torch.long)
    assert log.seen == [("cpu", "meta", False)] * 2


def test_a_pinned_source_keeps_the_blocking_copy(monkeypatch: Any) -> None:
    """Truly asynchronous from pinned memory: a change to the source right after could race."""
    t = torch.arange(4)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda self: True)
    with _Copies() as log:
        upload(t, "meta")
        upload(t, "meta", pinned_async=True)  # a DataLoader's pinned batch, handed over
    assert log.seen == [("cpu", "meta", False), ("cpu", "meta", True)]


def test_upload_on_the_same_device_is_the_tensor_itself() -> None:
    t = torch.arange(4)
    assert upload(t, "cpu") is t
    assert upload(t, "cpu", torch.float64).dtype == torch.float64


def test_host_tensor_builds_on_the_host_then_uploads_without_blocking() -> None:
    with _Copies() as log:
        out = host_tensor([1, 2, 3], "meta", torch.long)
    assert out.shape == (3,) and out.dtype == torch.long and out.device.type == "meta"
    assert log.seen == [("cpu", "meta", True)]
    torch.testing.assert_close(host_tensor((0.5, 1.5), "cpu", torch.float32), torch.tensor([0.5, 1.5]))


def test_explainer_targets_from_the_host_upload_without_blocking() -> None:
    """A list or a CPU tensor of targets for a model on an accelerator: one non-blocking copy
    (a blocking one waits for the queued work, as a read does)."""
    for spec in ([0, 2, 1], torch.tensor([0, 2, 1], dtype=torch.int32)):
        with _Copies() as log:
            t = targets(spec, 3, "fn", torch.device("meta"))
        assert t is not None and t.tensor.device.type == "meta" and t.tensor.dtype == torch.long
        assert t.known == (0, 2)
        assert [c for c in log.seen if c[0] == "cpu" and c[1] == "meta"] == [("cpu", "meta", True)]


def _device_kwarg_constructors(source: str, name: str) -> list[str]:
    """``torch.tensor(..., device=...)`` / ``torch.as_tensor(..., device=...)``, ``x.new_tensor(data)``
    (data copied to ``x``'s device) and ``.cuda()`` calls."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
            continue
        f = node.func
        is_ctor = f.attr in ("tensor", "as_tensor") and isinstance(f.value, ast.Name) and f.value.id == "torch"
        if (is_ctor and any(k.arg == "device" for k in node.keywords)) or f.attr in ("cuda", "new_tensor"):
            found.append(f"{name}:{node.lineno}")
    return found


#: ``.to(<a device>)`` calls that are not host-to-device uploads, and why.
DEVICE_MOVES = {
    "egl/_transfer.py: t.to(device=device, dtype=dtype)": "upload itself",
    "egl/_transfer.py: t.to(device=device, dtype=dtype, non_blocking=pinned_async or not t.is_pinned())":
        "upload itself",
    "egl/_amp.py: f.to(device)": "overflow flags already on a device",
    "egl/maskers/sam.py: x01.to(p.device, torch.float32)": "the images, already on a device, to SAM's",
    "egl/recipes/base.py: s.to(losses.device)": "value statistics already on a device",
    "egl/recipes/base.py: scaler.unscale_((p for g in opt.param_groups for p in g['params'])).to(losses.device)":
        "an overflow flag already on a device",
    "egl/train/loop.py: as_batch(next(stream), FN).to(device)": "Batch.to, which uploads through upload()",
    "egl/train/validation.py: as_batch(raw, FN).to(device)": "Batch.to, which uploads through upload()",
    "egl/train/loss_scale.py: f.to(target)": "overflow flags already on a device",
    "egl/train/grad_clip.py: n.to(first)": "gradient norms already on a device, to the first gradient's",
    "egl/train/grad_clip.py: coef.to(device)": "the clip factor, already on a device, to each gradient group's",
    "egl/train/grad_clip.py: norms[n].detach().float().to(norms[names[0]].device)":
        "gradient norms already on a device, gathered for one read",
    "egl/experiments/runner.py: build_model(cfg['model'], source.num_classes).to(t.get('device', 'cpu'))":
        "a module, once per run",
    "egl/experiments/runner.py: egl.create('recipe', mcfg['recipe'], model, **kwargs).to(t.get('device', 'cpu'))":
        "a module, once per run",
    "egl/experiments/commands.py: model.to(device)": "a module, once per egl eval",
}


def _device_moves(source: str, name: str) -> list[str]:
    """``x.to(...)`` calls that may name a device: a ``device=`` keyword, an ``….device``, a
    string, a call, or any name but a dtype's (``dtype``, ``dt``, ``*_dtype``): a tensor there
    (``x.to(other)``) moves to ``other``'s device. Moves to ``"cpu"`` are left out."""
    found = []
    for node in ast.walk(ast.parse(source, name)):
        if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "to"):
            continue
        a0 = node.args[0] if node.args else None
        if isinstance(a0, ast.Constant) and a0.value == "cpu":
            continue
        names_device = (any(k.arg == "device" for k in node.keywords)
                        or (isinstance(a0, ast.Attribute) and a0.attr == "device")
                        or (isinstance(a0, ast.Name) and a0.id != "dt" and "dtype" not in a0.id)
                        or isinstance(a0, ast.Call)
                        or (isinstance(a0, ast.Constant) and isinstance(a0.value, str)))
        if names_device:
            found.append(f"{name}: {ast.unparse(node)}")
    return found


def _library_files() -> list[Path]:
    """egl's sources, less ``egl/testing/``: the contract checks build small inputs on the host and
    move them to the device under check, once per check, never on a training or metric path."""
    return [p for p in sorted(EGL.rglob("*.py")) if "testing" not in p.relative_to(EGL).parts]


def test_every_upload_in_egl_goes_through_upload() -> None:
    """``t.to(device)`` from the host blocks (a stream synchronisation): egl uploads with
    ``egl._transfer.upload``; the moves listed in ``DEVICE_MOVES`` are between devices."""
    found = [hit for path in _library_files()
             for hit in _device_moves(path.read_text(), str(path.relative_to(EGL.parent)))]
    assert sorted(set(found) - set(DEVICE_MOVES)) == []
    assert sorted(set(DEVICE_MOVES) - set(found)) == []  # (a stale entry: remove it)


def test_egl_never_builds_a_tensor_on_a_device_with_a_blocking_copy() -> None:
    """Use ``egl._transfer.host_tensor`` (or ``torch.full`` for one value) instead."""
    found = [hit for path in _library_files()
             for hit in _device_kwarg_constructors(path.read_text(), str(path.relative_to(EGL.parent)))]
    assert not found, "blocking host-to-device copies: " + ", ".join(found)


def test_the_source_check_finds_what_it_looks_for() -> None:
    src = ("import torch\na = torch.tensor([1], device='cuda')\nb = torch.as_tensor(2.0, device=d)\n"
           "c = torch.tensor([1]).cuda()\nd = torch.tensor([1])\ne = torch.full((), 1.0, device=d)\n"
           "f = x.new_tensor(2.0)\n")
    assert _device_kwarg_constructors(src, "probe.py") == ["probe.py:2", "probe.py:3", "probe.py:4", "probe.py:7"]
    src = ("a.to(x.device)\nb.to(device=d, dtype=t)\nc.to(dev)\nd.to('cuda')\ne.to('cpu')\nf.to(torch.float32)\n"
           "g.to(x)\nh.to(dtype)\ni.to(dt)\nj.to(torch.device('cuda'))\n")
    assert _device_moves(src, "p.py") == ["p.py: a.to(x.device)", "p.py: b.to(device=d, dtype=t)", "p.py: c.to(dev)",
                                          "p.py: d.to('cuda')", "p.py: g.to(x)", "p.py: j.to(torch.device('cuda'))"]


def test_per_step_pairings_upload_their_host_draws_without_blocking() -> None:
    """ALIGN's same-class partners and mixup's one-domain permutation draw on the host (a CPU
    generator) every step; their upload must not wait for the step's queued work."""
    from egl.recipes.mixup import domain_pairs
    from egl.regularizers.mixup_consistency import same_class_pairs

    target = torch.tensor([0, 1, 0, 1]).to("meta")
    group, domain = torch.arange(4).to("meta"), torch.zeros(4, dtype=torch.long).to("meta")
    with _Copies() as log:
        same_class_pairs(target)
        domain_pairs(domain, [0], groups=[group])
    assert [c for c in log.seen if c[0] == "cpu"] == [("cpu", "meta", True)] * 2
