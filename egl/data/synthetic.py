"""A built-in, offline benchmark with ground-truth masks and a spurious background.

Each 64x64 RGB image shows a handwritten digit 0-4 (scikit-learn's ``load_digits``; the
label) on a textured background (five scikit-image textures). In the training domains
the background *matches the label* with probability ``p`` (0.9 and 0.8), so a classifier
can score well by looking at the background alone — a shortcut. The ground-truth mask is
the digit's pixels, so explanation-guided methods have something right to align with.

Splits (``SyntheticShortcuts(split=...)``):

========  =================================================================
train     two domains, p = 0.9 and 0.8, each with its own "camera" (colour cast, blur, noise)
val       held-out images from the training distribution (model selection)
test_id   in-distribution test: same domains and p, unseen digits and texture halves
random    out of distribution: background independent of the label (p = 1/5)
flipped   background of the *next* class, always: a background-only model scores 0 %
novel     photo backgrounds never seen in training (scikit-image / scikit-learn photos)
========  =================================================================

Disjointness: training/validation images use one half of the digit instances of each
class and the left half of every texture; test splits use the other digits and the
right halves. Every sample carries ``shortcut``: the class its background stands for
(-1 for photo backgrounds), for :func:`egl.metrics.shortcut_rate`.

Generation is vectorised (``grid_sample`` for the digit's random affine warp and the
background crops), deterministic from ``seed``, and cached to disk (see :func:`build`).
Images are in [0, 1] (not mean/std normalised).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

from egl._check import check_choice, check_int, fail

__all__ = ["SyntheticConfig", "SyntheticShortcuts", "build", "SPLITS", "TEXTURES", "NUM_CLASSES"]

VERSION = 1
NUM_CLASSES = 5
IMAGE_SIZE = 64
TEXTURES = ("grass", "gravel", "brick", "moon", "immunohistochemistry")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "hubble_deep_field", "retina", "china.jpg", "flower.jpg")
SPLITS = ("train", "val", "test_id", "random", "flipped", "novel")


@dataclass(frozen=True)
class Camera:
    """A domain's imaging style: per-channel gain, Gaussian blur sigma (px), noise std."""

    gain: tuple[float, float, float]
    blur: float
    noise: float


