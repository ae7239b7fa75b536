"""Run an experiment: train every method on every training set and seed, evaluate on every test set.

Writes into the results folder:

* ``results.jsonl`` -- a header (config, versions) then one row per (method, training set, seed, test split);
* ``tables.md`` -- accuracy per test split (the OOD matrix, paper Table 3; in-distribution cells
  in italics, each row's ID and OOD means), then Acc / AUC / Suff / Comp (+ localisation and
  shortcut rate where the data has them; Table 1) averaged over each row's in-distribution
  splits, and the same over its out-of-distribution splits;
* ``train/<method>-<train>-s<seed>.jsonl`` -- per-step training logs;
* ``checkpoints/<method>-<train>-s<seed>/last.pt`` -- each run's checkpoint, for ``--resume``
  (deleted once the run is evaluated, except the runs the figures need);
* ``case_study.png`` -- Grad-CAM of every method on the same images (Figure 4).
"""

from __future__ import annotations

import copy
import json
import os
import shlex
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

import egl
from egl.experiments.config import check_keys, check_values
from egl.experiments.evaluate import eval_settings, evaluate
from egl.experiments.figures import case_study
from egl.experiments.mask_quality import mask_quality
from egl.experiments.models import build_model, check_model_builds
from egl.experiments.sources import Source, load_source
from egl.experiments.tables import render_tables
from egl._check import check_int, fail
from egl.data.group_balance import group_balanced_sampler, item_groups
from egl.recipes.group_dro import GroupDRO
from egl.train.loop import seed_everything
from egl.train.run_state import versions as _versions
from egl.train.validation import SELECTS, Validation

__all__ = ["run", "train_method", "results_dir", "check_selection", "check_val_set", "check_batch_size",
           "check_balance"]


def results_dir(cfg: dict[str, Any], kind: str) -> Path:
    """The configured output folder, or ``results/<kind>-<YYYYmmdd-HHMMSS>``."""
    out = cfg.get("output") or os.path.join("results", f"{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def train_method(cfg: dict[str, Any], method: str, source: Source, train_set: Any, seed: int,
                 log_path: Path | None = None, val_set: Any = None, *,
                 checkpoint_dir: Path | None = None, resume: bool = False, domains: list[str] | None = None) -> Any:
    """Build the model, the method's recipe and a seeded loader; train ``train.steps`` steps.

    With ``val_set`` and ``train.select`` or ``train.val_every`` set, accuracy on ``val_set`` is
    measured during training (:class:`egl.train.Validation`) and, with ``train.select=acc``, the
    most accurate weights are kept; ``recipe.selected`` is then the selected measurement
    (``{"step", "acc", "loss"}``; None without validation). With
    ``checkpoint_dir`` the run checkpoints every ``train.checkpoint_every`` steps and, with
    ``resume``, continues from the checkpoint there.

    Returns:
        The trained recipe (``.model`` is the classifier).
    """
    mcfg = check_keys(cfg)["methods"][method]  # (each method: 'recipe' and optional 'kwargs')
    t = cfg["train"]
    seed_everything(seed)
    model = build_model(cfg["model"], source.num_classes).to(t.get("device", "cpu"))
    kwargs = {**train_defaults(t), **(mcfg.get("kwargs") or {})}
    recipe = egl.create("recipe", mcfg["recipe"], model, **kwargs).to(t.get("device", "cpu"))
    if isinstance(recipe, GroupDRO) and recipe.adjustment > 0:  # C / sqrt(n_g): the training set's group sizes
        recipe.set_group_sizes(train_set, num_classes=source.num_classes)
    _warn_if_a_schedule_never_starts(recipe, method, int(t["steps"]))
    _warn_if_domains_cannot_differ(recipe, method, domains)
    _warn_if_masks_are_not_read(recipe, method, cfg.get("data") or {})
    g = torch.Generator().manual_seed(seed)
    balance = cfg["data"].get("balance")
    sampler = None if balance is None else group_balanced_sampler(train_set, balance, generator=g)
    loader = DataLoader(train_set, batch_size=int(cfg["data"]["batch_size"]), shuffle=sampler is None,
                        sampler=sampler, drop_last=True, generator=g,
                        num_workers=int(cfg["data"].get("num_workers", 0)))
    validation = _validation(cfg, val_set)
    recipe.fit(loader, int(t["steps"]), seed=seed, log_path=log_path, progress=bool(t.get("progress", True)),
               device=t.get("device", "cpu"), precision=t.get("precision", "fp32"),
               loss_scale=t.get("loss_scale"), channels_last=t.get("channels_last", "auto"),
               validation=validation, checkpoint_dir=checkpoint_dir, resume=resume, lr_schedule=t.get("lr_schedule"),
               grad_clip=t.get("grad_clip"), ema=t.get("ema"),
               checkpoint_every=int(t.get("checkpoint_every", 500)))
    recipe.selected = validation.selected if validation is not None else None  # (not the kept weights' copy)
    return recipe


