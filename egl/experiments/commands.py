"""The experiment commands of the ``egl`` CLI: ``train``, ``eval``, ``experiment``, ``explain``, ``sanity``,
``compare``, ``demo``."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import torch

from egl._check import fail

__all__ = ["add_commands", "PRESETS", "save_model", "load_model", "check_same_classes"]

PRESETS: dict[str, dict[str, Any]] = {
    # The paper's Table 2: ALIGN against its ablations.
    "ablation": {"methods": {
        "align": {"recipe": "align", "kwargs": {"warmup_steps": 50}},
        "align_wo_eg": {"recipe": "align", "kwargs": {"warmup_steps": 50, "align_weight": 0.0}},
        "align_m_gray": {"recipe": "align", "kwargs": {"warmup_steps": 50, "masker": "grayscale"}},
    }},
    # Alignment losses side by side, all from the data's ground-truth masks: the paper's BCE, and
    # the two that see negative evidence (weights chosen by measurement on the synthetic benchmark).
    "alignment": {"methods": {
        "erm": {"recipe": "erm"},
        **{f"gt_{loss}": {"recipe": "align", "kwargs": {"warmup_steps": 50, "masker": "ground_truth",
                                                        "alignment": loss, "align_weight": w, "regularizer": None}}
           for loss, w in (("bce", 1.0), ("energy_outside", 5.0), ("rrr", 1.0))}}},
    # Two kinds of extra supervision side by side: the data's masks (ALIGN's classifier phase with
    # energy_outside) against (class, shortcut) group labels (GroupDRO: with Sagawa et al.'s
    # adjustment, and with decoupled weight decay), beside ERM (docs/experiments.md, "Group labels").
    "groups": {"methods": {
        "erm": {"recipe": "erm"},
        "align_gt": {"recipe": "align", "kwargs": {"warmup_steps": 50, "masker": "ground_truth",
                                                   "alignment": "energy_outside", "align_weight": 5.0,
                                                   "regularizer": None}},
        "group_dro_adj": {"recipe": "group_dro", "kwargs": {"groups": "shortcut", "adjustment": 2.0}},
        "group_dro_adamw": {"recipe": "group_dro", "kwargs": {"groups": "shortcut", "optimizer": "adamw",
                                                              "weight_decay": 1.0}}}},
    # DomainBed's domain-invariance penalties on the pooled training domains, and SD (no labels), beside ERM
    # (docs/experiments.md, "Domain-invariance penalties"; schedules scaled to 300 steps).
    "invariance": {"train": {"domains": "all"}, "methods": {
        "erm": {"recipe": "erm"},
        "irm": {"recipe": "irm", "kwargs": {"anneal_steps": 50}},
        "vrex": {"recipe": "vrex", "kwargs": {"anneal_steps": 50}},
        "coral": {"recipe": "coral"},
        "mmd": {"recipe": "mmd"},
        "sd": {"recipe": "sd"}}},
    # Tables 1 and 3: every recipe, one run per training domain, tested on every split.
    "baselines": {"train": {"domains": "each"}, "methods": {
        name: {"recipe": name, "kwargs": {"align": {"warmup_steps": 50}, "irm": {"anneal_steps": 50}}.get(name, {})}
        for name in ("erm", "irm", "mixup", "sgt", "sgdrop", "dre", "align")}},  # schedules fit 300 steps
}


def _preset(name: str) -> dict[str, Any]:
    """A preset; the ablation gains the paper's m-SAM row when SAM weights are configured."""
    preset = json.loads(json.dumps(PRESETS[name]))
    if name == "ablation":
        if os.environ.get("EGL_SAM_WEIGHTS"):
            preset["methods"]["align_m_sam"] = {"recipe": "align", "kwargs": {"warmup_steps": 50, "masker": "sam"}}
        else:
            print("[egl] ablation: no m-SAM row (set EGL_SAM_WEIGHTS to a local SAM folder, see docs/components.md)")
    return preset


def _config(args: argparse.Namespace, base: dict[str, Any] | None = None) -> dict[str, Any]:
    from egl.experiments.config import DEFAULTS, load_config, merge

    start = base if base is not None else DEFAULTS
    if getattr(args, "preset", None):
        start = merge(start, _preset(args.preset))
    cfg = load_config(args.config, args.set, base=start)
    if getattr(args, "out", None):
        cfg["output"] = args.out
    if getattr(args, "no_progress", False):
        cfg["train"]["progress"] = False
    return cfg


