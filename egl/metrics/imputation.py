"""Noisy linear imputation, the perturbation of ROAD (Rong et al., "A Consistent and Efficient
Evaluation Strategy for Attribution Methods", ICML 2022): removed pixels are filled from the
pixels kept around them, so that what is left of the image does not tell the model *where*
pixels were removed (the shape of a zeroed region leaks the class to the model, which a
perturbation metric then misreads as the removed pixels' importance).

Every removed pixel takes the weighted mean of its eight neighbours (weight 1/6 for the four
that share a side, 1/12 for the four diagonal ones; neighbours outside the image are left out
and the weights renormalised), all removed pixels at once: one sparse linear system per
image, solved exactly for all channels together, as the authors' code does (their
``NoisyLinearImputer``). Then Gaussian noise of standard deviation ``noise`` (0.01, theirs, in
the units of the image) is added to the filled pixels.

Choices where their code is silent or does otherwise:

* An image with every pixel removed has nothing to interpolate from (their system is singular
  there): it is filled with zeros, plus the noise.
* The noise comes from ``generator`` (a CPU generator; torch's global one when None), drawn on
  the CPU in float32: the same generator state gives the same images on every device.
* The systems are solved on the CPU with SciPy's sparse LU factorisation (SuperLU, symmetric
  mode), in float64, whatever the images' device and dtype, the images of a call side by side
  on ``torch.get_num_threads()`` threads, at most 8, each with one BLAS thread, once a call
  removes 20,000 pixels or more (SuperLU releases the GIL; a 224-px factorisation holds about
  40 MB); the result is copied back.
  ``benchmarks/road.py`` times it against the authors' imputer.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch
from torch import Tensor

from egl._check import check_finite, check_positive, check_shape, describe, fail
from egl._transfer import upload

__all__ = ["noisy_linear_imputation", "NEIGHBOUR_WEIGHTS"]

#: Most images solved at once (each factorisation of a 224-px image holds tens of MB).
MAX_WORKERS = 8
#: Fewer removed pixels in a call than this are solved on one thread (starting threads costs more).
PARALLEL_PIXELS = 20_000

#: ``((dy, dx), weight)`` of the eight neighbours of a pixel (ROAD's weights; they sum to 1).
NEIGHBOUR_WEIGHTS = (((-1, -1), 1 / 12), ((-1, 0), 1 / 6), ((-1, 1), 1 / 12), ((0, -1), 1 / 6),
                     ((0, 1), 1 / 6), ((1, -1), 1 / 12), ((1, 0), 1 / 6), ((1, 1), 1 / 12))


def noisy_linear_imputation(x: Tensor, keep: Tensor, *, noise: float = 0.01,
                            generator: torch.Generator | None = None) -> Tensor:
    """``x`` with the pixels where ``keep`` is False filled by ROAD's noisy linear imputation.

    Args:
        x: images.
        keep: True where a pixel stays (all channels), False where it is removed and filled.
        noise: standard deviation of the Gaussian noise added to the filled pixels (0.01,
            ROAD's; 0 for the plain linear imputation).
        generator: CPU generator of the noise (torch's global one when None).

    Returns:
        A new tensor like ``x``: kept pixels unchanged, removed ones filled.

    Shape:
        x: ``B C H W``; keep: ``B 1 H W`` or ``B H W`` (bool).

    Example:
        >>> import torch
        >>> x = torch.arange(9.0).view(1, 1, 3, 3)
        >>> keep = torch.ones(1, 1, 3, 3, dtype=torch.bool)
        >>> keep[0, 0, 1, 1] = False                       # remove the centre
        >>> float(noisy_linear_imputation(x, keep, noise=0.0)[0, 0, 1, 1])   # the mean of its neighbours
        4.0
    """
    fn = "egl.metrics.noisy_linear_imputation"
    x = check_shape(x, "B C H W", fn, "x")
    check_finite(x.detach(), fn, "x")
    k = _check_keep(keep, x, fn)
    noise = check_positive(noise, fn, "noise")
    if generator is not None and (not isinstance(generator, torch.Generator) or generator.device.type != "cpu"):
        raise fail(fn, "generator", "a CPU torch.Generator (the noise is drawn on the CPU)", describe(generator),
                   "Pass torch.Generator().manual_seed(0), or None")
    if x.shape[0] == 0:
        return x.detach().clone()
    field = None
    if noise > 0:
        field = noise * torch.randn(x.shape, generator=generator)
    with torch.no_grad():
        return _fill(x.detach(), k, field)


def _fill(x: Tensor, keep: Tensor, noise: Tensor | None) -> Tensor:
    """``x`` (``B C H W``) with the pixels where ``keep`` (``B H W``) is False solved for, plus
    ``noise`` (a CPU ``B C H W`` tensor, or None) there."""
    host = x.to("cpu", torch.float64).numpy()
    kept = keep.cpu().numpy()
    workers = min(host.shape[0], torch.get_num_threads(), MAX_WORKERS)
    if workers > 1 and (~kept).sum() >= PARALLEL_PIXELS:  # SuperLU releases the GIL: images side by side
        with _one_blas_thread(), ThreadPoolExecutor(workers) as pool:
            out = np.stack(list(pool.map(_impute_one, host, kept)))
    else:
        out = np.stack([_impute_one(host[i], kept[i]) for i in range(host.shape[0])])
    filled = torch.from_numpy(out)
    if noise is not None:
        filled = filled + noise.to(torch.float64) * torch.from_numpy(~kept)[:, None]
    return upload(filled, x.device, x.dtype)


def _one_blas_thread() -> Any:
    """SciPy's BLAS limited to one thread while the images' solves run on threads of their own
    (threadpoolctl, installed with scikit-learn; nothing when it is missing). The libraries are
    looked up once per process."""
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController
        except ImportError:  # pragma: no cover - scikit-learn brings it
            _BLAS.append(None)
        else:
            _BLAS.append(ThreadpoolController())
    controller = _BLAS[0]
    return contextlib.nullcontext() if controller is None else controller.limit(limits=1, user_api="blas")


_BLAS: list[Any] = []


def _check_keep(keep: object, x: Tensor, fn: str) -> Tensor:
    """``keep`` as a bool ``[B, H, W]`` tensor matching ``x``."""
    b, _, h, w = x.shape
    ok = isinstance(keep, Tensor) and keep.dtype == torch.bool
    ok = ok and (tuple(keep.shape) == (b, h, w) or tuple(keep.shape) == (b, 1, h, w))  # type: ignore[union-attr]
    if not ok:
        raise fail(fn, "keep", f"a bool tensor of shape [{b}, 1, {h}, {w}] or [{b}, {h}, {w}] (True: the pixel stays)",
                   describe(keep), "Pass e.g. saliency < threshold, one flag per pixel of x")
    return keep.reshape(b, h, w)  # type: ignore[union-attr]


def _impute_one(img: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """One ``C H W`` float64 image with its removed pixels (``keep`` False, ``H W``) solved for."""
    from scipy.sparse import csc_matrix
    from scipy.sparse.linalg import splu

    c, h, w = img.shape
    ys, xs = np.nonzero(~keep)
    n = ys.size
    out = img.copy()
    if n == 0:
        return out
    if n == h * w:  # nothing kept: nothing to interpolate from
        out[:] = 0.0
        return out
    index = np.full((h, w), -1, dtype=np.int64)
    index[ys, xs] = np.arange(n)
    diag = np.zeros(n)
    rhs = np.zeros((n, c))
    rows, cols, vals = [np.arange(n)], [np.arange(n)], []
    for (dy, dx), weight in NEIGHBOUR_WEIGHTS:
        ny, nx = ys + dy, xs + dx
        inside = (ny >= 0) & (ny < h) & (nx >= 0) & (nx < w)
        diag[inside] += weight  # the weights of the neighbours inside the image
        ny, nx = ny[inside], nx[inside]
        eq = np.nonzero(inside)[0]
        var = index[ny, nx]
        unknown = var >= 0
        rows.append(eq[unknown])
        cols.append(var[unknown])
        vals.append(np.full(int(unknown.sum()), -weight))
        known = ~unknown
        np.add.at(rhs, eq[known], weight * img[:, ny[known], nx[known]].T)
    a = csc_matrix((np.concatenate([diag, *vals]), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n))
    # The system is symmetric and diagonally dominant (positive definite once a pixel is kept):
    # no pivoting, a symmetric fill-reducing order (1.6-1.8x faster than SuperLU's default).
    lu = splu(a, permc_spec="MMD_AT_PLUS_A", diag_pivot_thresh=0.0, options={"SymmetricMode": True})
    solution = lu.solve(rhs)  # [n, C]
    out[:, ys, xs] = solution.T
    return out
