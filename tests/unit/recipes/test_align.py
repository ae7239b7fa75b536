"""ALIGN recipe: phases, isolation, warm-up, ablations."""

from __future__ import annotations

import pytest
import torch
from _helpers import NUM_CLASSES, make_model

import egl
from egl import recipes
from egl.recipes import NonFiniteLossError


def _batch(n: int = 6, size: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, size, size, generator=g), torch.arange(n) % 3


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def _changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> set[str]:
    return {k for k, v in module.state_dict().items() if not torch.equal(before[k], v)}


def test_phases_are_explicit_and_ordered() -> None:
    recipe = recipes.align(make_model("test_resnet"), warmup_steps=5)
    assert [p.name for p in recipe.phases()] == ["masker", "classifier"]
    assert [p.name for p in recipe.active_phases(0)] == ["classifier"]
    assert [p.name for p in recipe.active_phases(5)] == ["masker", "classifier"]
    assert set(map(id, recipe.phase_parameters("masker"))) == set(map(id, recipe.masker.parameters()))
    assert set(map(id, recipe.phase_parameters("classifier"))) == set(map(id, recipe.model.parameters()))


def test_masker_phase_updates_only_the_masker() -> None:
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0).train()
    opts = recipe.configure_optimizers()
    clf, msk = _state(recipe.model), _state(recipe.masker)
    terms = recipe.compute_phase("masker", _batch(), step=0)
    assert set(terms) == {"dist", "sparsity", "smooth", "total"}
    terms["total"].backward()
    assert all(p.grad is None for p in recipe.model.parameters())
    opts["masker"].step()
    assert _changed(clf, recipe.model) == set()  # BatchNorm statistics of the classifier untouched too
    assert any(k.endswith("weight") for k in _changed(msk, recipe.masker))
    assert recipe.model.training  # mode restored


def test_classifier_phase_updates_only_the_classifier() -> None:
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0).train()
    opts = recipe.configure_optimizers()
    clf, msk = _state(recipe.model), _state(recipe.masker)
    terms = recipe.compute_phase("classifier", _batch(), step=0)
    assert set(terms) == {"ce", "align", "reg", "total"}
    terms["total"].backward()
    assert all(p.grad is None for p in recipe.masker.parameters())
    opts["classifier"].step()
    assert _changed(msk, recipe.masker) == set()  # masker BatchNorm buffers did not move
    assert _changed(clf, recipe.model)
    assert recipe.masker.training


def test_warmup_has_no_masker_update_and_no_alignment_term() -> None:
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=2)
    msk = _state(recipe.masker)
    logs = recipe.fit([_batch()], steps=2, progress=False)
    assert all(not any(k.startswith("masker/") for k in row) for row in logs)
    assert all("classifier/align" not in row for row in logs)
    assert _changed(msk, recipe.masker) == set()
    logs = recipe.fit([_batch()], steps=3, progress=False)  # a new run: steps 0-2, masker from step 2
    assert "masker/total" in logs[2] and "classifier/align" in logs[2]


def test_masker_every_k_steps_after_the_warm_up_and_the_classifier_at_every_step() -> None:
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=1, masker_every=2)
    assert [[p.name for p in recipe.active_phases(s)] for s in range(5)] == [
        ["classifier"], ["masker", "classifier"], ["classifier"], ["masker", "classifier"], ["classifier"]]
    logs = recipe.fit([_batch()], steps=4, seed=0, progress=False)
    assert ["masker/total" in row for row in logs] == [False, True, False, True]
    assert all("classifier/align" in row for row in logs[1:])  # the alignment term joins at the warm-up's end
    assert recipe.config()["masker_every"] == 2
    with pytest.raises(egl.InputError, match="'masker_every' expected an int >= 1, got 0"):
        recipes.align(make_model("test_resnet"), masker_every=0)


@pytest.mark.parametrize("name", ["test_resnet", "test_vit", "test_convnext"])
def test_three_steps_on_tiny_models(name: str, tmp_path) -> None:
    kwargs = {"output_stride": 16} if name == "test_resnet" else {}
    recipe = recipes.align(make_model(name, eval_mode=False, **kwargs), warmup_steps=1)
    logs = recipe.fit([_batch(size=64)], steps=3, seed=0, progress=False, log_path=tmp_path / "log.jsonl")
    assert len(logs) == 3 and "classifier/align" in logs[2] and "masker/dist" in logs[2]
    assert all(torch.isfinite(torch.tensor(v)) for row in logs for v in row.values())
    lines = (tmp_path / "log.jsonl").read_text().splitlines()
    assert len(lines) == 4 and '"event": "start"' in lines[0]


