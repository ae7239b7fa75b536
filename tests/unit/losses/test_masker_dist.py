"""egl.losses.masker_dist / masker_dist_loss / MaskerDistLoss: ALIGN's masker objective."""

from __future__ import annotations

import pytest
import torch
from _helpers import NUM_CLASSES, make_model

import egl
from egl.losses import MaskerDistLoss, masker_dist, masker_dist_loss


def _logits(b: int = 4, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, NUM_CLASSES, generator=g), torch.randn(b, NUM_CLASSES, generator=g),
            torch.randint(0, NUM_CLASSES, (b,), generator=g))


def test_dist_is_difference_of_true_class_probabilities() -> None:
    fg, bg, t = _logits()
    ref = fg.softmax(1)[torch.arange(4), t] - bg.softmax(1)[torch.arange(4), t]
    d = masker_dist(fg, bg, t)
    assert d.shape == (4,)
    torch.testing.assert_close(d, ref)
    assert float(d.abs().max()) <= 1.0


def test_loss_is_mse_to_one() -> None:
    fg, bg, t = _logits()
    d = masker_dist(fg, bg, t)
    torch.testing.assert_close(masker_dist_loss(fg, bg, t), ((d - 1) ** 2).mean())
    torch.testing.assert_close(masker_dist_loss(fg, bg, t, reduction="sum"), ((d - 1) ** 2).sum())
    none = masker_dist_loss(fg, bg, t, reduction="none")
    assert none.shape == (4,)
    torch.testing.assert_close(none, (d - 1) ** 2)


def test_loss_near_zero_for_perfect_mask() -> None:
    t = torch.tensor([0, 3])
    fg = torch.full((2, NUM_CLASSES), -50.0)
    fg[torch.arange(2), t] = 50.0
    bg = -fg
    assert float(masker_dist_loss(fg, bg, t)) < 1e-8


def test_int_target() -> None:
    fg, bg, _ = _logits()
    torch.testing.assert_close(masker_dist(fg, bg, 2), masker_dist(fg, bg, torch.full((4,), 2)))


def test_module_batches_both_halves_like_two_passes() -> None:
    model = make_model("test_resnet")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, 3, 32, 32, generator=g)
    m = torch.rand(3, 1, 32, 32, generator=g)
    t = torch.tensor([0, 1, 4])
    got = MaskerDistLoss(reduction="none")(model, x, m, t)
    with torch.no_grad():
        ref = masker_dist_loss(model(x * m), model(x * (1 - m)), t, reduction="none")
    assert got.shape == (3,)
    torch.testing.assert_close(got, ref, atol=1e-6, rtol=1e-5)


def test_module_resizes_mask_and_accepts_bool_3d() -> None:
    model = make_model("test_resnet")
    x = torch.randn(2, 3, 32, 32)
    small = torch.rand(2, 8, 8) > 0.5
    up = torch.nn.functional.interpolate(small.float().unsqueeze(1), size=(32, 32), mode="bilinear",
                                         align_corners=False)
    loss = MaskerDistLoss()
    torch.testing.assert_close(loss(model, x, small, [0, 1]), loss(model, x, up, [0, 1]))


@pytest.mark.filterwarnings("error")  # a mask that requires grad is validated without a torch warning
def test_module_gradient_reaches_masker_parameters() -> None:
    model = make_model("test_resnet")
    for p in model.parameters():
        p.requires_grad_(False)
    masker = egl.create("masker", "learned")
    x = torch.randn(2, 3, 32, 32)
    loss = MaskerDistLoss()(model, x, masker(x), torch.tensor([1, 2]))
    loss.backward()
    grads = [p.grad for p in masker.parameters()]
    assert all(gr is not None for gr in grads) and any(float(gr.abs().sum()) > 0 for gr in grads)


