"""egl.testing, the contract checks plugin authors run: each check fires on the fault it is for,
names the component and the check, and leaves the random state as it was."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import egl
from egl import testing
from egl.explainers import Explanation, GradCAM
from egl.losses import L1AlignmentLoss
from egl.maskers import GrayscaleMasker
from egl.recipes import ERM


class MyCAM(GradCAM):
    """Grad-CAM under another name: a well-behaved plugin."""

    name = "my_cam"


class BatchNormalisedCAM(GradCAM):
    """Scales raw Grad-CAM by the batch's maximum: an image's map depends on the others."""

    name = "batch_cam"

    def __init__(self, model: nn.Module) -> None:
        super().__init__(model, normalize=False)

    def explain(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Explanation:
        out = super().explain(x, target, create_graph=create_graph)
        return Explanation(out.saliency / out.saliency.amax().clamp_min(1e-12), out.logits)


class HookLeavingCAM(GradCAM):
    """Registers a hook and forgets it."""

    name = "leaky_cam"

    def explain(self, x: Tensor, target: Any = None, *, create_graph: bool = False) -> Explanation:
        self.model.register_forward_hook(lambda *a: None)
        return super().explain(x, target, create_graph=create_graph)


class FlatMasker(GrayscaleMasker):
    """Returns ``[B, H, W]``, no channel dimension."""

    name = "flat"

    def forward(self, x: Tensor, mask: Tensor | None = None) -> Tensor:
        return super().forward(x, mask)[:, 0]


class SecretlyTrainableMasker(GrayscaleMasker):
    """Has a convolution that would learn, yet says ``trainable = False``."""

    name = "secret"

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 1)


class SignedL1(L1AlignmentLoss):
    """A signed difference: negative when the map falls short of the mask."""

    name = "signed_l1"

    def forward(self, saliency: Tensor, mask: Tensor) -> Tensor:
        loss = super().forward(saliency, mask)
        return loss - 1.0


class ForgetfulERM(ERM):
    """Scales its loss by a call count that its state_dict does not keep (a resume restarts it)."""

    name = "forgetful"

    def _classifier_terms(self, batch: Any, step: int) -> dict[str, Tensor]:
        self.__dict__["calls"] = self.__dict__.get("calls", 0) + 1
        ce = F.cross_entropy(self._logits(batch.x), batch.y) * self.__dict__["calls"]
        return {"ce": ce, "total": ce}


def test_a_well_behaved_plugin_passes_every_check_by_class_and_leaves_the_random_state() -> None:
    states = torch.get_rng_state(), random.getstate(), np.random.get_state()[1].copy()
    testing.check_component("explainer", MyCAM)
    testing.check_component("recipe", "erm")
    assert torch.equal(torch.get_rng_state(), states[0]) and random.getstate() == states[1]
    assert np.array_equal(np.random.get_state()[1], states[2])


@pytest.mark.parametrize(("kind", "cls", "check", "message"), [
    ("explainer", BatchNormalisedCAM, "batch_of_one", "a batch of one differs from its row"),
    ("explainer", HookLeavingCAM, "output", "a hook was left on the model"),
    ("masker", FlatMasker, "output", r"returned shape \[2, 16, 12\], expected \[2, 1, 16, 12\]"),
    ("masker", SecretlyTrainableMasker, "gradients", "trainable=False, but 2 parameters require grad"),
    ("alignment", SignedL1, "output", "returned a negative loss"),
    ("recipe", ForgetfulERM, "resumes_exactly", "the resumed run logged other values"),
])
def test_each_check_names_the_component_the_check_and_the_fault(kind: str, cls: type, check: str,
                                                                 message: str) -> None:
    assert check in testing.checks(kind)
    with pytest.raises(testing.ContractError, match=rf"{kind} '{cls.name}' \(.*{cls.__name__}\) fails egl.testing "
                                                    rf"check '{check}': .*{message}"):
        testing.check_component(kind, cls)
    with pytest.raises(AssertionError):  # pytest reports it as a failed check
        testing.check_component(kind, cls, only=check)


def test_the_named_check_wants_a_lowercase_name_a_docstring_and_the_registered_name() -> None:
    class Nameless(GradCAM):
        pass

    Nameless.name = "Nameless"
    with pytest.raises(testing.ContractError, match="'name' is 'Nameless', expected a lowercase identifier"):
        testing.check_component("explainer", Nameless, only="named")

    class Undocumented(GradCAM):
        name = "undocumented"

    Undocumented.__doc__ = None
    with pytest.raises(testing.ContractError, match="has no docstring"):
        testing.check_component("explainer", Undocumented, only="named")


def test_checks_lists_each_kinds_checks_and_bad_arguments_are_named() -> None:
    assert testing.checks("recipe") == ["named", "trains", "resumes_exactly", "config"]
    assert set(testing.checks("explainer")) >= {"output", "create_graph", "batch_of_one"}
    with pytest.raises(egl.InputError, match="'component' expected a registered explainer name or the "
                                             "explainer's class .*, got GradCAM"):
        testing.check_component("explainer", GradCAM(testing.tiny_model()))
    with pytest.raises(egl.InputError, match=r"'only' expected names of masker checks, \['named', 'output'"):
        testing.check_component("masker", "grayscale", only="outputs")
    with pytest.raises(egl.InputError, match="'kind'"):
        testing.checks("maskers")
    with pytest.raises(egl.ComponentNotFoundError, match="Did you mean 'grad_cam'"):
        testing.check_component("explainer", "grad_cams")


def test_tiny_model_is_seeded_without_touching_the_global_state() -> None:
    state = torch.get_rng_state()
    a, b = testing.tiny_model(), testing.tiny_model(seed=0, train=True)
    assert torch.equal(torch.get_rng_state(), state)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    assert not a.training and b.training and a.num_classes == testing.NUM_CLASSES


def test_a_component_that_needs_arguments_is_told_how_to_pass_them() -> None:
    class ScaledCAM(GradCAM):
        """Grad-CAM with a required argument."""

        name = "scaled_cam"

        def __init__(self, model: nn.Module, scale: float) -> None:
            super().__init__(model)
            self.scale = scale

    with pytest.raises(testing.ContractError, match=r"building it .* raised TypeError: .*'scale'.*Pass the arguments "
                                                    r"it needs after the component: check_component\('explainer', "
                                                    r"'scaled_cam', name=value"):
        testing.check_component("explainer", ScaledCAM, only="output")
    testing.check_component("explainer", ScaledCAM, only="output", scale=2.0)


def test_the_checks_run_on_another_model_for_a_vit_only_explainer() -> None:
    class TokenCAM(GradCAM):
        """Grad-CAM that takes ViTs only."""

        name = "token_cam"

        def __init__(self, model: nn.Module) -> None:
            if not hasattr(model, "blocks"):
                raise egl.InputError("TokenCAM: 'model' expected a ViT")
            super().__init__(model)

    with pytest.raises(egl.InputError, match="expected a ViT"):
        testing.check_component("explainer", TokenCAM, only="output")
    testing.check_component("explainer", TokenCAM, on="test_vit")
    testing.check_component("explainer", "grad_cam", only="output", on=lambda: testing.tiny_model("test_convnext"))