def test_ablations_swap_parts_by_name() -> None:
    model = make_model("test_resnet")
    gray = recipes.align(model, masker="grayscale")
    assert [p.name for p in gray.phases()] == ["classifier"]  # nothing to train in a grayscale masker
    no_eg = recipes.align(model, align_weight=0.0)
    assert [p.name for p in no_eg.phases()] == ["classifier"]
    l1 = recipes.align(model, alignment="l1", warmup_steps=0)
    assert type(l1.alignment).name == "l1"
    with pytest.raises(egl.ComponentNotFoundError, match="Did you mean 'grayscale'"):
        recipes.align(model, masker="greyscale")


def test_ground_truth_masker_needs_masks() -> None:
    recipe = recipes.align(make_model("test_resnet"), masker="ground_truth", warmup_steps=0)
    x, y = _batch(4)
    mask = torch.zeros(4, 1, 64, 64)
    mask[..., 16:48, 16:48] = 1
    terms = recipe.compute_phase("classifier", {"image": x, "label": y, "mask": mask}, 0)
    assert torch.isfinite(terms["align"])
    with pytest.raises(egl.InputError, match=r"'batch' expected batches with a 'mask' \(masker='ground_truth'"):
        recipe.compute_phase("classifier", (x, y), 0)


def test_non_finite_loss_names_term_and_step() -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    x, y = _batch(4)
    x[0, 0, 0, 0] = float("nan")
    before = {k: p.detach().clone() for k, p in recipe.model.named_parameters()}
    with pytest.raises(NonFiniteLossError, match="'classifier/ce' is nan at step 0"):
        recipe.fit([(x, y)], steps=1, progress=False)
    assert all(torch.equal(before[k], p) for k, p in recipe.model.named_parameters())


def test_recipes_are_registered() -> None:
    assert {"align", "erm"} <= set(egl.list_components("recipe"))
    recipe = egl.create("recipe", "erm", make_model("test_resnet"))
    terms = recipe.compute_phase("classifier", _batch(2), 0)
    assert terms["ce"].shape == () and NUM_CLASSES == 5


def test_bad_batches_say_what_was_expected() -> None:
    recipe = recipes.erm(make_model("test_resnet"))
    with pytest.raises(egl.InputError, match="keys 'image' and 'label'"):
        recipe.compute_phase("classifier", {"img": torch.randn(2, 3, 32, 32)}, 0)
    with pytest.raises(egl.InputError, match="batch label"):
        recipe.compute_phase("classifier", (torch.randn(2, 3, 32, 32), torch.tensor([0.0, 1.0])), 0)


@pytest.mark.parametrize("alignment", ["energy_outside", "rrr", "l1"])
def test_negative_evidence_alignments_plug_into_align(alignment: str) -> None:
    recipe = recipes.align(make_model("test_resnet", eval_mode=False, output_stride=16), alignment=alignment,
                           masker="ground_truth", warmup_steps=0)
    x, y = _batch(4)
    mask = torch.zeros(4, 1, 64, 64)
    mask[..., 8:40, 8:40] = 1
    terms = recipe.compute_phase("classifier", {"image": x, "label": y, "mask": mask}, 0)
    assert torch.isfinite(terms["align"]) and float(terms["align"].detach()) >= 0
    terms["total"].backward()
    assert recipe.model.get_classifier().weight.grad is not None


def test_masker_checkpoint_changes_memory_not_training() -> None:
    """Recomputing the masker's activations gives the same step, bit for bit (BatchNorm
    statistics included), while keeping far fewer activations for the masker phase's backward."""
    from torch.autograd.graph import saved_tensors_hooks

    results = {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0,
                               masker_checkpoint=ckpt).train()
        opts = recipe.configure_optimizers()
        params = {p.data_ptr() for p in recipe.parameters()}
        kept = [0]

        def pack(t: torch.Tensor) -> torch.Tensor:
            if t.data_ptr() not in params:
                kept[0] += t.numel() * t.element_size()
            return t

        with saved_tensors_hooks(pack, lambda t: t):
            terms = recipe.compute_phase("masker", _batch(), step=0)
        terms["total"].backward()
        opts["masker"].step()
        results[ckpt] = (_state(recipe.masker), kept[0])
    for k, v in results[False][0].items():
        assert torch.equal(v, results[True][0][k]), k  # weights and running statistics alike
    assert results[True][1] < 0.85 * results[False][1]
    with pytest.raises(egl.InputError, match="'masker_checkpoint' expected True, False or 'auto'"):
        recipes.align(make_model("test_resnet"), masker_checkpoint="yes")
    assert recipes.align(make_model("test_resnet")).masker_checkpoint  # the learned masker is recomputable


