"""Images listed in a CSV file (a metadata table), with optional domains, splits, masks and shortcut labels.

The layout of Waterbirds (Sagawa et al., ICLR 2020), CelebA-style and WILDS-style data sets::

    root/metadata.csv                     # one row per image
    root/<image path from the CSV>        # e.g. 001.Black_footed_Albatross/Black_Footed_Albatross_0001_796111.jpg
    root/<mask_dir>/<same path>.png       # optional masks (e.g. CUB's segmentations for Waterbirds)

Columns are named by ``columns``: a preset (``"default"``, ``"waterbirds"``) or a dict mapping
the roles below to header names.

=========  ========  ==================================================================
role       needed    meaning
=========  ========  ==================================================================
image      yes       the image's path, relative to ``root`` (or absolute)
label      yes       class index (every cell an int >= 0) or class name (classes sorted)
split      no        ``train``/``val``/``test`` (also ``valid``, ``validation``) or the
                     WILDS / Waterbirds codes ``0``/``1``/``2``; absent: DomainFolder's
                     seeded 6:2:2 split per domain
domain     no        the image's domain (any text; domains sorted); absent: one domain, ``all``
mask       no        the mask's path, relative to ``root`` (or use ``mask_dir``)
shortcut   no        the class a spurious feature of the image stands for (-1 or empty: none);
                     items carry it as ``shortcut``, which the shortcut rate and worst-group
                     accuracy read (Waterbirds: ``place``, 0 land / 1 water, as ``y``)
=========  ========  ==================================================================

The ``"default"`` preset names each role by itself (``image``, ``label``, ``split``, ...) and
reads the optional ones where the header has them; a preset or dict that names a column the
header lacks is an error naming the header. Rows are checked at construction (an unknown split
code, a negative or non-integer shortcut, a missing image file) with the file's line number.
Items are those of :mod:`egl.data.image_items`.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from egl._check import check_choice, describe, fail
from egl.data.augment import as_augment
from egl.data.domain_folder import SPLIT_FRACTIONS, _split
from egl.data.image_items import ImageItems, Sample, check_read_args, verify_images

__all__ = ["ImageCSV", "COLUMN_PRESETS", "SPLIT_CODES"]

ROLES = ("image", "label", "split", "domain", "mask", "shortcut")
REQUIRED = ("image", "label")
COLUMN_PRESETS: dict[str, dict[str, str]] = {
    "default": {r: r for r in ROLES},
    "waterbirds": {"image": "img_filename", "label": "y", "split": "split", "shortcut": "place"},
}
SPLIT_CODES = {"train": "train", "val": "val", "valid": "val", "validation": "val", "test": "test",
               "0": "train", "1": "val", "2": "test"}
ONE_DOMAIN = "all"  # the domain of every row when the table has no domain column
_FN = "egl.data.ImageCSV"


def _columns(columns: object, header: list[str], path: Path, split: str = "all") -> dict[str, str]:
    """Role -> header name, for the roles the table has (``split``: the split asked for)."""
    if columns is None:
        columns = "default"
    if isinstance(columns, str):
        check_choice(columns, tuple(COLUMN_PRESETS), _FN, "columns")
        chosen = dict(COLUMN_PRESETS[columns])
        optional = columns == "default"
    elif isinstance(columns, Mapping):
        unknown = [k for k in columns if k not in ROLES]
        bad = [k for k, v in columns.items() if not isinstance(v, str)]
        if unknown or bad:
            raise fail(_FN, "columns", f"a preset {list(COLUMN_PRESETS)} or a dict from roles {list(ROLES)} to "
                       "header names", repr(dict(columns))[:200],
                       f"Remove {unknown}" if unknown else f"Give the header names of {bad} as strings")
        chosen, optional = dict(columns), False
        if split != "all" and "split" not in chosen and "split" in header and "split" not in chosen.values():
            raise fail(_FN, "columns", "a dict that maps the table's 'split' column (without it a split is drawn "
                       "at random, and the table's test rows can land in training)", repr(dict(columns))[:200],
                       "Add 'split': 'split' to columns= (or rename the column if the table's split is not to "
                       "be used)")
    else:
        raise fail(_FN, "columns", f"a preset {list(COLUMN_PRESETS)} or a dict from roles to header names",
                   describe(columns), "Pass e.g. columns='waterbirds' or columns={'image': 'file', 'label': 'y'}")
    lacking = [r for r in REQUIRED if r not in chosen]
    if lacking:
        raise fail(_FN, "columns", f"the roles {list(REQUIRED)}", repr(chosen), f"Name the columns of {lacking}")
    missing = {r: c for r, c in chosen.items() if c not in header}
    if optional:
        missing = {r: c for r, c in missing.items() if r in REQUIRED}
        near = {c: h for r, c in chosen.items() if c not in header for h in header if h.lower() == c}
        if near:  # "Split" for "split": the table's split would be silently replaced by a drawn one
            raise fail(_FN, "columns", f"the default column names {list(chosen.values())} (case matters)",
                       f"the header names {list(near.values())} in '{path}'",
                       f"Rename them to {list(near)}, or pass columns={{..., " + ", ".join(
                           f"'{r}': '{h}'" for r, h in near.items()) + "}")
    if missing:
        fits = [name for name, preset in COLUMN_PRESETS.items() if name != "default"
                and all(c in header for r, c in preset.items() if r in REQUIRED)]
        delimiter = next((d for d in (";", "\t", "|") if len(header) == 1 and d in header[0]), None)
        if delimiter is not None:
            fix = (f"The table is separated by {delimiter!r}, not commas: save it as comma-separated CSV "
                   "(spreadsheets: 'CSV UTF-8')")
        elif fits:
            fix = f"Pass columns={fits[0]!r} (its header fits that preset)"
        else:
            fix = f"Name the table's own columns, e.g. columns={{'image': {header[0]!r}, ...}}"
        raise fail(_FN, "columns", f"columns the header of '{path}' has: {header}",
                   f"{missing} (role: column)", fix)
    return {r: c for r, c in chosen.items() if c in header}


def _row_error(path: Path, line: int, role: str, column: str, expected: str, value: str, fix: str) -> Exception:
    return fail(_FN, "csv", expected, f"{value!r} in column '{column}' ({role}) at line {line} of '{path}'", fix)


def _int(value: str) -> int | None:
    try:
        return int(value)
    except ValueError:
        return None


def _integral(value: str) -> int | None:
    """``"2.0"`` -> 2 (an integer column a spreadsheet or pandas wrote as floats); else None."""
    try:
        f = float(value)
    except ValueError:
        return None
    return int(f) if f.is_integer() else None


class ImageCSV(ImageItems):
    """Images listed in a CSV file: items ``image``, ``label``, ``domain`` and, where the table has
    them, ``mask`` and ``shortcut`` (see the module doc for the columns).

    Args:
        root: the data set's folder; image and mask paths are relative to it.
        split: ``"train"``, ``"val"``, ``"test"`` or ``"all"``.
        csv: the table, relative to ``root`` (default ``metadata.csv``, Waterbirds' name) or absolute.
        columns: a preset name (``"default"``, ``"waterbirds"``) or a dict role -> header name.
        domains: which domains to use (default: all); needs a domain column.
        mask_dir: masks at ``root/mask_dir/<image path>`` with the suffix ``.png`` (CUB's
            ``segmentations`` folder for Waterbirds), instead of a mask column.
        image_size: the side images (and masks) are resized to.
        seed: the split seed, for tables without a split column (as :class:`DomainFolder`).
        verify: open every image at construction to find unreadable files.
        on_error: ``"raise"`` or ``"skip"`` for unreadable images found by ``verify``.
        augment: training augmentation, masks moved with their images (:class:`~egl.data.Augment`).
        missing_masks: when some images have masks and others not: ``"raise"`` (default) or
            ``"unannotated"`` (items carry ``annotated``; those without a mask get zeros).

    Attributes:
        splits: the splits the table's split column holds (all three without one).

    A missing image file is an error even with ``on_error="skip"`` (which skips files that exist
    but do not decode); so is a split of the table's split column that holds no image, a repeated
    image path, a domain cell left empty, and labels that mix class indices and names.

    Example:
        >>> train = ImageCSV("data/waterbird_complete95_forest2water2", "train", columns="waterbirds",
        ...                  mask_dir="../CUB_200_2011/segmentations")  # doctest: +SKIP
    """

    ONE_DOMAIN = ONE_DOMAIN

    def __init__(self, root: str | os.PathLike[str], split: str = "train", *,
                 csv: str | os.PathLike[str] = "metadata.csv", columns: str | Mapping[str, str] | None = None,
                 domains: Sequence[str] | None = None, mask_dir: str | os.PathLike[str] | None = None,
                 image_size: int = 224, seed: int = 0, verify: bool = False, on_error: str = "raise",
                 augment: object = None, missing_masks: str = "raise") -> None:
        seed = check_read_args(_FN, split=split, splits=list(SPLIT_FRACTIONS), on_error=on_error,
                               missing_masks=missing_masks, image_size=image_size, seed=seed, verify=verify)
        augment = as_augment(augment, _FN)
        root = Path(root)
        if not root.is_dir():
            raise fail(_FN, "root", "an existing folder", f"'{root}' ({'a file' if root.exists() else 'missing'})",
                       "Check the path")
        table = root / csv
        if not table.is_file():
            raise fail(_FN, "csv", "a CSV file (relative to root, or absolute)", f"'{table}' (missing)",
                       "Pass csv= the table's name, e.g. csv='metadata.csv'")
        rows, header = self._read_table(table)
        cols = _columns(columns, header, table, split)
        if mask_dir is not None and "mask" in cols:
            raise fail(_FN, "mask_dir", "None when the table has a mask column", repr(str(mask_dir)),
                       f"Drop mask_dir, or the column '{cols['mask']}' from columns=")
        self.columns = cols
        self.classes, labels = self._labels(rows, cols["label"], table)
        if "domain" in cols:
            empty = next((line for line, r in rows if not r[cols["domain"]]), None)
            if empty is not None:
                raise _row_error(table, empty, "domain", cols["domain"], "a domain name", "", "Fill in the domain")
        all_domains = sorted({r[cols["domain"]] for _, r in rows}) if "domain" in cols else [ONE_DOMAIN]
        self.domains = self._select_domains(domains, all_domains, "domain" in cols)
        samples, codes = self._samples(rows, labels, cols, root, table, mask_dir)
        any_mask = any(s.mask is not None for s in samples)  # (in the whole table: a split may hold none)
        self.splits = sorted(set(codes), key=list(SPLIT_FRACTIONS).index) if "split" in cols else list(SPLIT_FRACTIONS)
        if "split" in cols and split != "all":  # the table's split, then only its images verified
            if split not in codes:
                raise fail(_FN, "split", f"a split the table holds images of: {self.splits}"
                           + (f" (in the domains {self.domains})" if "domain" in cols else ""), repr(split),
                           f"Pick one of {self.splits}, or give the table's rows that split (column "
                           f"'{cols['split']}': train/val/test or 0/1/2)")
            samples = [s for s, c in zip(samples, codes) if c == split]
        if verify:
            samples = verify_images(samples, on_error, _FN, "root")
        # without a split column, the good images split 6:2:2 per domain (as DomainFolder)
        chosen = samples if split == "all" or "split" in cols else _split(samples, self.domains, split, int(seed))
        self.split = split
        fix = (f"Add a mask for each image at {root / mask_dir}/<image path>.png" if mask_dir is not None
               else f"Fill the column '{cols.get('mask')}' for every row, or for none")
        super().__init__(chosen, image_size=image_size, augment=augment, fn=_FN, arg="root", mask_fix=fix,
                         missing_masks=missing_masks)
        if mask_dir is not None and not any_mask and chosen:
            first = chosen[0].path
            raise fail(_FN, "mask_dir", "a folder holding a .png mask per image at the image's path",
                       f"no mask in '{root / mask_dir}' (for '{first}' egl looks for "
                       f"'{self._mask_at(root, mask_dir, first)}')",
                       "Point mask_dir at the masks' top folder (for Waterbirds: CUB's segmentations)")

    @staticmethod
    def _read_table(path: Path) -> tuple[list[tuple[int, dict[str, str]]], list[str]]:
        rows = []
        try:
            with open(path, newline="", encoding="utf-8-sig") as f:  # (a byte-order mark from spreadsheet exports)
                reader = csv.DictReader(f)
                header = [h.strip() for h in reader.fieldnames or []]  # (" split" after a comma and a space)
                twice = sorted({h for h in header if header.count(h) > 1 and h})
                if twice:  # (DictReader keeps the last of two same-named columns, silently)
                    raise fail(_FN, "csv", "a header naming each column once", f"{twice} twice in '{path}'",
                               "Rename or remove the repeated column")
                reader.fieldnames = header
                for row in reader:
                    rows.append((reader.line_num, {k: (v or "").strip() for k, v in row.items() if k is not None}))
        except UnicodeDecodeError as exc:
            raise fail(_FN, "csv", "a UTF-8 text file", f"'{path}' ({exc})",
                       "Save the table as UTF-8 CSV (spreadsheets: 'CSV UTF-8')") from None
        if not header or not rows:
            raise fail(_FN, "csv", "a header line and at least one row", f"'{path}' ({len(rows)} rows)",
                       "Point csv= at the data set's metadata table")
        return rows, header

    @staticmethod
    def _labels(rows: list[tuple[int, dict[str, str]]], column: str, path: Path) -> tuple[list[str], list[int]]:
        values = [r[column] for _, r in rows]
        empty = next((line for (line, _), v in zip(rows, values) if not v), None)
        if empty is not None:
            raise _row_error(path, empty, "label", column, "a class index or name", "", "Fill in the label")
        parsed = [_int(v) for v in values]
        if any(i is None for i in parsed) and all(_integral(v) is not None for v in values):
            parsed = [_integral(v) for v in values]  # "2.0": an integer column exported as float (pandas, NaN)
        ints = [i for i in parsed if i is not None]
        if len(ints) == len(values):
            negative = next(((line, v) for (line, _), v, i in zip(rows, values, ints) if i < 0), None)
            if negative is not None:
                raise _row_error(path, negative[0], "label", column, "a class index >= 0", negative[1],
                                 "Relabel the row (class indices count from 0)")
            return [str(c) for c in range(max(ints) + 1)], ints
        if ints:  # "0, 1, bird": a typo or two label schemes, not three class names
            line, v = next((line, v) for (line, _), v, i in zip(rows, values, parsed) if i is None)
            raise _row_error(path, line, "label", column, "class indices in every row (as the table's other rows), "
                             "or class names in every row", v, "Use one kind of label for the whole column")
        classes = sorted(set(values))
        index = {c: k for k, c in enumerate(classes)}
        return classes, [index[v] for v in values]

    @staticmethod
    def _select_domains(domains: object, found: list[str], has_column: bool) -> list[str]:
        if domains is None:
            return found
        if not has_column:
            raise fail(_FN, "domains", "None for a table without a domain column", repr(domains)[:100],
                       "Leave domains out, or name the domain column in columns=")
        if isinstance(domains, str) or not isinstance(domains, Sequence) or not domains \
                or len(set(domains)) != len(domains):
            raise fail(_FN, "domains", f"None (every domain) or a non-empty list of distinct domains among {found}",
                       repr(domains)[:100], f"Pass e.g. domains=[{found[0]!r}]")
        unknown = [d for d in domains if d not in found]
        if unknown:
            raise fail(_FN, "domains", f"domains among {found}", repr(list(domains)), f"Remove {unknown}")
        return list(domains)

    @staticmethod
    def _mask_at(root: Path, mask_dir: str | os.PathLike[str], image: Path) -> Path:
        """``root/mask_dir/<image's path under root>.png``."""
        return (root / mask_dir / image.relative_to(root)).with_suffix(".png")

    def _samples(self, rows: list[tuple[int, dict[str, str]]], labels: list[int], cols: dict[str, str], root: Path,
                 table: Path, mask_dir: str | os.PathLike[str] | None) -> tuple[list[Sample], list[str]]:
        domain_index = {d: k for k, d in enumerate(self.domains)}
        samples: list[Sample] = []
        codes: list[str] = []  # each sample's split ("" without a split column)
        missing: list[Path] = []
        seen: dict[Path, int] = {}
        for (line, r), label in zip(rows, labels):
            domain = r[cols["domain"]] if "domain" in cols else ONE_DOMAIN
            if domain not in domain_index:
                continue
            if not r[cols["image"]]:
                raise _row_error(table, line, "image", cols["image"], "an image path", "", "Fill in the path")
            path = root / r[cols["image"]]
            if path in seen:  # listed twice: in two splits it would leak test images into training
                raise _row_error(table, line, "image", cols["image"], "each image listed once",
                                 f"{r[cols['image']]} (also at line {seen[path]})", "Remove the repeated row")
            seen[path] = line
            if mask_dir is not None and not path.is_relative_to(root):
                raise _row_error(table, line, "image", cols["image"], f"a path inside root ('{root}') to find its "
                                 "mask under mask_dir", r[cols["image"]],
                                 "List image paths relative to root, or give masks in a mask column")
            if not path.is_file():
                missing.append(path)
                continue
            code = None
            if "split" in cols:
                code = SPLIT_CODES.get(r[cols["split"]].lower())
                if code is None:
                    raise _row_error(table, line, "split", cols["split"], f"one of {sorted(set(SPLIT_CODES))}",
                                     r[cols["split"]], "Use train/val/test or the codes 0/1/2")
            mask: Path | None = None
            if "mask" in cols and r[cols["mask"]]:
                mask = root / r[cols["mask"]]
                if not mask.is_file():
                    raise _row_error(table, line, "mask", cols["mask"], "the path of an existing mask file",
                                     r[cols["mask"]], "Fix the path (relative to root), or leave the cell empty")
            elif mask_dir is not None:
                at = self._mask_at(root, mask_dir, path)
                if at == path:  # mask_dir="." and PNG images: each image would be its own mask
                    raise fail(_FN, "mask_dir", "a folder of masks apart from the images", repr(str(mask_dir)),
                               "Point mask_dir at the masks' folder (masks at <mask_dir>/<image path>.png)")
                mask = at if at.is_file() else None
            shortcut = None
            if "shortcut" in cols:
                raw = r[cols["shortcut"]]
                shortcut = -1 if raw == "" else _int(raw) if _int(raw) is not None else _integral(raw)
                if shortcut is None or not -1 <= shortcut < len(self.classes):
                    raise _row_error(table, line, "shortcut", cols["shortcut"],
                                     f"a class index in [0, {len(self.classes) - 1}], or -1 / empty for none", raw,
                                     "Give the class the spurious feature stands for")
            samples.append(Sample(path, label, domain_index[domain], mask, shortcut))
            codes.append(code or "")
        if missing:
            raise fail(_FN, "root", "every image the table lists", f"{len(missing)} missing, e.g. '{missing[0]}'",
                       f"Check root (image paths in '{table}' are relative to it)")
        if not samples:
            raise fail(_FN, "domains", "domains with rows", repr(self.domains), "Pick domains the table lists")
        return samples, codes

    def __repr__(self) -> str:
        extra: dict[str, Any] = {"split": self.split, "images": len(self), "classes": len(self.classes),
                                 "domains": self.domains, "masks": self.has_masks}
        return f"ImageCSV({', '.join(f'{k}={v!r}' for k, v in extra.items())})"
