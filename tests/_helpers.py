"""Helpers importable from any test: ``from _helpers import make_model, NUM_CLASSES``."""

from __future__ import annotations

import timm
import torch
from torch import nn

NUM_CLASSES = 5
# Tiny timm architectures that need no download: CNNs with a linear head, a pooled head
# (norm after pooling), and a ViT classifying from its class token.
TINY_MODELS = ("test_resnet", "test_convnext", "test_efficientnet", "test_vit")


def make_model(name: str, *, seed: int = 0, eval_mode: bool = True, **kwargs: object) -> nn.Module:
    """A randomly initialised tiny timm model with NUM_CLASSES outputs (never pretrained)."""
    torch.manual_seed(seed)
    model = timm.create_model(name, pretrained=False, num_classes=NUM_CLASSES, **kwargs)
    return model.eval() if eval_mode else model.train()
