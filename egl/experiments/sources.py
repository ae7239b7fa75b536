"""Where an experiment's data comes from: the built-in synthetic benchmark, DomainBed folders, or a CSV table.

A :class:`Source` gives per-domain training sets and named test sets. For the synthetic
benchmark the test sets are ``test_id/<domain>`` (in distribution, per training domain)
and the out-of-distribution splits ``random``, ``flipped``, ``novel``; for folder data
they are the test split (20 %) of every domain, named by the domain; for CSV data
(:class:`egl.data.ImageCSV`, ``data.name=csv``) the table's test split of every domain, named
by the domain, or ``test`` for a table without domains.

``train.domains`` picks what one run trains on (:meth:`Source.training_domains`):

* ``"all"`` -- every domain pooled (one run);
* ``"each"`` -- one run per domain, tested on all (the paper's train-on-one protocol);
* ``"loo"`` -- leave one domain out: one run per domain, trained on the others pooled
  (DomainBed's protocol), named ``all-but-<domain>``;
* a list of domain names -- those pooled (one run), named ``A+B``.

``data.augment`` augments the training sets only (masks moved with their images,
:class:`egl.data.Augment`); validation and test sets are read as they are. ``data.mask_fraction``
< 1 keeps the masks of that share of each training domain's images (:class:`egl.data.PartialMasks`,
drawn with ``data.mask_seed``), and ``data.mask_noise`` degrades the training masks as cheap
annotations are (boxes, loose or tight outlines, offsets: :class:`egl.data.NoisyMasks`); validation
and test sets keep theirs. ``data.permute_labels: <seed>`` permutes each run's pooled training
labels (:class:`egl.data.PermutedLabels`, Adebayo et al.'s data randomisation test).

A test split is *in distribution* for a run when it is drawn from one of the run's training
domains (:meth:`Source.in_distribution`); the tables average the two kinds apart.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from egl._check import check_choice, check_int, fail
from egl.data.augment import Augmented, as_augment
from egl.data.masked_by import MaskedBy
from egl.data.noisy_masks import NoisyMasks, as_mask_noise
from egl.data.partial_masks import PartialMasks, check_fraction
from egl.data.permuted_labels import PermutedLabels

__all__ = ["Source", "TensorDictDataset", "load_source"]


class TensorDictDataset(Dataset):
    """A dataset over a dict of equally long tensors; items are dicts of rows."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        fn = "egl.experiments.TensorDictDataset"
        if not isinstance(tensors, dict) or not tensors or not all(isinstance(v, torch.Tensor) and v.dim() > 0
                                                                   for v in tensors.values()):
            raise fail(fn, "tensors", "a non-empty dict of tensors", repr(tensors)[:100],
                       "Pass e.g. {'image': images, 'label': labels}")
        lengths = {k: int(v.shape[0]) for k, v in tensors.items()}
        if len(set(lengths.values())) > 1:
            raise fail(fn, "tensors", "tensors of one length (one row per item)", f"lengths {lengths}",
                       "Give every key one row per item")
        self.tensors = tensors

    def __len__(self) -> int:
        return int(next(iter(self.tensors.values())).shape[0])

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {k: v[i] for k, v in self.tensors.items()}


def _select(tensors: dict[str, torch.Tensor], keep: torch.Tensor) -> TensorDictDataset:
    return TensorDictDataset({k: v[keep] for k, v in tensors.items()})


