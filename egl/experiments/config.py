"""Experiment configuration: nested dicts with defaults, read from YAML, overridden by ``key.sub=value``.

Every value the paper leaves open is a key here, so a run's JSONL log records it.
"""

from __future__ import annotations

import copy
import math
import os
from typing import Any

from egl._check import check_choice, check_device, check_flag, check_int, fail

__all__ = ["DEFAULTS", "load_config", "apply_overrides", "merge", "check_keys", "check_values",
           "check_eval_values"]

#: Defaults of ``egl experiment`` and ``egl train``; ``egl demo`` starts from :data:`egl.experiments.demo.DEMO`.
DEFAULTS: dict[str, Any] = {
    "data": {
        "name": "synthetic",          # "synthetic" (built in), "folder" (DomainBed layout under data.root) or
                                      # "csv" (images listed in data.root/data.csv: egl.data.ImageCSV)
        "root": None,                 # folder / csv data: the data set's top folder
        "domains": None,              # folder data: domains to use (default: all)
        "image_size": 64,
        "batch_size": 64,
        "num_workers": 0,
        "csv": "metadata.csv",        # csv data: the table, relative to data.root
        "columns": None,              # csv data: "default", "waterbirds", or {role: header name} (ImageCSV)
        "mask_dir": None,             # csv data: masks at <root>/<mask_dir>/<image path>.png (Waterbirds: CUB's)
        "synthetic": {},              # SyntheticConfig fields, e.g. {train_per_domain: 500}
        "mask_fraction": 1.0,         # training images that keep their masks (the rest: annotated=False)
        "mask_seed": 0,               # which ones (egl.data.PartialMasks; the same for every training seed)
        "missing_masks": "raise",     # folder / csv data with masks for some images only: or "unannotated"
        "allow_missing_classes": False,  # folder data: a domain may lack some classes' folders
        "augment": "none",            # training images: "none", "flip", "domainbed" (DomainBed's), or a dict
                                      # of egl.data.Augment settings; masks are moved with their images
        "balance": None,              # training batches drawn group-balanced: "class", "domain", "domain_class"
                                      # or "shortcut" (egl.data.group_balanced_sampler); None: shuffled
        "masks_from": None,           # training masks made once by a frozen masker instead of the data's
                                      # ("grayscale", "sam" or {name:, kwargs:}: egl.data.MaskedBy, before
                                      # augmentation); test masks stay the data's
        "permute_labels": None,       # a seed: training labels permuted across the items (egl.data.PermutedLabels:
                                      # Adebayo et al.'s data randomisation test); None: the true labels
        "mask_noise": None,           # training masks degraded like cheap annotations: {box: true, dilate: px,
                                      # erode: px, shift: px, seed: 0} (egl.data.NoisyMasks, before augmentation)
    },
    "model": {
        "arch": "resnet10t",          # any timm architecture, created with random weights...
        "kwargs": {"output_stride": 16},  # ...at 64 px a stride-16 ResNet gives 4x4 saliency maps
        "weights": None,              # ...or a local checkpoint file (never downloaded)
        "normalize": "auto",          # (x - mean) / std in the model's stem: auto (timm's mean/std with
                                      # weights, none without), none, timm, imagenet or {mean: [...], std: [...]}
    },
    "train": {
        "steps": 300,
        "lr": 1e-3,                   # from scratch; DomainBed's 5e-5 is for pretrained backbones
        "optimizer": None,            # every method's (unless its kwargs set one): None: the recipes' own
                                      # (Adam); "adam", "adamw", "sgd" or {name: sgd, momentum: 0.9, ...}
        "weight_decay": None,         # every method's (unless its kwargs set one): None: the recipes' (0)
        "lr_schedule": None,          # None / "none": constant (DomainBed's, ALIGN's); "cosine", "linear", or
                                      # {shape: cosine, warmup: 100, final: 0.0} (egl.train.LRSchedule)
        "grad_clip": None,            # None: no clipping (DomainBed's, ALIGN's); a max gradient norm for every phase
        "ema": None,                  # None: no weight average (DomainBed's, ALIGN's); a decay such as 0.999
        "seeds": [0],
        "domains": "all",            # "all": pool the training domains; "each": one run per domain
        "device": "cpu",
        "precision": "fp32",          # or "bf16" (autocast), "fp16" (autocast + loss scaling)
        "loss_scale": None,           # fp16 only: LossScaler arguments, e.g. {init_scale: 1024}
        "channels_last": "auto",
        "select": "last",             # "last" (final weights) or "acc": the most accurate on the validation
        "val_every": None,            # ...splits, measured every val_every steps (None: 10 times a run);
                                      # "worst_group": the best worst-(class, shortcut)-group accuracy there
        "val_domains": "train",       # whose validation splits: "train" (the run's training domains) or "held_out"
                                      # (the others; with select=last, the accuracy DomainBed's oracle reads)
        "on_diverge": "stop",         # a run whose loss turns NaN: "stop" the grid, or "record" it (NaN rows) and go on
        "checkpoint_every": 500,      # each run's checkpoint (egl experiment --resume continues from it)
        "progress": True,
    },
    "methods": {
        "erm": {"recipe": "erm"},
        "align": {"recipe": "align", "kwargs": {"warmup_steps": 50}},
    },
    "sweep": {
        "n": 1,                       # draws of each method with a space (methods.<m>.space): draw 0 is its kwargs
        "seed": 0,                    # the draws' seed (DomainBed's hparams_seed)
    },
    "eval": {
        "splits": None,               # default: every test split of the data
        "batch_size": 256,
        "explain_samples": 256,       # images per split for saliency metrics (faithfulness, localisation)
        "ks": [1, 5, 10, 20, 50],
        "baseline": "zero",
        "curve_steps": 0,             # RISE deletion/insertion steps per curve (0: off; steps+1 passes each)
        "sensitivity_samples": 0,     # max-/avg-sensitivity: noisy copies per explained image (0: off)
        "sensitivity_radius": 0.02,   # ... half-width of the uniform noise, in the model's input space
        "randomization": False,       # Adebayo et al.'s cascading parameter randomisation test (rand_top, rand_all)
        "background_swap": False,     # objects on backgrounds of their class / another (bg_same, bg_rand, bg_gap...)
        "explainer": "grad_cam",      # saliency metrics' explainer: any registered name (layer_cam, input_gradient, ...)
        "explainer_kwargs": {},       # its arguments, e.g. {layer: layer3} or, for smoothed, {samples: 8, flip: true}
        "min_group_size": 10,         # worst-group accuracy: groups of fewer images are left out
        "mask_quality": True,         # the first method's accuracy with the background outside each mask blurred
    },
    "output": None,                   # results folder (default: results/<kind>-<time>)
}


def merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursive dict merge; ``update`` wins. ``methods`` is replaced, not merged, so a config lists
    exactly its methods."""
    out = copy.deepcopy(base)
    for k, v in update.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k != "methods":
            out[k] = merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def _loader() -> type:
    """PyYAML's safe loader, reading ``1e-3`` and ``5E+5`` as numbers (YAML 1.2) as well: the 1.1
    rules PyYAML follows need a dot (``1.0e-3``), so ``--set train.lr=1e-3`` was the string '1e-3'."""
    import re

    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver(
        "tag:yaml.org,2002:float",
        re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
        list("-+0123456789"))
    return Loader


def apply_overrides(cfg: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``key.sub=value`` strings; values are parsed as YAML (``3``, ``1e-3``, ``[0, 1]``, ``null``).

    ``methods.*.<key>=value`` sets ``<key>`` in every method that already has it (``--set
    methods.*.kwargs.warmup_steps=4`` shortens every preset method's warm-up at once; a method
    without the key is left alone, and none having it is an error)."""
    import yaml

    out = copy.deepcopy(cfg)
    for item in overrides:
        if "=" not in item:
            raise fail("egl.experiments.apply_overrides", "overrides", "items like 'train.steps=100'", repr(item),
                       "Write KEY=VALUE with a dotted key")
        key, raw = item.split("=", 1)
        if key.strip().startswith("methods.*."):
            _set_in_every_method(out, key.strip().split(".")[2:], yaml.load(raw, Loader=_loader()), item)  # noqa: S506
            continue
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            if not isinstance(node.get(p), dict):
                node[p] = {}
            node = node[p]
        node[parts[-1]] = yaml.load(raw, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    return out


def _set_in_every_method(cfg: dict[str, Any], parts: list[str], value: Any, item: str) -> None:
    """``methods.*.<parts>=value``: set in each method whose spec has ``parts`` already."""
    hit = 0
    for spec in (cfg.get("methods") or {}).values():
        node = spec
        for p in parts[:-1]:
            node = node.get(p) if isinstance(node, dict) else None
        if parts and isinstance(node, dict) and parts[-1] in node:
            node[parts[-1]] = copy.deepcopy(value)
            hit += 1
    if not hit:
        raise fail("egl.experiments.apply_overrides", "overrides", "a methods.*.<key> that some method sets",
                   f"{item!r}, which no method of {list(cfg.get('methods') or {})} has",
                   "Set it per method, e.g. methods.align.kwargs.warmup_steps=4")


def load_config(path: str | os.PathLike[str] | None = None, overrides: list[str] | None = None,
                base: dict[str, Any] | None = None) -> dict[str, Any]:
    """Defaults (or ``base``), then the YAML file at ``path``, then ``overrides``."""
    import yaml

    cfg = copy.deepcopy(base if base is not None else DEFAULTS)
    if path is not None:
        if not os.path.isfile(path):
            raise fail("egl.experiments.load_config", "path", "an existing YAML file", repr(os.fspath(path)),
                       "Check the --config path")
        with open(path, encoding="utf-8") as f:
            loaded = yaml.load(f, Loader=_loader()) or {}  # noqa: S506 - a SafeLoader subclass
        if not isinstance(loaded, dict):
            raise fail("egl.experiments.load_config", "path", "a YAML mapping at the top level",
                       type(loaded).__name__, "Write the config as key: value pairs")
        cfg = merge(cfg, loaded)
    return check_keys(apply_overrides(cfg, overrides or []))


#: Keys whose contents are free: arguments passed on to another function.
_OPEN = {("data", "synthetic"), ("model", "kwargs"), ("train", "loss_scale"), ("eval", "explainer_kwargs")}
_METHOD_KEYS = ("recipe", "kwargs", "space")


def check_keys(cfg: dict[str, Any], reference: dict[str, Any] | None = None) -> dict[str, Any]:
    """``cfg`` unless a key is not one of :data:`DEFAULTS`' (a misspelt ``train.step=5`` was
    silently ignored, the run took 300 steps): the error names the key and the closest one."""
    _check_level(cfg, DEFAULTS if reference is None else reference, ())
    for name, m in (cfg.get("methods") or {}).items():
        if not isinstance(m, dict) or "recipe" not in m or not set(m) <= set(_METHOD_KEYS):
            raise fail("egl.experiments.load_config", f"methods.{name}",
                       "a mapping with 'recipe' (a registered recipe name) and optionally 'kwargs' and 'space'",
                       repr(m)[:200], f"Write methods: {{{name}: {{recipe: erm, kwargs: {{...}}}}}}")
    return cfg


def _check_level(cfg: dict[str, Any], ref: dict[str, Any], path: tuple[str, ...]) -> None:
    import difflib

    for k, v in cfg.items():
        where = (*path, str(k))
        if where in _OPEN or where == ("methods",):
            continue
        if k not in ref:
            close = difflib.get_close_matches(str(k), [str(r) for r in ref], n=1)
            hint = f"Did you mean '{'.'.join((*path, close[0]))}'?" if close else "Remove it"
            raise fail("egl.experiments.load_config", ".".join(where),
                       f"a known key; at {'.'.join(path) or 'the top level'} these are {sorted(ref)}",
                       f"the unknown key '{k}'", f"{hint} (an unknown key would be silently ignored)")
        if isinstance(ref[k], dict) and not isinstance(v, dict):  # (--set data=abc)
            raise fail("egl.experiments.load_config", ".".join(where), f"a mapping of settings (keys {sorted(ref[k])})",
                       repr(v)[:100],
                       f"Set its settings one at a time, e.g. --set {'.'.join(where)}.{sorted(ref[k])[0]}=...")
        if isinstance(ref[k], dict) and isinstance(v, dict):
            _check_level(v, ref[k], where)


def check_values(cfg: dict[str, Any]) -> None:
    """The values a run reads as numbers, switches or names (``int("abc")``, ``int(1.9) == 1`` and
    ``bool("maybe")`` crashed deep in a run, or ran another one, after its folder was made):
    ``train.steps``, ``train.lr``, ``train.optimizer``, ``train.weight_decay``, ``train.seeds``, ``train.device``, ``train.precision``,
    ``train.progress``, ``train.lr_schedule``, ``train.grad_clip``, ``train.ema``, ``data.batch_size``,
    ``data.num_workers``, ``data.image_size``, ``data.augment``, ``eval.batch_size``, ``eval.explain_samples``,
    ``eval.ks``, ``eval.baseline`` and ``eval.mask_quality``;
    ``train.device`` names a device this machine has, and ``model.arch``, ``model.kwargs`` and
    ``model.weights`` are checked without building the model (:func:`~egl.experiments.models.check_model`).
    Runs after :func:`check_keys` and before the data set is built (folder data reads ``data.image_size``)."""
    from egl.data.augment import as_augment
    from egl.experiments.models import check_model
    from egl.train.ema import check_ema
    from egl.train.lr_schedule import LRSchedule

    fn = "egl.experiments"
    t, d = cfg["train"], cfg.get("data") or {}
    check_int(t.get("steps"), fn, "train.steps", low=1, fix="Set e.g. train.steps=300")
    lr = t.get("lr")
    if not (_is_number(lr) and math.isfinite(lr) and lr > 0):
        raise fail(fn, "train.lr", "a finite number > 0", repr(lr)[:100], "Set e.g. train.lr=1e-3")
    if t.get("optimizer") is not None:
        from egl.recipes.optimizer import check_optimizer

        check_optimizer(t["optimizer"], fn, "train.optimizer")
    wd = t.get("weight_decay")
    if wd is not None and not (_is_number(wd) and math.isfinite(wd) and wd >= 0):
        raise fail(fn, "train.weight_decay", "a finite number >= 0, or null (the recipes' own, 0)", repr(wd)[:100],
                   "Set e.g. train.weight_decay=0.01")
    if t.get("lr_schedule") not in (None, "none"):
        LRSchedule.parse(t["lr_schedule"], fn, "train.lr_schedule")
    check_ema(t.get("ema"), fn, "train.ema")
    clip = t.get("grad_clip")
    if clip is not None and not (_is_number(clip) and math.isfinite(clip) and clip > 0):
        raise fail(fn, "train.grad_clip", "a finite max gradient norm > 0, or null (no clipping)", repr(clip)[:100],
                   "Set e.g. train.grad_clip=1.0")
    _check_seeds(t.get("seeds"))
    check_choice(t.get("precision", "fp32"), ("fp32", "bf16", "fp16"), fn, "train.precision")
    check_flag(t.get("progress", True), fn, "train.progress")
    check_int(d.get("batch_size"), fn, "data.batch_size", low=1, note="(training images a step takes)",
              fix="Set e.g. data.batch_size=64")
    check_int(d.get("num_workers", 0), fn, "data.num_workers", low=0, note="(0: load in the main process)",
              fix="Set e.g. data.num_workers=0")
    check_int(d.get("image_size", 224), fn, "data.image_size", low=1, note="(the side images are resized to)",
              fix="Set e.g. data.image_size=64")
    if d.get("name", "synthetic") == "synthetic" and d.get("image_size", 64) != 64:  # (egl explain reads it)
        raise fail(fn, "data.image_size", "64 for the synthetic data (its images are drawn at 64 px)",
                   repr(d.get("image_size")), "Leave data.image_size out, or use data.name=folder")
    as_augment(d.get("augment"), fn, "data.augment")
    from egl.data.partial_masks import check_fraction

    check_fraction(d.get("mask_fraction", 1.0), fn, "data.mask_fraction")
    check_choice(d.get("missing_masks", "raise"), ("raise", "unannotated"), fn, "data.missing_masks")
    check_flag(d.get("allow_missing_classes", False), fn, "data.allow_missing_classes")
    name = d.get("name", "synthetic")
    unused = {"csv": ("csv", "columns", "mask_dir"), "folder": ("allow_missing_classes",)}
    for kind, keys in unused.items():  # (another data kind's setting was silently ignored)
        for key in keys:
            if name != kind and d.get(key) not in (None, DEFAULTS["data"][key]):
                raise fail(fn, f"data.{key}", f"its default with data.name={name!r} (it is read for "
                           f"data.name={kind} only)", repr(d.get(key))[:100],
                           f"Leave data.{key} out, or set data.name={kind}")
    from egl.data.group_balance import GROUPINGS

    check_choice(d.get("balance"), (None, *GROUPINGS), fn, "data.balance")
    check_masks_from(d.get("masks_from"), fn)
    from egl.data.noisy_masks import as_mask_noise

    as_mask_noise(d.get("mask_noise"), fn, "data.mask_noise")
    check_int(d.get("permute_labels"), fn, "data.permute_labels", low=0, or_none=True,
              note="(the seed of a permutation of the training labels; null: the true labels)",
              fix="Set e.g. data.permute_labels=0, or leave it out")
    check_int(d.get("mask_seed", 0), fn, "data.mask_seed", low=0, fix="Set e.g. data.mask_seed=0")
    check_eval_values(cfg)
    check_model(cfg.get("model"), fn)


def check_masks_from(spec: object, fn: str) -> tuple[str, dict[str, Any]] | None:
    """``data.masks_from`` as ``(masker name, kwargs)``: None, a registered masker's name, or
    ``{name: ..., kwargs: {...}}``; a masker that trains or reads the data's masks is refused."""
    if spec is None:
        return None
    name, kwargs = (spec, {}) if isinstance(spec, str) else (
        (spec.get("name"), spec.get("kwargs") or {}) if isinstance(spec, dict) else (None, None))
    extra = sorted(set(spec) - {"name", "kwargs"}) if isinstance(spec, dict) else []
    import egl

    names = [n for n in egl.list_components("masker") if n not in ("learned", "ground_truth")]
    if name not in names or not isinstance(kwargs, dict) or extra:
        raise fail(fn, "data.masks_from", f"null, a frozen masker's name among {names}, or {{name: ..., kwargs: "
                   "{...}}", repr(spec)[:200], "Set e.g. data.masks_from=grayscale, or data.masks_from={name: sam, "
                   "kwargs: {weights: /path/to/sam}} (the learned masker trains inside ALIGN: masker=learned)")
    return name, kwargs  # type: ignore[return-value]


def check_eval_values(cfg: dict[str, Any]) -> None:
    """What ``egl eval`` reads: ``train.device`` (a device this machine has) and the ``eval``
    section's values (part of :func:`check_values`; a raw torch or ``int()`` error before)."""
    from egl.metrics.faithfulness import BASELINES

    fn = "egl.experiments"
    e = cfg.get("eval") or {}
    _check_device(cfg["train"].get("device", "cpu"))
    check_int(e.get("batch_size"), fn, "eval.batch_size", low=1, fix="Set e.g. eval.batch_size=256")
    check_int(e.get("explain_samples"), fn, "eval.explain_samples", low=0, note="(0: no saliency metrics)",
              fix="Set e.g. eval.explain_samples=256")
    ks = e.get("ks")
    good = isinstance(ks, (list, tuple)) and len(ks) > 0 and all(_is_number(k) and 0 < k <= 100 for k in ks)
    if not good or len(set(ks)) != len(ks):
        raise fail(fn, "eval.ks", "a non-empty list of distinct percentages in (0, 100]", repr(ks)[:100],
                   "Set e.g. eval.ks=[1, 5, 10, 20, 50]")
    check_choice(e.get("baseline"), BASELINES, fn, "eval.baseline")
    check_int(e.get("curve_steps", 0), fn, "eval.curve_steps", low=0,
              note="(RISE deletion/insertion steps per curve; 0: not measured)", fix="Set e.g. eval.curve_steps=100")
    check_int(e.get("sensitivity_samples", 0), fn, "eval.sensitivity_samples", low=0,
              note="(noisy copies per explained image for max-sensitivity; 0: not measured)",
              fix="Set e.g. eval.sensitivity_samples=10")
    radius = e.get("sensitivity_radius", 0.02)
    if not (_is_number(radius) and 0 < radius < float("inf")):
        raise fail(fn, "eval.sensitivity_radius", "a finite number > 0", repr(radius)[:100],
                   "Set e.g. eval.sensitivity_radius=0.02")
    check_flag(e.get("randomization", False), fn, "eval.randomization")
    check_flag(e.get("background_swap", False), fn, "eval.background_swap")
    check_explainer(e.get("explainer", "grad_cam"), fn)
    kw = e.get("explainer_kwargs")
    kw = {} if kw is None else kw
    if not isinstance(kw, dict) or not all(isinstance(k, str) for k in kw):
        raise fail(fn, "eval.explainer_kwargs", "a mapping of the explainer's arguments", repr(kw)[:100],
                   "Set e.g. eval.explainer_kwargs={layer: layer3}")
    check_flag(e.get("mask_quality", True), fn, "eval.mask_quality")


def check_explainer(name: object, fn: str, arg: str = "eval.explainer") -> None:
    """``eval.explainer`` (or the CLI's ``--explainer``): a registered explainer's name (plugins'
    included); else the registry's error, naming ``arg`` with "did you mean" and the names there are."""
    from egl.registry import _lookup

    _lookup("explainer", name, fn, arg)


def _is_number(v: object) -> bool:
    """An int or float (a bool is not; NaN is, for the caller's range check to refuse)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_seeds(seeds: object) -> None:
    """``train.seeds``: one int >= 0 or a non-empty list of distinct ones (``[]`` ran nothing, ``[0, 0]``
    the same run twice into one checkpoint folder)."""
    items = seeds if isinstance(seeds, list) else [seeds]
    if not items or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < 2**64 for s in items):
        raise fail("egl.experiments", "train.seeds", "an int in [0, 2**64) or a non-empty list of them",
                   repr(seeds)[:100],
                   "Set e.g. train.seeds=[0, 1, 2]")
    if len(set(items)) != len(items):
        raise fail("egl.experiments", "train.seeds", "distinct seeds", repr(seeds)[:100],
                   "List each seed once, e.g. train.seeds=[0, 1, 2]")


def _check_device(device: object) -> None:
    """``train.device``: a device name ``torch.device`` reads, and one this machine has (``cuda`` without
    a GPU, or ``cuda:2`` with two, failed when the first run moved its model, in a made folder)."""
    check_device(device, "egl.experiments", "train.device", verb="Set", spell=lambda v: f"train.device={v}",
                 ints=False)  # (a bare index would be stored as "0", which resume reads as no CUDA device)
