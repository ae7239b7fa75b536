"""egl._deferred: value checks queued inside a training step and read with its loss terms."""

from __future__ import annotations

import pytest
import torch
from _helpers import count_egl_reads, make_model

import egl
from egl import recipes
from egl._check import check_range
from egl._deferred import active, deferred_checks
from egl.explainers.base import check_target_range


def _immediate_error(x: torch.Tensor) -> str:
    with pytest.raises(egl.InputError) as info:
        check_range(x, 0.0, 1.0, "egl.f", "mask")
    return str(info.value)


@pytest.mark.parametrize("values", [[0.2, 1.5], [-0.1, 0.5], [float("nan"), 0.5]])
def test_deferred_range_check_gives_the_immediate_error_later(values: list[float]) -> None:
    x = torch.tensor(values)
    with deferred_checks() as checks:
        assert active() is checks
        assert check_range(x, 0.0, 1.0, "egl.f", "mask") is x  # no raise here
        check_range(torch.tensor([0.0, 1.0]), 0.0, 1.0, "egl.f", "ok")
    assert active() is None
    queued = checks.take()
    read = torch.cat(queued.stats).tolist()
    err = queued.first_error(read)
    assert err is not None and str(err) == _immediate_error(x)
    assert checks.take().stats == []  # taken once


def test_deferred_range_check_judged_in_the_tensors_precision() -> None:
    # 1 + 1e-12 rounds to 1.0 in float32; the verdict is computed in float64 before rounding
    x = torch.tensor([0.0, 1.0 + 1e-12], dtype=torch.float64)
    with deferred_checks() as checks:
        check_range(x, 0.0, 1.0, "egl.f", "mask")
    queued = checks.take()
    assert queued.first_error(torch.cat(queued.stats).tolist()) is not None


def test_passing_checks_give_no_error_and_outside_a_block_raise_at_once() -> None:
    with deferred_checks() as checks:
        check_range(torch.rand(3), 0.0, 1.0, "egl.f", "mask")
    queued = checks.take()
    assert queued.first_error(torch.cat(queued.stats).tolist()) is None
    with pytest.raises(egl.InputError, match=r"egl.f: 'mask' expected values in \[0.0, 1.0\], got values in"):
        check_range(torch.tensor([2.0]), 0.0, 1.0, "egl.f", "mask")


def test_target_check_stays_immediate_and_reads_each_tensor_once(monkeypatch: pytest.MonkeyPatch) -> None:
    reads = []
    orig = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: reads.append(1) or orig(self))
    y = torch.tensor([0, 2, 1])
    with deferred_checks():
        for _ in range(3):
            check_target_range(y, 3, "egl.f")
        assert len(reads) == 1
        check_target_range(y, 4, "egl.f")  # another class count is another check
        assert len(reads) == 2
        y[0] = 1  # changed in place: checked again
        check_target_range(y, 3, "egl.f")
        assert len(reads) == 3
        with pytest.raises(egl.InputError, match="'target' expected class indices in"):
            check_target_range(torch.tensor([0, 5]), 3, "egl.f")  # raised at once, not deferred
        assert len(reads) == 4
    check_target_range(y, 3, "egl.f")  # outside a block: read every time
    check_target_range(y, 3, "egl.f")
    assert len(reads) == 6


def _recipe(spec: str) -> recipes.Recipe:
    model = make_model("test_resnet", eval_mode=False)
    if spec == "erm":
        return recipes.erm(model)
    if spec == "clf+align":
        return recipes.align(model, masker="ground_truth", regularizer=None, warmup_steps=0)
    if spec == "align-frozen-bn":  # the mixup pass joins the main pass (labels concatenated)
        return recipes.align(recipes.freeze_batchnorm(model), warmup_steps=0)
    return recipes.align(model, warmup_steps=0)


def _batch(y: torch.Tensor | None = None) -> dict:
    torch.manual_seed(0)
    return {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 1, 0]) if y is None else y,
            "mask": (torch.rand(4, 1, 32, 32) > 0.5).float()}


