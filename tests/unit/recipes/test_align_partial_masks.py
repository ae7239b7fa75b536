"""ALIGN on partially annotated batches: the alignment term comes from the annotated images only."""

from __future__ import annotations

import pytest
import torch
from _helpers import make_model

import egl
from egl import recipes
from egl.losses import bce_alignment, energy_outside
from egl.recipes import as_batch


def _batch(annotated: list[bool] | None, n: int = 6) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    mask = torch.zeros(n, 1, 64, 64)
    mask[:, :, 8:40, 16:48] = 1
    out = {"image": torch.randn(n, 3, 64, 64, generator=g), "label": torch.arange(n) % 3, "mask": mask}
    if annotated is not None:
        out["annotated"] = torch.tensor(annotated)
    return out


def _recipe(alignment: str = "bce", annotated_mean: str = "batch") -> recipes.ALIGN:
    model = make_model("test_resnet", eval_mode=False, output_stride=8)
    return recipes.align(model, masker="ground_truth", alignment=alignment, warmup_steps=0, regularizer=None,
                         annotated_mean=annotated_mean).train()


@pytest.mark.parametrize("over", ["batch", "annotated"])
@pytest.mark.parametrize("alignment", ["bce", "energy_outside"])
def test_the_alignment_term_sums_the_annotated_images(alignment: str, over: str) -> None:
    flags = [True, False, True, False, False, True]
    recipe = _recipe(alignment, over)
    terms = recipe.compute_phase("classifier", _batch(flags), step=0)
    b = _batch(None)
    keep = torch.tensor(flags)
    with torch.no_grad():
        if alignment == "bce":
            sal = recipe.explainer(b["image"], b["label"])
            per = bce_alignment(sal, b["mask"], reduction="none")
        else:
            from egl.explainers.class_maps import class_maps

            maps = class_maps(recipe.model, b["image"], layer="auto", weighting=recipe.explainer).saliency
            per = energy_outside(maps, b["mask"], reduction="none")
    expected = per[keep].sum() / (6 if over == "batch" else 3)  # over the batch, or over the 3 annotated
    torch.testing.assert_close(terms["align"].detach(), expected, rtol=1e-5, atol=1e-6)
    everyone = recipe.compute_phase("classifier", _batch([True] * 6), step=0)["align"]
    plain = recipe.compute_phase("classifier", _batch(None), step=0)["align"]
    torch.testing.assert_close(everyone.detach(), plain.detach())  # all annotated: the plain mean
    assert recipe.alignment.reduction == "mean"  # put back after the per-sample call


def test_a_batch_without_annotations_adds_no_alignment_and_computes_none() -> None:
    recipe = _recipe()
    calls = []
    recipe.alignment.register_forward_hook(lambda *a: calls.append(1))
    terms = recipe.compute_phase("classifier", _batch([False] * 6), step=0)
    assert float(terms["align"]) == 0.0 and not terms["align"].requires_grad and calls == []  # counted on the host
    torch.testing.assert_close(terms["total"], terms["ce"])  # (regularizer=None here; a regularizer still adds)
    annotated = recipe.compute_phase("classifier", _batch([True] + [False] * 5), step=0)
    assert calls == [1] and float(annotated["align"].detach()) > 0