def test_masker_checkpoint_auto_trusts_only_recomputable_maskers() -> None:
    from egl.maskers import Masker

    class Plugin(Masker):  # a third-party masker: not declared recomputable
        trainable = True

        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 1, 1)

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            return self.conv(x).sigmoid()

    assert not recipes.align(make_model("test_resnet"), masker=Plugin()).masker_checkpoint
    assert recipes.align(make_model("test_resnet"), masker=Plugin(), masker_checkpoint=True).masker_checkpoint


def test_a_maskers_output_is_checked_where_it_is_made_and_a_forgotten_trainable_warns() -> None:
    import warnings

    from egl.maskers import Masker

    class Raw(Masker):  # a plugin masker that forgot its sigmoid
        trainable = True

        def __init__(self, squash: bool = False, per_image: bool = True) -> None:
            super().__init__()
            self.conv, self.squash, self.per_image = torch.nn.Conv2d(3, 1, 1), squash, per_image
            torch.nn.init.constant_(self.conv.bias, 3.0)  # outputs far above 1

        def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
            m = self.conv(x).sigmoid() if self.squash else self.conv(x)
            return m if self.per_image else m[:1]

    x, y = _batch(4, 32)
    recipe = recipes.align(make_model("test_resnet"), masker=Raw(), warmup_steps=0)
    before = _state(recipe.masker)
    with pytest.raises(egl.InputError, match=r"egl.recipes.align: 'masker output \(Raw\)' expected values in "
                       r"\[0.0, 1.0\].*end its forward with torch.sigmoid"):
        recipe.training_step((x, y), 0, recipe.configure_optimizers())
    assert not _changed(before, recipe.masker)  # stopped before the masker's update
    with pytest.raises(egl.InputError, match=r"'masker output \(Raw\)' expected one mask per image \(4\)"):
        one = recipes.align(make_model("test_resnet"), masker=Raw(squash=True, per_image=False), warmup_steps=0)
        one.training_step((x, y), 0, one.configure_optimizers())
    fine = recipes.align(make_model("test_resnet"), masker=Raw(squash=True), warmup_steps=0)
    fine.training_step((x, y), 0, fine.configure_optimizers())

    class Frozen(Raw):
        trainable = False  # (the default of Masker) with parameters that still require gradients

    with pytest.warns(UserWarning, match="masker Frozen has 4 parameters that require gradients but "
                      "trainable=False: ALIGN runs no masker phase"):
        assert [p.name for p in recipes.align(make_model("test_resnet"), masker=Frozen()).phases()] == ["classifier"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        recipes.align(make_model("test_resnet"), masker=Frozen().requires_grad_(False))  # frozen on purpose
        recipes.align(make_model("test_resnet"), masker="grayscale")


def test_grad_cam_options_with_another_explainer_are_refused_not_ignored() -> None:
    from egl.explainers import GradCAM

    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match="'layer' expected its default 'auto' when explainer is not the name"):
        recipes.align(model, explainer=GradCAM(model), layer="layer3")
    with pytest.raises(egl.InputError, match="'align_resolution' expected its default 'input'"):
        recipes.align(model, explainer="input_gradient", align_resolution="feature")
    with pytest.raises(egl.InputError, match="'alignment' expected a loss on the explainer's maps"):
        recipes.align(model, explainer="input_gradient", alignment="energy_outside")
    recipes.align(model, explainer=GradCAM(model, layer="layer3"), alignment="energy_outside")  # fine


# -- batch_mixup: the mixup pass in the main pass when that is exact --------------------------------
def _terms_and_grads(recipe: recipes.ALIGN, step: int = 0) -> tuple[dict, dict]:
    x, y = _batch(6, 64)  # (2 x 2 Grad-CAM maps on test_resnet: at 32 px one value, constant maps)
    x = x.double()  # float64: BCE's 1/eps near a map's extremes amplifies float32 rounding (5e-4 here)
    recipe.train()
    torch.manual_seed(7)  # the same partners and β in both modes
    terms = recipe.compute_phase("classifier", (x, y), step)
    terms["total"].backward()
    grads = {k: p.grad.detach().clone() for k, p in recipe.model.named_parameters() if p.grad is not None}
    return {k: v.detach() for k, v in terms.items()}, grads


