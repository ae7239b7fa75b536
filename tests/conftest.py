"""Shared fixtures: a clean plugin manager per test, and a seeded image batch."""

from __future__ import annotations

import os
from collections.abc import Iterator

# Triton kernels run on CPU tensors through Triton's interpreter in the tests (no GPU in CI).
# Set before anything imports triton; a GPU run can export TRITON_INTERPRET=0 to test compiled kernels.
os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch
from hypothesis import settings

import egl

# Property tests draw the same examples on every run ("default": `make test` and CI are
# reproducible); HYPOTHESIS_PROFILE=explore draws new ones each run to search further.
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


def pytest_configure(config: pytest.Config) -> None:
    # The tests use tiny tensors: extra intra-op threads only contend on a 2-core machine.
    torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _fresh_plugins(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test starts and ends with an unbuilt plugin manager and no plugin env vars."""
    monkeypatch.delenv("EGL_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("EGL_DISABLE_PLUGINS", raising=False)
    egl.reset_plugins()
    yield
    egl.reset_plugins()


@pytest.fixture
def images() -> torch.Tensor:
    """A seeded batch of 4 RGB images at 64 px (4x4 maps at stride 16, 2x2 at stride 32)."""
    g = torch.Generator().manual_seed(1)
    return torch.randn(4, 3, 64, 64, generator=g)