def save_model(path: str | os.PathLike[str], model: torch.nn.Module, cfg: dict[str, Any], method: str,
               num_classes: int, domains: list[str] | None = None, classes: list[str] | None = None) -> None:
    """A self-describing checkpoint: architecture, kwargs, classes (their number and names), weights,
    config, and the domains it trained on (for ``egl eval``'s in-distribution flag)."""
    from egl.train.checkpoint import save_checkpoint

    save_checkpoint({"arch": cfg["model"]["arch"], "kwargs": cfg["model"].get("kwargs") or {},
                     "num_classes": num_classes, "classes": classes, "method": method,
                     "state_dict": model.state_dict(), "config": json.loads(json.dumps(cfg, default=str)),
                     "domains": domains}, path)


def check_same_classes(ckpt: dict[str, Any], classes: list[str], fn: str = "egl eval") -> None:
    """Refuse test data whose classes are not the ones the checkpoint's model was trained on (by
    name where the checkpoint records them, else by number): the labels would be read as other
    classes, or fall outside the model's outputs, and the accuracy would be silently wrong."""
    saved = ckpt.get("classes")
    indices = [str(k) for k in range(ckpt["num_classes"])]
    if list(classes) == indices[:len(classes)] and (saved is None or list(saved) == indices):
        return  # integer labels (a CSV's 0, 1, ...): a test table without the highest class indexes the same
    if (saved is not None and list(saved) != list(classes)) or len(classes) != ckpt["num_classes"]:
        trained = saved if saved is not None else f"{ckpt['num_classes']} classes"
        raise fail(fn, "data", f"test data with the classes the model was trained on {trained}",
                   f"the classes {classes[:10]}" + (" ..." if len(classes) > 10 else ""),
                   "Evaluate on data with the same classes (a class folder added to a domain, or removed, "
                   "changes every index after it)")


def load_model(path: str | os.PathLike[str], *, fn: str = "egl eval/explain",
               arg: str = "--checkpoint") -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the classifier saved by :func:`save_model` (no download), its config's input
    normalisation included; errors name ``fn``'s ``arg``."""
    import timm

    from egl.experiments.models import apply_normalize

    if not os.path.isfile(path):
        raise fail(fn, arg, "a model file written by `egl train`", repr(os.fspath(path)),
                   "Train one first: egl train --method erm --out runs/erm")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - an image, a truncated or foreign file: name it
        raise fail(fn, arg, "a model file written by `egl train`",
                   f"{os.fspath(path)!r}, which torch.load could not read ({type(exc).__name__})",
                   "Pass the model.pt that `egl train` wrote (images to explain come after it)") from exc
    if not isinstance(ckpt, dict) or "state_dict" not in ckpt or "arch" not in ckpt:
        raise fail(fn, arg, "a model file written by `egl train`",
                   f"a {type(ckpt).__name__} without 'arch'/'state_dict'", "Use the model.pt that `egl train` wrote")
    model = timm.create_model(ckpt["arch"], pretrained=False, num_classes=ckpt["num_classes"], **ckpt["kwargs"])
    model.load_state_dict(ckpt["state_dict"])
    model_cfg = (ckpt.get("config") or {}).get("model") or {}  # (not in the state dict; a file without the
    apply_normalize(model, {"normalize": "none", **model_cfg})  # key is older than it: no normalisation)
    return model.eval(), ckpt


def _one_run(source: Any, mode: Any) -> list[str]:
    """The domains ``egl train`` trains on: ``train.domains`` = ``all`` or a list of domains."""
    if mode in ("each", "loo"):
        raise fail("egl train", "train.domains", "'all' or a list of domains (egl train trains one model)",
                   repr(mode), f"Set --set train.domains=all or a list such as [{next(iter(source.train))}]; "
                   "`egl experiment` runs one model per domain")
    return next(iter(source.training_domains(mode).values()))