@dataclass(frozen=True)
class SyntheticConfig:
    """Everything that determines the data (the cache key is a hash of it).

    Attributes:
        seed: master seed.
        train_per_domain, val_per_domain, test_per_split: image counts.
        p: background-label agreement of each training domain (0.9, 0.8).
        cameras: one :class:`Camera` per training domain.
        digit_size: range of the digit's height in pixels (34-50).
        max_rotation: degrees (15).
        min_contrast: minimum luminance difference between digit and background mean (0.35).
    """

    seed: int = 0
    train_per_domain: int = 1000
    val_per_domain: int = 200
    test_per_split: int = 500
    p: tuple[float, ...] = (0.9, 0.8)
    cameras: tuple[Camera, ...] = field(default_factory=lambda: (
        Camera((1.10, 1.00, 0.85), 0.0, 0.03), Camera((0.85, 1.00, 1.10), 0.8, 0.05)))
    digit_size: tuple[int, int] = (34, 50)
    max_rotation: float = 15.0
    min_contrast: float = 0.35

    def key(self) -> str:
        blob = json.dumps({"v": VERSION, **asdict(self)}, sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


# -- sources -------------------------------------------------------------------------------
def _digits() -> tuple[Tensor, Tensor]:
    from sklearn.datasets import load_digits

    d = load_digits()
    keep = d.target < NUM_CLASSES
    return torch.tensor(d.images[keep] / 16.0, dtype=torch.float32), torch.tensor(d.target[keep], dtype=torch.long)


def _gray(img: Any) -> Tensor:
    t = torch.tensor(np.array(img), dtype=torch.float32)
    if t.dim() == 3:
        t = t[..., :3].mean(-1)
    return t / 255.0


def _rgb(img: Any) -> Tensor:
    t = torch.tensor(np.array(img)[..., :3], dtype=torch.float32) / 255.0
    return t.permute(2, 0, 1)


def _textures(size: int = 256) -> Tensor:
    """``[5, 3, size, size]`` textures in [0, 1], contrast-stretched, downsampled by area."""
    from skimage import data

    out = []
    for name in TEXTURES:
        img = getattr(data, name)()
        t = _rgb(img) if img.ndim == 3 else _gray(img)[None].expand(3, -1, -1)
        lo, hi = t.quantile(0.01), t.quantile(0.99)
        t = ((t - lo) / (hi - lo).clamp_min(1e-6)).clamp(0, 1)
        out.append(F.interpolate(t[None], size=(size, size), mode="area")[0])
    return torch.stack(out)


def _photos(size: int = 256) -> list[Tensor]:
    from skimage import data
    from sklearn.datasets import load_sample_image

    out = []
    for name in PHOTOS:
        img = load_sample_image(name) if name.endswith(".jpg") else getattr(data, name)()
        t = _rgb(img) if img.ndim == 3 else _gray(img)[None].expand(3, -1, -1)
        h, w = t.shape[-2:]
        s = size / min(h, w)
        out.append(F.interpolate(t[None], size=(max(size, round(h * s)), max(size, round(w * s))),
                                 mode="area")[0].contiguous())
    return out


# -- rendering -------------------------------------------------------------------------------
def _crop(source: Tensor, n: int, x_range: tuple[float, float], g: torch.Generator) -> Tensor:
    """``n`` random square crops of ``source [3, H, W]`` within columns ``x_range`` (fractions), at 64 px."""
    h, w = source.shape[-2:]
    lo, hi = x_range
    avail_w = (hi - lo) * w
    side = torch.empty(n).uniform_(48, min(128, avail_w, h), generator=g)  # crop side in source px
    cx = lo * w + side / 2 + torch.rand(n, generator=g) * (avail_w - side)
    cy = side / 2 + torch.rand(n, generator=g) * (h - side)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = side / w
    theta[:, 1, 1] = side / h
    theta[:, 0, 2] = cx / w * 2 - 1
    theta[:, 1, 2] = cy / h * 2 - 1
    grid = F.affine_grid(theta, [n, 3, IMAGE_SIZE, IMAGE_SIZE], align_corners=False)
    return F.grid_sample(source[None].expand(n, -1, -1, -1), grid, align_corners=False)


def _warp_digits(digits: Tensor, cfg: SyntheticConfig, g: torch.Generator) -> Tensor:
    """Digits ``[n, 8, 8]`` to soft alpha maps ``[n, 1, 64, 64]`` under a random affine warp."""
    n = digits.shape[0]
    padded = F.pad(digits, (2, 2, 2, 2))[:, None]  # 12x12: the digit fades to zero at its border
    size = torch.empty(n).uniform_(*cfg.digit_size, generator=g)  # digit height in output px
    angle = torch.empty(n).uniform_(-cfg.max_rotation, cfg.max_rotation, generator=g) * math.pi / 180
    scale = (8 / 12) / (size / IMAGE_SIZE)  # output -> input, normalised coordinates
    room = (1 - size / IMAGE_SIZE * 1.1).clamp_min(0)
    c = (torch.rand(n, 2, generator=g) * 2 - 1) * room[:, None]
    cos, sin = torch.cos(angle) * scale, torch.sin(angle) * scale
    theta = torch.stack([torch.stack([cos, -sin], 1), torch.stack([sin, cos], 1)], 1)  # [n, 2, 2]
    t = -(theta @ c[:, :, None])
    grid = F.affine_grid(torch.cat([theta, t], 2), [n, 1, IMAGE_SIZE, IMAGE_SIZE], align_corners=False)
    v = F.grid_sample(padded, grid, align_corners=False)
    return ((v - 0.15) / 0.35).clamp(0, 1)  # soft edge: ramps from 0.15 to 0.5 of the ink intensity


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    if sigma <= 0:
        return x
    import kornia

    k = 2 * math.ceil(2 * sigma) + 1
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma))


def _luma(x: Tensor) -> Tensor:
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def _compose(alpha: Tensor, bg: Tensor, cfg: SyntheticConfig, camera: Camera | None, g: torch.Generator) -> Tensor:
    n = alpha.shape[0]
    tint = torch.empty(n, 3, 1, 1).uniform_(0.55, 1.0, generator=g)
    bg = bg * tint
    bg_l = _luma(bg).mean(dim=(1, 2))
    # digit luminance at least min_contrast away from the background's mean, on the side with room
    up = bg_l + cfg.min_contrast + torch.rand(n, generator=g) * 0.15
    down = bg_l - cfg.min_contrast - torch.rand(n, generator=g) * 0.15
    target = torch.where((bg_l < 0.5) & (up <= 1.0) | (down < 0.0), up.clamp(max=1.0), down.clamp(min=0.0))
    color = torch.rand(n, 3, generator=g)
    color = (color - _luma(color[..., None, None])[:, 0, 0, None] + target[:, None]).clamp(0, 1)
    img = alpha * color[..., None, None] + (1 - alpha) * bg
    if camera is not None:
        img = img * torch.tensor(camera.gain).view(1, 3, 1, 1)
        img = _gaussian_blur(img, camera.blur)
        img = img + torch.randn(img.shape, generator=g) * camera.noise
    return img.clamp(0, 1)


