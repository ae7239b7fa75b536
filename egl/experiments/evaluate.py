"""Evaluate one classifier on one test set: accuracy, AUC, shortcut rate, and saliency metrics.

Saliency metrics (ERASER sufficiency/comprehensiveness, RISE deletion/insertion, sensitivity and the
parameter randomisation test when asked for, localisation against masks) use
Grad-CAM (or the ``explainer`` named) of the predicted class on the first ``explain_samples``
images of the set;
classification metrics use every image. The model is put in eval mode and restored.
"""

from __future__ import annotations

import math
from dataclasses import fields
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from egl._check import check_flag, check_int, check_positive, fail
from egl._transfer import upload
from egl.explainers.base import Explainer
from egl.explainers.grad_cam import in_grad_cam_family
from egl.metrics import (BackgroundSwapResult, accuracy, auc, deletion, faithfulness, insertion, localization,
                         parameter_randomization, sensitivity, shortcut_rate, worst_group_accuracy)
from egl.metrics import background_swap as swap_metric
from egl.metrics.background_swap import remove_objects
from egl.recipes.batch import as_batch
from egl.registry import create

__all__ = ["evaluate", "predict", "saliency_explainer", "eval_settings"]


def _collate_keys(batch: Any) -> tuple[Any, torch.Tensor | None]:
    shortcut = batch.get("shortcut") if isinstance(batch, dict) else None
    return as_batch(batch, "egl.experiments.evaluate"), shortcut


def predict(model: nn.Module, dataset: Dataset, *, batch_size: int = 256, device: str = "cpu") -> torch.Tensor:
    """Logits for every item of ``dataset`` (eval mode, no gradients)."""
    was = model.training
    model.eval()
    out = []
    try:
        with torch.no_grad():
            for batch in DataLoader(dataset, batch_size=batch_size, shuffle=False):
                out.append(model(upload(as_batch(batch).x, device)).float().cpu())
    finally:
        model.train(was)
    return torch.cat(out)


