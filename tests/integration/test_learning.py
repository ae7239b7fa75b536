"""ALIGN learns what the paper says it learns, on toy problems where the answer is known.

The unit tests check each phase's plumbing; these train for a few hundred steps and check the
outcome: the masker phase finds the frozen classifier's evidence, and the alignment term moves
a classifier's Grad-CAM onto the masks and off a shortcut that predicts the label as well.
"""

from __future__ import annotations

import timm
import torch
from torch import Tensor, nn

from egl import recipes
from egl.explainers import GradCAM
from egl.metrics import localization

SIZE, CLASSES = 32, 3


def _patches(n: int, g: torch.Generator, size: int = SIZE, shortcut: str = "none") -> dict[str, Tensor]:
    """Noise images with a bright square (a quarter of the side) in the label's channel at a random place (the
    evidence; ``mask`` marks it). ``shortcut="label"`` adds a stripe along the top in the label's
    channel too (it predicts the label as well as the square does), ``"next"`` in the next class's."""
    x = 0.3 * torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    mask = torch.zeros(n, 1, size, size)
    p = size // 4
    for i in range(n):  # (squares keep a quarter of the side from the top: below the stripe)
        r, c = torch.randint(size // 4, size - p + 1, (2,), generator=g).tolist()
        x[i, y[i], r:r + p, c:c + p] += 2.0
        mask[i, :, r:r + p, c:c + p] = 1
        if shortcut != "none":
            x[i, (y[i] + (shortcut == "next")) % CLASSES, :size // 8, :] += 2.0
    return {"image": x, "label": y, "mask": mask}


class _BrightPixels(nn.Module):
    """A fixed classifier whose class-k logit counts the bright pixels of channel k (noise stays
    below 1): its evidence is exactly the square."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.05 * torch.relu(x - 1.0).sum(dim=(2, 3))


def test_the_masker_phase_finds_the_frozen_classifiers_evidence() -> None:
    recipe = recipes.align(_BrightPixels(), explainer="input_gradient", regularizer=None, warmup_steps=0).train()
    opt = torch.optim.Adam(recipe.masker.parameters(), lr=recipe.masker_lr)
    held_out = _patches(64, torch.Generator().manual_seed(1))
    inside = held_out["mask"].bool()

    def mask_means() -> tuple[float, float]:
        with torch.no_grad():
            m = recipe.masker.eval()(held_out["image"])  # as the classifier phase takes them
        recipe.masker.train()
        return m[inside].mean().item(), m[~inside].mean().item()

    g = torch.Generator().manual_seed(0)
    first = None
    for step in range(150):
        terms = recipe.compute_phase("masker", _patches(16, g), step)
        first = terms if first is None else first
        opt.zero_grad()
        terms["total"].backward()
        opt.step()
    on, off = mask_means()
    # The square alone decides the class: keeping it and dropping the rest satisfies the
    # distance term (p_y(x*M) ~ 1, p_y(x*(1-M)) = 1/3) at the least sparsity cost.
    assert on > 0.95 and off < 0.2, (on, off)
    assert terms["total"] < 0.5 * first["total"] and terms["dist"] < first["dist"]


def _trained(align_weight: float, seed: int, steps: int = 60) -> nn.Module:
    g = torch.Generator().manual_seed(seed)
    data = [_patches(16, g, size=64, shortcut="label") for _ in range(steps)]
    torch.manual_seed(seed)
    model = timm.create_model("test_resnet", pretrained=False, num_classes=CLASSES, output_stride=16)
    recipe = recipes.align(model, masker="ground_truth", align_weight=align_weight, lr=1e-3, warmup_steps=0)
    recipe.fit(data, steps=steps, seed=seed, progress=False)
    return model.eval()


def test_alignment_moves_grad_cam_onto_the_masks_and_off_a_shortcut() -> None:
    # Measured on seeds 0-3 (60 steps): Grad-CAM's energy inside the squares 0.096-0.100 without
    # the alignment term, 0.142-0.185 with it; accuracy with the stripe pointing at the next class
    # 0.31-0.54 without, 0.59-1.00 with (seed 3 has not let go of the stripe yet at 60 steps).
    seed = 0
    test = _patches(128, torch.Generator().manual_seed(7), size=64, shortcut="label")
    flipped = _patches(128, torch.Generator().manual_seed(7), size=64, shortcut="next")
    scores = {}
    for weight in (0.0, 1.0):  # the "w/o EG" ablation against ALIGN with the data's masks (λ3 = 1: a short run)
        model = _trained(weight, seed)
        with torch.no_grad():
            acc = (model(test["image"]).argmax(1) == test["label"]).float().mean().item()
            acc_flipped = (model(flipped["image"]).argmax(1) == flipped["label"]).float().mean().item()
        energy = localization(GradCAM(model)(test["image"], test["label"]), test["mask"]).energy.mean().item()
        scores[weight] = acc, acc_flipped, energy
    (acc0, flipped0, energy0), (acc1, flipped1, energy1) = scores[0.0], scores[1.0]
    assert acc0 > 0.95 and acc1 > 0.95, scores  # both learn the training distribution
    assert energy1 > energy0 + 0.03, scores  # Grad-CAM's share inside the squares grows
    assert flipped1 > flipped0, scores  # and the stripe decides less