@pytest.mark.parametrize(("spec", "phases"), [("erm", 1), ("clf+align", 1), ("align", 2), ("align-frozen-bn", 2)])
def test_reads_per_training_step(monkeypatch: pytest.MonkeyPatch, spec: str, phases: int) -> None:
    # one read per phase (its losses, with mask and saliency range checks); the labels' range is
    # read once, on the host where the batch arrives, and checked against the logits from there
    recipe = _recipe(spec)
    opts = recipe.configure_optimizers()
    recipe.training_step(_batch(), 0, opts)
    counts = count_egl_reads(monkeypatch)
    logs = recipe.training_step(_batch(), 1, opts)
    assert counts == {"recipes/base.py": phases, "recipes/batch.py": 2}, counts
    assert all(v == v for v in logs.values())


@pytest.mark.parametrize("spec", ["erm", "clf+align", "align"])
def test_labels_out_of_range_raise_our_error(spec: str) -> None:
    recipe = _recipe(spec)
    with pytest.raises(egl.InputError, match=r"'target' expected class indices in \[0, 4\] \(the model has 5 "
                                             r"outputs\), got values in \[0, 7\]"):
        recipe.training_step(_batch(torch.tensor([0, 7, 1, 0])), 0, recipe.configure_optimizers())


def test_labels_already_on_the_device_are_read_there_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from egl.recipes import Batch

    recipe = _recipe("align")
    b = _batch()
    batch = Batch(b["image"], b["label"], mask=b["mask"])  # as if built on a GPU: no host range
    opts = recipe.configure_optimizers()
    counts = count_egl_reads(monkeypatch)
    recipe.training_step(batch, 0, opts)
    assert counts == {"recipes/base.py": 2, "explainers/_targets.py": 1}, counts


@pytest.mark.parametrize("bad", ["mask", "saliency"])
def test_failed_deferred_check_raises_before_the_optimiser_step(bad: str) -> None:
    model = make_model("test_resnet", eval_mode=False)
    recipe = recipes.align(model, masker="ground_truth", regularizer=None, warmup_steps=0)
    mask = (torch.rand(4, 1, 32, 32) > 0.5).float()
    if bad == "mask":
        mask[0, 0, 0, 0] = 1.5
        match = r"'mask' expected values in \[0.0, 1.0\], got values in \[0, 1.5\]"
    else:
        recipe.explainer.normalize = False  # raw Grad-CAM maps: not in [0, 1] with a large head
        with torch.no_grad():
            model.get_classifier().weight.mul_(1e4)
        match = r"'saliency' expected values in \[0.0, 1.0\]"
    batch = {"image": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 1, 0]), "mask": mask}
    before = [p.detach().clone() for p in model.parameters()]
    opts = recipe.configure_optimizers()
    with pytest.raises(egl.InputError, match=match):
        recipe.training_step(batch, 0, opts)
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before))
    assert all(p.grad is None for p in model.parameters())


def test_label_range_is_trusted_only_for_the_unchanged_labels() -> None:
    import dataclasses

    from egl.recipes import as_batch

    x, y = torch.randn(4, 3, 32, 32), torch.tensor([0, 1, 1, 0])
    b = as_batch((x, y))
    assert b.label_range == (0, 1) and b.known_label_range() == (0, 1)
    moved = b.to("cpu")
    assert moved.known_label_range() == (0, 1)
    swapped = dataclasses.replace(b, y=torch.tensor([0, 7, 1, 0]))
    assert swapped.known_label_range() is None  # another tensor: read again
    b.y[1] = -100  # changed in place after it was read (cross_entropy would ignore -100 silently)
    assert b.known_label_range() is None
    recipe = _recipe("erm")
    for batch, got in ((b, r"\[-100, 1\]"), (swapped, r"\[0, 7\]")):
        with pytest.raises(egl.InputError, match=rf"'target' expected class indices in \[0, 4\].*got values in {got}"):
            recipe.training_step(batch, 0, recipe.configure_optimizers())


def test_labels_made_in_inference_mode_carry_no_range() -> None:
    from egl.recipes import as_batch

    with torch.inference_mode():
        y = torch.tensor([0, 1])
    b = as_batch((torch.randn(2, 3, 8, 8), y))
    assert b.label_range is None and b.known_label_range() is None

