"""Images listed in a CSV table: Waterbirds' metadata.csv, the default column names, and the errors."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from _helpers import waterbirds_table
from PIL import Image

import egl
from egl.data import ImageCSV


def _image(path: Path, value: int, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), value, dtype=np.uint8)).save(path)


def _mask(path: Path, size: tuple[int, int] = (12, 10)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    m = np.zeros((size[1], size[0]), dtype=np.uint8)
    m[2:6, 3:9] = 255
    Image.fromarray(m).save(path)


def _table(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def test_waterbirds_preset_reads_splits_labels_shortcuts_and_masks(tmp_path: Path) -> None:
    root = waterbirds_table(tmp_path)
    meta = list(csv.DictReader(open(root / "metadata.csv")))
    parts = {s: ImageCSV(root, s, columns="waterbirds", mask_dir="segmentations", image_size=8)
             for s in ("train", "val", "test")}
    for split, code in (("train", "0"), ("val", "1"), ("test", "2")):
        assert sorted(s.path.name for s in parts[split].samples) == \
            sorted(Path(r["img_filename"]).name for r in meta if r["split"] == code)
    ds = parts["train"]
    assert ds.classes == ["0", "1"] and ds.domains == ["all"] and ds.has_masks
    item = ds[0]
    row = next(r for r in meta if Path(r["img_filename"]).name == ds.samples[0].path.name)
    assert int(item["label"]) == int(row["y"]) and int(item["shortcut"]) == int(row["place"])
    assert item["image"].shape == (3, 8, 8) and item["mask"].shape == (1, 8, 8) and int(item["domain"]) == 0
    assert 0.1 < float(item["mask"].mean()) < 0.4
    assert abs(float(item["image"].mean()) - int(row["img_id"]) * 10 / 255) < 1e-6  # its own pixels
    batch = torch.utils.data.default_collate([ds[i] for i in range(3)])
    assert batch["shortcut"].dtype == torch.long and batch["mask"].shape == (3, 1, 8, 8)
    assert len(ImageCSV(root, "all", columns="waterbirds", image_size=8)) == 24
    assert "mask" not in ImageCSV(root, "train", columns="waterbirds", image_size=8)[0]  # masks only when asked


def test_default_columns_names_domains_and_a_seeded_split(tmp_path: Path) -> None:
    rows = []
    for i in range(30):
        name = f"img/{i}.png"
        _image(tmp_path / name, i)
        rows.append([name, ("cat", "dog", "eel")[i % 3], ("north", "south")[i % 2]])
    _table(tmp_path / "list.csv", ["image", "label", "domain"], rows)
    full = ImageCSV(tmp_path, "all", csv="list.csv", image_size=4)
    assert full.classes == ["cat", "dog", "eel"] and full.domains == ["north", "south"]
    assert [s.label for s in full.samples[:4]] == [0, 1, 2, 0] and "shortcut" not in full[0]
    parts = {s: ImageCSV(tmp_path, s, csv="list.csv", image_size=4) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [18, 6, 6]  # 6:2:2 per domain of 15
    paths = {s: {x.path for x in parts[s].samples} for s in parts}
    assert not (paths["train"] & paths["test"]) and not (paths["val"] & paths["test"])
    south = ImageCSV(tmp_path, "test", csv="list.csv", domains=["south"], image_size=4)
    assert {x.path for x in south.samples} == {x.path for x in parts["test"].samples if x.domain == 1}
    assert ImageCSV(tmp_path, "train", csv="list.csv", image_size=4, seed=1).samples != parts["train"].samples


def test_a_mask_column_and_augmentation_move_masks_with_images(tmp_path: Path) -> None:
    rows = []
    for i in range(4):
        _image(tmp_path / f"{i}.png", 100)
        _mask(tmp_path / "m" / f"{i}.png")
        rows.append([f"{i}.png", i % 2, f"m/{i}.png", "train"])
    _table(tmp_path / "metadata.csv", ["image", "label", "mask", "split"], rows)
    plain = ImageCSV(tmp_path, "train", image_size=8)
    assert plain.has_masks and plain[0]["mask"].shape == (1, 8, 8)
    torch.manual_seed(0)
    flipped = ImageCSV(tmp_path, "train", image_size=8, augment={"flip": 1.0, "crop_scale": None, "brightness": 0,
                                                               "contrast": 0, "saturation": 0, "hue": 0,
                                                               "grayscale": 0})
    assert torch.equal(flipped[0]["mask"], plain[0]["mask"].flip(-1))


@pytest.mark.parametrize("header, rows, kwargs, match", [
    (["file", "y"], [["0.png", 0]], {}, r"'columns' expected columns the header .* has: \['file', 'y'\]"),
    (["img_filename", "y", "split"], [["0.png", 0, 0]], {"columns": "waterbirds"}, r"'place'"),
    (["image", "label"], [["0.png", 0]], {"columns": {"image": "image"}}, r"the roles \['image', 'label'\]"),
    (["image", "label"], [["0.png", 0]], {"columns": {"image": "image", "label": "label", "colour": "c"}},
     r"Remove \['colour'\]"),
    (["image", "label", "split"], [["0.png", 0, "holdout"]], {}, r"'holdout' in column 'split' \(split\) at line 2"),
    (["image", "label", "shortcut"], [["0.png", 0, 5]], {}, r"class index in \[0, 0\].*'5' in column 'shortcut'"),
    (["image", "label"], [["0.png", -1]], {}, r"'label' expected a class index >= 0|class index >= 0"),
    (["image", "label"], [["gone.png", 0]], {}, r"every image the table lists.*1 missing, e.g. '.*gone.png'"),
    (["image", "label"], [["0.png", 0]], {"domains": ["x"]}, r"'domains' expected None for a table without"),
    (["image", "label", "mask"], [["0.png", 0, "m.png"]], {"mask_dir": "seg"}, r"'mask_dir' expected None when"),
    (["image", "label"], [["0.png", 0]], {"mask_dir": "seg"}, r"'mask_dir' expected a folder holding a .png mask"),
    (["image", "label"], [["0.png", 0]], {"mask_dir": "."}, r"'mask_dir' expected a folder of masks apart"),
    (["image", "label", "split"], [["0.png", 0, "train"], ["1.png", 0, "test"], ["0.png", 0, "test"]], {},
     r"each image listed once.*'0.png \(also at line 2\)' in column 'image' \(image\) at line 4"),
    (["image", "label"], [["0.png", 0], ["1.png", "bird"]], {}, r"class indices in every row.*'bird'.*line 3"),
    (["image", "label", "Split"], [["0.png", 0, "test"]], {}, r"the header names \['Split'\].*'split': 'Split'"),
    (["image", "label", "domain"], [["0.png", 0, "a"], ["1.png", 0, ""]], {}, r"'' in column 'domain'.*line 3"),
    (["image", "label"], [["0.png", 0], ["1.png", ""]], {}, r"'' in column 'label' \(label\) at line 3.*Fill in"),
    (["image", "label", "label"], [["0.png", 0, 1]], {}, r"'csv' expected a header naming each column once, got "
                                                        r"\['label'\] twice"),
    (["image", "label", "split"], [["0.png", 0, "train"]], {"columns": {"image": "image", "label": "label"},
                                                            "split": "train"},
     r"'columns' expected a dict that maps the table's 'split' column.*Add 'split': 'split'"),
    (["img_filename", "y", "split", "place"], [["0.png", 0, 0, 0]], {}, r"Pass columns='waterbirds'"),
    (["image;label"], [["0.png;0"]], {}, r"separated by ';', not commas"),
])
def test_bad_tables_are_named(tmp_path: Path, header: list[str], rows: list, kwargs: dict, match: str) -> None:
    _image(tmp_path / "0.png", 0)
    _image(tmp_path / "1.png", 0)
    _table(tmp_path / "metadata.csv", header, rows)
    with pytest.raises(egl.InputError, match=match):
        ImageCSV(tmp_path, kwargs.pop("split", "all"), **kwargs)


def test_missing_table_and_masks_for_some_images_only(tmp_path: Path) -> None:
    with pytest.raises(egl.InputError, match="'csv' expected a CSV file"):
        ImageCSV(tmp_path)
    for i in range(2):
        _image(tmp_path / f"{i}.png", 0)
    _mask(tmp_path / "seg" / "0.png")
    _table(tmp_path / "metadata.csv", ["image", "label"], [["0.png", 0], ["1.png", 1]])
    with pytest.raises(egl.InputError, match=r"a mask for every image or for none.*Add a mask for each image"):
        ImageCSV(tmp_path, "all", mask_dir="seg")


def test_header_spaces_are_stripped_and_a_split_without_images_is_named(tmp_path: Path) -> None:
    for i in range(3):
        _image(tmp_path / f"{i}.png", 0)
    (tmp_path / "metadata.csv").write_text("image, label, split\n0.png,0,train\n1.png,1,test\n2.png,0,0\n")
    ds = ImageCSV(tmp_path, "train")
    assert ds.columns == {"image": "image", "label": "label", "split": "split"} and len(ds) == 2
    assert ds.splits == ["train", "test"]
    with pytest.raises(egl.InputError, match=r"'split' expected a split the table holds images of: \['train', "
                                             r"'test'\], got 'val'"):
        ImageCSV(tmp_path, "val")


def test_non_utf8_tables_and_paths_outside_root_with_mask_dir_are_named(tmp_path: Path) -> None:
    _image(tmp_path / "0.png", 0)
    (tmp_path / "metadata.csv").write_bytes("image,label\n0.png,caf\xe9\n".encode("latin-1"))
    with pytest.raises(egl.InputError, match="'csv' expected a UTF-8 text file"):
        ImageCSV(tmp_path, "all")
    other = tmp_path / "elsewhere"
    _image(other / "0.png", 0)
    root = tmp_path / "root"
    root.mkdir()
    _table(root / "metadata.csv", ["image", "label"], [[str(other / "0.png"), 0]])
    assert len(ImageCSV(root, "all")) == 1  # an absolute path is fine...
    with pytest.raises(egl.InputError, match="a path inside root"):  # ...but its mask cannot be found under mask_dir
        ImageCSV(root, "all", mask_dir="seg")


def test_wilds_style_domains_in_their_own_splits(tmp_path: Path) -> None:
    from egl.experiments.sources import load_source

    rows = []
    for i in range(12):
        hospital = f"h{i // 4}"
        _image(tmp_path / f"{i}.png", i)
        rows.append([f"{i}.png", i % 2, hospital, {"h0": "train", "h1": "val", "h2": "test"}[hospital]])
    _table(tmp_path / "metadata.csv", ["image", "label", "domain", "split"], rows)
    source = load_source({"name": "csv", "root": str(tmp_path), "image_size": 8})
    assert list(source.train) == ["h0"] and list(source.val) == ["h1"] and list(source.tests) == ["h2"]
    assert not source.in_distribution("h2", ["h0"])
    no_val = tmp_path / "no_val"  # a table without val rows: no validation set, not an error
    no_val.mkdir()
    for i in range(4):
        _image(no_val / f"{i}.png", i)
    _table(no_val / "metadata.csv", ["image", "label", "split"], [[f"{i}.png", i % 2, ("train", "test")[i % 2]]
                                                                  for i in range(4)])
    source = load_source({"name": "csv", "root": str(no_val), "image_size": 8})
    assert source.val == {} and source.validation_set(["all"]) is None and len(source.tests["test"]) == 2


def test_images_without_masks_can_train_unannotated(tmp_path: Path) -> None:
    from egl.data import PartialMasks

    for i in range(4):
        _image(tmp_path / f"{i}.png", 50)
    for i in (0, 2):
        _mask(tmp_path / "seg" / f"{i}.png")
    _table(tmp_path / "metadata.csv", ["image", "label"], [[f"{i}.png", i % 2] for i in range(4)])
    with pytest.raises(egl.InputError, match="or pass missing_masks='unannotated'"):
        ImageCSV(tmp_path, "all", mask_dir="seg")
    ds = ImageCSV(tmp_path, "all", mask_dir="seg", missing_masks="unannotated", image_size=8)
    items = [ds[i] for i in range(4)]
    assert [bool(it["annotated"]) for it in items] == [True, False, True, False]
    assert float(items[0]["mask"].max()) == 1.0 and float(items[1]["mask"].max()) == 0.0
    assert items[1]["mask"].shape == (1, 8, 8)
    part = PartialMasks(ds, 1.0)  # a share of the annotated ones: an image the data has no mask for stays out
    assert [bool(part[i]["annotated"]) for i in range(4)] == [True, False, True, False] and part.annotated == [0, 2]
    assert len(PartialMasks(ds, 0.5).annotated) == 1  # half of the 2 images with masks
    sub = torch.utils.data.Subset(ds, [1, 2, 3])
    assert PartialMasks(sub, 1.0).annotated == [1]  # (the Subset's index of image 2)
    full = ImageCSV(tmp_path, "all", image_size=8, missing_masks="unannotated")  # no masks at all: no flags
    assert "annotated" not in full[0] and "mask" not in full[0]
    with pytest.raises(egl.InputError, match="'missing_masks' expected one of"):
        ImageCSV(tmp_path, "all", missing_masks="skip")


def test_a_split_without_masks_when_others_have_them(tmp_path: Path) -> None:
    for i in range(4):
        _image(tmp_path / f"{i}.png", 50)
    for i in (0, 1):
        _mask(tmp_path / "seg" / f"{i}.png")
    _table(tmp_path / "metadata.csv", ["image", "label", "split"],
           [[f"{i}.png", i % 2, ("train", "train", "test", "test")[i]] for i in range(4)])
    test = ImageCSV(tmp_path, "test", mask_dir="seg", image_size=8)  # masks for the training rows only
    assert not test.has_masks and "mask" not in test[0]
    assert ImageCSV(tmp_path, "train", mask_dir="seg", image_size=8).has_masks


def test_integer_labels_written_as_floats_are_indices(tmp_path: Path) -> None:
    """pandas writes an int column with a NaN as floats: '2.0', '10.0' were class *names*, sorted as
    text ('10.0' before '2.0'): image 2 got label 4, image 10 label 2."""
    for i in range(12):
        _image(tmp_path / f"{i}.png", i)
    rows = [[f"{i}.png", f"{i}.0", "1.0"] for i in range(12)]
    _table(tmp_path / "metadata.csv", ["image", "label", "shortcut"], rows)
    ds = ImageCSV(tmp_path, "all", image_size=8)
    assert ds.classes == [str(c) for c in range(12)]
    assert {s.path.name: s.label for s in ds.samples} == {f"{i}.png": i for i in range(12)}
    assert {s.shortcut for s in ds.samples} == {1}
