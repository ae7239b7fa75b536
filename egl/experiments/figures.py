"""The case-study figure (the paper's Figure 4): images × methods, Grad-CAM overlays with the
predicted class and its probability; and the sanity check's figure (Adebayo et al.'s Figure 2):
images × cascade steps. Written with Pillow only (no plotting library)."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from egl.explainers.grad_cam import grad_cam

__all__ = ["case_study", "overlay", "randomization_figure"]


def overlay(image: Tensor, saliency: Tensor, alpha: float = 0.5) -> Tensor:
    """Blend a ``[1, H, W]`` map in [0, 1] (red-yellow ramp) over a ``[3, H, W]`` image in [0, 1]."""
    s = saliency.clamp(0, 1)
    heat = torch.cat([torch.ones_like(s), s, torch.zeros_like(s)]) * s.clamp_min(0.15)
    return ((1 - alpha * s) * image + alpha * heat).clamp(0, 1)


def _to_pil(t: Tensor, scale: int):  # noqa: ANN202 - PIL image
    from PIL import Image

    arr = (t.permute(1, 2, 0).clamp(0, 1) * 255).round().to(torch.uint8).numpy()
    img = Image.fromarray(arr)
    return img.resize((img.width * scale, img.height * scale), Image.NEAREST)


def case_study(models: dict[str, nn.Module], images: Tensor, labels: Tensor, path: str | os.PathLike[str], *,
               class_names: Sequence[str] | None = None, scale: int = 2) -> str:
    """Write a PNG grid: one row per image, columns = input then each model's Grad-CAM of its prediction.

    Returns:
        The path written.
    """
    from PIL import Image, ImageDraw

    n, _, h, w = images.shape
    cell_w, cell_h, pad = w * scale, h * scale, 16
    cols = 1 + len(models)
    canvas = Image.new("RGB", (cols * cell_w, pad + n * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    names = list(class_names) if class_names else [str(i) for i in range(1000)]
    draw.text((2, 2), "input (label)", fill="black")
    for j, name in enumerate(models):
        draw.text(((j + 1) * cell_w + 2, 2), name[: cell_w // 6], fill="black")
    for i in range(n):
        top = pad + i * (cell_h + pad)
        canvas.paste(_to_pil(images[i], scale), (0, top))
        draw.text((2, top + cell_h + 1), f"y={names[int(labels[i])]}", fill="black")
    for j, model in enumerate(models.values()):
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                probs = model(images).softmax(1)
            sal = grad_cam(model, images, None)
        finally:
            model.train(was)
        pred = probs.argmax(1)
        for i in range(n):
            top = pad + i * (cell_h + pad)
            canvas.paste(_to_pil(overlay(images[i], sal[i]), scale), ((j + 1) * cell_w, top))
            ok = int(pred[i]) == int(labels[i])
            draw.text(((j + 1) * cell_w + 2, top + cell_h + 1),
                      f"{names[int(pred[i])]} {float(probs[i, pred[i]]):.2f}", fill="green" if ok else "red")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    canvas.save(path)
    return os.fspath(path)


def randomization_figure(images: Tensor, maps: Tensor, layers: Sequence[str], path: str | os.PathLike[str], *,
                         spearman: Tensor | None = None, scale: int = 2) -> str:
    """Write a PNG grid: one row per image, columns = input, the trained model's map, then the map
    after each step of :func:`egl.metrics.parameter_randomization` (its ``keep_maps=True`` maps).

    Args:
        images: ``[B, 3, H, W]`` in [0, 1].
        maps: ``[L + 1, B, 1, h, w]``: the trained model's maps, then each step's (min-max scaled
            per map for display).
        layers: the ``L`` step names (column titles).
        path: the PNG to write.
        spearman: ``[L, B]``, written under each step's cell.
        scale: pixels per image pixel.

    Returns:
        The path written.

    Raises:
        InputError: ``images``, ``maps``, ``layers`` or ``spearman`` of shapes that do not fit together.

    Example:
        >>> import torch
        >>> maps = torch.rand(3, 2, 1, 4, 4)
        >>> randomization_figure(torch.rand(2, 3, 8, 8), maps, ["fc", "conv1"], "/tmp/egl-fig.png")
        '/tmp/egl-fig.png'
    """
    import torch.nn.functional as F
    from PIL import Image, ImageDraw

    from egl._check import check_shape, describe, fail

    fn = "egl.experiments.figures.randomization_figure"
    images = check_shape(images, "B 3 H W", fn, "images")
    maps = check_shape(maps, "S B 1 h w", fn, "maps")
    n, _, h, w = images.shape
    if maps.shape[1] != n or maps.shape[0] < 2:
        raise fail(fn, "maps", f"[L + 1, {n}, 1, h, w]: the trained maps, then at least one step's, for the {n} images",
                   describe(maps), "Pass parameter_randomization(..., keep_maps=True).maps")
    if isinstance(layers, str) or len(layers) != maps.shape[0] - 1:
        raise fail(fn, "layers", f"{maps.shape[0] - 1} step names (one per step of 'maps')", repr(layers)[:100],
                   "Pass the result's .layers")
    if spearman is not None and tuple(spearman.shape) != (maps.shape[0] - 1, n):
        raise fail(fn, "spearman", f"[{maps.shape[0] - 1}, {n}] (steps x images)", describe(spearman),
                   "Pass the result's .spearman, or None")
    cell_w, cell_h, pad = w * scale, h * scale, 16
    cols = 2 + len(layers)
    canvas = Image.new("RGB", (cols * cell_w, pad + n * (cell_h + pad)), "white")
    draw = ImageDraw.Draw(canvas)
    for j, title in enumerate(["input", "trained", *layers]):
        draw.text((j * cell_w + 2, 2), title[: max(cell_w // 6, 4)], fill="black")
    m = maps.float()
    if tuple(m.shape[-2:]) != (h, w):
        m = F.interpolate(m.flatten(0, 1), size=(h, w), mode="bilinear", align_corners=False).view(
            *m.shape[:3], h, w)
    lo, hi = m.amin(dim=(-2, -1), keepdim=True), m.amax(dim=(-2, -1), keepdim=True)
    m = torch.where(hi > lo, (m - lo) / torch.where(hi > lo, hi - lo, 1.0), torch.zeros_like(m))
    for i in range(n):
        top = pad + i * (cell_h + pad)
        canvas.paste(_to_pil(images[i], scale), (0, top))
        for j in range(m.shape[0]):
            canvas.paste(_to_pil(overlay(images[i], m[j, i]), scale), ((j + 1) * cell_w, top))
            if j > 0 and spearman is not None:
                draw.text(((j + 1) * cell_w + 2, top + cell_h + 1), f"rho {float(spearman[j - 1, i]):.2f}",
                          fill="black")
    os.makedirs(os.path.dirname(os.fspath(path)) or ".", exist_ok=True)
    canvas.save(path)
    return os.fspath(path)
