"""Image folders in the DomainBed layout, with optional masks and the paper's 6:2:2 split.

Layout (VLCS, Terra Incognita, PACS, ... as DomainBed stores them)::

    root/<domain>/<class>/<image>.{jpg,png,...}
    root/masks/<domain>/<class>/<stem>.png        # optional, same stems; "masks" is not a domain

Every domain is split 6:2:2 into train / val / test with a seeded shuffle of its
sorted file list (ALIGN, Sec. 4.1), seeded by the split seed and the domain's *name*, so
splits are reproducible, independent of the file system's listing order and of which other
domains are selected (a domain's test images are the same whether it is loaded alone or
with others). Classes are the sorted union of the class folders of *every* domain under
``root``, so a class has the same index whichever domains are selected; every selected
domain must contain every class (a missing class is an error naming both, unless
``allow_missing_classes=True``). Hidden files and folders (``.DS_Store``, macOS's ``._name``
resource forks) and ``__MACOSX`` (a zip made on a Mac) are neither images, classes nor
domains; a mask's ``.png`` may be in any case (``.PNG``).

Masks are grey images of the same size as their image: 0-255 (255 = foreground; 0-65535 for
16-bit files), or 0/1 label images (a mask whose largest value is 1 is read as 0/1); a mask
of another size is an error naming both files. A mask whose largest value is 2 to
``LABEL_MAX`` (15) is read as 0-255 with a warning (once per data set) naming the file: it is
most likely a class-label image (0/1/2 classes, or a 1/2/3 trimap), which read as 0-255 is
nearly empty (at most 6% foreground), and which of its labels is the foreground is not known;
a faint 0-255 mask (a thin antialiased object) can peak there too, hence a warning, not an
error. 16-bit images keep their levels (PIL's RGB conversion would clip them to white).

Unreadable images: ``verify=True`` opens every file once at construction (PIL's
``verify``) and, by ``on_error``, raises naming the file (``"raise"``, default) or drops
it with a warning (``"skip"``). A file that fails later, at load time, always raises
with its path.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from egl._check import fail
from egl.data.augment import as_augment
from egl.data.image_items import LABEL_MAX, ImageItems, Sample, check_read_args, verify_images

__all__ = ["DomainFolder", "Sample", "scan", "IMAGE_EXTENSIONS", "SPLIT_FRACTIONS", "LABEL_MAX"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_FRACTIONS = {"train": (0.0, 0.6), "val": (0.6, 0.8), "test": (0.8, 1.0)}
MASKS_DIR = "masks"
_FN = "egl.data.DomainFolder"


#: Folders an archiver or a file manager leaves, never domains or classes (``__MACOSX`` from a zip made on a Mac).
SKIPPED_DIRS = frozenset({"__MACOSX", "__pycache__"})


def _subdirs(p: Path) -> list[str]:
    return sorted(d.name for d in p.iterdir()
                  if d.is_dir() and not d.name.startswith(".") and d.name not in SKIPPED_DIRS)


def _masks_in(folder: Path) -> dict[str, Path]:
    """``<folder>``'s mask files by stem, and by case-folded stem: ``.png`` in any case (``.PNG``),
    hidden files aside; an exact ``.png`` wins over another case of the same stem."""
    if not folder.is_dir():
        return {}
    found = sorted((f for f in folder.iterdir() if f.suffix.lower() == ".png" and not f.name.startswith(".")),
                   key=lambda f: (f.suffix != ".png", f.name))
    out: dict[str, Path] = {}
    for f in found:
        if f.is_file():
            out.setdefault(f.stem, f)
    for stem, f in list(out.items()):  # (IMG_01.png for img_01.jpg: one file on macOS's and Windows' disks)
        out.setdefault(stem.casefold(), f)
    return out


def scan(root: str | os.PathLike[str], domains: Sequence[str] | None = None, *,
         allow_missing_classes: bool = False) -> tuple[list[str], list[str], list[Sample]]:
    """Find domains, classes and every image under ``root`` (sorted, deterministic).

    Returns:
        ``(domains, classes, samples)``.
    """
    root = Path(root)
    if not root.is_dir():
        raise fail(_FN, "root", "an existing folder in the layout root/<domain>/<class>/<image>",
                   f"'{root}' ({'a file' if root.exists() else 'missing'})", "Check the path")
    found = [d for d in _subdirs(root) if d != MASKS_DIR]
    if not found:
        raise fail(_FN, "root", "domain folders (root/<domain>/<class>/<image>)", f"no sub-folders in '{root}'",
                   "Point root at the data set's top folder")
    if isinstance(domains, str) or (domains is not None and (not isinstance(domains, Sequence) or not domains
                                                             or len(set(domains)) != len(domains))):
        example = domains if isinstance(domains, str) and domains in found else found[0]  # ("photo": ["photo"])
        raise fail(_FN, "domains", f"None (every domain) or a non-empty list of distinct domains among {found}",
                   repr(domains)[:100], f"Pass e.g. domains=[{example!r}]" if found else "Pass domains=None")
    if domains is None:
        domains = found
    else:
        unknown = [d for d in domains if d not in found]
        if unknown:
            raise fail(_FN, "domains", f"domains among {found}", repr(list(domains)), f"Remove {unknown}")
        domains = list(domains)
    per_domain = {d: _subdirs(root / d) for d in domains}
    # every domain's classes, selected or not: a class's index must not depend on the selection
    classes = sorted(set().union(*(_subdirs(root / d) for d in found)))
    if not classes:
        raise fail(_FN, "root", "class folders inside each domain", f"none under '{root}'",
                   "Use the layout root/<domain>/<class>/<image>")
    for d, cls in per_domain.items():
        missing = [c for c in classes if c not in cls]
        if missing and not allow_missing_classes:
            raise fail(_FN, "root", f"every class {classes} in every domain",
                       f"domain '{d}' without {missing}", "Add the class folders, or pass allow_missing_classes=True "
                       "(data.allow_missing_classes=true in experiments)")
    mask_root = root / MASKS_DIR
    samples: list[Sample] = []
    for di, d in enumerate(domains):
        n_before = len(samples)
        for ci, c in enumerate(classes):
            folder = root / d / c
            if not folder.is_dir():
                continue
            masks = _masks_in(mask_root / d / c)
            for f in sorted(folder.iterdir()):  # (hidden files: macOS's ._name resource forks, not images)
                if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file() and not f.name.startswith("."):
                    samples.append(Sample(f, ci, di, masks.get(f.stem) or masks.get(f.stem.casefold())))
        if len(samples) == n_before:
            raise fail(_FN, "root", f"images in domain '{d}'", f"an empty domain folder '{root / d}'",
                       f"Add images ({', '.join(IMAGE_EXTENSIONS)}) or leave the domain out with domains=")
    if mask_root.is_dir() and not any(s.mask for s in samples):  # a masks folder laid out otherwise: say so
        found_masks = next((f for d in domains if (mask_root / d).is_dir()  # (masks of unselected domains: fine)
                            for f in sorted((mask_root / d).rglob("*")) if f.is_file()), None)
        if found_masks is not None:
            raise fail(_FN, "root", f"masks at {MASKS_DIR}/<domain>/<class>/<image stem>.png",
                       f"none matching an image, e.g. '{found_masks.relative_to(root)}' (for "
                       f"'{samples[0].path.relative_to(root)}' egl looks for "
                       f"'{MASKS_DIR}/{domains[samples[0].domain]}/{samples[0].path.parent.name}/"
                       f"{samples[0].path.stem}.png')",
                       "Rename the masks to their images' stems as .png files, or move the masks folder away")
    return list(domains), classes, samples


def _split(samples: list[Sample], domains: Sequence[str], split: str, seed: int) -> list[Sample]:
    lo, hi = SPLIT_FRACTIONS[split]
    out: list[Sample] = []
    for d, name in enumerate(domains):
        items = [s for s in samples if s.domain == d]
        # seeded by the domain's name, not its position in ``domains``: loaded alone or with
        # others, a domain splits the same way (by position, train and test could overlap)
        key = seed * 7919 + zlib.crc32(name.encode("utf-8"))
        if not -(2**63) <= key < 2**64:  # outside what manual_seed takes: folded in (the range's splits unchanged)
            key %= 2**64
        g = torch.Generator().manual_seed(key)
        order = torch.randperm(len(items), generator=g).tolist()
        n = len(items)
        a, b = round(lo * n), round(hi * n)
        out.extend(items[i] for i in order[a:b])
    return out


class DomainFolder(ImageItems):
    """A DomainBed-layout data set: items are dicts ``image [3, S, S]`` in [0, 1], ``label``,
    ``domain`` and, when the data has masks, ``mask [1, S, S]`` in [0, 1].

    Args:
        root: the data set's folder.
        split: ``"train"``, ``"val"``, ``"test"`` (6:2:2 per domain) or ``"all"``.
        domains: which domains to use (default: all folders except ``masks``).
        image_size: images (and masks) are resized to a square of this side (bilinear).
        seed: split seed.
        verify: open every image at construction to find unreadable files.
        on_error: ``"raise"`` or ``"skip"`` for unreadable images found by ``verify``.
        allow_missing_classes: accept domains that lack some classes.
        augment: training augmentation, masks moved with their images (:class:`~egl.data.Augment`):
            a preset name (``"domainbed"``, ``"flip"``, ``"none"``), a dict of ``Augment``'s
            settings, an ``Augment``, or None (default). The crop is taken from the file at its
            own resolution and resized to ``image_size`` once, as DomainBed's transform does.
        missing_masks: when some images have masks and others not: ``"raise"`` (default) or
            ``"unannotated"`` (items carry ``annotated``; those without a mask get zeros).

    Masks are read as 0-255 (0-65535 for 16-bit files; a colour mask by its brightest channel)
    or, when their largest level is 1, as 0/1. A largest level from 2 to ``LABEL_MAX`` (15) is
    most likely a class-label image (0/1/2 classes, a 1/2/3 trimap), nearly empty read as 0-255:
    the first one loaded warns, naming the file (a faint 0-255 mask can peak there too).

    Example:
        >>> ds = DomainFolder("data/VLCS", split="train", domains=["Caltech101", "LabelMe"])  # doctest: +SKIP
    """

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *, domains: Sequence[str] | None = None,
                 image_size: int = 224, seed: int = 0, verify: bool = False, on_error: str = "raise",
                 allow_missing_classes: bool = False, augment: object = None,
                 missing_masks: str = "raise") -> None:
        seed = check_read_args(_FN, split=split, splits=list(SPLIT_FRACTIONS), on_error=on_error,
                               missing_masks=missing_masks, image_size=image_size, seed=seed, verify=verify)
        self.augment = as_augment(augment, _FN)
        self.domains, self.classes, samples = scan(root, domains, allow_missing_classes=allow_missing_classes)
        if verify:
            samples = verify_images(samples, on_error, _FN, "root")
        samples = samples if split == "all" else _split(samples, self.domains, split, seed)
        super().__init__(samples, image_size=image_size, augment=self.augment, fn=_FN, arg="root",
                         mask_fix=f"Add {Path(root) / MASKS_DIR}/<domain>/<class>/<stem>.png for each image",
                         missing_masks=missing_masks)
        self.split = split

    def __repr__(self) -> str:
        extra: dict[str, Any] = {"split": self.split, "images": len(self), "classes": self.classes,
                                 "domains": self.domains, "masks": self.has_masks}
        return f"DomainFolder({', '.join(f'{k}={v!r}' for k, v in extra.items())})"