def test_errors() -> None:
    fg, bg, t = _logits()
    with pytest.raises(egl.InputError, match=r"masker_dist: 'logits_fg' expected a 2-D tensor of shape \[B, K\]"):
        masker_dist(fg[0], bg, t)
    with pytest.raises(egl.InputError, match=r"'logits_bg' expected the same batch size as 'logits_fg' \(4\), got batch size 3"):
        masker_dist(fg, bg[:3], t)
    with pytest.raises(egl.InputError, match=r"'target' expected one class index per sample \(shape \[4\]\)"):
        masker_dist(fg, bg, t[:2])
    with pytest.raises(egl.InputError, match=r"'target' expected class indices in \[0, 4\].*got values in \[0, 7\]"):
        masker_dist(fg, bg, torch.tensor([0, 7, 1, 1]))
    with pytest.raises(egl.InputError, match=r"masker_dist: 'target' expected the true class of every sample, got None"):
        masker_dist(fg, bg, None)  # type: ignore[arg-type]
    with pytest.raises(egl.InputError, match=r"masker_dist_loss: 'reduction' expected one of"):
        masker_dist_loss(fg, bg, t, reduction="avg")
    with pytest.raises(egl.InputError, match=r"MaskerDistLoss: 'reduction' expected one of"):
        MaskerDistLoss(reduction="avg")


def test_module_errors() -> None:
    model = make_model("test_resnet")
    loss = MaskerDistLoss()
    x = torch.randn(2, 3, 32, 32)
    with pytest.raises(egl.InputError, match=r"MaskerDistLoss: 'x' expected a 4-D tensor"):
        loss(model, x[0], torch.rand(2, 32, 32), [0, 1])
    with pytest.raises(egl.InputError, match=r"MaskerDistLoss: 'mask' expected the same batch size as 'x' \(2\)"):
        loss(model, x, torch.rand(3, 32, 32), [0, 1])
    with pytest.raises(egl.InputError, match=r"MaskerDistLoss: 'mask' expected values in \[0.0, 1.0\], got values in \[0, 2\]"):
        loss(model, x, torch.tensor([0.0, 2.0]).repeat(2, 1, 16, 16), [0, 1])
    with pytest.raises(egl.InputError, match=r"'mask' expected a mask of shape"):
        loss(model, x, torch.rand(2, 3, 32, 32), [0, 1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16_bit_logits_are_scored_in_float32(dtype: torch.dtype) -> None:
    """The softmax ran in the logits' dtype: a bf16 loss 1.5234 for 1.5173, its gradient ~10% off."""
    fg, bg, t = _logits(8, seed=3)
    fg16, bg16 = fg.to(dtype), bg.to(dtype)
    got = masker_dist_loss(fg16, bg16, t)
    assert got.dtype == torch.float32
    torch.testing.assert_close(got, masker_dist_loss(fg16.float(), bg16.float(), t), rtol=0, atol=0)


def test_logits_of_different_class_counts_are_named() -> None:
    with pytest.raises(egl.InputError, match=r"masker_dist: 'logits_bg' expected the class count of 'logits_fg' "
                                             r"\(4\), got 5 classes"):
        masker_dist(torch.randn(2, 4), torch.randn(2, 5), torch.tensor([0, 1]))


def test_masked_pair_logits_names_a_mask_that_would_broadcast() -> None:
    """A mask of batch 1 (or of another resolution) broadcast over x: logits of the wrong images, silently."""
    from egl.losses.masker_dist import masked_pair_logits

    model, x = make_model("test_resnet"), torch.randn(2, 3, 32, 32)
    with pytest.raises(egl.InputError, match=r"masked_pair_logits: 'mask' expected the same batch size as 'x' \(2\)"):
        masked_pair_logits(model, x, torch.rand(1, 1, 32, 32))
    with pytest.raises(egl.InputError, match=r"'mask' expected masks at the resolution of 'x' \[32, 32\]"):
        masked_pair_logits(model, x, torch.rand(2, 1, 1, 32))
    with pytest.raises(egl.InputError, match=r"'mask' expected a 4-D tensor of shape \[B, 1, H, W\]"):
        masked_pair_logits(model, x, torch.rand(2, 32, 32))
    fg, bg = masked_pair_logits(model, x, torch.ones(2, 1, 32, 32))
    torch.testing.assert_close(fg, model(x))


def test_empty_batch_float64_images_and_a_non_model_are_named() -> None:
    """An empty batch was a ValueError from unpacking split(); float64 images a conv dtype error."""
    model, loss = make_model("test_resnet"), MaskerDistLoss()
    empty = torch.zeros(0, dtype=torch.long)
    with pytest.raises(egl.InputError, match=r"masker_dist_loss: 'inputs' expected a batch of at least one sample"):
        loss(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, NUM_CLASSES)), torch.rand(0, 3, 2, 2),
             torch.rand(0, 1, 2, 2), empty)
    with pytest.raises(egl.InputError, match=r"MaskerDistLoss: 'x' expected images of the model's dtype"):
        loss(model, torch.randn(2, 3, 32, 32, dtype=torch.float64), torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))
    with pytest.raises(egl.InputError, match=r"MaskerDistLoss: 'model' expected a classifier"):
        loss("resnet", torch.randn(2, 3, 32, 32), torch.rand(2, 1, 32, 32), torch.tensor([0, 1]))