def check_recipes_build(cfg: dict[str, Any], methods: Sequence[str], model: nn.Module) -> None:
    """Build each of ``methods``' recipes (``methods.<name>.recipe`` with its ``kwargs`` and the
    train defaults) on a copy of ``model``, before any folder is made or run trained: an argument
    a recipe refuses (``align_weight=-1``, an unknown masker) is named now, not when the grid
    reaches that method. The recipes' warnings are left to the runs that build them again. Cost:
    one construction per distinct (recipe, kwargs): a SAM masker is loaded once more here."""
    t = cfg["train"]
    built: set[str] = set()
    for method in methods:
        mcfg = cfg["methods"][method]
        spec = json.dumps([mcfg["recipe"], mcfg.get("kwargs") or {}], sort_keys=True, default=repr)
        if spec in built:  # (a sweep's draws that share their settings: built once)
            continue
        built.add(spec)
        where = f"[egl.experiments: methods.{method}, recipe {mcfg['recipe']!r}; nothing was trained or written]"
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                egl.create("recipe", mcfg["recipe"], copy.deepcopy(model), **{**train_defaults(t),
                                                                              **(mcfg.get("kwargs") or {})})
        except egl.EGLError as err:  # (which config entry: methods.<method>.kwargs)
            raise type(err)(f"{err} {where}") from err
        except Exception as err:  # a plugin's own error type: kept, with the entry in a note
            err.add_note(where)
            raise


def train_defaults(t: dict[str, Any]) -> dict[str, Any]:
    """The recipe arguments every method takes from ``train`` unless its kwargs set them: ``lr``,
    and ``optimizer`` and ``weight_decay`` where they are set (not None)."""
    out: dict[str, Any] = {"lr": float(t["lr"])}
    out.update({k: t[k] for k in ("optimizer", "weight_decay") if t.get(k) is not None})
    return out


def _validation(cfg: dict[str, Any], val_set: Any) -> Validation | None:
    """The run's :class:`Validation`, or None when neither ``train.select=acc`` nor ``train.val_every`` asks."""
    select, every = check_selection(cfg)
    if select == "last" and every is None:
        return None
    check_val_set(cfg, val_set, select)
    loader = DataLoader(val_set, batch_size=int(cfg["eval"]["batch_size"]),
                        num_workers=int(cfg["data"].get("num_workers", 0)))
    return Validation(loader, every=every, select=select,
                      min_group_size=int(cfg["eval"].get("min_group_size", 10)))


