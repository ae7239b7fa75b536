"""DomainBed-layout folders: discovery, 6:2:2 split, masks, and the errors."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from _helpers import domain_tree
from PIL import Image

import egl
from egl.data.domain_folder import DomainFolder, scan


def test_scan_finds_domains_classes_and_images(tmp_path) -> None:
    domains, classes, samples = scan(domain_tree(tmp_path, masks=True))
    assert domains == ["A", "B"] and classes == ["cat", "dog"] and len(samples) == 40
    assert all(s.mask is not None for s in samples)


def test_split_is_6_2_2_per_domain_disjoint_and_seeded(tmp_path) -> None:
    root = domain_tree(tmp_path)
    parts = {s: DomainFolder(root, s, image_size=8) for s in ("train", "val", "test")}
    assert [len(parts[s]) for s in ("train", "val", "test")] == [24, 8, 8]
    paths = {s: {x.path for x in parts[s].samples} for s in parts}
    assert not (paths["train"] & paths["val"]) and not (paths["train"] & paths["test"])
    assert sum(x.domain == 0 for x in parts["train"].samples) == 12
    again = DomainFolder(root, "train", image_size=8)
    assert [x.path for x in again.samples] == [x.path for x in parts["train"].samples]
    other = DomainFolder(root, "train", image_size=8, seed=1)
    assert {x.path for x in other.samples} != paths["train"]


def test_items_have_images_labels_domains_and_masks(tmp_path) -> None:
    ds = DomainFolder(domain_tree(tmp_path, masks=True), "all", image_size=32)
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and 0 <= float(item["image"].min()) <= float(item["image"].max()) <= 1
    assert item["mask"].shape == (1, 32, 32) and float(item["mask"].max()) == pytest.approx(1.0)
    assert 0.1 < float(item["mask"].mean()) < 0.4
    batch = torch.utils.data.default_collate([ds[i] for i in range(3)])
    assert batch["label"].dtype == torch.long and batch["domain"].shape == (3,)


def test_missing_root_and_empty_domain_are_clear(tmp_path) -> None:
    with pytest.raises(egl.InputError, match="'root' expected an existing folder.*missing"):
        DomainFolder(tmp_path / "nope")
    (tmp_path / "A" / "cat").mkdir(parents=True)
    with pytest.raises(egl.InputError, match="an empty domain folder"):
        DomainFolder(tmp_path)


def test_missing_class_names_domain_and_class(tmp_path) -> None:
    root = domain_tree(tmp_path, domains=("A",), classes=("cat", "dog"))
    domain_tree(root, domains=("B",), classes=("cat",))
    with pytest.raises(egl.InputError, match=r"domain 'B' without \['dog'\]"):
        DomainFolder(root)
    ds = DomainFolder(root, "all", allow_missing_classes=True, image_size=8)
    assert ds.classes == ["cat", "dog"] and len(ds) == 30


def test_unreadable_image_is_named_or_skipped(tmp_path) -> None:
    root = domain_tree(tmp_path, n=5)
    bad = root / "A" / "cat" / "broken.png"
    bad.write_bytes(b"not an image")
    with pytest.raises(egl.InputError, match="broken.png"):
        DomainFolder(root, "all", verify=True)
    with pytest.warns(UserWarning, match="broken.png"):
        ds = DomainFolder(root, "all", verify=True, on_error="skip", image_size=8)
    assert len(ds) == 20
    lazy = DomainFolder(root, "all", image_size=8)
    idx = next(i for i, s in enumerate(lazy.samples) if s.path == bad)
    with pytest.raises(egl.InputError, match="broken.png"):
        lazy[idx]


def test_partial_masks_and_bad_arguments(tmp_path) -> None:
    root = domain_tree(tmp_path, masks=True)
    (root / "masks" / "A" / "cat" / "0.png").unlink()
    with pytest.raises(egl.InputError, match="a mask for every image or for none"):
        DomainFolder(root, "all")
    with pytest.raises(egl.InputError, match="'split' expected one of"):
        DomainFolder(root, "training")
    with pytest.raises(egl.InputError, match=r"'domains' expected domains among \['A', 'B'\]"):
        DomainFolder(root, domains=["C"])
    for bad in (0, True, 8.0):  # (True was taken for a 1-pixel image)
        with pytest.raises(egl.InputError, match=rf"'image_size' expected an int >= 1, got {bad!r}"):
            DomainFolder(root, "all", image_size=bad)
    # a string was read as its letters, an empty list gave no images, a repeat doubled every sample
    for bad in ("A", [], ["A", "A"]):
        with pytest.raises(egl.InputError, match=r"'domains' expected None \(every domain\) or a non-empty list of "
                                                 r"distinct domains among \['A', 'B'\].*domains=\['A'\]"):
            DomainFolder(root, domains=bad)
    for bad in (None, 1.5, "x"):
        with pytest.raises(egl.InputError, match=r"'seed' expected an int, got"):
            DomainFolder(root, seed=bad)
    with pytest.raises(egl.InputError, match=r"'verify' expected True or False, got 'no'"):
        DomainFolder(root, verify="no")


def test_a_domain_splits_the_same_way_whichever_domains_are_selected(tmp_path) -> None:
    """The split seed was the domain's position in ``domains=``: B's test images loaded alone
    overlapped B's training images loaded beside A (3 of 6)."""
    root = domain_tree(tmp_path, domains=("A", "B"), n=15)
    train_b = {s.path for s in DomainFolder(root, "train", domains=["A", "B"], image_size=8).samples
               if s.path.parts[-3] == "B"}
    for selection in (["B"], ["B", "A"], ["A", "B"]):
        test_b = {s.path for s in DomainFolder(root, "test", domains=selection, image_size=8).samples
                  if s.path.parts[-3] == "B"}
        assert len(test_b) == 6 and not (train_b & test_b), selection