def _cmd_train(args: argparse.Namespace) -> int:
    from egl.experiments.models import check_model_builds
    from egl.experiments.runner import (check_balance, check_batch_size, check_recipes_build, check_selection,
                                        check_val_set, results_dir, train_method)
    from egl.experiments.sources import load_source

    from egl.experiments.sweep import expand

    cfg = _config(args)
    if args.method not in cfg["methods"] and "@" in args.method:  # a sweep's draw: its hyperparameters
        grid, _ = expand(cfg, selecting=False)
        if args.method in grid["methods"]:
            cfg = grid
    if args.method not in cfg["methods"]:
        swept = [m for m, spec in cfg["methods"].items() if spec.get("space")]
        draws = f"; or a draw <method>@<0..{int(cfg['sweep']['n']) - 1}> of {swept} (sweep.n)" if swept else ""
        raise fail("egl train", "--method", f"one of {list(cfg['methods'])} (from the config's methods){draws}",
                   repr(args.method), "Add it under methods: in the config, or pick an existing one")
    select, every = check_selection(cfg)  # every value (train.seeds: an int or a non-empty list), before the data
    source = load_source(cfg["data"])  # every setting checked before the folder is made
    domains = _one_run(source, cfg["train"].get("domains", "all"))
    train_set = next(iter(source.training_sets(domains).values()))
    val_set = source.validation_set(domains, held_out=cfg["train"].get("val_domains") == "held_out")
    seed = cfg["train"]["seeds"][0] if isinstance(cfg["train"]["seeds"], list) else cfg["train"]["seeds"]
    if select != "last" or every is not None:
        check_val_set(cfg, val_set, select)
    check_batch_size(cfg, {"+".join(domains): train_set})
    check_balance(cfg, {"+".join(domains): train_set})
    check_recipes_build(cfg, [args.method], check_model_builds(cfg["model"], source.num_classes, cfg["eval"]))
    out = results_dir(cfg, f"train-{args.method}")
    model = train_method(cfg, args.method, source, train_set, int(seed), out / "train.jsonl", val_set,
                         domains=domains).model
    save_model(out / "model.pt", model.cpu(), cfg, args.method, source.num_classes, domains, source.class_names)
    print(f"[egl] model written to {(out / 'model.pt').resolve()}")
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from egl.experiments.evaluate import eval_settings, evaluate
    from egl.experiments.sources import evaluation_source

    from egl.experiments.config import check_eval_values

    model, ckpt = load_model(args.checkpoint)
    cfg = _config(args, base=ckpt["config"])
    check_eval_values(cfg)  # train.device, eval.*: before the data is built
    from egl.experiments.models import check_explainer_builds

    check_explainer_builds(model, cfg["eval"])  # eval.explainer_kwargs too
    source = evaluation_source(cfg["data"])  # (test sets only: no training masks to make)
    check_same_classes(ckpt, source.class_names)
    # in distribution: a split of a domain the model trained on, in the data it trained on
    trained = ckpt["config"].get("data", {})
    same_data = all(trained.get(k) == cfg["data"].get(k) for k in ("name", "root", "synthetic"))
    trained_on = ckpt.get("domains") if same_data else []
    for split, ds in source.test_sets(args.split or None).items():
        e, device = cfg["eval"], cfg["train"].get("device", "cpu")  # the runner's evaluation settings
        metrics = evaluate(model.to(device), ds, **eval_settings(e, device))
        flag = {} if trained_on is None else {"in_distribution": source.in_distribution(split, trained_on)}
        print(json.dumps({"split": split, **flag, **{k: round(v, 4) for k, v in metrics.items()}}))
    return 0


def _cmd_experiment(args: argparse.Namespace) -> int:
    from egl.experiments.runner import run

    run(_config(args), args.preset or "experiment", resume=bool(args.resume))
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from egl.experiments.demo import DEMO
    from egl.experiments.runner import run

    run(_config(args, base=DEMO), "demo")
    return 0


def _read_image(path: str, size: int) -> torch.Tensor:
    """The image in [0, 1], resized as ``DomainFolder`` resizes (16-bit files keep their levels)."""
    import torch.nn.functional as F

    from egl.data.image_file import read_levels

    levels, full = read_levels(path, "RGB", "egl explain", "images")
    x = levels.float().div_(full)
    return F.interpolate(x[None], size=(size, size), mode="bilinear", align_corners=False,
                         antialias=True)[0].clamp_(0, 1)