def check_val_set(cfg: dict[str, Any], val_set: Any, select: str) -> None:
    """A run that validates has a non-empty validation set; with ``train.select=worst_group``, one
    whose items carry shortcut labels and hold a group of ``eval.min_group_size`` images (read
    without loading images: the failure came at the first measurement, in a made folder)."""
    if select == "worst_group" and val_set is not None and len(val_set) > 0:
        try:
            groups = item_groups(val_set, "shortcut")
        except egl.InputError as exc:
            raise fail("egl.experiments", "train.select", "validation data with shortcut labels for 'worst_group' "
                       "(its groups are (class, shortcut) pairs)", f"'worst_group' ({exc})",
                       "Use data whose items carry 'shortcut' (synthetic, csv with a shortcut column), or "
                       "train.select=acc") from exc
        largest = int(torch.bincount(groups).max())
        need = int(cfg.get("eval", {}).get("min_group_size", 10))
        if largest < need:
            raise fail("egl.experiments", "eval.min_group_size", "at most the size of some validation group "
                       "(train.select=worst_group leaves smaller groups out)",
                       f"{need}; the largest validation group has {largest} images",
                       f"Set eval.min_group_size={largest} or lower")
    if val_set is None or len(val_set) == 0:
        key = "train.select" if select != "last" else "train.val_every"
        held_out = cfg["train"].get("val_domains", "train") == "held_out"
        raise fail("egl.experiments", key, "a run with a validation split",
                   "none for this run" + (" (train.val_domains=held_out: no domain outside the run's training "
                                          "domains has validation images)" if held_out else " (empty or absent)"),
                   "Train on fewer domains (egl experiment: train.domains=each or loo; egl train: a list such as "
                   "train.domains=[domain0])" if held_out else
                   "Use train.select=last and leave train.val_every unset, or give the data a validation split")


def check_balance(cfg: dict[str, Any], train_sets: dict[str, Any]) -> None:
    """``data.balance`` names a grouping every run's training items carry (``"shortcut"`` on folder
    data, which has none, failed when the first run built its loader, in a made folder)."""
    by = cfg["data"].get("balance")
    if by is None:
        return
    for name, ds in train_sets.items():
        try:
            item_groups(ds, by)
        except egl.InputError as exc:
            raise fail("egl.experiments", "data.balance", "a grouping the training items carry",
                       f"{by!r} for run '{name}' ({exc})", "Set data.balance=class or domain, or leave it out") from exc


def check_batch_size(cfg: dict[str, Any], train_sets: dict[str, Any]) -> None:
    """Every run's training set holds at least ``data.batch_size`` images: the loader drops the last
    incomplete batch, so a smaller set gives no batch at all (fit refused its empty loader only when
    the first run started, in a made folder)."""
    batch = cfg["data"]["batch_size"]
    name, n = min(((k, len(v)) for k, v in train_sets.items()), key=lambda kv: kv[1])
    if n >= batch:
        return
    runs = f"the training set of run '{name}'" + (" (the smallest)" if len(train_sets) > 1 else "")
    synthetic = cfg["data"].get("name", "synthetic") == "synthetic"
    more = " (e.g. data.synthetic.train_per_domain)" if synthetic else " (check data.root and data.domains)"
    raise fail("egl.experiments", "data.batch_size",
               f"at most the number of images in every run's training set (the loader drops the last incomplete "
               f"batch; {runs} has {n})", repr(batch),
               f"Set data.batch_size={n} or lower, or train on more images{more}" if n > 0
               else f"Give every run training images{more}")


def check_selection(cfg: dict[str, Any]) -> tuple[str, int | None]:
    """``train.select``, ``train.val_every``, ``train.val_domains``, ``train.checkpoint_every``,
    ``train.channels_last``, ``eval.min_group_size`` and the values
    :func:`~egl.experiments.config.check_values` checks, before any folder is made or step is run."""
    t = cfg["train"]
    check_values(cfg)
    select, every = t.get("select", "last"), t.get("val_every")
    if select not in SELECTS:
        raise fail("egl.experiments", "train.select", "'last', 'acc' or 'worst_group'", repr(select),
                   "Set train.select=acc to keep the weights most accurate on the validation split (worst_group: "
                   "those with the best worst-group accuracy there)")
    check_int(every, "egl.experiments", "train.val_every", low=1, or_none=True, note="(null: 10 evaluations a run)",
              fix="Set e.g. train.val_every=50")
    if t.get("val_domains", "train") not in ("train", "held_out"):
        raise fail("egl.experiments", "train.val_domains", "'train' or 'held_out'", repr(t.get("val_domains")),
                   "Set train.val_domains=train (training-domain validation) or held_out (the oracle)")
    check_int(cfg.get("eval", {}).get("min_group_size", 10), "egl.experiments", "eval.min_group_size", low=1,
              note="(images a group needs to count)", fix="Set e.g. eval.min_group_size=10")
    if t.get("val_domains", "train") == "held_out" and select == "last" and every is None:
        raise fail("egl.experiments", "train.val_domains", "'train' unless the run validates", "'held_out' with "
                   "train.select=last and no train.val_every (nothing is measured)",
                   "Set train.select=acc or train.val_every=N, or leave train.val_domains out")
    if select != "last" and cfg.get("data", {}).get("permute_labels") is not None:
        warnings.warn(f"egl.experiments: train.select={select!r} with data.permute_labels: the step is chosen by "
                      "the validation split's true labels, which leaks them into the model trained on permuted "
                      "ones; set train.select=last for the data randomisation test", stacklevel=2)
    check_int(t.get("checkpoint_every", 500), "egl.experiments", "train.checkpoint_every", low=1,
              note="(steps between a run's checkpoints)", fix="Set e.g. train.checkpoint_every=500")
    cl = t.get("channels_last", "auto")
    if not (isinstance(cl, bool) or cl == "auto"):  # (1 == True: a number is refused too)
        raise fail("egl.experiments", "train.channels_last", "true, false or auto", repr(cl),
                   "Set train.channels_last=auto (channels-last for bf16/fp16 on CUDA), true or false")
    return select, every


