"""Shared fixtures: tiny timm models (no download) and a clean plugin manager per test."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import timm
import torch
from torch import nn

import egl

NUM_CLASSES = 5
# Tiny timm architectures that need no download: CNNs with a linear head, a pooled head
# (norm after pooling), and a ViT classifying from its class token.
TINY_MODELS = ("test_resnet", "test_convnext", "test_efficientnet", "test_vit")


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts and ends with an unbuilt plugin manager and no plugin env vars."""
    monkeypatch.delenv("EGL_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("EGL_DISABLE_PLUGINS", raising=False)
    egl.reset_plugins()
    yield
    egl.reset_plugins()


def make_model(name: str, *, seed: int = 0, eval_mode: bool = True, **kwargs: object) -> nn.Module:
    """A randomly initialised tiny timm model with NUM_CLASSES outputs."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    return model.eval() if eval_mode else model.train()


@pytest.fixture
def model_factory() -> Callable[..., nn.Module]:
    return make_model


@pytest.fixture
def images() -> torch.Tensor:
    """A seeded batch of 4 RGB images at 64 px (4x4 maps at stride 16, 2x2 at stride 32)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 64, 64, generator=g)
