"""A frozen masker's masks, computed once on the un-augmented images and carried by the items,
so that augmentation moves them with their images.

ALIGN's masker ablations (``masker="sam"``, ``"grayscale"``) make each batch's masks from the
batch's images. Under random augmentation every training image is new: SAM runs on every step
(its disk cache, keyed by the exact tensor, never hits) and its masks of a cropped, jittered
image are what it segments there. ``MaskedBy(dataset, masker)`` runs the masker once over the
data set as it is (no augmentation), keeps each item's mask, and hands it out as the item's
``mask``; wrap the result in :class:`egl.data.Augmented` and the crops and flips move the mask
with its image, photometric changes leave it alone, and the recipe reads it as a ground-truth
mask (``recipes.align(model, masker="ground_truth")``)::

    sam = SAMMasker(weights="~/models/sam-vit-base", cache_dir="~/.cache/egl/sam", dataset="waterbirds")
    train = Augmented(MaskedBy(ImageCSV(root, "train", columns="waterbirds"), sam), "domainbed")
    recipe = recipes.align(model, masker="ground_truth")

Choices:

* Masks are computed at construction (``batch_size`` images a call, in the data set's order,
  under ``torch.no_grad()`` with the masker in eval mode) and kept on the CPU in float16 (2
  bytes a pixel: 100 KB for a 224-px image; SAM's cache keeps the same precision).
* The masker's masks replace the items' ``mask`` (a ground-truth mask, if any) and every item
  loses its ``annotated`` flag (each now has a mask); ``key=`` stores them under another name
  instead.
* Only frozen maskers that make masks from images: a trainable one (``learned``: its masks
  change as it trains) or one that reads the data's masks (``ground_truth``) is refused.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from egl._check import check_int, describe, fail
from egl._transfer import upload

__all__ = ["MaskedBy"]

_FN = "egl.data.MaskedBy"


class MaskedBy(Dataset):
    """``dataset`` whose items carry ``masker``'s mask of their (un-augmented) image.

    Args:
        dataset: a map-style data set of dict items with ``image`` (``[C, H, W]``, one size).
        masker: a frozen masker (``egl.maskers.SAMMasker``, ``GrayscaleMasker``, or any module
            mapping ``[B, C, H, W]`` images to ``[B, 1, H, W]`` masks in [0, 1]).
        batch_size: images per masker call (16).
        device: where the masker runs (default: its parameters' device, the CPU without any).
        key: the item key the masks are stored under (``"mask"``: what recipes read).

    Example:
        >>> import torch
        >>> from egl.maskers import GrayscaleMasker
        >>> data = [{"image": torch.rand(3, 8, 8), "label": torch.tensor(i % 2)} for i in range(4)]
        >>> masked = MaskedBy(data, GrayscaleMasker())
        >>> masked[0]["mask"].shape, masked[0]["mask"].dtype
        (torch.Size([1, 8, 8]), torch.float16)
    """

    def __init__(self, dataset: Dataset, masker: nn.Module, *, batch_size: int = 16,
                 device: torch.device | str | None = None, key: str = "mask") -> None:
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise fail(_FN, "dataset", "a map-style data set (with __getitem__ and __len__)", describe(dataset),
                       "Pass the data set itself (not a DataLoader), before any augmentation")
        if not isinstance(masker, nn.Module) or getattr(masker, "trainable", False) or getattr(masker, "needs_mask",
                                                                                                False):
            what = ("a trainable masker (its masks change as it trains)" if getattr(masker, "trainable", False)
                    else "a masker that reads the data's masks" if getattr(masker, "needs_mask", False)
                    else describe(masker))
            raise fail(_FN, "masker", "a frozen masker module that makes masks from images (sam, grayscale)", what,
                       "Pass e.g. egl.maskers.SAMMasker(...) or GrayscaleMasker(); a learned masker trains inside "
                       "recipes.align")
        if not isinstance(key, str) or not key:
            raise fail(_FN, "key", "a non-empty item key", describe(key), "Pass key='mask'")
        self.batch_size = check_int(batch_size, _FN, "batch_size", low=1, fix="Pass e.g. batch_size=16")
        self.dataset, self.key = dataset, key
        param = next(masker.parameters(), None)
        self.device = torch.device(device) if device is not None else (param.device if param is not None
                                                                        else torch.device("cpu"))
        self.masks = self._compute(masker)

    def _image(self, i: int) -> Tensor:
        item = self.dataset[i]
        img = item.get("image") if isinstance(item, dict) else None
        if not isinstance(img, Tensor) or img.dim() != 3:
            got = f"an item {describe(item)}" if not isinstance(item, dict) else f"'image' {describe(img)}"
            raise fail(_FN, "dataset", "dict items with an 'image' [C, H, W] (a mask is stored in the item)",
                       f"{got} at index {i}", "Use a data set of dict items (egl.data's data sets yield them)")
        return img

    def _compute(self, masker: nn.Module) -> Tensor:
        n = len(self.dataset)  # type: ignore[arg-type]
        if n == 0:
            raise fail(_FN, "dataset", "at least one item", "an empty data set", "Pass a data set with images")
        was_training = masker.training
        masker.eval()
        out: list[Tensor] = []
        size: torch.Size | None = None
        try:
            with torch.no_grad():
                for start in range(0, n, self.batch_size):
                    imgs = [self._image(i) for i in range(start, min(start + self.batch_size, n))]
                    size = size or imgs[0].shape
                    bad = next((start + j for j, im in enumerate(imgs) if im.shape != size), None)
                    if bad is not None:
                        raise fail(_FN, "dataset", f"images of one size (the first: {list(size)})",
                                   f"{list(self.dataset[bad]['image'].shape)} at index {bad}",  # type: ignore[index]
                                   "Resize the images as the training loop will see them (e.g. image_size=224)")
                    x = upload(torch.stack(imgs), self.device)
                    m = masker(x)
                    want = (x.shape[0], 1, *x.shape[-2:])
                    if not isinstance(m, Tensor) or tuple(m.shape) != want:
                        raise fail(_FN, "masker", f"masks of shape {list(want)} for images {list(x.shape)}",
                                   describe(m), "Pass a masker returning one [1, H, W] mask per image")
                    out.append(m.detach().to("cpu", torch.float16))
        finally:
            masker.train(was_training)
        return torch.cat(out)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        item[self.key] = self.masks[i]
        if self.key == "mask":
            item.pop("annotated", None)  # every item has a mask now
        return item

    def __repr__(self) -> str:
        return f"MaskedBy({type(self.dataset).__name__}, {len(self)} masks of {list(self.masks.shape[1:])})"