def test_integer_masks_are_named_with_both_conversions() -> None:
    """x * a uint8 0-255 mask would weigh pixels by 255: the fix names 0/1 and 0-255 masks apart."""
    from egl.losses.masker_dist import masked_pair_logits

    x = torch.randn(2, 3, 16, 16)
    with pytest.raises(egl.InputError, match=r"'mask' expected floating-point masks in \[0, 1\], got a torch.uint8 "
                                             r".*mask.float\(\) for 0/1 or bool masks, mask.float\(\) / 255 for 0-255"):
        masked_pair_logits(make_model("test_resnet"), x, torch.ones(2, 1, 16, 16, dtype=torch.uint8))


def test_the_masked_halves_are_taken_in_the_models_normalised_space() -> None:
    """With the normalisation in the stem, x ⊙ M is the paper's product of normalised tensors:
    removed pixels are the mean colour (zero after the stem), as if the model took normalised images."""
    import copy

    from egl.losses.masker_dist import masked_pair_logits
    from egl.normalization import IMAGENET_MEAN, IMAGENET_STD, normalize_inputs

    plain = make_model("test_resnet")
    model = normalize_inputs(copy.deepcopy(plain), "imagenet")
    g = torch.Generator().manual_seed(0)
    x, m = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)
    mean, std = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        fg, bg = masked_pair_logits(model, x, m)
        z = (x - mean) / std  # what the paper's classifier receives
        torch.testing.assert_close(fg, plain(z * m), atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(bg, plain(z * (1 - m)), atol=1e-5, rtol=1e-4)
        fg_plain, _ = masked_pair_logits(plain, x, m)  # no normalisation in the model: x ⊙ M as it is
        torch.testing.assert_close(fg_plain, plain(x * m))


def test_black_fill_keeps_the_plain_product_and_alignment_records_its_fill() -> None:
    import copy

    from egl import recipes
    from egl.losses import MaskerDistLoss
    from egl.losses.masker_dist import masked_pair_logits
    from egl.normalization import normalize_inputs

    plain = make_model("test_resnet")
    model = normalize_inputs(copy.deepcopy(plain), "imagenet")
    g = torch.Generator().manual_seed(0)
    x, m = torch.rand(2, 3, 32, 32, generator=g), torch.rand(2, 1, 32, 32, generator=g)
    with torch.no_grad():
        fg, _ = masked_pair_logits(model, x, m, fill="black")
        torch.testing.assert_close(fg, model(x * m))
    y = torch.tensor([0, 1])
    assert not torch.allclose(MaskerDistLoss(fill="black")(model, x, m, y), MaskerDistLoss()(model, x, m, y))
    with pytest.raises(egl.InputError, match="'fill' expected one of"):
        MaskerDistLoss(fill="grey")
    assert recipes.align(make_model("test_resnet"), mask_fill="black").config()["mask_fill"] == "black"
    with pytest.raises(egl.InputError, match="egl.recipes.align: 'mask_fill' expected one of"):
        recipes.align(make_model("test_resnet"), mask_fill="grey")
