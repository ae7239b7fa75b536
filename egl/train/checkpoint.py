"""Checkpoints that survive crashes, and a resume that replays the run bit for bit.

What a checkpoint holds (one ``torch.save`` dict, loadable with ``weights_only=True``):

* ``"recipe"``: ``recipe.state_dict()`` -- the classifier, ALIGN's masker, any module the
  recipe owns, BatchNorm statistics included;
* ``"optimizers"``: ``{phase: optimizer.state_dict()}``;
* ``"step"``: the number of steps completed (the resumed run starts at this step);
* ``"ranks"``: one entry per rank (one outside distributed runs) with its RNG states --
  Python ``random``, NumPy, torch CPU, CUDA of the training device, and every
  ``torch.Generator`` the loader holds -- and its position in the data (below);
* ``"loss_scalers"`` (``fit(precision="fp16")`` only): ``{phase: LossScaler.state_dict()}``;
  a run resumed in another precision starts its scales afresh (or ignores them);
* ``"train_seconds"``: wall-clock seconds spent in ``fit`` up to this checkpoint, summed over
  the calls that resumed it (the time an interrupted call spent after its last checkpoint is
  not counted: that work is done again);
* ``"config"``, ``"recipe_name"``, ``"versions"``, ``"format"``: for humans and checks.

Atomic writes: the dict is written to a temporary file in the checkpoint's own directory,
flushed and ``fsync``-ed, then ``os.replace``-d over ``last.pt`` (and the directory is
fsync-ed). ``os.replace`` is atomic on POSIX and Windows, so a crash or a full disk while
writing leaves the previous ``last.pt`` whole; the temporary file is removed on failure.

Replaying the data order. A shuffling ``DataLoader`` draws its permutation from torch's
global RNG (or from its ``generator=``) when its iterator is created and first advanced,
and the training steps in between draw from the same RNG (dropout, mixup...). So a
resumed run cannot simply "continue": it has to rebuild the iterator of the epoch it was
killed in. :class:`DataStream` records, at the start of every epoch, every RNG state,
and it counts the batches drawn in the epoch. On resume it

1. calls ``sampler.set_epoch(epoch)`` when the sampler has one (``DistributedSampler``),
2. sets the RNGs to the epoch-start states and creates the iterator,
3. draws (and drops) the batches the killed run had consumed,

after which :func:`egl.train.fit` restores the RNG states saved with the checkpoint. The
next batch, and every random draw after it, is then the one the uninterrupted run saw.
This needs a loader whose order depends only on those RNGs and on the epoch (any
``DataLoader`` with the default samplers, with or without workers, but not with
``persistent_workers=True``, whose later epochs draw differently from a fresh iterator);
skipping costs loading the consumed batches once. Bit-exactness further assumes deterministic kernels (on GPU:
``torch.use_deterministic_algorithms(True)``), the same hardware and the same versions.
"""

from __future__ import annotations

import errno
import os
import random
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch

from egl._check import describe, fail

__all__ = ["CHECKPOINT_NAME", "FORMAT", "save_checkpoint", "load_checkpoint", "latest_checkpoint",
           "get_rng_state", "set_rng_state", "loader_generators", "DataStream"]

CHECKPOINT_NAME = "last.pt"
FORMAT = 1


# -- paths ----------------------------------------------------------------------------------------
def as_path(value: object, fn: str, arg: str, fix: str) -> Path:
    """``value`` as a :class:`~pathlib.Path`: a non-empty ``str`` or an ``os.PathLike`` of one (an
    int, None or bytes raised a TypeError deep in pathlib; ``""`` silently meant the current folder)."""
    text = os.fspath(value) if isinstance(value, (str, os.PathLike)) else None
    if not isinstance(text, str) or text == "":
        raise fail(fn, arg, "a path (a non-empty str or pathlib.Path)", describe(value), fix)
    return Path(text)


#: errors that say the path cannot hold a file (raised as the path's InputError; others stay OSErrors)
_PATH_ERRNOS = {errno.ENOTDIR, errno.EEXIST, errno.EISDIR, errno.EACCES, errno.EPERM, errno.EROFS, errno.ENAMETOOLONG}


