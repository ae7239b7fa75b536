"""Mask quality (the paper's Figure 2): blurring outside a mask, and placeholders left out."""

from __future__ import annotations

import torch
from _helpers import make_model

from egl.data import PartialMasks
from egl.experiments.mask_quality import blur_outside, mask_quality
from egl.experiments.sources import TensorDictDataset
from egl.registry import create


def test_blur_keeps_the_mask_and_blurs_the_rest() -> None:
    x = torch.rand(1, 3, 16, 16)
    mask = torch.zeros(1, 1, 16, 16)
    mask[..., :8] = 1
    out = blur_outside(x, mask, sigma=2.0)
    assert torch.equal(out[..., :8], x[..., :8]) and not torch.allclose(out[..., 8:], x[..., 8:])


def test_unannotated_images_are_left_out_for_every_masker() -> None:
    torch.manual_seed(0)
    n = 12
    data = TensorDictDataset({"image": torch.randn(n, 3, 32, 32), "label": torch.arange(n) % 5,
                              "mask": torch.ones(n, 1, 32, 32)})
    part = PartialMasks(data, 0.25)  # 3 of 12 keep their (full) masks
    maskers = {"ground_truth": create("masker", "ground_truth"), "grayscale": create("masker", "grayscale")}
    model = make_model("test_resnet")
    res = mask_quality(model, part, maskers, batch_size=5)
    assert res["none"]["images"] == 3.0
    assert res["ground_truth"]["mask_area"] == 1.0 and res["ground_truth"]["delta"] == 0.0  # full masks: no blur
    kept = torch.utils.data.Subset(data, part.annotated)
    torch.testing.assert_close(torch.tensor(res["grayscale"]["acc"]),
                               torch.tensor(mask_quality(model, kept, maskers, batch_size=5)["grayscale"]["acc"]))
    none = mask_quality(model, PartialMasks(data, 0.0), maskers)
    assert none["none"]["images"] == 0.0
