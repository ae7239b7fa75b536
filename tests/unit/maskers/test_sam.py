"""egl.maskers.SAMMasker: Segment Anything proposals as masks, with a disk cache.

Every test uses a tiny, randomly initialised SAM built here from a small SamConfig
(64 px images, 8x8 embeddings, 32x32 low-resolution masks); nothing is downloaded.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from _helpers import make_model, tiny_sam_config

import egl
from egl.maskers import SAMMasker
from egl.maskers.sam import combine_proposals
from egl.recipes import align

transformers = pytest.importorskip("transformers")

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.fixture(scope="module")
def tiny_sam() -> torch.nn.Module:
    torch.manual_seed(0)
    return transformers.SamModel(tiny_sam_config()).eval()


@pytest.fixture
def x01() -> torch.Tensor:
    g = torch.Generator().manual_seed(3)
    return torch.rand(3, 3, 40, 56, generator=g)  # not square: resize, pad and crop are exercised


class Counter:
    """Counts image-encoder and mask-decoder calls through forward hooks (removed on close)."""

    def __init__(self, sam: torch.nn.Module) -> None:
        self.encoder = self.decoder = 0
        self._hooks = [sam.vision_encoder.register_forward_hook(lambda *a: self._hit("encoder")),
                       sam.mask_decoder.register_forward_hook(lambda *a: self._hit("decoder"))]

    def _hit(self, what: str) -> None:
        setattr(self, what, getattr(self, what) + 1)

    def close(self) -> None:
        for h in self._hooks:
            h.remove()


def entries(root: Path) -> list[Path]:
    return sorted(p for p in root.rglob("*") if p.is_file())


# -- output ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("rule", ["union", "best"])
def test_shape_range_dtype(tiny_sam: torch.nn.Module, x01: torch.Tensor, rule: str) -> None:
    m = SAMMasker(model=tiny_sam, points_per_side=4, rule=rule, iou_threshold=0.0)
    out = m(x01)
    assert out.shape == (3, 1, 40, 56) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and 0.0 <= float(out.min()) and float(out.max()) <= 1.0
    assert float(out.std()) > 0  # a real map, not a constant


def test_frozen_outside_the_module_tree(tiny_sam: torch.nn.Module) -> None:
    m = SAMMasker(tiny_sam)  # positional model works too
    assert not m.trainable and not m.needs_mask
    assert not list(m.parameters()) and m.state_dict() == {}
    assert not any(p.requires_grad for p in m.model.parameters())
    m.train()
    assert m.training and not m.model.training
    m.to(torch.float64)
    assert next(m.model.parameters()).dtype == torch.float64
    m.to(torch.float32)
    assert "rule='union'" in repr(m)


def test_batch_is_independent_and_chunking_changes_nothing(tiny_sam: torch.nn.Module, x01: torch.Tensor) -> None:
    big = SAMMasker(model=tiny_sam, points_per_side=4, iou_threshold=0.0)(x01)
    small = SAMMasker(model=tiny_sam, points_per_side=4, iou_threshold=0.0, points_per_batch=3,
                      image_batch_size=2)(x01)
    torch.testing.assert_close(small, big, atol=1e-3, rtol=0)
    one = SAMMasker(model=tiny_sam, points_per_side=4, iou_threshold=0.0)(x01[1:2])
    torch.testing.assert_close(one, big[1:2], atol=1e-3, rtol=0)


def test_normalised_inputs(tiny_sam: torch.nn.Module, x01: torch.Tensor) -> None:
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    xn = (x01 - mean) / std
    plain = SAMMasker(model=tiny_sam, points_per_side=2)(x01)
    undone = SAMMasker(model=tiny_sam, points_per_side=2, input_mean=IMAGENET_MEAN, input_std=IMAGENET_STD)(xn)
    torch.testing.assert_close(undone, plain, atol=1e-3, rtol=0)
    with pytest.raises(egl.InputError, match=r"sam: 'x' expected RGB images in \[0, 1\].*input_mean"):
        SAMMasker(model=tiny_sam, points_per_side=2)(xn)


def test_matches_transformers_processor_pipeline(tiny_sam: torch.nn.Module) -> None:
    """One point, best proposal: the same mask as SamImageProcessor + SamModel + post_process_masks."""
    g = torch.Generator().manual_seed(5)
    x = torch.rand(2, 3, 48, 64, generator=g)  # longest side = the model's 64 px: padding, no resampling
    proc = transformers.SamImageProcessor(size={"longest_edge": 64}, pad_size={"height": 64, "width": 64},
                                          do_rescale=False)
    inputs = proc(images=list(x), return_tensors="pt")
    with torch.no_grad():
        res = tiny_sam(pixel_values=inputs["pixel_values"], input_points=torch.tensor([[[[32.0, 24.0]]]] * 2),
                       multimask_output=True)
    logits = proc.post_process_masks(res.pred_masks, inputs["original_sizes"], inputs["reshaped_input_sizes"],
                                     binarize=False)
    best = res.iou_scores[:, 0].argmax(1)
    expected = torch.stack([torch.sigmoid(logits[i][0, int(best[i])]) for i in range(2)]).unsqueeze(1)
    out = SAMMasker(model=tiny_sam, points_per_side=1, rule="best")(x)
    torch.testing.assert_close(out, expected, atol=1e-3, rtol=0)


# -- the rule ---------------------------------------------------------------------------------------
def test_combine_proposals_union_and_best() -> None:
    logits = torch.full((2, 3, 4, 4), -5.0)
    logits[:, 0, :2, :2] = 5.0   # top-left, iou 0.9
    logits[:, 1, 2:, 2:] = 4.0   # bottom-right, iou 0.95
    logits[:, 2] = 3.0           # everything, iou 0.5
    iou = torch.tensor([[0.9, 0.95, 0.5], [0.9, 0.95, 0.5]])
    union = combine_proposals(logits, iou, iou_threshold=0.88)
    assert union.shape == (2, 1, 4, 4)
    torch.testing.assert_close(union, logits[:, :2].amax(1, keepdim=True))  # soft union of the two kept
    torch.testing.assert_close(combine_proposals(logits, iou, rule="best"), logits[:, 1:2])
    # nothing passes the threshold: the best proposal stands in
    torch.testing.assert_close(combine_proposals(logits, iou, iou_threshold=0.99), logits[:, 1:2])
    # max_area drops the all-covering proposal even when it scores best
    iou2 = torch.tensor([[0.9, 0.95, 0.99]] * 2)
    torch.testing.assert_close(combine_proposals(logits, iou2, rule="best", max_area=0.5), logits[:, 1:2])
    torch.testing.assert_close(combine_proposals(logits, iou2, rule="best"), logits[:, 2:3])
    # every proposal too large: the best of all
    torch.testing.assert_close(combine_proposals(logits, iou2, rule="best", max_area=0.01), logits[:, 2:3])
    with pytest.raises(egl.InputError, match=r"combine_proposals: 'iou' expected shape \[2, 3\]"):
        combine_proposals(logits, iou[:, :2])


def test_rules_differ_on_sam(tiny_sam: torch.nn.Module, x01: torch.Tensor) -> None:
    union = SAMMasker(model=tiny_sam, points_per_side=4, iou_threshold=0.0)(x01)
    best = SAMMasker(model=tiny_sam, points_per_side=4, rule="best")(x01)
    assert (union >= best - 1e-3).all()  # the union of every proposal covers the best one
    assert not torch.allclose(union, best)


# -- cache ------------------------------------------------------------------------------------------
def test_cache_hit_miss_and_invalidation(tiny_sam: torch.nn.Module, x01: torch.Tensor, tmp_path: Path) -> None:
    count = Counter(tiny_sam)
    try:
        m = SAMMasker(model=tiny_sam, points_per_side=2, cache_dir=tmp_path, dataset="toy")
        first = m(x01)
        assert count.encoder == 1 and count.decoder == 1
        assert len(entries(tmp_path / "toy")) == 3
        second = m(x01)
        assert count.encoder == 1 and count.decoder == 1  # every image from the cache
        assert torch.equal(first, second)
        # a fresh masker (same model, same settings) reads the same entries
        assert torch.equal(SAMMasker(model=tiny_sam, points_per_side=2, cache_dir=tmp_path, dataset="toy")(x01),
                           first)
        assert count.encoder == 1
        # one changed image: one miss
        x2 = x01.clone()
        x2[1, :, 0, 0] = 0.5
        m(x2)
        assert count.encoder == 2 and len(entries(tmp_path / "toy")) == 4
        # another configuration: every image misses
        SAMMasker(model=tiny_sam, points_per_side=2, rule="best", cache_dir=tmp_path, dataset="toy")(x01)
        assert count.encoder == 3 and len(entries(tmp_path / "toy")) == 7
    finally:
        count.close()


def test_cache_keyed_by_weights(x01: torch.Tensor, tmp_path: Path) -> None:
    torch.manual_seed(1)
    a = transformers.SamModel(tiny_sam_config()).eval()
    SAMMasker(model=a, points_per_side=2, cache_dir=tmp_path)(x01)
    with torch.no_grad():
        a.mask_decoder.iou_token.weight.add_(1.0)  # other weights, same class and config
    count = Counter(a)
    try:
        SAMMasker(model=a, points_per_side=2, cache_dir=tmp_path)(x01)
        assert count.encoder == 1
    finally:
        count.close()



def test_the_same_masker_misses_once_its_weights_change(x01: torch.Tensor, tmp_path: Path) -> None:
    """The fingerprint was computed once per masker: after load_state_dict (another checkpoint)
    the masker kept serving the old weights' masks (0.59 off)."""
    torch.manual_seed(1)
    m = SAMMasker(model=transformers.SamModel(tiny_sam_config()).eval(), points_per_side=2, cache_dir=tmp_path)
    before = m(x01)
    torch.manual_seed(123)
    m.model.load_state_dict(transformers.SamModel(tiny_sam_config()).state_dict())
    fresh = SAMMasker(model=m.model, points_per_side=2)(x01)
    assert not torch.equal(fresh, before)
    assert torch.equal(m(x01), fresh)
    with torch.no_grad():
        m.model.mask_decoder.iou_token.weight.add_(1.0)  # in place
    assert torch.equal(m(x01), SAMMasker(model=m.model, points_per_side=2)(x01))