def test_reductions_non_finite_placeholders_and_the_loss_left_alone() -> None:
    from egl.losses import BCEAlignmentLoss
    from egl.losses._reduction import annotated_mean

    s, m = torch.rand(4, 1, 4, 4), torch.rand(4, 1, 4, 4).round()
    flags = torch.tensor([True, False, True, False])
    per = bce_alignment(s, m, reduction="none")
    loss = BCEAlignmentLoss(reduction="sum")
    torch.testing.assert_close(annotated_mean(loss, flags, s, m, fn="t"), per[flags].sum())
    torch.testing.assert_close(annotated_mean(BCEAlignmentLoss(), flags, s, m, fn="t"), per[flags].sum() / 4)
    torch.testing.assert_close(annotated_mean(BCEAlignmentLoss(), flags, s, m, fn="t", over="annotated"),
                               per[flags].mean())
    assert loss.reduction == "sum"  # a copy was switched, not the loss
    torch.testing.assert_close(annotated_mean(BCEAlignmentLoss(reduction="none"), flags, s, m, fn="t"),
                               torch.where(flags, per, 0))
    s_bad = s.clone()
    s_bad[1] = float("nan")  # an unflagged sample's NaN does not reach the mean

    class Raw(BCEAlignmentLoss):
        def forward(self, saliency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
            out = (saliency - mask).abs().flatten(1).mean(1)
            return out if self.reduction == "none" else out.mean()

    assert torch.isfinite(annotated_mean(Raw(), flags, s_bad, m, fn="t"))
    assert torch.isfinite(annotated_mean(Raw(), flags, s_bad, m, fn="t", over="annotated"))


def test_as_batch_reads_and_checks_the_flags() -> None:
    b = as_batch(_batch([1, 0, 1, 0, 0, 1]))  # 0/1 integers read as flags
    assert b.annotated.dtype == torch.bool and b.annotated.tolist() == [True, False, True, False, False, True]
    assert b.annotated_count == 3 and b.to("cpu").annotated_count == 3
    with pytest.raises(egl.InputError, match=r"'batch annotated' expected flags 0 or 1, got values in \[0, 2\]"):
        as_batch(_batch([2, 0, 1, 0, 0, 1]))
    assert torch.equal(b.to("cpu").annotated, b.annotated)
    bad = _batch(None)
    bad["annotated"] = torch.ones(6)
    with pytest.raises(egl.InputError, match=r"'batch annotated' expected a bool \(or 0/1 integer\) tensor"):
        as_batch(bad)
    del bad["mask"]
    bad["annotated"] = torch.ones(6, dtype=torch.bool)
    with pytest.raises(egl.InputError, match="'batch annotated' expected a batch with a 'mask'"):
        as_batch(bad)


def test_a_loss_without_per_sample_values_is_named() -> None:
    class Whole(torch.nn.Module):  # a plain module: no reduction to switch
        inputs = "saliency"

        def forward(self, s: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
            return (s - m).abs().mean()

    recipe = _recipe()
    recipe.alignment = Whole()
    with pytest.raises(egl.InputError, match="'alignment' expected a loss with a 'reduction' attribute"):
        recipe.compute_phase("classifier", _batch([True, False] * 3), step=0)
    with pytest.raises(egl.InputError, match="'annotated_mean' expected one of \\['batch', 'annotated'\\]"):
        _recipe(annotated_mean="flagged")


def test_a_learned_masker_ignores_the_flags() -> None:
    model = make_model("test_resnet", eval_mode=False, output_stride=8)
    recipe = recipes.align(model, warmup_steps=0, regularizer=None).train()
    a = recipe.compute_phase("classifier", _batch([False] * 6), step=0)["align"]
    b = recipe.compute_phase("classifier", _batch(None), step=0)["align"]
    torch.testing.assert_close(a.detach(), b.detach())


def test_fit_reads_the_flags_from_a_partially_annotated_loader() -> None:
    from egl.data import PartialMasks
    from egl.experiments.sources import TensorDictDataset

    n = 8
    b = _batch(None, n)
    data = PartialMasks(TensorDictDataset({"image": b["image"], "label": b["label"], "mask": b["mask"]}), 0.0)
    loader = torch.utils.data.DataLoader(data, batch_size=4)
    recipe = _recipe()
    log = recipe.fit(loader, 2, progress=False)
    assert [float(r["classifier/align"]) for r in log] == [0.0, 0.0]  # no annotation: no alignment
    assert all(r["classifier/total"] == pytest.approx(r["classifier/ce"]) for r in log)