def os_reason(exc: OSError) -> str:
    """``"<ErrorClass>: <reason>"`` of an ``OSError``, for messages."""
    return f"{type(exc).__name__}: {exc.strerror or exc}"


# -- atomic files ------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    if os.name != "posix":  # pragma: no cover - directories cannot be opened on Windows
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def save_checkpoint(state: dict[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``state`` to ``path`` atomically: temp file in the same directory, fsync, ``os.replace``.

    If anything fails while writing, ``path`` keeps its previous content and the temporary
    file is removed. Returns ``path``.

    Raises:
        InputError: ``path`` is not a path, is a directory, or lies where no file can be created
            (under a file, or in a folder that cannot be written).
    """
    fn = "egl.train.save_checkpoint"
    path = as_path(path, fn, "path", "Pass the file to write, e.g. Path(checkpoint_dir) / 'last.pt'")
    if path.is_dir():
        raise fail(fn, "path", "a file path to write the checkpoint to", f"'{path}', a directory",
                   f"Pass a file in it, e.g. '{path / CHECKPOINT_NAME}'")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        if exc.errno not in _PATH_ERRNOS:  # a full disk, a quota, too many open files: not the path's fault
            raise
        raise fail(fn, "path", "a file in a folder that can be created and written", f"'{path}' ({os_reason(exc)})",
                   "Pass a path in a writable folder") from exc
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint` onto the CPU (``weights_only=True``).

    ``recipe.load_state_dict(ckpt["recipe"])`` then moves the weights to the recipe's device.
    """
    path = as_path(path, "egl.train.load_checkpoint", "path",
                   "Pass checkpoint_dir / 'last.pt' of a run that saved checkpoints")
    if not path.is_file():
        raise fail("egl.train.load_checkpoint", "path", "an existing checkpoint file", repr(str(path)),
                   "Pass checkpoint_dir / 'last.pt' of a run that saved checkpoints")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a truncated, foreign or corrupt file: name it
        raise fail("egl.train.load_checkpoint", "path", "a checkpoint written by egl (torch.save, weights only)",
                   f"'{path}', which torch.load could not read ({type(exc).__name__}: {str(exc)[:120]})",
                   "Delete the file (a run resumes from the previous one or starts afresh), or point at "
                   "another checkpoint") from exc


def latest_checkpoint(checkpoint_dir: str | os.PathLike[str]) -> Path | None:
    """``checkpoint_dir / "last.pt"`` if it exists, else None."""
    path = as_path(checkpoint_dir, "egl.train.latest_checkpoint", "checkpoint_dir",
                   "Pass the checkpoint_dir of a run") / CHECKPOINT_NAME
    return path if path.is_file() else None


def _samplers(loader: Any) -> list[Any]:
    """A ``DataLoader``'s sampler and batch sampler (and the latter's sampler), each once."""
    found: dict[int, Any] = {}
    batch_sampler = getattr(loader, "batch_sampler", None)
    for obj in (getattr(loader, "sampler", None), batch_sampler, getattr(batch_sampler, "sampler", None)):
        if obj is not None:
            found.setdefault(id(obj), obj)
    return list(found.values())


# -- RNG states --------------------------------------------------------------------------------
def loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a loader draws its order from (``generator=`` arguments)."""
    found: dict[int, torch.Generator] = {}
    for obj in [loader, *_samplers(loader)]:
        g = getattr(obj, "generator", None)
        if isinstance(g, torch.Generator) and g.device.type == "cpu":
            found.setdefault(id(g), g)
    return list(found.values())


def get_rng_state(device: torch.device | None = None,
                  generators: Iterable[torch.Generator] = ()) -> dict[str, Any]:
    """Every RNG state a training step may draw from, as tensors and plain Python values.

    Args:
        device: a CUDA device whose generator to include (others are left alone, so that
            no CUDA context is created on GPUs this process does not use).
        generators: extra generators (a loader's ``generator=``).
    """
    state: dict[str, Any] = {"python": random.getstate(), "torch": torch.get_rng_state(),
                             "generators": [g.get_state() for g in generators]}
    try:
        import numpy as np

        name, keys, pos, has_gauss, gauss = np.random.get_state()
        state["numpy"] = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                          "has_gauss": int(has_gauss), "gauss": float(gauss)}
    except ImportError:  # pragma: no cover
        pass
    if device is not None and device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device | None = None,
                  generators: Iterable[torch.Generator] = ()) -> None:
    """Restore states captured by :func:`get_rng_state` (same device and generators)."""
    random.setstate(state["python"])
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, state["generators"]):
        g.set_state(s)
    if "numpy" in state:
        import numpy as np

        n = state["numpy"]
        np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    if "cuda" in state and device is not None and device.type == "cuda":
        torch.cuda.set_rng_state(state["cuda"], device)


# -- data order ---------------------------------------------------------------------------------
def check_loader(loader: object) -> None:
    """``loader`` can be iterated (``iter()`` takes an ``Iterable`` or a sequence by ``__getitem__``)."""
    if not (isinstance(loader, Iterable) or hasattr(type(loader), "__getitem__")):  # (a TypeError at a batch)
        raise fail("egl.train.fit", "loader", "an iterable of batches (a DataLoader, or a list of (images, "
                   "labels))", describe(loader),
                   "Pass e.g. DataLoader(dataset, batch_size=32, shuffle=True, drop_last=True)")


class DataStream:
    """Cycle over ``loader`` epoch after epoch, remembering enough to replay its order.

    Args:
        loader: any re-iterable (``DataLoader``, list of batches...).
        device: the training device (its CUDA RNG is part of the epoch-start state).
    """

    def __init__(self, loader: Iterable[Any], device: torch.device | None = None) -> None:
        check_loader(loader)
        if isinstance(loader, Iterator):  # a generator or iterator: its second epoch would be empty (no iter()
            # here: a DataLoader's iterator draws a seed from the RNG and may start workers)
            raise fail("egl.train.fit", "loader", "a re-iterable loader (a DataLoader, a list of batches)",
                       f"a one-shot iterator ({type(loader).__name__})",
                       "Pass the DataLoader itself, or list(...) of the batches; epochs start it again")
        self.loader = loader
        self.device = device
        self.generators = loader_generators(loader)
        self.epoch = 0
        self.batch = 0  # batches drawn in the current epoch
        self.epoch_rng: dict[str, Any] | None = None
        self._it: Iterator[Any] | None = None

    def _set_epoch(self) -> None:
        for obj in _samplers(self.loader):
            if callable(getattr(obj, "set_epoch", None)):
                obj.set_epoch(self.epoch)  # type: ignore[union-attr]

    def _start_epoch(self) -> None:
        self._set_epoch()
        self.epoch_rng = get_rng_state(self.device, self.generators)
        self.batch = 0
        self._it = iter(self.loader)

    def __iter__(self) -> "DataStream":
        return self

    def __next__(self) -> Any:
        while True:
            if self._it is None:
                self._start_epoch()
            assert self._it is not None
            try:
                item = next(self._it)
            except StopIteration:
                if self.batch == 0:
                    raise fail("egl.train.fit", "loader", "a loader that yields batches", "an empty loader",
                               "Check the dataset and batch size (drop_last with fewer samples than a batch?)")
                self.epoch += 1
                self._it = None
                continue
            self.batch += 1
            return item

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "batch", "epoch_rng"}``: where the stream is, and how its epoch began."""
        return {"epoch": self.epoch, "batch": self.batch, "epoch_rng": self.epoch_rng}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Rebuild the epoch's iterator and skip the consumed batches. Leaves the RNGs changed:
        restore the checkpoint's current RNG state afterwards."""
        self.epoch, self._it = int(state["epoch"]), None
        self.batch, self.epoch_rng = 0, state["epoch_rng"]
        if self.epoch_rng is None:
            return
        self._set_epoch()
        set_rng_state(self.epoch_rng, self.device, self.generators)
        self._it = iter(self.loader)
        for _ in range(int(state["batch"])):
            try:
                next(self._it)
            except StopIteration:
                raise fail("egl.train.fit", "loader", f"at least {state['batch']} batches per epoch, as when the "
                           "checkpoint was written", f"{self.batch}",
                           "Resume with the same dataset, batch size and sampler") from None
            self.batch += 1