@pytest.mark.parametrize("arch", ["test_resnet", "test_vit"])
def test_batched_mixup_pass_equals_separate_passes_when_exact(arch: str) -> None:
    results = []
    for mode in ("auto", False):
        model = make_model(arch, eval_mode=False)
        if arch == "test_resnet":
            recipes.freeze_batchnorm(model)  # per-sample normalisation: batching is exact
        recipe = recipes.align(model.double(), warmup_steps=0, batch_mixup=mode)
        recipe.masker.double()
        assert recipe.train().mixup_together() is (mode == "auto")
        results.append(_terms_and_grads(recipe))
    (t_one, g_one), (t_two, g_two) = results
    assert t_one.keys() == t_two.keys() == {"ce", "align", "reg", "total"}
    for k in t_one:
        torch.testing.assert_close(t_one[k], t_two[k], rtol=1e-10, atol=1e-12, msg=k)
    assert g_one.keys() == g_two.keys()
    for k in g_one:
        torch.testing.assert_close(g_one[k], g_two[k], rtol=1e-7, atol=1e-8, msg=k)


def test_batch_mixup_auto_keeps_batchnorm_statistics_apart() -> None:
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0).train()
    assert not recipe.mixup_together()  # BatchNorm in training mode: two passes
    assert recipe.eval().mixup_together()  # in eval mode it uses running statistics: exact
    forced = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0, batch_mixup=True).train()
    assert forced.mixup_together()
    terms = forced.compute_phase("classifier", _batch(6, 32), 0)
    assert torch.isfinite(terms["total"])
    no_reg = recipes.align(make_model("test_vit"), warmup_steps=0, regularizer=None)
    assert not no_reg.mixup_together()


def test_batch_mixup_errors() -> None:
    model = make_model("test_resnet")
    with pytest.raises(egl.InputError, match=r"'batch_mixup' expected True, False or 'auto', got 'yes'"):
        recipes.align(model, batch_mixup="yes")
    with pytest.raises(egl.InputError, match=r"'batch_mixup' expected False or 'auto' unless the regularizer is "
                                             r"a plain MixupConsistency \(a subclass that overrides terms or forward is not\), "
                                             r"got True with regularizer NoneType None"):
        recipes.align(model, batch_mixup=True, regularizer=None)


def test_batch_mixup_auto_keeps_stochastic_passes_apart() -> None:
    # dropout / drop-path draw other masks over 2B images than over B twice: not exact, not joined
    for kw in ({"drop_rate": 0.1}, {"drop_path_rate": 0.1}):
        recipe = recipes.align(make_model("test_vit", eval_mode=False, **kw), warmup_steps=0).train()
        assert not recipe.mixup_together(), kw
        assert recipe.eval().mixup_together(), kw  # eval mode: deterministic again


def test_batch_mixup_leaves_mixup_subclasses_alone() -> None:
    from egl.regularizers import MixupConsistency

    class Halved(MixupConsistency):
        def forward(self, *args, **kwargs):  # type: ignore[no-untyped-def]
            return 0.5 * super().forward(*args, **kwargs)

    class OtherBeta(MixupConsistency):  # only the draws change: still batched
        def sample_beta(self, n, device):  # type: ignore[no-untyped-def]
            return torch.full((n,), 0.5, device=device)

    assert not recipes.align(make_model("test_vit"), regularizer=Halved()).mixup_together()
    assert recipes.align(make_model("test_vit"), regularizer=OtherBeta()).mixup_together()
    with pytest.raises(egl.InputError, match="'batch_mixup' expected False or 'auto' unless"):
        recipes.align(make_model("test_vit"), regularizer=Halved(), batch_mixup=True)