@dataclass
class Source:
    """Training domains and test sets of one data set."""

    name: str
    num_classes: int
    class_names: list[str]
    train: dict[str, Dataset]
    val: dict[str, Dataset]
    tests: dict[str, Dataset]
    #: The training domain each test split is drawn from (absent: a split of no training domain).
    split_domains: dict[str, str] = field(default_factory=dict)
    #: ``data.permute_labels``: the seed of the permutation of every run's pooled training labels.
    permute_labels: int | None = None

    def training_domains(self, mode: str | list[str]) -> dict[str, list[str]]:
        """The runs ``train.domains`` asks for: run name -> the domains it trains on (see the module doc)."""
        names = list(self.train)
        if isinstance(mode, (list, tuple)):
            unknown = [d for d in mode if d not in names]
            if not mode or unknown or len(set(mode)) != len(mode):
                raise fail("egl.experiments", "train.domains", f"'all', 'each', 'loo' or a list of distinct domains "
                           f"among {names}", repr(list(mode)),
                           f"Remove {unknown}" if unknown
                           else f"List each domain once, e.g. train.domains=[{names[0]}]")
            return {"+".join(mode): list(mode)}
        if mode not in ("all", "each", "loo"):
            raise fail("egl.experiments", "train.domains", f"'all', 'each', 'loo' or a list of domains among {names}",
                       repr(mode), f"Write one domain as a list: train.domains=[{mode}]" if mode in names
                       else "Pick 'all' (pooled), 'each' (one run per domain) or 'loo' (leave one domain out)")
        if mode == "all":
            return {"all": names}
        if mode == "each":
            return {d: [d] for d in names}
        if len(names) < 2:
            raise fail("egl.experiments", "train.domains", "at least two domains for 'loo' (leave one out)",
                       f"the domains {names}", "Use train.domains=all, or select more domains with data.domains")
        return {f"all-but-{d}": [o for o in names if o != d] for d in names}

    def training_sets(self, mode: str | list[str]) -> dict[str, Dataset]:
        """Run name -> its training set (the domains of :meth:`training_domains` pooled; with
        ``permute_labels``, its labels permuted across all of it, domains mixed, as Adebayo et al.
        permute a whole training set: a permutation within each domain would keep what the domain
        tells of the class)."""
        out: dict[str, Dataset] = {}
        for run, ds in self.training_domains(mode).items():
            pooled = self.train[ds[0]] if len(ds) == 1 else ConcatDataset([self.train[d] for d in ds])
            if self.permute_labels is not None:  # (salted: not the stream of data.mask_seed's draw)
                salt = zlib.crc32(f"permute_labels:{run}".encode("utf-8"))
                pooled = PermutedLabels(pooled, seed=(self.permute_labels * 7919 + salt) % 2**63)
            out[run] = pooled
        return out

    def validation_set(self, domains: list[str], *, held_out: bool = False) -> Dataset | None:
        """The validation splits of ``domains`` pooled (DomainBed's training-domain validation),
        or with ``held_out`` those of every other domain (DomainBed's test-domain validation,
        the "oracle"); None when there are none (a domain without a validation split adds none)."""
        domains = [d for d in self.val if d not in domains] if held_out else [d for d in domains if d in self.val]
        if not domains:
            return None
        return self.val[domains[0]] if len(domains) == 1 else ConcatDataset([self.val[d] for d in domains])

    def in_distribution(self, split: str, domains: list[str]) -> bool:
        """Whether test split ``split`` is drawn from one of ``domains`` (a run's training domains)."""
        return self.split_domains.get(split) in domains

    def test_sets(self, names: list[str] | None) -> dict[str, Dataset]:
        if names is None:
            return dict(self.tests)
        unknown = [n for n in names if n not in self.tests]
        if unknown:
            raise fail("egl.experiments", "eval.splits", f"names among {list(self.tests)}", repr(names),
                       f"Remove {unknown}")
        return {n: self.tests[n] for n in names}


def _synthetic_config(fields: dict[str, Any]) -> Any:
    import dataclasses

    from egl.data.synthetic import Camera, SyntheticConfig

    known = [f.name for f in dataclasses.fields(SyntheticConfig)]
    unknown = [k for k in fields if k not in known]
    if unknown:
        raise fail("egl.experiments", "data.synthetic", f"fields among {known}", repr(sorted(fields)),
                   f"Remove {unknown}, e.g. --set data.synthetic.train_per_domain=200")
    kw = dict(fields)
    for k in ("p", "digit_size"):
        if k in kw:
            kw[k] = tuple(kw[k])
    if "cameras" in kw:
        kw["cameras"] = tuple(c if isinstance(c, Camera) else Camera(**{**c, "gain": tuple(c["gain"])})
                              for c in kw["cameras"])
    return SyntheticConfig(**kw)