#: Recipe attributes that start a second stage of training at a step, and what is lost without it.
_SCHEDULES = {"warmup_steps": "the masker and the alignment term never join (the run is ERM + regularizer)",
              "anneal_steps": "the penalty never reaches penalty_weight (the run is ERM + 1 x penalty)"}


def _warn_if_a_schedule_never_starts(recipe: Any, method: str, steps: int) -> None:
    """A run shorter than the recipe's warm-up or annealing step silently trains another method."""
    for attr, lost in _SCHEDULES.items():
        at = getattr(recipe, attr, None)
        if attr == "warmup_steps" and getattr(recipe, "align_weight", None) == 0:
            continue  # (no alignment term and no masker phase: the warm-up changes nothing)
        if attr == "warmup_steps" and not getattr(getattr(recipe, "masker", None), "trainable", True):
            lost = "the alignment term never joins (the run is ERM + regularizer)"
        if isinstance(at, int) and not isinstance(at, bool) and steps > 0 and at >= steps:
            warnings.warn(f"egl.experiments: method '{method}' has {attr}={at} but the run has train.steps={steps}: "
                          f"{lost}. Set methods.{method}.kwargs.{attr} below {steps}, or train longer.",
                          UserWarning, stacklevel=3)


def _compares_domains(recipe: Any) -> bool:
    """Whether the recipe's extra term compares the batch's domains (none with a single domain):
    its ``compares_domains`` (a plugin's recipe says so too)."""
    return bool(getattr(recipe, "compares_domains", False))


def _warn_if_domains_cannot_differ(recipe: Any, method: str, domains: list[str] | None) -> None:
    """CORAL, MMD, V-REx and GroupDRO over domains trained on one domain: the run is ERM."""
    if domains is not None and len(domains) == 1 and _compares_domains(recipe):
        warnings.warn(f"egl.experiments: method '{method}' compares the training domains, but this run trains on one "
                      f"({domains[0]}): its penalty or reweighting has nothing to compare and the run is ERM. Train "
                      "on several domains (egl experiment: train.domains=all, or loo with three or more domains; "
                      "egl train: a list such as train.domains=[domain0, domain1]), or leave the method out.",
                      UserWarning, stacklevel=3)


def _warn_if_masks_are_not_read(recipe: Any, method: str, data: dict[str, Any]) -> None:
    """``data.mask_fraction < 1`` for a method that reads no masks (ERM, a learned masker's ALIGN)
    changes nothing for it: the grid's rows would look like a partial-annotation result."""
    fraction = data.get("mask_fraction", 1.0)
    if fraction < 1 and not getattr(recipe, "reads_masks", False):
        masker = getattr(recipe, "masker", None)
        what, fix = "", "Compare it with the methods that align to the data's masks (e.g. masker=ground_truth)"
        if masker is not None and not getattr(masker, "needs_mask", False):
            what = f" (its masker '{getattr(masker, 'name', type(masker).__name__)}' makes its own masks)"
        elif masker is not None:
            what = f" (align_weight={getattr(recipe, 'align_weight', None)!r}: it aligns to none)"
            fix = "Give it an align_weight > 0 to align to them"
        warnings.warn(f"egl.experiments: method '{method}' reads no masks from the data{what}: "
                      f"data.mask_fraction={fraction} changes nothing for it. {fix}, or leave data.mask_fraction out.",
                      UserWarning, stacklevel=3)