def evaluate(model: nn.Module, dataset: Dataset, *, batch_size: int = 256, explain_samples: int = 256,
             ks: tuple[float, ...] = (1, 5, 10, 20, 50), baseline: str = "zero", layer: str = "auto",
             device: str = "cpu", min_group_size: int = 10, explainer: str = "grad_cam",
             curve_steps: int = 0, explainer_kwargs: dict[str, Any] | None = None,
             sensitivity_samples: int = 0, sensitivity_radius: float = 0.02,
             randomization: bool = False, background_swap: bool = False,
             background_cache: dict[int, Any] | None = None) -> dict[str, float]:
    """All metrics of ``model`` on ``dataset`` as a flat dict of floats (NaN where undefined).

    ``explainer``: the registered explainer the saliency metrics read (default ``"grad_cam"``;
    ``layer`` configures the Grad-CAM family: ``"layer_cam"``, ``"grad_cam_plus_plus"``, ...).

    ``worst_group`` (where items carry ``shortcut`` labels): the worst accuracy over (class,
    background class) groups of at least ``min_group_size`` images (default 10: the synthetic
    test_id splits hold (class, background) groups of one or two images, which read 0 or 1 by
    chance); NaN when no group is that large.

    ``explainer_kwargs``: the explainer's own arguments (e.g. ``{"layer": "layer3"}``, or
    ``{"samples": 8, "flip": True}`` for ``"smoothed"``).

    ``curve_steps`` > 0 adds RISE ``deletion`` (zero baseline) and ``insertion`` (blur baseline,
    sigma 5 px or the image's side if smaller) areas with that many steps per curve (at most the
    image's pixel count) on the explained images: ``curve_steps + 1`` forward passes per image and
    curve, so off (0) by default.

    ``sensitivity_samples`` > 0 adds Yeh et al.'s ``max_sens`` and ``avg_sens`` (relative change of
    the maps under uniform noise of half-width ``sensitivity_radius``, :func:`egl.metrics.sensitivity`)
    over that many perturbations of each explained image: one explainer call per sample.

    ``randomization`` adds Adebayo et al.'s cascading parameter randomisation test on the explained
    images (:func:`egl.metrics.parameter_randomization`, ``layers="blocks"``): ``rand_top``, the mean
    Spearman correlation of the maps once the top block is random, and ``rand_all``, once every
    block is (lower is better: a map that stays the same does not read the model), over the images
    whose trained map is not constant; ``rand_dead``, the share of those whose map is constant once
    every block is random (a dead map scores 0, a pass for a reason other than change). One
    explainer call per block plus one, on a deep copy of the model, per batch of explained images.

    ``background_swap`` adds Xiao et al.'s background challenge on every image with an annotated
    mask (:func:`egl.metrics.background_swap`), in a pass of its own over the set in an order
    drawn from a generator seeded 0 (the donors are drawn within each batch of ``batch_size``,
    from the same generator: batches drawn at random from the whole set, whatever its order, and
    the same composites for every model of an experiment): ``bg_fg`` (accuracy on the object
    alone), ``bg_same`` / ``bg_rand`` (on a background of its class / of another class),
    ``bg_gap`` (their difference, over the images that have both), ``bg_follow`` (the share of
    ``bg_rand`` predictions that are the background's class) and ``bg_n`` (the images scored
    on ``bg_rand``). Three forward passes per image and one imputation of each image's
    background (0.04-0.13 s for a 224-px image on one CPU thread). ``background_cache``: a dict
    kept between calls on the same ``dataset`` (the experiments keep one per test split for all
    their models): the imputed backgrounds are made at the first call and reused by the later
    ones, kept on the CPU as the object pixels' values only (``C`` values a removed pixel, one
    byte a pixel; a batch whose images differ from the cached ones is imputed again)."""
    fn = "egl.experiments.evaluate"
    check_int(curve_steps, fn, "curve_steps", low=0,
              note="(RISE deletion/insertion steps per curve; 0: not measured)", fix="Pass e.g. curve_steps=100")
    check_int(sensitivity_samples, fn, "sensitivity_samples", low=0,
              note="(perturbations per image for max-sensitivity; 0: not measured)",
              fix="Pass e.g. sensitivity_samples=10")
    check_positive(sensitivity_radius, fn, "sensitivity_radius", allow_zero=False)
    check_flag(randomization, fn, "randomization")
    check_flag(background_swap, fn, "background_swap")
    cam = saliency_explainer(model, explainer, layer, explainer_kwargs)
    was = model.training
    model.eval()
    logits, labels, shortcuts = [], [], []
    curves: dict[str, list[torch.Tensor]] = {"deletion": [], "insertion": []}
    suff, comp, loc_rows = [], [], {"energy": [], "area": [], "pointing": [], "iou": []}
    sanity: dict[str, list[torch.Tensor]] = {"max_sens": [], "avg_sens": [], "rand_top": [], "rand_all": [],
                                             "rand_dead": []}
    explained = 0
    try:
        for raw in DataLoader(dataset, batch_size=batch_size, shuffle=False):
            batch, shortcut = _collate_keys(raw)
            x, y = upload(batch.x, device), batch.y
            with torch.no_grad():
                lg = model(x).float()
            logits.append(lg.cpu())
            labels.append(y)
            if shortcut is not None:
                shortcuts.append(shortcut)
            n = min(explain_samples - explained, x.shape[0])
            if n > 0:
                xe = x[:n]
                sal = cam(xe)  # predicted class
                f = faithfulness(model, xe, sal, ks=ks, baseline=baseline, batch_size=batch_size)
                suff.append(f.sufficiency_per_image.mean(1).cpu())
                comp.append(f.comprehensiveness_per_image.mean(1).cpu())
                if curve_steps > 0:
                    for name, curve in (("deletion", deletion), ("insertion", insertion)):
                        c = curve(model, xe, sal, steps=min(curve_steps, xe.shape[-2] * xe.shape[-1]),
                                  batch_size=batch_size, blur_sigma=min(5.0, max(xe.shape[-2:])))
                        curves[name].append(c.auc_per_image.cpu())
                if sensitivity_samples > 0:
                    sens = sensitivity(model, xe, cam, samples=sensitivity_samples, radius=sensitivity_radius)
                    sanity["max_sens"].append(sens.max[sens.valid])
                    sanity["avg_sens"].append(sens.mean[sens.valid])
                if randomization:
                    rand = parameter_randomization(
                        model, xe, lambda m: saliency_explainer(m, explainer, layer, explainer_kwargs))
                    alive = ~rand.trained_constant  # (a constant trained map has no ranking to keep)
                    sanity["rand_top"].append(rand.spearman[0][alive])
                    sanity["rand_all"].append(rand.spearman[-1][alive])
                    sanity["rand_dead"].append(rand.constant[-1][alive].float())
                if batch.mask is not None:
                    r = localization(sal, upload(batch.mask[:n], device))
                    for k in loc_rows:
                        loc_rows[k].append(getattr(r, k)[r.valid].cpu())
                explained += n
        swaps = _background_swaps(model, dataset, batch_size, device, background_cache) if background_swap else []
    finally:
        model.train(was)
    lg, yy = torch.cat(logits), torch.cat(labels)
    out: dict[str, float] = {"n": float(len(yy)), "acc": float(accuracy(lg, yy))}
    try:
        out["auc"] = float(auc(lg, yy, num_classes=lg.shape[1]))
    except ValueError:  # fewer than two classes present
        out["auc"] = math.nan
    if shortcuts:
        sc = torch.cat(shortcuts)
        keep = sc >= 0
        out["shortcut"] = float(shortcut_rate(lg[keep], sc[keep], yy[keep])) if bool(keep.any()) else math.nan
        # groups: (class, background class); a background of no class (negative) one group per class
        bg = sc.clamp(min=-1) + 1
        out["worst_group"] = float(worst_group_accuracy(lg, yy, yy * (lg.shape[1] + 1) + bg, min_group_size=min_group_size))
    if suff:
        out["suff"] = float(torch.cat(suff).mean())
        out["comp"] = float(torch.cat(comp).mean())
    for k, v in curves.items():
        if v:
            out[k] = float(torch.cat(v).mean())
    if swaps:
        swap = BackgroundSwapResult(*(torch.cat([getattr(r, f.name) for r in swaps])
                                      for f in fields(BackgroundSwapResult)))
        out.update(swap.means())
        out["bg_n"] = float(swap.valid_rand.sum())
    for k, v in [*sanity.items(), *loc_rows.items()]:
        if v:
            vals = torch.cat(v).float()
            out[k] = float(vals.mean()) if vals.numel() else math.nan
    return out