def test_masks_do_not_depend_on_the_callers_autocast(tiny_sam: torch.nn.Module, x01: torch.Tensor,
                                                     tmp_path: Path) -> None:
    """fit(precision="bf16") runs every step under autocast: SAM ran in bf16 there (masks up to
    0.21 off) and cached them under the float32 key."""
    plain = SAMMasker(model=tiny_sam, points_per_side=2)(x01)
    m = SAMMasker(model=tiny_sam, points_per_side=2, cache_dir=tmp_path)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        under = m(x01)
    assert torch.equal(under, plain)
    assert torch.equal(m(x01), plain)

def test_corrupt_entry_is_recomputed(tiny_sam: torch.nn.Module, x01: torch.Tensor, tmp_path: Path) -> None:
    m = SAMMasker(model=tiny_sam, points_per_side=2, cache_dir=tmp_path)
    first = m(x01)
    victim = entries(tmp_path)[0]
    victim.write_bytes(victim.read_bytes()[:20])  # truncated
    count = Counter(tiny_sam)
    try:
        assert torch.equal(m(x01), first)
        assert count.encoder == 1  # only the broken image, once
        assert torch.equal(m(x01), first) and count.encoder == 1  # rewritten whole
    finally:
        count.close()


def test_killed_write_leaves_no_entry(tiny_sam: torch.nn.Module, x01: torch.Tensor, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    real_save = torch.save

    def dies_half_way(obj: object, f: object, *args: object, **kwargs: object) -> None:
        f.write(b"PK\x03\x04 half a zip")  # type: ignore[attr-defined]
        raise KeyboardInterrupt("killed while writing")

    m = SAMMasker(model=tiny_sam, points_per_side=2, cache_dir=tmp_path)
    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        m(x01)
    assert entries(tmp_path) == []  # no entry, no temporary file
    monkeypatch.setattr(torch, "save", real_save)
    count = Counter(tiny_sam)
    try:
        m(x01)
        assert count.encoder == 1 and len(entries(tmp_path)) == 3
    finally:
        count.close()


def test_precompute_fills_the_cache(tiny_sam: torch.nn.Module, x01: torch.Tensor, tmp_path: Path) -> None:
    m = SAMMasker(model=tiny_sam, points_per_side=2, cache_dir=tmp_path)
    data = [(img, 0) for img in x01]
    assert m.precompute(data, batch_size=2) == 3
    count = Counter(tiny_sam)
    try:
        m(x01)
        assert count.encoder == 0
    finally:
        count.close()
    with pytest.raises(egl.InputError, match="'cache_dir' expected a directory"):
        SAMMasker(model=tiny_sam).precompute(data)
    with pytest.raises(egl.InputError, match=r"precompute: 'data' expected items holding one image \[3, H, W\] each "
                                             r"\(a dataset, not a DataLoader"):
        m.precompute([(x01, torch.zeros(3))])  # a DataLoader's batch
    with pytest.raises(egl.InputError, match=r"precompute: 'data' expected images of one size"):
        m.precompute([x01[0], x01[0, :, :8, :8]])


# -- loading and errors --------------------------------------------------------------------------------
def test_loads_a_local_folder(tiny_sam: torch.nn.Module, x01: torch.Tensor, tmp_path: Path,
                              monkeypatch: pytest.MonkeyPatch) -> None:
    tiny_sam.save_pretrained(tmp_path / "tiny-sam")
    expected = SAMMasker(model=tiny_sam, points_per_side=2)(x01)
    loaded = SAMMasker(weights=tmp_path / "tiny-sam", points_per_side=2)
    assert type(loaded.model).__name__ == "SamModel"
    torch.testing.assert_close(loaded(x01), expected)
    monkeypatch.setenv("EGL_SAM_WEIGHTS", str(tmp_path / "tiny-sam"))
    torch.testing.assert_close(SAMMasker(points_per_side=2)(x01), expected)


def test_an_incomplete_or_damaged_folder_is_named(tiny_sam: torch.nn.Module, tmp_path: Path) -> None:
    """An interrupted download (config.json but no weights), a damaged config.json, a path that is
    not one: InputErrors naming the folder, not transformers' or pathlib's own errors."""
    folder = tmp_path / "tiny-sam"
    tiny_sam.save_pretrained(folder)
    for f in folder.iterdir():
        if f.name != "config.json":
            f.unlink()
    with pytest.raises(egl.InputError, match=r"'weights' expected a folder with the model's weights .*tiny-sam"):
        SAMMasker(weights=folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(egl.InputError, match=r"'weights' expected a readable config.json"):
        SAMMasker(weights=folder)
    with pytest.raises(egl.InputError, match=r"'weights' expected the path of a local SAM checkpoint folder, got 3"):
        SAMMasker(weights=3)


def test_sam_hq_folder(x01: torch.Tensor, tmp_path: Path) -> None:
    """SAM-HQ checkpoints load as SamHQModel; its decoder also reads intermediate ViT features."""
    if not hasattr(transformers, "SamHQModel"):
        pytest.skip("this transformers has no SAM-HQ")
    c = tiny_sam_config().to_dict()
    c["mask_decoder_config"]["vit_dim"] = 32
    cfg = transformers.SamHQConfig(vision_config=c["vision_config"], prompt_encoder_config=c["prompt_encoder_config"],
                                   mask_decoder_config=c["mask_decoder_config"], initializer_range=0.3)
    torch.manual_seed(0)
    transformers.SamHQModel(cfg).save_pretrained(tmp_path / "tiny-sam-hq")
    m = SAMMasker(weights=tmp_path / "tiny-sam-hq", points_per_side=2)
    assert type(m.model).__name__ == "SamHQModel"
    out = m(x01)
    assert out.shape == (3, 1, 40, 56) and 0.0 <= float(out.min()) and float(out.max()) <= 1.0


def test_no_weights_says_how_to_get_them(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("EGL_SAM_WEIGHTS", raising=False)
    with pytest.raises(egl.InputError) as info:
        SAMMasker()
    msg = str(info.value)
    assert msg.startswith("egl.maskers.SAMMasker: 'weights' expected a local SAM checkpoint folder")
    assert "got None" in msg and "hf download facebook/sam-vit-base" in msg
    assert "SAMMasker(weights=" in msg and "EGL_SAM_WEIGHTS" in msg and "never downloads" in msg
    with pytest.raises(egl.InputError, match=r"'weights' expected a local folder holding a transformers SAM"):
        SAMMasker(weights=tmp_path / "nothing-here")


def test_missing_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    monkeypatch.setitem(sys.modules, "transformers", None)  # `import transformers` now raises ImportError
    with pytest.raises(ImportError, match=r"pip install egl\[sam\]") as info:
        SAMMasker(weights=tmp_path)
    assert isinstance(info.value, egl.EGLError)


def test_argument_errors(tiny_sam: torch.nn.Module) -> None:
    with pytest.raises(egl.InputError, match=r"'rule' expected one of \['union', 'best'\], got 'max'"):
        SAMMasker(model=tiny_sam, rule="max")
    with pytest.raises(egl.InputError, match="'points_per_side' expected an int >= 1"):
        SAMMasker(model=tiny_sam, points_per_side=0)
    with pytest.raises(egl.InputError, match=r"'max_area' expected a number in \(0, 1\]"):
        SAMMasker(model=tiny_sam, max_area=0)
    with pytest.raises(egl.InputError, match="'input_std' expected to come with 'input_mean'"):
        SAMMasker(model=tiny_sam, input_mean=IMAGENET_MEAN)


@pytest.mark.parametrize(("kw", "msg"), [
    ({"iou_threshold": -1.0}, r"'iou_threshold' expected a number in \[0, 1\], got -1.0"),
    ({"iou_threshold": 1.5}, r"'iou_threshold' expected a number in \[0, 1\], got 1.5"),
    ({"iou_threshold": True}, r"'iou_threshold' expected a number in \[0, 1\], got True"),
    ({"iou_threshold": float("nan")}, r"'iou_threshold' expected a number in \[0, 1\], got nan"),
    ({"max_area": 1.5}, r"'max_area' expected a number in \(0, 1\] \(a fraction of the image\), got 1.5"),
    ({"max_area": -0.5}, r"'max_area' expected a number in \(0, 1\]"),
    ({"max_area": True}, r"'max_area' expected a number in \(0, 1\] \(a fraction of the image\), got True"),
    ({"max_area": "0.5"}, r"'max_area' expected a number in \(0, 1\] \(a fraction of the image\), got '0.5'"),
])
def test_thresholds_out_of_range_or_bool_are_refused(tiny_sam: torch.nn.Module, kw: dict, msg: str) -> None:
    """combine_proposals took any value (a bool as 1.0, max_area=1.5, iou_threshold=-1); SAMMasker
    took a bool and an iou_threshold outside [0, 1]. Both now refuse them by name."""
    with pytest.raises(egl.InputError, match=rf"egl.maskers.SAMMasker: {msg}"):
        SAMMasker(model=tiny_sam, **kw)
    logits, iou = torch.randn(1, 3, 4, 4), torch.rand(1, 3)
    with pytest.raises(egl.InputError, match=rf"egl.maskers.combine_proposals: {msg}"):
        combine_proposals(logits, iou, **kw)
    assert combine_proposals(logits, iou, iou_threshold=0, max_area=1).shape == (1, 1, 4, 4)  # ints are fine


def test_a_cache_dir_that_is_a_file_is_refused_at_construction(tiny_sam: torch.nn.Module, x01: torch.Tensor,
                                                               tmp_path: Path) -> None:
    """A file as cache_dir failed only at the first forward, with a raw FileExistsError from mkdir."""
    f = tmp_path / "masks.pt"
    f.write_bytes(b"not a folder")
    under = r"a path under the file '.*masks.pt'"
    for kw, what in (({"cache_dir": f}, "an existing file"), ({"cache_dir": f, "dataset": "toy"}, under),
                     ({"cache_dir": f / "sub"}, under)):
        with pytest.raises(egl.InputError, match=rf"SAMMasker: 'cache_dir' expected a folder \(or a path where one "
                                                 rf"can be created\), got '.*', {what}\. Pass a folder"):
            SAMMasker(model=tiny_sam, points_per_side=2, **kw)
    with pytest.raises(egl.InputError, match=r"'cache_dir' expected a folder path \(or None: no cache\), got 3"):
        SAMMasker(model=tiny_sam, cache_dir=3)  # type: ignore[arg-type]
    m = SAMMasker(model=tiny_sam, points_per_side=2, cache_dir=tmp_path / "new" / "deeper", dataset="toy")
    m(x01[:1])  # a folder that does not exist yet is created on first write
    assert len(entries(tmp_path / "new" / "deeper" / "toy")) == 1
    with pytest.raises(egl.InputError, match="'model' expected a transformers SamModel"):
        SAMMasker(model=torch.nn.Linear(2, 2))
    m = SAMMasker(model=tiny_sam)
    with pytest.raises(egl.InputError, match="'x' expected a 4-D tensor"):
        m(torch.rand(3, 16, 16))
    with pytest.raises(egl.InputError, match=r"'x' expected an RGB \(3-channel\) image, got 1 channels"):
        m(torch.rand(1, 1, 16, 16))


# -- in a recipe ----------------------------------------------------------------------------------------
def test_align_trains_with_sam(tiny_sam: torch.nn.Module) -> None:
    model = make_model("test_resnet", output_stride=16, eval_mode=False)
    masker = SAMMasker(model=tiny_sam, points_per_side=2)
    recipe = align(model, masker=masker, warmup_steps=0)
    assert [p.name for p in recipe.phases()] == ["classifier"]  # a frozen masker has no phase
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(4, 3, 64, 64, generator=g), torch.tensor([0, 1, 2, 3])
    before = [p.detach().clone() for p in model.parameters()]
    logs = recipe.fit([(x, y)], steps=1, progress=False)
    assert {"classifier/ce", "classifier/align", "classifier/total"} <= set(logs[0])
    assert any(not torch.equal(a, b) for a, b in zip(before, model.parameters()))
    assert not any(k.startswith("masker.") for k in recipe.state_dict())  # SAM stays out of checkpoints
