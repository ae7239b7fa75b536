"""Inference Grad-CAM on class-token ViTs along the class token's path only (egl.explainers._vit_tail)."""

from __future__ import annotations

import pytest
import torch
from torch.autograd.graph import saved_tensors_hooks

from _helpers import make_model
from egl.explainers import GradCAM, _vit_tail


def _full_path(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_vit_tail, "usable", lambda *a: False)


def _saved_activation_bytes(model: torch.nn.Module, fn) -> tuple[object, int]:  # type: ignore[no-untyped-def]
    params = {p.data_ptr() for p in model.parameters()}
    seen: set[int] = set()
    total = [0]

    def pack(t: torch.Tensor) -> torch.Tensor:
        if t.data_ptr() not in params and t.data_ptr() not in seen:
            seen.add(t.data_ptr())
            total[0] += t.numel() * t.element_size()
        return t

    with saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, total[0]


@pytest.mark.parametrize("name,size,kept", [("test_vit", 64, 0.6), ("vit_tiny_patch16_224", 224, 0.25)])
def test_same_maps_and_logits_as_the_full_pass_with_far_less_kept_for_the_backward(
        name: str, size: int, kept: float, monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept for the backward: the keys and values instead of the whole block (at 197 tokens, 6x less)."""
    model = make_model(name, **({"img_size": size} if size != 64 else {}))
    x, y = torch.randn(3, 3, size, size), torch.tensor([0, 2, 4])
    cam = GradCAM(model)
    short, short_bytes = _saved_activation_bytes(model, lambda: cam.explain(x, y))
    assert _vit_tail._VERIFIED[model] is True
    with monkeypatch.context() as mp:
        _full_path(mp)
        full, full_bytes = _saved_activation_bytes(model, lambda: cam.explain(x, y))
    torch.testing.assert_close(short.saliency, full.saliency, atol=2e-6, rtol=1e-5)
    torch.testing.assert_close(short.logits, full.logits, atol=1e-5, rtol=1e-5)
    assert short_bytes < kept * full_bytes
    assert cam.target_layer == f"blocks.{len(model.blocks) - 1}.norm1"
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())  # hooks removed


def test_not_used_when_it_would_not_be_exact() -> None:
    def last(m: torch.nn.Module) -> torch.nn.Module:
        return m.blocks[-1].norm1

    vit = make_model("test_vit")
    assert _vit_tail._eligible(vit, last(vit))
    assert not _vit_tail._eligible(vit, vit.blocks[0].norm1)                 # another target layer
    train = make_model("test_vit", eval_mode=False)
    assert not _vit_tail._eligible(train, last(train))                       # training mode
    avg = make_model("test_vit", global_pool="avg")
    assert not _vit_tail._eligible(avg, last(avg))                           # pools every token
    assert not _vit_tail._eligible(make_model("test_resnet"), last(vit))


def test_a_tail_that_disagrees_with_the_model_falls_back_to_the_full_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("test_vit")
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    with monkeypatch.context() as mp:
        _full_path(mp)
        expected = GradCAM(model)(x, y)
    real = _vit_tail.tail_logits
    monkeypatch.setattr(_vit_tail, "tail_logits", lambda m, a, x_in: real(m, a, x_in) + 1.0)  # wrong on purpose
    torch.testing.assert_close(GradCAM(model)(x, y), expected)
    assert _vit_tail._VERIFIED[model] is False


def test_training_maps_still_take_the_full_graph() -> None:
    model = make_model("test_vit")
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    sal = GradCAM(model).explain(x, y, create_graph=True).saliency
    sal.sum().backward()
    assert model.blocks[-1].mlp.fc1.weight.grad is not None  # the whole last block is in the graph
    assert model not in _vit_tail._VERIFIED


class _Adapter(torch.nn.Module):
    """A LoRA-like wrapper around qkv: its update can change after the one-time check."""

    def __init__(self, base: torch.nn.Linear) -> None:
        super().__init__()
        self.base = base
        self.delta = torch.nn.Parameter(torch.zeros_like(base.weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, self.base.weight + self.delta, self.base.bias)


def test_a_wrapped_qkv_takes_the_full_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("test_vit")
    attn = model.blocks[-1].attn
    attn.qkv = _Adapter(attn.qkv)
    assert not _vit_tail._eligible(model, model.blocks[-1].norm1)
    with torch.no_grad():
        attn.qkv.delta.normal_(0, 0.5)  # changed after any check: must not matter
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    got = GradCAM(model)(x, y)
    with monkeypatch.context() as mp:
        _full_path(mp)
        torch.testing.assert_close(got, GradCAM(model)(x, y))


def test_a_failing_check_means_the_full_pass(monkeypatch: pytest.MonkeyPatch) -> None:
    model = make_model("test_vit")

    def broken(*a: object) -> torch.Tensor:
        raise RuntimeError("unexpected block internals")

    monkeypatch.setattr(_vit_tail, "tail_logits", broken)
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    assert GradCAM(model)(x, y).shape == (2, 1, 64, 64)
    assert _vit_tail._VERIFIED[model] is False


@pytest.mark.parametrize("where", ["model", "block", "attn"])
@pytest.mark.parametrize("kind", ["hook", "forward"])
def test_a_hook_added_after_the_first_call_sends_the_call_to_the_full_pass(
        where: str, kind: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The short pass calls neither the model, its last block nor that block's attention: a
    forward hook (or an instance ``forward``) added there after the one-time check must count."""
    model = make_model("test_vit")
    x, y = torch.randn(2, 3, 64, 64), torch.tensor([1, 3])
    cam = GradCAM(model)
    before = cam(x, y)
    assert _vit_tail._VERIFIED[model] is True
    module = {"model": model, "block": model.blocks[-1], "attn": model.blocks[-1].attn}[where]
    if kind == "hook":
        module.register_forward_hook(lambda _m, _i, out: out * 2.0)
    else:
        plain = module.forward
        module.forward = lambda *a, **k: plain(*a, **k) * 2.0  # type: ignore[method-assign]
    assert not _vit_tail._eligible(model, model.blocks[-1].norm1)
    got = cam(x, y)
    with monkeypatch.context() as mp:
        _full_path(mp)
        torch.testing.assert_close(got, GradCAM(model)(x, y))
    if where == "attn":  # doubling the attention branch changes the maps; the short pass missed it
        assert not torch.allclose(got, before, atol=1e-4)