def _background_swaps(model: nn.Module, dataset: Dataset, batch_size: int, device: str,
                      cache: dict[int, Any] | None) -> list[BackgroundSwapResult]:
    """:func:`egl.metrics.background_swap` over ``dataset``'s images with an annotated mask, in batches
    drawn in a seeded random order (donors from anywhere in the set, the same for every model)."""
    order = torch.Generator().manual_seed(0)
    out = []
    for i, raw in enumerate(DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=order)):
        batch = as_batch(raw, "egl.experiments.evaluate")
        if batch.mask is None:
            return []
        keep = batch.annotated  # (an unannotated image's placeholder is no mask)
        x, y, mask = (batch.x, batch.y, batch.mask) if keep is None else (batch.x[keep], batch.y[keep],
                                                                         batch.mask[keep])
        if x.shape[0]:
            x, mask = upload(x, device), upload(mask, device)
            backgrounds = None if cache is None else _cached_backgrounds(cache, i, x, mask)
            out.append(swap_metric(model, x, upload(y, device), mask, generator=order, backgrounds=backgrounds))
    return out


def _cached_backgrounds(cache: dict[int, Any], key: int, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Batch ``key``'s backgrounds (:func:`egl.metrics.background_swap.remove_objects`), from ``cache``
    when its images and masks are the ones cached (same shapes and sums), else made and cached: the changed
    pixels (``B 1 H W`` bool) and their values, on the CPU."""
    fingerprint = (tuple(x.shape), x.dtype, float(x.double().sum()), tuple(mask.shape), float(mask.double().sum()))
    entry = cache.get(key)
    if entry is not None and entry[0] == fingerprint:
        changed, values = upload(entry[1], x.device), upload(entry[2], x.device)
        return x.masked_scatter(changed.expand_as(x), values)
    backgrounds = remove_objects(x, mask)
    changed = (backgrounds != x).any(1, keepdim=True)
    cache[key] = (fingerprint, changed.cpu(), backgrounds.masked_select(changed.expand_as(x)).cpu())
    return backgrounds


def eval_settings(e: dict[str, Any], device: str) -> dict[str, Any]:
    """:func:`evaluate`'s keyword arguments from an experiment config's ``eval`` section."""
    return {"batch_size": int(e["batch_size"]), "explain_samples": int(e["explain_samples"]), "ks": tuple(e["ks"]),
            "baseline": e["baseline"], "device": device, "min_group_size": int(e.get("min_group_size", 10)),
            "explainer": e.get("explainer", "grad_cam"), "curve_steps": int(e.get("curve_steps", 0)),
            "explainer_kwargs": dict(e.get("explainer_kwargs") or {}),
            "sensitivity_samples": int(e.get("sensitivity_samples", 0)),
            "sensitivity_radius": float(e.get("sensitivity_radius", 0.02)),
            "randomization": bool(e.get("randomization", False)),
            "background_swap": bool(e.get("background_swap", False))}


def saliency_explainer(model: nn.Module, name: str, layer: str = "auto",
                       kwargs: dict[str, Any] | None = None) -> Explainer:
    """The registered explainer ``name`` on ``model`` (``layer`` for the Grad-CAM family), built
    with ``kwargs`` (``eval.explainer_kwargs``: a ``layer`` there too; a wrapper such as
    ``"smoothed"`` passes it on to the explainer it wraps)."""
    kwargs = dict(kwargs or {})
    if layer != "auto" and "layer" in kwargs:
        raise fail("egl.experiments.evaluate", "layer", "one layer, as layer= or in the explainer's arguments",
                   f"layer={layer!r} and layer={kwargs['layer']!r}", "Give the layer once")
    if in_grad_cam_family(name, fn="egl.experiments.evaluate", arg="explainer"):
        layer = kwargs.pop("layer", layer)
        return create("explainer", name, model, layer, **kwargs)
    if layer != "auto":
        import inspect

        from egl.registry import get_component

        takes = inspect.signature(get_component("explainer", name)).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in takes.values()) and "layer" not in takes:
            raise fail("egl.experiments.evaluate", "layer", f"'auto' with explainer={name!r} (it takes no layer)",
                       repr(layer), "Leave layer out, or pick a Grad-CAM explainer such as 'grad_cam' or 'layer_cam'")
        kwargs["layer"] = layer  # (a wrapper such as "smoothed" passes it on to the explainer it wraps)
    return create("explainer", name, model, **kwargs)
