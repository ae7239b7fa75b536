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
  under ``torch.no_grad()`` with the masker in eval mode, on the masker's device and in its
  dtype) and kept on the CPU in float16: 2 bytes a pixel, 100 KB for a 224-px image, 0.5 GB for
  Waterbirds' 4,795 training images (SAM's cache keeps the same precision). Each item gets its
  own copy.
* The masker's masks replace the items' ``mask`` (a ground-truth mask, if any) and every item
  loses its ``annotated`` flag (each now has a mask). ``mask`` is the key that augmentation
  moves and recipes read: there is no other.
* Only frozen maskers that make masks from images: a trainable one (``learned``: its masks
  change as it trains) or one that reads the data's masks (``ground_truth``) is refused; so is
  a data set that augments its items (``Augmented``, or a ``DomainFolder`` / ``ImageCSV`` built
  with ``augment=``, seen through ``Subset``, ``ConcatDataset`` and ``PartialMasks``): its
  masks would be those of one random view.
* Masks must be finite and in [0, 1], ``[B, 1, H, W]`` or ``[B, H, W]`` at the images' size
  (checked per call, naming the masker).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset, Subset

from egl._check import check_int, describe, fail
from egl._transfer import upload

__all__ = ["MaskedBy"]

_FN = "egl.data.MaskedBy"


def _augments(ds: Any) -> bool:
    """Whether ``ds`` (or a data set it wraps) draws a random augmentation per item."""
    from egl.data.augment import Augmented
    from egl.data.partial_masks import PartialMasks

    if isinstance(ds, Augmented):
        return ds.augment is not None
    if getattr(ds, "augment", None) is not None and not isinstance(ds, MaskedBy):
        return True
    if isinstance(ds, (Subset, PartialMasks, MaskedBy)):
        return _augments(ds.dataset)
    if isinstance(ds, ConcatDataset):
        return any(_augments(d) for d in ds.datasets)
    return False


class MaskedBy(Dataset):
    """``dataset`` whose items carry ``masker``'s mask of their (un-augmented) image as ``mask``.

    Args:
        dataset: a map-style data set of dict items with ``image`` (``[C, H, W]``, one size),
            not augmented (wrap the result in :class:`egl.data.Augmented` instead).
        masker: a frozen masker (``egl.maskers.SAMMasker``, ``GrayscaleMasker``, or any module
            mapping ``[B, C, H, W]`` images to ``[B, 1, H, W]`` masks in [0, 1]); it runs on its
            own device (its parameters', or its buffers', the CPU without either).
        batch_size: images per masker call (16).

    Example:
        >>> import torch
        >>> from egl.maskers import GrayscaleMasker
        >>> data = [{"image": torch.rand(3, 8, 8), "label": torch.tensor(i % 2)} for i in range(4)]
        >>> masked = MaskedBy(data, GrayscaleMasker())
        >>> masked[0]["mask"].shape, masked[0]["mask"].dtype
        (torch.Size([1, 8, 8]), torch.float16)
    """

    def __init__(self, dataset: Dataset, masker: nn.Module, *, batch_size: int = 16) -> None:
        if not (hasattr(dataset, "__getitem__") and hasattr(dataset, "__len__")):
            raise fail(_FN, "dataset", "a map-style data set (with __getitem__ and __len__)", describe(dataset),
                       "Pass the data set itself (not a DataLoader), before any augmentation")
        if _augments(dataset):
            raise fail(_FN, "dataset", "a data set that does not augment its items (the masks are made once)",
                       f"{type(dataset).__name__} drawing a random augmentation per item",
                       "Wrap the plain data set and augment the result: Augmented(MaskedBy(plain, masker), "
                       "'domainbed'); build DomainFolder / ImageCSV without augment=")
        trainable, reads = getattr(masker, "trainable", False), getattr(masker, "needs_mask", False)
        if not isinstance(masker, nn.Module) or trainable or reads:
            what = ("a trainable masker (its masks change as it trains)" if trainable
                    else "a masker that reads the data's masks" if reads else describe(masker))
            raise fail(_FN, "masker", "a frozen masker module that makes masks from images (sam, grayscale)", what,
                       "Pass e.g. egl.maskers.SAMMasker(...) or GrayscaleMasker(); a learned masker trains inside "
                       "recipes.align")
        self.batch_size = check_int(batch_size, _FN, "batch_size", low=1, fix="Pass e.g. batch_size=16")
        self.dataset = dataset
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
        held = next((t for t in (*masker.parameters(), *masker.buffers()) if t.is_floating_point()), None)
        device = held.device if held is not None else torch.device("cpu")
        dtype = held.dtype if held is not None else None
        first = self._image(0)
        masks = torch.empty(n, 1, *first.shape[-2:], dtype=torch.float16)  # (filled in place: one copy)
        was_training = masker.training
        masker.eval()
        try:
            with torch.no_grad():
                for start in range(0, n, self.batch_size):
                    stop = min(start + self.batch_size, n)
                    imgs = [self._image(i) for i in range(start, stop)]
                    bad = next((start + j for j, im in enumerate(imgs) if im.shape != first.shape), None)
                    if bad is not None:
                        raise fail(_FN, "dataset", f"images of one size (the first: {list(first.shape)})",
                                   f"{list(imgs[bad - start].shape)} at index {bad}",
                                   "Resize the images as the training loop will see them (e.g. image_size=224)")
                    x = upload(torch.stack(imgs), device, dtype)
                    masks[start:stop] = self._checked(masker(x), x, start)
        finally:
            masker.train(was_training)
        return masks

    @staticmethod
    def _checked(m: object, x: Tensor, start: int) -> Tensor:
        """``m`` as ``[B, 1, H, W]`` CPU float16, unless it is not finite masks in [0, 1] of ``x``'s size."""
        want = (x.shape[0], 1, *x.shape[-2:])
        if isinstance(m, Tensor) and m.dim() == 3:
            m = m[:, None]
        if not isinstance(m, Tensor) or tuple(m.shape) != want or not m.is_floating_point() and m.dtype != torch.bool:
            raise fail(_FN, "masker", f"masks of shape {list(want)} for images {list(x.shape)}", describe(m),
                       "Pass a masker returning one [1, H, W] mask per image")
        m = m.detach().float()
        lo, hi = torch.stack([m.min(), m.max()]).tolist() if m.numel() else (0.0, 0.0)
        if not (0.0 <= lo and hi <= 1.0):  # (NaN fails both)
            raise fail(_FN, "masker", "finite masks in [0, 1]", f"values in [{lo}, {hi}] for the images from index "
                       f"{start}", "Pass a masker whose output is a mask (a sigmoid, a min-max, a binary mask)")
        return m.to("cpu", torch.float16)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> dict[str, Any]:
        item = dict(self.dataset[i])
        item["mask"] = self.masks[i].clone()  # (a transform that writes in place cannot reach the store)
        item.pop("annotated", None)  # every item has a mask now
        return item

    def __repr__(self) -> str:
        return f"MaskedBy({type(self.dataset).__name__}, {len(self)} masks of {list(self.masks.shape[1:])})"