def test_a_class_keeps_its_index_whichever_domains_are_selected(tmp_path) -> None:
    """Classes came from the selected domains only: 'cat' was 0 in A alone, 1 in B alone."""
    root = domain_tree(tmp_path, domains=("A",), classes=("cat", "dog"), n=3)
    domain_tree(root, domains=("B",), classes=("bird", "cat", "dog"), n=3)
    with pytest.raises(egl.InputError, match=r"domain 'A' without \['bird'\]"):
        DomainFolder(root, "all", domains=["A"])
    a = DomainFolder(root, "all", domains=["A"], allow_missing_classes=True, image_size=8)
    b = DomainFolder(root, "all", domains=["B"], image_size=8)
    assert a.classes == b.classes == ["bird", "cat", "dog"]
    cat = {ds.samples[i].label for ds in (a, b) for i in range(len(ds)) if ds.samples[i].path.parent.name == "cat"}
    assert cat == {1}


def test_0_1_label_masks_are_read_as_0_1(tmp_path) -> None:
    """Divided by 255 whatever they held, a 0/1 mask peaked at 0.004: no pixel was foreground."""
    root = domain_tree(tmp_path, domains=("A",), classes=("cat",), n=2, masks=True)
    for f in (root / "masks" / "A" / "cat").iterdir():
        m = np.asarray(Image.open(f)) // 255  # the same mask, stored 0/1
        Image.fromarray(m.astype(np.uint8)).save(f)
    item = DomainFolder(root, "all", image_size=16)[0]
    assert float(item["mask"].max()) == pytest.approx(1.0) and 0.1 < float(item["mask"].mean()) < 0.4


