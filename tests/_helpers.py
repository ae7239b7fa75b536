"""Helpers importable from any test: ``from _helpers import make_model, NUM_CLASSES``."""

from __future__ import annotations

import collections
import sys
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
from PIL import Image
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


def tiny_sam_config() -> object:
    """A small ``transformers.SamConfig`` (about 77k parameters, 64 px, 32x32 low-res masks).

    SAM's default initialiser ranges make a random model's masks constant, so they are raised."""
    import transformers

    return transformers.SamConfig(
        vision_config=dict(hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2,
                           image_size=64, patch_size=8, window_size=4, global_attn_indexes=[1],
                           num_pos_feats=16, mlp_dim=64, initializer_range=0.02),
        prompt_encoder_config=dict(hidden_size=32, image_size=64, patch_size=8, mask_input_channels=4),
        mask_decoder_config=dict(hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2,
                                 iou_head_hidden_dim=32),
        initializer_range=0.3,
    )


def tiny_sam() -> nn.Module:
    """A tiny, randomly initialised Segment Anything model (transformers), built without download."""
    import transformers

    torch.manual_seed(0)
    return transformers.SamModel(tiny_sam_config()).eval()


def create_component(kind: str, name: str, **kwargs: object) -> object:
    """``egl.create`` for tests, with test-sized construction arguments where a component needs them
    (SAM needs weights: a tiny random model stands in; its input is declared as mean 0.5, std 0.2)."""
    import egl

    if (kind, name) == ("masker", "sam"):
        from egl.maskers import SAMMasker

        return SAMMasker(model=tiny_sam(), input_mean=0.5, input_std=0.2, points_per_side=2, **kwargs)
    return egl.create(kind, name, **kwargs)


def count_egl_reads(monkeypatch: Any) -> collections.Counter:
    """Count reads (tolist/item/bool/float/int of a tensor) made by egl's code, by file."""
    counts: collections.Counter = collections.Counter()
    for name in ("tolist", "item", "__bool__", "__float__", "__int__"):
        orig = getattr(torch.Tensor, name)

        def wrapped(self: torch.Tensor, *a: object, _orig=orig) -> object:
            caller = sys._getframe(1).f_code.co_filename.replace("\\", "/")
            if "/egl/" in caller or "/torch/distributions/" in caller:
                counts[caller.rsplit("/", 2)[-2] + "/" + caller.rsplit("/", 1)[-1]] += 1
            return _orig(self, *a)
        monkeypatch.setattr(torch.Tensor, name, wrapped)
    return counts


def domain_tree(root: Path, domains: tuple[str, ...] = ("A", "B"), classes: tuple[str, ...] = ("cat", "dog"),
                n: int = 10, masks: bool = False) -> Path:
    """A DomainBed-layout folder of random 12x16 RGB PNGs (``root/<domain>/<class>/<i>.png``); with
    ``masks``, a rectangle mask per image under ``root/masks/``."""
    rng = np.random.default_rng(0)
    for d in domains:
        for c in classes:
            (root / d / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(root / d / c / f"{i}.png")
                if masks:
                    (root / "masks" / d / c).mkdir(parents=True, exist_ok=True)
                    m = np.zeros((12, 16), np.uint8)
                    m[3:9, 4:12] = 255
                    Image.fromarray(m).save(root / "masks" / d / c / f"{i}.png")
    return root


def waterbirds_table(root: Path, n: int = 24, masks: bool = True) -> Path:
    """A tiny Waterbirds (``metadata.csv`` with img_id, img_filename, y, split 0/1/2, place; CUB-style
    class folders of 12x10 JPEGs, image ``i`` filled with level ``10 i``; with ``masks``, a rectangle per
    image under ``segmentations/`` at the image's path with ``.png``). Blocks of four images, one of
    each (y, place) group, go to train, val, test, train, ..."""
    import csv

    rows = []
    for i in range(n):
        y, place, split = i % 2, (i // 2) % 2, (i // 4) % 3
        name = f"{'017.Cardinal' if y == 0 else '045.Gull'}/bird_{i:02d}.jpg"
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((10, 12, 3), (10 * i) % 256, dtype=np.uint8)).save(root / name)
        if masks:
            m = np.zeros((10, 12), dtype=np.uint8)
            m[2:6, 3:9] = 255
            seg = (root / "segmentations" / name).with_suffix(".png")
            seg.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(m).save(seg)
        rows.append([i, name, y, split, place])
    with open(root / "metadata.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["img_id", "img_filename", "y", "split", "place"])
        w.writerows(rows)
    return root