def _case_images(source: Source, n: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    name = "flipped" if "flipped" in source.tests else next(iter(source.tests))
    ds = source.tests[name]
    items = [ds[i] for i in range(min(n, len(ds)))]
    return torch.stack([it["image"] for it in items]), torch.stack([it["label"] for it in items])


def run(cfg: dict[str, Any], kind: str = "experiment", *, echo: bool = True,
        resume: bool = False) -> tuple[list[dict[str, Any]], Path]:
    """Run the grid described by ``cfg``; returns the result rows and the results folder.

    Every run checkpoints to ``checkpoints/<method>-<train>-s<seed>/`` every
    ``train.checkpoint_every`` steps; a run's checkpoint is deleted once it is evaluated, except
    for the runs whose models make the figures (the first seed's, on the first training set).
    With ``resume`` (``egl experiment --resume``; ``cfg["output"]`` names the folder) the rows
    of finished runs are kept and the other runs continue from their checkpoints, bit-exact
    (see :mod:`egl.experiments.resume`); a folder without results starts afresh.

    Methods with a ``space`` run as ``sweep.n`` draws each (:mod:`egl.experiments.sweep`); the
    returned rows and the tables are then those of the draw each method, training set and seed
    keeps (renamed to the method, with its ``draw``), ``results.jsonl`` holds every draw's rows
    and ``sweep.json`` the choices.
    """
    from egl.experiments.resume import previous_rows, write_log_start
    from egl.experiments.divergence import check_on_diverge, diverged_rows
    from egl.experiments.sweep import expand, keep_figure, select_draws
    from egl.recipes import NonFiniteLossError

    check_keys(cfg)
    grid, draws = expand(cfg)  # methods with a space become their draws, <method>@<draw>
    select, every = check_selection(cfg)  # every value (model.arch, train.device...), before the data is built
    if resume and not cfg.get("output"):
        raise fail("egl experiment", "--resume", "--out naming the results folder of the run to resume", "no --out",
                   "Pass --out DIR, the folder the interrupted run wrote to")
    source = load_source(cfg["data"])  # bad data settings fail before any folder is made
    t, e = cfg["train"], cfg["eval"]
    seeds = t["seeds"] if isinstance(t["seeds"], list) else [t["seeds"]]
    train_domains = source.training_domains(t.get("domains", "all"))
    train_sets = source.training_sets(t.get("domains", "all"))
    tests = source.test_sets(e.get("splits"))
    swap_caches: dict[str, dict[int, Any]] = {split: {} for split in tests}  # (every model: the same backgrounds)
    on_diverge = check_on_diverge(t.get("on_diverge", "stop"))
    if select != "last" or every is not None:  # every run has data to validate on, before anything is made
        for domains in train_domains.values():
            check_val_set(cfg, source.validation_set(domains, held_out=t.get("val_domains") == "held_out"), select)
    check_batch_size(cfg, train_sets)  # every run has a batch to train on
    check_balance(cfg, train_sets)
    model = check_model_builds(cfg["model"], source.num_classes, cfg["eval"])  # model.kwargs, .weights; explainer
    check_recipes_build(grid, list(grid["methods"]), model)  # every method's kwargs
    out = results_dir(cfg, kind)
    header = {"event": "start", "kind": kind, "config": cfg, "versions": _versions(), "time": time.time()}
    finished: dict[Any, list[dict[str, Any]]] = {}
    # without a results log there is nothing to resume: checkpoints left there may be of another config
    resume = resume and (out / "results.jsonl").is_file()
    if resume:
        header, finished = previous_rows(out / "results.jsonl", cfg, list(tests))
    rows: list[dict[str, Any]] = []
    keep: dict[str, nn.Module] = {}
    ranks: dict[str, tuple[float, int]] = {}  # of the draws in keep (one per method: keep_figure)
    (out / "train").mkdir(exist_ok=True)
    write_log_start(out / "results.jsonl", header, finished, list(tests))
    with open(out / "results.jsonl", "a", encoding="utf-8") as log:
        for seed in seeds:
            for train_name, train_set in train_sets.items():
                for method in grid["methods"]:
                    figures = seed == seeds[0] and train_name == next(iter(train_sets))
                    done = finished.get((method, train_name, seed))
                    # finished, and its model is not needed again (a diverged draw has none)
                    if done is not None and (not figures or any(r.get("diverged") for r in done)):
                        rows += done
                        continue
                    run_ = _Run(method, train_name, train_domains[train_name], seed,
                                out / "checkpoints" / f"{method}-{train_name}-s{seed}")
                    try:
                        recipe = _train_or_restore(grid, kind, source, run_, train_set, out, resume, echo)
                    except NonFiniteLossError as err:
                        if method not in draws and on_diverge == "stop":  # a method of its own stops the grid
                            raise NonFiniteLossError(f"{err} ({method} on {train_name}, seed {seed}; the grid "
                                                     f"stopped, train.on_diverge=stop). {_go_on(kind, out)}") from err
                        rows += diverged_rows(run_, source, list(tests), draws.get(method, {}), err, log, echo)
                        shutil.rmtree(run_.checkpoint_dir, ignore_errors=True)
                        continue
                    run_rows = done if done is not None else _evaluate_run(grid, source, run_, recipe, tests, log,
                                                                           draws.get(method, {}), swap_caches)
                    rows += run_rows
                    if figures:
                        keep_figure(keep, ranks, method, recipe.cpu(), run_rows)
                    else:
                        shutil.rmtree(run_.checkpoint_dir, ignore_errors=True)
    tables, rows, keep = select_draws(rows, keep, source, out) if draws else (render_tables(rows, source), rows, keep)
    if keep and e.get("mask_quality", True):
        first = train_domains[next(iter(train_sets))]
        split = next((s for s in tests if source.in_distribution(s, first)), next(iter(tests)))
        tables += "\n" + _mask_quality_table(keep, tests, split, cfg)
    (out / "tables.md").write_text(tables, encoding="utf-8")
    if keep:
        images, labels = _case_images(source)
        case_study({k: r.model for k, r in keep.items()}, images, labels, out / "case_study.png",
                   class_names=source.class_names)
    if echo:
        print(tables)
        print(f"[egl] results written to {out.resolve()}", flush=True)
    return rows, out


def _go_on(kind: str, out: Path) -> str:
    """How to record a diverged run and go on, for the command that ran ``kind``."""
    if kind == "demo":
        return ("egl demo does not resume: run its grid with egl experiment --set train.on_diverge=record "
                "(or a lower train.lr) to record the run as diverged and go on.")
    return (f"To record the run as diverged and go on, rerun the same command (the same --config, --preset and "
            f"--set options) with --resume --out {shlex.quote(str(out))} --set train.on_diverge=record.")


@dataclass
class _Run:
    """One run of the grid: a method on a training set with a seed, and where it checkpoints."""

    method: str
    train: str
    domains: list[str]
    seed: Any
    checkpoint_dir: Path

    @property
    def trained_file(self) -> Path:
        """Written when the run's training ends, before its evaluation (its training time)."""
        return self.checkpoint_dir / "trained.json"


def _train_or_restore(cfg: dict[str, Any], kind: str, source: Source, run_: _Run, train_set: Any, out: Path,
                      resume: bool, echo: bool) -> Any:
    """Train the run, continue it from its checkpoint, or (trained before) restore its final state;
    records the training time of a run trained here."""
    t = cfg["train"]
    if echo:
        doing = ("restoring" if resume and run_.trained_file.is_file() else
                 "resuming" if resume and (run_.checkpoint_dir / "last.pt").is_file() else "training")
        print(f"[egl] {kind}: {doing} {run_.method} on {run_.train}, seed {run_.seed} ({t['steps']} steps)",
              flush=True)
    started = time.time()
    with warnings.catch_warnings():  # a trained run's checkpoint is at its last step
        if resume:
            warnings.filterwarnings("ignore", message=".*nothing is trained")
        recipe = train_method(cfg, run_.method, source, train_set, run_.seed,
                              out / "train" / f"{run_.method}-{run_.train}-s{run_.seed}.jsonl",
                              source.validation_set(run_.domains, held_out=t.get("val_domains") == "held_out"),
                              checkpoint_dir=run_.checkpoint_dir, resume=resume, domains=run_.domains)
    if not (resume and run_.trained_file.is_file()):
        run_.trained_file.parent.mkdir(parents=True, exist_ok=True)
        seconds = _checkpoint_seconds(run_.checkpoint_dir / "last.pt")
        run_.trained_file.write_text(json.dumps({"train_seconds": time.time() - started if seconds is None
                                                 else seconds}))
    return recipe


def _checkpoint_seconds(path: Path) -> float | None:
    """The training seconds a run's last checkpoint records (summed over the calls that resumed
    it; None from checkpoints of older egl versions). Read memory-mapped: the weights stay on disk."""
    if not path.is_file():
        return None
    seconds = torch.load(path, map_location="cpu", weights_only=True, mmap=True).get("train_seconds")
    return None if seconds is None else float(seconds)


def _evaluate_run(cfg: dict[str, Any], source: Source, run_: _Run, recipe: Any, tests: dict[str, Any],
                  log: Any, extra: dict[str, Any], swap_caches: dict[str, dict[int, Any]]) -> list[dict[str, Any]]:
    """One result row per test split (with ``extra``: a draw's ``sweep_of`` and ``hparams``),
    each written to ``log`` as soon as it is measured (``swap_caches``: the background swap's
    backgrounds per split, kept for the experiment's later models)."""
    t, e = cfg["train"], cfg["eval"]
    train_s = float(json.loads(run_.trained_file.read_text())["train_seconds"])
    chosen = recipe.selected
    selected = {} if chosen is None else {"selected_step": chosen["step"], "val_acc": chosen["acc"]}
    if chosen is not None and "worst_group" in chosen:
        selected["val_worst_group"] = chosen["worst_group"]
    rows = []
    for split, ds in tests.items():
        metrics = evaluate(recipe.model, ds, **eval_settings(e, t.get("device", "cpu")),
                           background_cache=swap_caches[split])
        row = {"method": run_.method, "train": run_.train, "seed": run_.seed, "split": split,
               "explainer": e.get("explainer", "grad_cam"),
               "in_distribution": source.in_distribution(split, run_.domains),
               "train_seconds": round(train_s, 1), **extra, **selected, **metrics}
        rows.append(row)
        log.write(json.dumps(row) + "\n")
        log.flush()
    return rows


def _mask_quality_table(recipes: dict[str, Any], tests: dict[str, Any], split: str, cfg: dict[str, Any]) -> str:
    """The paper's Figure 2 as a table: blur outside each masker's mask, accuracy of the first method's model
    on ``split`` (the first test split in distribution for the run the recipes come from)."""
    from egl.maskers.base import Masker
    from egl.registry import create

    ref_name, ref = next(iter(recipes.items()))
    has_masks = "mask" in tests[split][0]
    maskers: dict[str, Masker] = {"grayscale": create("masker", "grayscale")}
    if has_masks:
        maskers["ground_truth"] = create("masker", "ground_truth")
    for name, r in recipes.items():
        masker = getattr(r, "masker", None)
        if isinstance(masker, Masker) and masker.trainable:
            maskers[f"learned ({name})"] = masker
    res = mask_quality(ref.model, tests[split], maskers, batch_size=int(cfg["eval"]["batch_size"]))
    partial = "annotated" in tests[split][0]
    lines = [f"## Mask quality on {split}: accuracy of {ref_name} with the background outside each mask blurred"
             + (f" ({int(res['none']['images'])} annotated images)" if partial else ""),
             "", "| mask | Acc | Δ Acc | mask area |", "|---|---|---|---|",
             f"| none (original images) | {100 * res['none']['acc']:.1f} | – | – |"]
    for name in maskers:
        r = res[name]
        lines.append(f"| {name} | {100 * r['acc']:.1f} | {100 * r['delta']:+.1f} | {100 * r['mask_area']:.1f} |")
    return "\n".join(lines) + "\n"