def _augmented(ds: Dataset, augment: Any) -> Dataset:
    return ds if augment is None else Augmented(ds, augment)


def _masker(data: dict[str, Any]) -> Any:
    """The frozen masker of ``data.masks_from`` (None without one)."""
    from egl.experiments.config import check_masks_from

    spec = check_masks_from(data.get("masks_from"), "egl.experiments")
    if spec is None:
        return None
    import egl

    return egl.create("masker", spec[0], **spec[1])


def _masked(ds: Dataset, masker: Any) -> Dataset:
    """``ds`` with ``masker``'s masks (made once, before augmentation), or ``ds`` without a masker."""
    return ds if masker is None else MaskedBy(ds, masker)


def _training(ds: Dataset, data: dict[str, Any], augment: Any, has_masks: bool, domain: str) -> Dataset:
    """A training set: its masks degraded by ``data.mask_noise`` (before augmentation, which then moves
    them as it would real annotations), augmented, then the masks of ``data.mask_fraction`` of it kept (outside the
    augmentation, so that an augmentation that builds new items cannot drop the flags), drawn with
    a seed of ``data.mask_seed`` and the domain's name (domains of one size keep different images)."""
    fraction = check_fraction(data.get("mask_fraction", 1.0), "egl.experiments", "data.mask_fraction")
    noise = as_mask_noise(data.get("mask_noise"), "egl.experiments", "data.mask_noise")
    if noise is not None:
        if not has_masks:
            raise fail("egl.experiments", "data.mask_noise", "null for data without masks (no mask to degrade)",
                       repr(data.get("mask_noise"))[:100], "Leave data.mask_noise out, or use data with masks")
        ds = NoisyMasks(ds, **noise)  # (before augmentation: it moves the degraded mask as an annotation)
    ds = _augmented(ds, augment)
    if fraction < 1:
        if not has_masks:
            raise fail("egl.experiments", "data.mask_fraction", "1.0 for data without masks (no mask to keep)",
                       repr(data.get("mask_fraction")), "Leave data.mask_fraction out, or use data with masks")
        seed = (int(data.get("mask_seed", 0)) * 7919 + zlib.crc32(domain.encode("utf-8"))) % 2**63
        ds = PartialMasks(ds, fraction, seed=seed)
    return ds


def load_source(data: dict[str, Any]) -> Source:
    """Build the :class:`Source` described by a config's ``data`` section."""
    permute = check_int(data.get("permute_labels"), "egl.experiments", "data.permute_labels", low=0, or_none=True,
                        note="(the seed of a permutation of the training labels; null: the true labels)",
                        fix="Set e.g. data.permute_labels=0, or leave it out")
    source = _load_source(data)
    source.permute_labels = permute
    return source


def evaluation_source(data: dict[str, Any]) -> Source:
    """The :class:`Source` of ``data`` for its test sets only (``egl eval``, ``egl sanity``): the
    training-set settings (a masker's masks, kept or degraded masks, permuted labels) left out, so
    that a checkpoint trained with them is evaluated without building them."""
    return load_source({**data, "masks_from": None, "mask_fraction": 1.0, "mask_noise": None,
                        "permute_labels": None})