def test_mask_mode_batch_takes_the_batchs_statistics_and_leaves_the_running_ones() -> None:
    """``"eval"`` (default): running statistics; ``"batch"``: the masks the masker phase
    optimised (batch statistics), running statistics and mode untouched, eval masks in eval."""
    torch.manual_seed(0)
    x, y = _batch()
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0, mask_mode="batch").train()
    batch = egl.recipes.as_batch((x, y))
    before = _state(recipe.masker)
    got = recipe.masks(batch)
    assert _changed(before, recipe.masker) == set() and recipe.masker.training
    with torch.no_grad():
        by_hand = recipe.masker.train()(x)  # batch statistics (this moves the running ones)
    recipe.masker.load_state_dict(before)
    torch.testing.assert_close(got, by_hand)
    with torch.no_grad():
        eval_masks = recipe.masker.eval()(x)
    recipe.masker.train()
    assert not torch.allclose(got, eval_masks)
    default = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0).train()
    default.masker.load_state_dict(before)
    torch.testing.assert_close(default.masks(batch), eval_masks)
    torch.testing.assert_close(recipe.eval().masks(batch), eval_masks)  # evaluated: running statistics
    with pytest.raises(egl.InputError, match=r"'mask_mode' expected one of"):
        recipes.align(make_model("test_resnet"), mask_mode="train")


def test_an_explainer_of_another_model_and_no_alignment_are_named() -> None:
    """An explainer built on another model would send the alignment gradient to that model (which
    no optimiser updates); alignment=None failed only once warm-up ended."""
    from egl.explainers import GradCAM

    model = make_model("test_resnet", eval_mode=False)
    with pytest.raises(egl.InputError, match=r"'explainer' expected an explainer of the model this recipe trains, "
                                             r"got one built on another ResNet instance"):
        recipes.align(model, explainer=GradCAM(make_model("test_resnet")))
    with pytest.raises(egl.InputError, match=r"'alignment' expected .*got None.*align_weight=0"):
        recipes.align(model, alignment=None)
    assert recipes.align(model, explainer=GradCAM(model)).explainer.model is model


def test_a_run_shorter_than_the_warm_up_warns_that_the_masker_never_runs() -> None:
    model = make_model("test_resnet", eval_mode=False)
    batch = (torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1]))
    with pytest.warns(UserWarning, match=r"the 'masker' phase starts at step 200, and this run ends at step 2: it "
                                         r"never runs.*warmup_steps"):
        recipes.align(model).fit([batch], 2, progress=False)


def test_a_ground_truth_masker_without_masks_is_named_at_step_zero() -> None:
    """Not after the 200 warm-up steps, when the masker is first read."""
    model = make_model("test_resnet", eval_mode=False)
    batch = (torch.randn(4, 3, 64, 64), torch.tensor([0, 1, 0, 1]))
    with pytest.raises(egl.InputError, match=r"'batch' expected batches with a 'mask' \(masker='ground_truth' reads "
                                             r"the data's masks\), got a batch without one at step 0"):
        recipes.align(model, masker="ground_truth").fit([batch], 1, progress=False)


def test_alignment_and_regularizer_are_checked_when_the_recipe_is_built() -> None:
    from egl.losses import AlignmentLoss

    class Typo(AlignmentLoss):
        inputs = "class_map"  # (was called as a saliency loss, silently)

    model = make_model("test_resnet")
    for kwargs, message in (({"alignment": {"nam": "bce"}}, r"'alignment' expected a registered alignment name, an "
                                                             r"instance, or a dict .*got dict"),
                            ({"regularizer": 0.1}, r"'regularizer' expected a registered regularizer name.*got float"),
                            ({"alignment": Typo()}, r"'alignment' expected an alignment loss whose inputs is one of "
                                                    r"\['saliency', 'class_maps', 'batch'\], got Typo with "
                                                    r"inputs='class_map'")):
        with pytest.raises(egl.InputError, match=message):
            recipes.align(model, **kwargs)


def test_components_as_name_and_kwargs_dicts_are_built_and_recorded() -> None:
    recipe = recipes.align(make_model("test_resnet"), masker={"name": "learned", "kwargs": {"width": 4}},
                           alignment={"name": "bce", "kwargs": {"eps": 1e-3}}, explainer={"name": "layer_cam"})
    assert recipe.masker.net[0].out_channels == 4 and recipe.alignment.eps == 1e-3
    assert type(recipe.explainer).__name__ == "LayerCAM"
    assert recipe.config()["masker"] == {"name": "learned", "kwargs": {"width": 4}}


def test_a_grad_cam_explainer_given_as_a_dict_takes_layer_unless_its_kwargs_say() -> None:
    model = make_model("test_resnet")
    assert recipes.align(model, explainer={"name": "grad_cam"}, layer="layer3").explainer.layer == "layer3"
    assert recipes.align(model, explainer={"name": "layer_cam", "kwargs": {"layer": "layer2"}},
                         layer="layer3").explainer.layer == "layer2"