def _render(cfg: SyntheticConfig, split: str, g: torch.Generator, sources: dict[str, Any]) -> dict[str, Tensor]:
    digits, labels = sources["digits"], sources["labels"]
    train_side = split in ("train", "val")
    pool = sources["train_idx"] if train_side else sources["test_idx"]
    x_range = (0.0, 0.5) if train_side else (0.5, 1.0)
    if split in ("train", "val", "test_id"):
        per = {"train": cfg.train_per_domain, "val": cfg.val_per_domain}.get(split, cfg.test_per_split // len(cfg.p))
        domains = torch.arange(len(cfg.p)).repeat_interleave(per)
    else:
        domains = torch.full((cfg.test_per_split,), -1, dtype=torch.long)
    n = domains.shape[0]
    pick = pool[torch.randint(len(pool), (n,), generator=g)]
    y = labels[pick]
    if split == "random":
        shortcut = torch.randint(NUM_CLASSES, (n,), generator=g)
    elif split == "flipped":
        shortcut = (y + 1) % NUM_CLASSES
    elif split == "novel":
        shortcut = torch.full((n,), -1, dtype=torch.long)
    else:
        p = torch.tensor(cfg.p)[domains]
        other = (y + torch.randint(1, NUM_CLASSES, (n,), generator=g)) % NUM_CLASSES
        shortcut = torch.where(torch.rand(n, generator=g) < p, y, other)
    alpha = _warp_digits(digits[pick], cfg, g)
    bg = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    if split == "novel":
        photos = sources["photos"]
        which = torch.randint(len(photos), (n,), generator=g)
        for i, photo in enumerate(photos):
            sel = (which == i).nonzero().flatten()
            if len(sel):
                bg[sel] = _crop(photo, len(sel), (0.0, 1.0), g)
    else:
        for k in range(NUM_CLASSES):
            sel = (shortcut == k).nonzero().flatten()
            if len(sel):
                bg[sel] = _crop(sources["textures"][k], len(sel), x_range, g)
    image = torch.empty(n, 3, IMAGE_SIZE, IMAGE_SIZE)
    for d in domains.unique().tolist():
        sel = (domains == d).nonzero().flatten()
        camera = cfg.cameras[d] if d >= 0 else None
        image[sel] = _compose(alpha[sel], bg[sel], cfg, camera, g)
    mask = (alpha > 0.5).float()
    return {"image": image, "label": y, "mask": mask, "domain": domains, "shortcut": shortcut}


def _sources(cfg: SyntheticConfig) -> dict[str, Any]:
    digits, labels = _digits()
    g = torch.Generator().manual_seed(cfg.seed)
    train_idx, test_idx = [], []
    for k in range(NUM_CLASSES):
        idx = (labels == k).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=g)]
        train_idx.append(idx[: len(idx) // 2])
        test_idx.append(idx[len(idx) // 2:])
    return {"digits": digits, "labels": labels, "train_idx": torch.cat(train_idx), "test_idx": torch.cat(test_idx),
            "textures": _textures(), "photos": _photos()}


def _default_root() -> Path:
    base = os.environ.get("EGL_CACHE_DIR") or os.path.join(os.path.expanduser("~"), ".cache", "egl")
    return Path(base) / "synthetic"


def _check_config(cfg: SyntheticConfig) -> None:
    """Every field in its range (a p of 1.5 or a digit larger than the image rendered silently; a
    count of 0 or a reversed size range crashed inside torch)."""
    fn = "egl.data.synthetic.build"

    def number(v: object) -> bool:
        return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)

    check_int(cfg.seed, fn, "cfg.seed", fix="Pass e.g. SyntheticConfig(seed=0)")
    for arg in ("train_per_domain", "val_per_domain", "test_per_split"):
        check_int(getattr(cfg, arg), fn, f"cfg.{arg}", low=2, fix=f"Pass e.g. SyntheticConfig({arg}=100)")
    if not (isinstance(cfg.p, (tuple, list)) and cfg.p and all(number(v) and 0 <= v <= 1 for v in cfg.p)):
        raise fail(fn, "cfg.p", "a non-empty tuple of probabilities in [0, 1], one per training domain",
                   repr(cfg.p)[:100], "Pass e.g. SyntheticConfig(p=(0.9, 0.8))")
    if cfg.test_per_split < len(cfg.p):  # the test_id split shares its images among the domains
        raise fail(fn, "cfg.test_per_split", f"at least one image per training domain ({len(cfg.p)})",
                   repr(cfg.test_per_split), f"Pass e.g. SyntheticConfig(test_per_split={10 * len(cfg.p)})")
    if len(cfg.cameras) != len(cfg.p) or not all(isinstance(c, Camera) for c in cfg.cameras):
        raise fail(fn, "cfg.cameras", f"one Camera per training domain ({len(cfg.p)})", repr(cfg.cameras)[:100],
                   "Give as many Camera(gain=..., blur=..., noise=...) as p values")
    for c in cfg.cameras:
        if not (len(c.gain) == 3 and all(number(g) and g > 0 for g in c.gain) and number(c.blur) and c.blur >= 0
                and number(c.noise) and c.noise >= 0):
            raise fail(fn, "cfg.cameras", "cameras with 3 gains > 0, blur >= 0 and noise >= 0", repr(c)[:100],
                       "Pass e.g. Camera(gain=(1.0, 1.0, 1.0), blur=0.0, noise=0.02)")
    lo, hi = cfg.digit_size if isinstance(cfg.digit_size, (tuple, list)) and len(cfg.digit_size) == 2 else (0, -1)
    if not (isinstance(lo, int) and isinstance(hi, int) and 8 <= lo <= hi <= IMAGE_SIZE):
        raise fail(fn, "cfg.digit_size", f"(low, high) pixel heights with 8 <= low <= high <= {IMAGE_SIZE}",
                   repr(cfg.digit_size)[:100], "Pass e.g. SyntheticConfig(digit_size=(34, 50))")
    if not (number(cfg.max_rotation) and 0 <= cfg.max_rotation <= 180):
        raise fail(fn, "cfg.max_rotation", "degrees in [0, 180]", repr(cfg.max_rotation),
                   "Pass e.g. SyntheticConfig(max_rotation=15)")
    if not (number(cfg.min_contrast) and 0 <= cfg.min_contrast < 1):
        raise fail(fn, "cfg.min_contrast", "a luminance difference in [0, 1)", repr(cfg.min_contrast),
                   "Pass e.g. SyntheticConfig(min_contrast=0.35)")


def build(cfg: SyntheticConfig | None = None, root: str | os.PathLike[str] | None = None,
          *, cache: bool = True) -> dict[str, dict[str, Tensor]]:
    """Render every split (or read them from the cache).

    Args:
        cfg: the configuration (default :class:`SyntheticConfig()`).
        root: cache folder (default ``$EGL_CACHE_DIR/synthetic`` or ``~/.cache/egl/synthetic``).
        cache: read and write the cache; the file is ``<root>/<config hash>.pt``, written atomically.

    Returns:
        ``{split: {"image", "label", "mask", "domain", "shortcut"}}``.
    """
    cfg = cfg or SyntheticConfig()
    if not isinstance(cfg, SyntheticConfig):
        raise fail("egl.data.synthetic.build", "cfg", "a SyntheticConfig", repr(cfg), "Pass SyntheticConfig(...)")
    _check_config(cfg)
    path = Path(root or _default_root()) / f"{cfg.key()}.pt"
    if cache and path.exists():
        try:
            return torch.load(path, weights_only=True)
        except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
            path.unlink(missing_ok=True)
    sources = _sources(cfg)
    out = {}
    for i, split in enumerate(SPLITS):
        g = torch.Generator().manual_seed(cfg.seed * 1000 + i + 1)
        out[split] = _render(cfg, split, g, sources)
    if cache:
        from egl.train.checkpoint import save_checkpoint

        save_checkpoint(out, path)  # temp file + fsync + os.replace: a killed run leaves no corrupt entry
    return out


class SyntheticShortcuts(Dataset):
    """One split of the benchmark as a map-style dataset of dicts
    (``image [3, 64, 64]``, ``label``, ``mask [1, 64, 64]``, ``domain``, ``shortcut``).

    Example:
        >>> from egl.data.synthetic import SyntheticShortcuts, SyntheticConfig
        >>> ds = SyntheticShortcuts("train", SyntheticConfig(train_per_domain=8, val_per_domain=2,
        ...                         test_per_split=4), cache=False)
        >>> ds[0]["image"].shape, len(ds)
        (torch.Size([3, 64, 64]), 16)
    """

    def __init__(self, split: str = "train", cfg: SyntheticConfig | None = None,
                 root: str | os.PathLike[str] | None = None, *, cache: bool = True) -> None:
        check_choice(split, SPLITS, "egl.data.SyntheticShortcuts", "split")
        self.split = split
        self.tensors = build(cfg, root, cache=cache)[split]

    def __len__(self) -> int:
        return int(self.tensors["label"].shape[0])

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}