@pytest.mark.parametrize(("top", "dtype"), [(2, np.uint8), (3, np.uint8), (15, np.uint8), (2, np.uint16)])
def test_class_label_masks_are_warned_about_once(tmp_path, top: int, dtype: type) -> None:
    """A 0/1/2 label mask was divided by 255 and peaked at 0.008: no pixel was foreground, silently.
    A warning, not an error: a faint 0-255 mask (a thin antialiased object) can peak there too."""
    root = domain_tree(tmp_path, domains=("A",), classes=("cat",), n=2, masks=True)
    for f in (root / "masks" / "A" / "cat").iterdir():
        m = (np.asarray(Image.open(f)) // 255).astype(dtype)  # 0/1 ...
        m[0, 0] = top  # ... with a further class label
        Image.fromarray(m).save(f)
    ds = DomainFolder(root, "all", image_size=16)
    full = 65535 if dtype == np.uint16 else 255
    with pytest.warns(UserWarning, match=rf"DomainFolder: the mask '.*0.png' has levels 0 to {top}: read as "
                                         rf"0-{full} \({full} = foreground\) it is nearly empty. If it is a "
                                         r"class-label image"):
        item = ds[0]
    assert float(item["mask"].max()) == pytest.approx(top / full)  # read as 0-255 (0-65535)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]  # once per data set


def test_masks_just_above_the_label_range_are_still_0_255(tmp_path) -> None:
    """The rule stops at LABEL_MAX: a dim 0-255 mask (largest level 16) is read as it always was."""
    root = domain_tree(tmp_path, domains=("A",), classes=("cat",), n=1, masks=True)
    f = next((root / "masks" / "A" / "cat").iterdir())
    Image.fromarray((np.asarray(Image.open(f)) // 255 * 16).astype(np.uint8)).save(f)
    item = DomainFolder(root, "all", image_size=16)[0]
    assert float(item["mask"].max()) == pytest.approx(16 / 255)


def test_colour_masks_are_read_by_their_brightest_channel(tmp_path) -> None:
    """A red-on-black mask read through PIL's luminance peaked at 0.3: all background once binarised."""
    root = domain_tree(tmp_path, domains=("A",), classes=("cat",), n=2, masks=True)
    for f in (root / "masks" / "A" / "cat").iterdir():
        m = np.asarray(Image.open(f).convert("L"))
        red = np.zeros((*m.shape, 3), dtype=np.uint8)
        red[..., 0] = m
        Image.fromarray(red).save(f)
    item = DomainFolder(root, "all", image_size=16)[0]
    assert float(item["mask"].max()) == pytest.approx(1.0) and 0.1 < float(item["mask"].mean()) < 0.4
    assert item["mask"].shape == (1, 16, 16)


def test_a_mask_of_another_size_is_named(tmp_path) -> None:
    root = domain_tree(tmp_path, domains=("A",), classes=("cat",), n=2, masks=True)
    Image.fromarray(np.zeros((6, 16), np.uint8)).save(root / "masks" / "A" / "cat" / "0.png")
    ds = DomainFolder(root, "all", image_size=8)
    i = next(i for i, s in enumerate(ds.samples) if s.path.name == "0.png")
    with pytest.raises(egl.InputError, match=r"a mask of its image's size.*0.png' of 16x6 for .*0.png' of 16x12"):
        ds[i]


def test_16_bit_grey_images_and_masks_keep_their_levels(tmp_path) -> None:
    """PIL's convert("RGB") clipped a 16-bit ramp to 255: the image came back 99% white."""
    root = domain_tree(tmp_path, domains=("A",), classes=("cat",), n=1, masks=True)
    ramp = np.tile(np.linspace(0, 65535, 16).astype(np.uint16), (12, 1))
    Image.fromarray(ramp).save(root / "A" / "cat" / "0.png")
    mask = np.zeros((12, 16), np.uint16)
    mask[3:9, 4:12] = 65535
    Image.fromarray(mask).save(root / "masks" / "A" / "cat" / "0.png")
    item = DomainFolder(root, "all", image_size=16)[0]
    img = item["image"]
    assert torch.allclose(img[0], img[1]) and 0.45 < float(img.mean()) < 0.55  # grey, the ramp's mean
    assert float(item["mask"].max()) == pytest.approx(1.0) and 0.1 < float(item["mask"].mean()) < 0.4


def test_a_float_image_is_named(tmp_path) -> None:
    from egl.data.image_file import read_levels

    path = tmp_path / "f.tif"
    Image.fromarray(np.linspace(0, 3, 64, dtype=np.float32).reshape(8, 8)).save(path)
    with pytest.raises(egl.InputError, match=r"'x' expected 8- or 16-bit images, got '.*f.tif', a 32-bit float"):
        read_levels(path, "RGB", "fn", "x")


def test_a_masks_folder_that_matches_no_image_is_named(tmp_path) -> None:
    """Masks saved as .jpg or named <stem>_mask.png were skipped silently: the data read as
    having no masks, and a ground-truth masker failed hundreds of steps later."""
    root = domain_tree(tmp_path, masks=True)
    for f in list((root / "masks").rglob("*.png")):
        f.rename(f.with_name(f"{f.stem}_mask.png"))
    with pytest.raises(egl.InputError, match=r"'root' expected masks at masks/<domain>/<class>/<image stem>.png, "
                                             r"got none matching an image, e.g. 'masks/A/cat/0_mask.png' \(for "
                                             r"'A/cat/0.png' egl looks for 'masks/A/cat/0.png'\)"):
        DomainFolder(root, "all")


def test_masks_of_unselected_domains_only_are_not_a_layout_error(tmp_path) -> None:
    root = domain_tree(tmp_path, masks=True)
    for f in list((root / "masks" / "B").rglob("*.png")):
        f.unlink()
    assert not DomainFolder(root, "all", domains=["B"]).has_masks  # masks are optional per domain
    assert DomainFolder(root, "all", domains=["A"]).has_masks


def test_images_without_masks_can_train_unannotated(tmp_path) -> None:
    root = domain_tree(tmp_path, masks=True)
    for m in sorted((root / "masks" / "A" / "cat").iterdir())[:3]:
        m.unlink()
    with pytest.raises(egl.InputError, match="or pass missing_masks='unannotated'"):
        DomainFolder(root, "all", image_size=8)
    ds = DomainFolder(root, "all", image_size=8, missing_masks="unannotated")
    flags = [bool(ds[i]["annotated"]) for i in range(len(ds))]
    assert flags.count(False) == 3 and all(float(ds[i]["mask"].max()) == 0 for i in range(len(ds)) if not flags[i])
    # a fully annotated set read the same way flags its items too: combined, both sets batch together
    full = DomainFolder(domain_tree(tmp_path / "full", masks=True), "all", image_size=8, missing_masks="unannotated")
    assert all(bool(full[i]["annotated"]) for i in range(len(full)))
    both = torch.utils.data.ConcatDataset([full, ds])
    batch = next(iter(torch.utils.data.DataLoader(both, batch_size=len(full) + 2)))
    assert batch["annotated"].tolist() == [True] * len(full) + flags[:2]


def _object(shape: tuple[int, int] = (12, 16)) -> np.ndarray:
    m = np.zeros(shape, np.uint8)
    m[3:9, 4:12] = 1  # 48 of 192 pixels: a quarter
    return m


@pytest.mark.parametrize("kind", ["palette", "palette_white_first", "alpha_la", "alpha_cutout", "alpha_photo",
                                  "wide_0_255"])
def test_masks_are_read_for_their_meaning_not_their_colours(tmp_path, kind: str) -> None:
    """A VOC-style palette mask (index 1 is dark red) read at half strength; a mask in the alpha
    channel read as empty (black LA) or full (a white cut-out); 0/255 saved as 16 bits read as 0-65535:
    nearly empty. Each is read for what it marks."""
    root = domain_tree(tmp_path, domains=("A",), classes=("cat",), n=1, masks=True)
    f = root / "masks" / "A" / "cat" / "0.png"
    m = _object()
    if kind == "palette":
        im = Image.fromarray(m, mode="P")
        im.putpalette([0, 0, 0, 128, 0, 0] + [0] * 762)
    elif kind == "palette_white_first":  # an optimiser's palette order: read by its colours, not inverted
        im = Image.fromarray(m * 255).convert("RGB").quantize(colors=2)
        assert im.getpalette()[:3] != [0, 0, 0] or np.asarray(im).max() > 1  # (the case the index rule leaves)
    elif kind == "alpha_photo":  # a cut-out of a photo: colours vary, the alpha is the mask
        colour = np.random.default_rng(0).integers(0, 255, (*m.shape, 3), dtype=np.uint8)
        im = Image.fromarray(np.dstack([colour, m * 255]), mode="RGBA")
    elif kind == "alpha_la":
        im = Image.fromarray(np.stack([np.zeros_like(m), m * 255], -1), mode="LA")
    elif kind == "alpha_cutout":
        im = Image.fromarray(np.dstack([np.full_like(m, 255)] * 3 + [m * 255]), mode="RGBA")
    else:
        im = Image.fromarray((m * 255).astype(np.uint16))
    im.save(f)
    ds = DomainFolder(root, "all", image_size=16)
    if kind == "wide_0_255":
        with pytest.warns(UserWarning, match=r"the 16-bit mask '.*0.png' peaks at 255: read as 0-255"):
            item = ds[0]
    else:
        item = ds[0]
    assert float(item["mask"].max()) == pytest.approx(1.0) and float(item["mask"].mean()) == pytest.approx(0.25)


def test_an_image_is_turned_upright_when_its_mask_was_drawn_on_it_as_shown(tmp_path) -> None:
    """A phone photo stored sideways with an orientation tag, its mask drawn on the image as viewers
    show it: the sizes differ, and the image turned by its tag fits. Otherwise pixels as stored."""
    root = domain_tree(tmp_path, domains=("A",), classes=("cat",), n=1, masks=True)
    shown = np.zeros((12, 16, 3), np.uint8)
    shown[3:9, 4:12] = 255  # the object as a viewer shows it
    stored = Image.fromarray(shown).transpose(Image.Transpose.ROTATE_90)  # as the camera stored it: 16x12
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90° clockwise to display"
    (root / "A" / "cat" / "0.png").unlink()
    stored.save(root / "A" / "cat" / "0.jpg", exif=exif, quality=100)
    Image.fromarray(_object() * 255).save(root / "masks" / "A" / "cat" / "0.png")  # drawn on the shown image
    item = DomainFolder(root, "all", image_size=16)[0]
    inside = item["mask"][0] > 0.5
    assert float(item["image"].mean(0)[inside].mean()) > 0.9 and float(item["image"].mean(0)[~inside].mean()) < 0.1
    # the mask drawn on the pixels as stored (its size says so): the image is read as stored, as PIL reads it
    Image.fromarray((np.asarray(stored.convert("L")) > 127).astype(np.uint8) * 255).save(
        root / "masks" / "A" / "cat" / "0.png")
    item = DomainFolder(root, "all", image_size=16)[0]
    inside = item["mask"][0] > 0.5
    assert float(item["image"].mean(0)[inside].mean()) > 0.9 and float(item["image"].mean(0)[~inside].mean()) < 0.1


def test_hidden_files_and_macos_folders_are_not_images_classes_or_domains(tmp_path) -> None:
    root = domain_tree(tmp_path, domains=("A", "B"), classes=("cat", "dog"), n=2, masks=True)
    (root / "A" / "cat" / "._0.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # a resource fork
    (root / "__MACOSX" / "A" / "cat").mkdir(parents=True)
    (root / "__MACOSX" / "A" / "cat" / "._1.png").write_bytes(b"\x00")
    (root / "A" / ".hidden").mkdir()
    domains, classes, samples = scan(root)
    assert domains == ["A", "B"] and classes == ["cat", "dog"] and len(samples) == 8
    assert not any(s.path.name.startswith(".") for s in samples)
    f = root / "masks" / "B" / "dog" / "1.png"
    f.rename(f.with_suffix(".PNG"))  # a mask saved with an upper-case extension is still its image's
    assert next(s for s in scan(root)[2] if s.path.parent.name == "dog" and s.path.stem == "1"
                and s.path.parent.parent.name == "B").mask == f.with_suffix(".PNG")
    (root / "A" / "cat" / "0.png").rename(root / "A" / "cat" / "Img0.png")  # and a stem in another case
    (root / "masks" / "A" / "cat" / "0.png").rename(root / "masks" / "A" / "cat" / "IMG0.png")
    assert next(s for s in scan(root)[2] if s.path.name == "Img0.png").mask.name == "IMG0.png"


def test_verify_checks_each_masks_size_from_the_headers_and_the_folder_describes_itself(tmp_path) -> None:
    """A mask of another size failed at the step that first loaded it (step 3, in a written folder)."""
    root = domain_tree(tmp_path, domains=("A", "B"), n=3, masks=True)
    Image.fromarray(np.zeros((6, 16), np.uint8)).save(root / "masks" / "B" / "dog" / "1.png")
    with pytest.raises(egl.InputError, match=r"'root' expected readable images, each mask of its image's size, got "
                       r"'.*B/dog/1.png' \(ValueError: its mask '.*1.png' is 16x6, the image 16x12"):
        DomainFolder(root, "all", verify=True)
    with pytest.warns(UserWarning, match=r"skipping image '.*B/dog/1.png'"):
        ds = DomainFolder(root, "all", verify=True, on_error="skip", image_size=8)
    assert len(ds) == 11
    assert repr(ds) == "DomainFolder(split='all', images=11, classes=['cat', 'dog'], domains=['A', 'B'], masks=True)"
    with pytest.raises(egl.InputError, match=r"Pass e.g. domains=\['B'\]"):  # a string: the list it meant
        DomainFolder(root, "all", domains="B")


def test_a_palette_class_label_mask_warns(tmp_path) -> None:
    root = domain_tree(tmp_path, domains=("A",), classes=("cat",), n=1, masks=True)
    labels = _object()
    labels[0, :4] = 2  # a second class
    labels[-1, :] = 255  # VOC's void border
    im = Image.fromarray(labels, mode="P")
    im.putpalette([0, 0, 0, 128, 0, 0, 0, 128, 0] + [0] * 756 + [224, 224, 192])
    im.save(root / "masks" / "A" / "cat" / "0.png")
    with pytest.warns(UserWarning, match=r"the palette mask '.*0.png' uses more than two colours"):
        DomainFolder(root, "all", image_size=16)[0]