def _load_source(data: dict[str, Any]) -> Source:
    check_choice(data.get("name"), ("synthetic", "folder", "csv"), "egl.experiments", "data.name")
    augment = as_augment(data.get("augment"), "egl.experiments", "data.augment")  # training sets only
    if data["name"] == "synthetic":
        from egl.data.synthetic import NUM_CLASSES, build

        cfg = _synthetic_config(data.get("synthetic") or {})
        splits = build(cfg)
        domains = [f"domain{d}" for d in range(len(cfg.p))]
        masker = _masker(data)
        has_masks = "mask" in splits["train"] or masker is not None
        train = {name: _training(_masked(_select(splits["train"], splits["train"]["domain"] == d), masker), data,
                                 augment, has_masks, name) for d, name in enumerate(domains)}
        val = {name: _select(splits["val"], splits["val"]["domain"] == d) for d, name in enumerate(domains)}
        tests: dict[str, Dataset] = {
            f"test_id/{name}": _select(splits["test_id"], splits["test_id"]["domain"] == d)
            for d, name in enumerate(domains)}
        for split in ("random", "flipped", "novel"):
            tests[split] = TensorDictDataset(splits[split])
        return Source("synthetic", NUM_CLASSES, [str(i) for i in range(NUM_CLASSES)], train, val, tests,
                      {f"test_id/{name}": name for name in domains})
    from egl.data import DomainFolder, ImageCSV

    if not data.get("root"):
        raise fail("egl.experiments", "data.root", f"the data set's folder for data.name={data['name']}", "None",
                   "Set data.root=/path/to/VLCS (layout root/<domain>/<class>/<image>)" if data["name"] == "folder"
                   else "Set data.root=/path/to/waterbird_complete95_forest2water2 (the folder of its metadata.csv)")
    size = check_int(data.get("image_size", 224), "egl.experiments", "data.image_size", low=1,  # (egl eval too)
                     note="(the side images are resized to)", fix="Set e.g. data.image_size=64")
    kw: dict[str, Any] = {"domains": data.get("domains"), "image_size": size,
                          "missing_masks": data.get("missing_masks") or "raise"}
    kind: Any = DomainFolder
    if data["name"] == "csv":
        kind = ImageCSV
        kw.update(csv=data.get("csv") or "metadata.csv", columns=data.get("columns"), mask_dir=data.get("mask_dir"))
    else:
        kw.update(allow_missing_classes=bool(data.get("allow_missing_classes", False)))
    full = kind(data["root"], "all", **kw)
    splits = getattr(full, "splits", ("train", "val", "test"))  # (a CSV table may hold no val rows)
    masker = _masker(data)  # (its masks are made from the plain images: the augmentation wraps them)
    plain = masker is not None or as_mask_noise(data.get("mask_noise"), "egl.experiments", "data.mask_noise")
    read_augment, wrap_augment = (None, augment) if plain else (augment, None)  # (masks degraded before it)
    per_split = {s: kind(data["root"], s, **kw, augment=read_augment if s == "train" else None)
                 for s in ("train", "val", "test") if s in splits or s != "val"}  # (no train or test: named)
    has_masks = per_split["train"].has_masks or masker is not None
    if kind is ImageCSV and full.domains == [ImageCSV.ONE_DOMAIN]:  # a table without domains: one of each
        (domain,) = full.domains
        train = _training(_masked(per_split["train"], masker), data, wrap_augment, has_masks, domain)
        val = {domain: per_split["val"]} if "val" in per_split else {}
        return Source(str(data["root"]), len(full.classes), full.classes, {domain: train}, val,
                      {"test": per_split["test"]}, {"test": domain})

    def by_domain(ds: Any) -> dict[str, Dataset]:
        """Per domain; a domain of no image in this split is left out (a CSV table may put whole
        domains in one split, as WILDS does: hospitals for training, others for testing)."""
        if ds is None:
            return {}
        parts = {name: [i for i, s in enumerate(ds.samples) if s.domain == d] for d, name in enumerate(ds.domains)}
        return {name: Subset(ds, idx) for name, idx in parts.items() if idx}

    tests = by_domain(per_split["test"])
    train = {name: _training(_masked(ds, masker), data, wrap_augment, has_masks, name)  # (augmented as read
             for name, ds in by_domain(per_split["train"]).items()}                    # without a masker)
    return Source(str(data["root"]), len(full.classes), full.classes, train,
                  by_domain(per_split.get("val")), tests, {name: name for name in tests})