def _parsed_kwargs(text: str) -> dict[str, Any]:
    """``--explainer-kwargs``: a YAML mapping of the explainer's arguments (``'{samples: 8}'``)."""
    import yaml

    from egl.experiments.config import _loader

    try:
        value = yaml.load(text, Loader=_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise fail("egl explain", "--explainer-kwargs", "a YAML mapping, e.g. '{samples: 8, flip: true}'",
                   repr(text)[:100] + f" ({type(exc).__name__})", "Quote the mapping for the shell") from exc
    if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
        raise fail("egl explain", "--explainer-kwargs", "a YAML mapping of argument names to values",
                   repr(text)[:100], "Pass e.g. --explainer-kwargs '{relu: false}'")
    return value


def _cmd_explain(args: argparse.Namespace) -> int:
    from egl.experiments.config import check_explainer
    from egl.experiments.evaluate import saliency_explainer
    from egl.experiments.figures import _to_pil, overlay

    check_explainer(args.explainer, "egl explain", "--explainer")  # before the checkpoint and images are read
    given = None if args.explainer_kwargs is None else _parsed_kwargs(args.explainer_kwargs)
    model, ckpt = load_model(args.checkpoint)
    kwargs = given if given is not None else _explainer_kwargs(args, ckpt)  # (else the checkpoint's, as egl sanity)
    if args.layer and given is None:
        kwargs.pop("layer", None)  # (--layer over the checkpoint's)
    explainer = saliency_explainer(model, args.explainer, args.layer or "auto", kwargs)  # (bad arguments named now)
    size = int(ckpt["config"]["data"].get("image_size", 64))
    x = torch.stack([_read_image(p, size) for p in args.images])
    with torch.no_grad():
        probs = model(x).softmax(1)
    target = None if args.target is None else args.target
    sal = explainer(x, target)
    suffix = "gradcam" if args.explainer == "grad_cam" else args.explainer
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    taken: set[str] = set()
    for i, path in enumerate(args.images):
        k = int(probs[i].argmax()) if target is None else int(target)
        name, n = f"{Path(path).stem}_{suffix}", 1
        while name in taken:  # a/cat.png and b/cat.png: cat_gradcam.png, cat_gradcam_2.png
            n += 1
            name = f"{Path(path).stem}_{suffix}_{n}"
        taken.add(name)
        dest = out / f"{name}.png"
        _to_pil(overlay(x[i], sal[i]), 4).save(dest)
        print(json.dumps({"image": path, "explained_class": k, "probability": round(float(probs[i, k]), 4),
                          "overlay": str(dest)}))
    return 0


def _sanity_images(args: argparse.Namespace, ckpt: dict[str, Any]) -> tuple[torch.Tensor, list[str]]:
    """The images to check: the files given, or the first ``--n`` of a test split of the
    checkpoint's data (``--split``, default the first)."""
    size = int(ckpt["config"]["data"].get("image_size", 64))
    if args.images:
        return torch.stack([_read_image(p, size) for p in args.images]), list(args.images)
    from egl.experiments.sources import evaluation_source

    source = evaluation_source(ckpt["config"]["data"])
    check_same_classes(ckpt, source.class_names, "egl sanity")  # (the folder may have changed since)
    if args.split is not None and args.split not in source.tests:
        raise fail("egl sanity", "--split", f"a test split of the checkpoint's data {list(source.tests)}",
                   repr(args.split), "Pass one of them, or leave --split out (the first)")
    split = args.split or next(iter(source.tests))
    ds = source.test_sets([split])[split]
    n = min(args.n or 8, len(ds))
    from torch.utils.data import DataLoader, Subset

    from egl.recipes.batch import as_batch

    x = as_batch(next(iter(DataLoader(Subset(ds, range(n)), batch_size=n)))).x
    return x.float(), [f"{split}[{i}]" for i in range(n)]


def _cmd_sanity(args: argparse.Namespace) -> int:
    from egl.experiments.config import check_explainer
    from egl.experiments.evaluate import saliency_explainer
    from egl.experiments.figures import randomization_figure
    from egl.metrics import parameter_randomization

    check_explainer(args.explainer, "egl sanity", "--explainer")  # before the checkpoint and images are read
    if args.n is not None and args.n < 1:
        raise fail("egl sanity", "--n", "an int >= 1 (images taken from the split)", repr(args.n), "Pass e.g. --n 8")
    if args.images and (args.split is not None or args.n is not None):
        given = "--split" if args.split is not None else "--n"
        raise fail("egl sanity", given, f"no {given} with image files (they choose images from a test split)",
                   f"{given} {args.split if args.split is not None else args.n} and {len(args.images)} file(s)",
                   f"Leave {given} out, or the files")
    if args.seed is not None and args.seed < 0:
        raise fail("egl sanity", "--seed", "an int >= 0", repr(args.seed), "Pass e.g. --seed 0")
    if args.against:
        given = next((f"--{k}" for k in ("order", "layers", "seed") if getattr(args, k) is not None), None)
        if given is not None:
            raise fail("egl sanity", given, f"no {given} with --against (the data randomisation test compares two "
                       "trained models: it re-initialises no layer)", f"{given} {getattr(args, given[2:])}",
                       f"Leave {given} out, or run the parameter randomisation test without --against")
    model, ckpt = load_model(args.checkpoint, fn="egl sanity")
    x, names = _sanity_images(args, ckpt)
    kwargs = _explainer_kwargs(args, ckpt)
    if args.against:
        return _maps_against(args, model, ckpt, x, names, kwargs)
    r = parameter_randomization(model, x, lambda m: saliency_explainer(m, args.explainer, kwargs=kwargs),
                                order=args.order or "cascading", layers=args.layers or "blocks",
                                seed=args.seed or 0, keep_maps=True, hog=args.hog)
    alive = ~r.trained_constant
    for i, layer in enumerate(r.layers):
        row = {"step": i, "layer": layer, "order": r.order}
        for key in ("spearman", "spearman_abs", "ssim", *(("hog",) if args.hog else ())):
            v = getattr(r, key)[i][alive]
            row[key] = round(float(v.mean()), 4) if v.numel() else None
        row["dead"] = round(float(r.constant[i][alive].float().mean()), 4) if bool(alive.any()) else None
        print(json.dumps(row))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    assert r.maps is not None  # (keep_maps=True)
    fig = randomization_figure(x, r.maps, r.layers, out / f"randomization_{r.order}.png", spearman=r.spearman)
    torch.save({"layers": r.layers, "order": r.order, "images": names, "spearman": r.spearman,
                "spearman_abs": r.spearman_abs, "ssim": r.ssim, "constant": r.constant,
                "trained_constant": r.trained_constant, "target": r.target,
                **({"hog": r.hog} if args.hog else {})}, out / f"randomization_{r.order}.pt")
    print(json.dumps({"images": len(names), "constant_trained_maps": int(r.trained_constant.sum()), "figure": fig}))
    return 0


def _explainer_kwargs(args: argparse.Namespace, ckpt: dict[str, Any]) -> dict[str, Any]:
    """The checkpoint's ``eval.explainer_kwargs`` when ``--explainer`` is its ``eval.explainer`` (so
    that ``egl sanity`` checks the maps ``egl eval`` scores), else none."""
    e = ckpt["config"].get("eval") or {}
    return dict(e.get("explainer_kwargs") or {}) if e.get("explainer", "grad_cam") == args.explainer else {}


def _run_names(a: str, b: str) -> tuple[str, str]:
    """Two model files' run names for file names: their folders' (``runs/permuted/model.pt``:
    ``permuted``; a file not named ``model.pt``: its stem too), with as many parent folders as
    tell them apart (``permuted_seed0`` and ``erm_seed0``)."""
    def parts(path: str) -> list[str]:
        p = Path(path).resolve()
        return [*p.parent.parts[1:], *([] if p.name == "model.pt" else [p.stem])] or ["model"]

    pa, pb = parts(a), parts(b)
    for k in range(1, max(len(pa), len(pb)) + 1):
        na, nb = "_".join(pa[-k:]), "_".join(pb[-k:])
        if na != nb:
            break
    clean = ("".join(c if c.isalnum() or c in "-_." else "_" for c in n) for n in (na, nb))
    return next(clean), next(clean)


def _maps_against(args: argparse.Namespace, model: torch.nn.Module, ckpt: dict[str, Any], x: torch.Tensor,
                  names: list[str], kwargs: dict[str, Any]) -> int:
    """Adebayo et al.'s data randomisation test: the maps of ``--checkpoint`` (trained on permuted
    labels) against those of ``--against`` (trained on the true ones), for the same images and
    classes (``--against``'s predictions)."""
    import warnings

    from egl.experiments.evaluate import saliency_explainer
    from egl.experiments.figures import randomization_figure
    from egl.metrics import map_similarity

    reference, ref_ckpt = load_model(args.against, fn="egl sanity", arg="--against")
    same = {k: (ckpt.get(k), ref_ckpt.get(k)) for k in ("arch", "kwargs", "num_classes")}
    data = {k: (ckpt["config"]["data"].get(k), ref_ckpt["config"]["data"].get(k))
            for k in ("name", "root", "image_size", "synthetic", "domains", "csv", "columns")}
    differ = {k: v for k, v in {**same, **data}.items() if v[0] != v[1]}
    if differ:
        key, (ours, theirs) = next(iter(differ.items()))
        raise fail("egl sanity", "--against", f"a model of --checkpoint's architecture and data ({key}={ours!r})",
                   f"{key}={theirs!r}", "Compare two models trained alike on the same data (one of them on "
                   "permuted labels: data.permute_labels)")
    if ckpt["config"]["data"].get("permute_labels") is None or ref_ckpt["config"]["data"].get("permute_labels") \
            is not None:
        warnings.warn("egl sanity --against: the data randomisation test compares a --checkpoint trained with "
                      "data.permute_labels against an --against model trained on the true labels; these two are "
                      "not that pair (the similarities are still computed)", stacklevel=2)
    with torch.no_grad():
        target = reference(x).argmax(1)
    ref_maps = saliency_explainer(reference, args.explainer, kwargs=kwargs)(x, target).detach()
    maps = saliency_explainer(model, args.explainer, kwargs=kwargs)(x, target).detach()
    if args.hog and min(ref_maps.shape[-2:]) < 24:
        raise fail("egl sanity", "--hog", "maps of at least 24 x 24 pixels (one HOG block)",
                   f"maps of {list(ref_maps.shape[-2:])}", "Leave --hog out for models of images this small")
    sim = map_similarity(ref_maps, maps, hog=args.hog)
    flat = ref_maps.flatten(1)
    alive = flat.amax(1) != flat.amin(1)
    row = {"against": str(args.against)}
    for key, v in sim.items():
        row[key] = round(float(v[alive].mean()), 4) if bool(alive.any()) else None
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    mine, theirs = _run_names(args.checkpoint, args.against)
    stem = f"{mine}_against_{theirs}"  # (one --out holds several pairs)
    fig = randomization_figure(x, torch.stack([ref_maps, maps]), [mine], out / f"{stem}.png",
                               spearman=sim["spearman"][None])
    torch.save({"images": names, "target": target, **sim}, out / f"{stem}.pt")
    print(json.dumps({**row, "images": len(names), "constant_reference_maps": int((~alive).sum()), "figure": fig}))
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from egl.experiments.compare import check_request, comparison_table, read_results

    rows = read_results(args.results, fn="egl compare", arg="results")
    metrics = list(dict.fromkeys(args.metric or ["acc"]))
    flagged = any("in_distribution" in r for r in rows)  # (rows of older egl: no in/out split)
    over = list(dict.fromkeys(args.over or (["id", "ood"] if flagged else ["all"])))
    base = check_request(rows, metrics, args.baseline, over, args.confidence, fn="egl compare", adjust=args.adjust,
                         arg=lambda name: "results" if name == "rows" else f"--{name}")  # (before any table)
    for metric in metrics:  # (x100, as the tables: percentage points)
        print(comparison_table(rows, metric, baseline=base, over=over, confidence=args.confidence, seed=args.seed,
                               adjust=args.adjust))
        print()
    return 0


def add_commands(sub: Any) -> None:
    """Register the experiment commands on the ``egl`` argument parser."""
    def common(p: argparse.ArgumentParser, *, presets: bool = False) -> None:
        p.add_argument("--config", help="YAML config file (see docs/experiments.md)")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set train.steps=100 (repeatable)")
        p.add_argument("--out", help="results folder (default: results/<kind>-<time>)")
        p.add_argument("--no-progress", action="store_true", help="no progress bars")
        if presets:
            p.add_argument("--preset", choices=sorted(PRESETS), help="start from a preset grid")

    p = sub.add_parser("demo", help="train ERM and ALIGN on the built-in benchmark and report (< 10 min on CPU)")
    common(p)
    p.set_defaults(func=_cmd_demo)
    p = sub.add_parser("experiment", help="train every method x training set x seed, evaluate, write tables")
    common(p, presets=True)
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run in --out: finished runs are kept, the others continue "
                        "from their checkpoints")
    p.set_defaults(func=_cmd_experiment)
    p = sub.add_parser("train", help="train one method of the config and save model.pt")
    common(p)
    p.add_argument("--method", required=True, help="a key of the config's methods (default config: erm, align), "
                   "or <method>@<draw> for a draw of its sweep (methods.<method>.space, sweep.n, sweep.seed)")
    p.set_defaults(func=_cmd_train)
    p = sub.add_parser("eval", help="evaluate a saved model on the config's test sets")
    p.add_argument("--checkpoint", required=True, help="the model.pt written by egl train or egl experiment")
    p.add_argument("--split", action="append", help="test set name (repeatable; default: all)")
    p.add_argument("--config", help="YAML config file merged over the checkpoint's config")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a value of the checkpoint's config, e.g. --set eval.batch_size=64 (repeatable)")
    p.set_defaults(func=_cmd_eval)
    p = sub.add_parser("explain", help="write saliency overlay PNGs (Grad-CAM, or --explainer) for images with a "
                       "saved model")
    p.add_argument("--checkpoint", required=True, help="the model.pt written by egl train or egl experiment")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--out", default="explanations", help="folder of the overlays (default explanations)")
    p.add_argument("--target", type=int, help="class to explain (default: the prediction)")
    p.add_argument("--explainer", default="grad_cam",
                   help="registered explainer (default grad_cam; e.g. layer_cam, grad_cam_plus_plus, input_gradient); "
                        "overlays are named <stem>_gradcam.png, or <stem>_<explainer>.png for another")
    p.add_argument("--layer", help="target layer of a Grad-CAM explainer (default: auto; e.g. layer3, "
                   "stages.2; needed by the architectures docs/backbones.md lists)")
    p.add_argument("--explainer-kwargs", help="the explainer's own arguments as a YAML mapping, e.g. "
                   "'{relu: false}' or, for smoothed, '{samples: 8, flip: true}' (default: the checkpoint's "
                   "eval.explainer_kwargs when --explainer is its eval.explainer)")
    p.set_defaults(func=_cmd_explain)
    p = sub.add_parser("sanity", help="Adebayo et al.'s parameter randomisation test of a saved model's maps: one "
                       "line per layer, and a figure")
    p.add_argument("--checkpoint", required=True, help="the model.pt written by egl train or egl experiment")
    p.add_argument("images", nargs="*", help="image files (default: the first --n images of a test split)")
    p.add_argument("--split", help="test split of the checkpoint's data (default: the first)")
    p.add_argument("--n", type=int, help="images taken from the split (default 8; not with image files)")
    p.add_argument("--explainer", default="grad_cam", help="registered explainer (default grad_cam)")
    p.add_argument("--order", choices=["cascading", "independent"],
                   help="default cascading (parameter randomisation only: an error with --against)")
    p.add_argument("--layers", choices=["blocks", "leaves"],
                   help="default blocks (parameter randomisation only: an error with --against)")
    p.add_argument("--seed", type=int, help="the re-initialisations' seed, default 0 (an error with --against)")
    p.add_argument("--hog", action="store_true", help="also the Pearson correlation of the maps' histograms of "
                   "oriented gradients (the paper's third similarity; maps of at least 24 x 24 pixels)")
    p.add_argument("--against", help="another model.pt (trained on the true labels): compare --checkpoint's maps "
                   "with its maps instead (the data randomisation test: --checkpoint trained with "
                   "data.permute_labels)")
    p.add_argument("--out", default="sanity", help="folder of the figure and the per-image scores (.pt)")
    p.set_defaults(func=_cmd_sanity)
    p = sub.add_parser("compare", help="paired differences of each method against a baseline, per training set and "
                       "seed: mean, confidence interval, paired t and sign-flip p-values")
    p.add_argument("results", nargs="+", help="results folders (or their results.jsonl); a method name found in "
                   "several is prefixed by its folder's name")
    p.add_argument("--metric", action="append", help="metric of the rows (repeatable; default acc)")
    p.add_argument("--baseline", help="method compared against (default: erm when present, else the first)")
    p.add_argument("--over", action="append", help="test splits averaged per pair: ood, id, all or a split's name "
                   "(repeatable; default id and ood, or all for rows that do not say which splits are in distribution)")
    p.add_argument("--confidence", type=float, default=0.95, help="of the interval (default 0.95)")
    p.add_argument("--seed", type=int, default=0, help="of the sampled sign-flip test (more than 16 pairs)")
    p.add_argument("--adjust", choices=("holm", "none"), default="holm",
                   help="p-values adjusted for comparing several methods with the baseline (Holm's step-down, "
                   "per metric and --over; default) or not (none)")
    p.set_defaults(func=_cmd_compare)
