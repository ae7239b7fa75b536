"""A disk cache of per-image masks for frozen maskers (SAM): compute once, read ever after.

Layout: ``root / namespace / key[:2] / key.pt``, one ``torch.save`` dict per image
(``{"format", "key", "mask"}``, loadable with ``weights_only=True``). The key is the
sha256 of the image (shape and float32 bytes), the masker's configuration and the model's
fingerprint, so a changed image, setting or weight file misses instead of reading a stale
mask. Entries are written atomically (:func:`egl.train.checkpoint.save_checkpoint`: temp
file, fsync, ``os.replace``): a run killed while writing leaves no entry, never a partial
one. An entry that cannot be read, or that does not hold what its name promises, counts
as a miss and is rewritten.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import torch
from torch import Tensor, nn

__all__ = ["MaskCache", "tensor_bytes", "module_fingerprint"]

FORMAT = 1


def tensor_bytes(t: Tensor) -> bytes:
    """The raw bytes of ``t`` on the CPU (any dtype, bfloat16 included)."""
    t = t.detach().to("cpu").contiguous().reshape(-1)
    return t.view(torch.uint8).numpy().tobytes()


def module_fingerprint(module: nn.Module, extra: str = "") -> str:
    """sha256 of a module's class, ``extra`` (its configuration) and every parameter and buffer."""
    h = hashlib.sha256()
    h.update(f"{type(module).__module__}.{type(module).__qualname__}\n{extra}\n".encode())
    for name, t in module.state_dict(keep_vars=False).items():
        h.update(f"{name}:{t.dtype}:{list(t.shape)}\n".encode())
        h.update(tensor_bytes(t))
    return h.hexdigest()


def _safe_namespace(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip(".") or "_"


class MaskCache:
    """Per-image masks on disk under ``root / namespace``.

    Args:
        root: the cache directory (created on first write).
        namespace: a subfolder, e.g. the data set's name (``None``: the root itself).
    """

    def __init__(self, root: str | os.PathLike[str], namespace: str | None = None) -> None:
        root = Path(root).expanduser()
        self.dir = root / _safe_namespace(namespace) if namespace else root

    @staticmethod
    def key(image: Tensor, context: bytes) -> str:
        """sha256 of the image (shape and float32 values) and ``context`` (configuration + model)."""
        h = hashlib.sha256()
        h.update(f"egl-mask-cache:{FORMAT}:{list(image.shape)}\n".encode())
        h.update(tensor_bytes(image.detach().float()))
        h.update(context)
        return h.hexdigest()

    def path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    def load(self, key: str, shape: tuple[int, ...]) -> Tensor | None:
        """The cached mask of ``shape``, or None on a miss or a corrupt entry."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            entry = torch.load(path, map_location="cpu", weights_only=True)
            mask = entry["mask"]
            ok = (entry.get("format") == FORMAT and entry.get("key") == key and isinstance(mask, Tensor)
                  and tuple(mask.shape) == tuple(shape))
        except Exception:  # truncated, garbage, wrong layout: recompute and overwrite
            return None
        return mask if ok else None

    def save(self, key: str, mask: Tensor) -> Path:
        """Write ``mask`` under ``key`` atomically."""
        from egl.train.checkpoint import save_checkpoint  # late: egl.train imports the recipes

        return save_checkpoint({"format": FORMAT, "key": key, "mask": mask.detach().to("cpu").clone()},
                               self.path(key))
