"""What the explainers and the training step say about images they cannot use: a dtype other than
the model's, a batch of one through a training BatchNorm, a target map of one position."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from _helpers import make_model

import egl
from egl import recipes
from egl.explainers import GradCAM, grad_cam, input_gradient


def test_float64_and_float16_images_into_a_float32_model_are_named() -> None:
    model = make_model("test_resnet")
    x = torch.randn(2, 3, 64, 64)
    with pytest.raises(egl.InputError, match=r"grad_cam: 'x' expected images of the model's dtype \(torch.float32\), "
                                             r"got a torch.float64 tensor .* x.to\(torch.float32\) \(images from "
                                             r"NumPy are float64\), or convert the model\."):
        grad_cam(model, x.double(), 0)
    with pytest.raises(egl.InputError, match=r"input_gradient: 'x' expected .*float16.*or run under torch.autocast"):
        input_gradient(model, x.half(), 0)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # autocast casts a float32 model and 16-bit images
        assert grad_cam(model, x.bfloat16(), [0, 1]).shape == (2, 1, 64, 64)
        with pytest.raises(egl.InputError, match="float64"):  # ... but not float64 images
            grad_cam(model, x.double(), 0)
    assert grad_cam(model.double(), x.double(), 0).dtype == torch.float64  # a float64 model takes them


def test_the_training_step_names_float64_images_and_a_batch_of_one() -> None:
    recipe = recipes.erm(make_model("test_resnet", eval_mode=False))
    x, y = torch.randn(4, 3, 32, 32), torch.arange(4)
    with pytest.raises(egl.InputError, match=r"egl.recipes.erm: 'batch' expected images of the model's dtype"):
        recipe.fit([(x.double(), y)], 1, progress=False)
    # one image reaches test_resnet's 1 x 1 map: a BatchNorm in training mode gets one value per channel
    with pytest.raises(egl.InputError, match=r"egl.recipes.erm: 'batch' expected at least 2 images while the model's "
                                             r"BatchNorm layers are in training mode.*drop_last=True") as info:
        recipe.fit([(x[:1], y[:1])], 1, progress=False)
    assert isinstance(info.value.__cause__, ValueError)  # torch's own error stays attached


def test_explaining_one_image_with_a_training_batchnorm_is_named() -> None:
    model = make_model("test_resnet", eval_mode=False)
    with pytest.raises(egl.InputError, match=r"grad_cam: 'x' expected at least 2 images .*model.eval\(\)"):
        grad_cam(model, torch.randn(1, 3, 32, 32), 0)
    assert grad_cam(model.eval(), torch.randn(1, 3, 32, 32), 0).shape == (1, 1, 32, 32)


def test_a_one_position_map_warns_once_per_input_size() -> None:
    cam = GradCAM(make_model("test_resnet"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        maps = cam(torch.randn(2, 3, 32, 32), [0, 1])  # test_resnet: 1 x 1 at 32 px
        cam(torch.randn(2, 3, 32, 32), [1, 2])
        cam(torch.randn(2, 3, 64, 64), [1, 2])  # 2 x 2: no warning
    assert torch.equal(maps, torch.zeros_like(maps))
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1
    assert "map is 1 x 1 for 32 x 32 inputs" in messages[0] and "output_stride=16" in messages[0]


def test_create_graph_must_be_a_bool() -> None:
    with pytest.raises(egl.InputError, match=r"grad_cam: 'create_graph' expected True or False, got 'yes'"):
        grad_cam(make_model("test_resnet"), torch.randn(2, 3, 64, 64), 0, create_graph="yes")


def test_a_checkpoint_that_is_not_a_model_file_is_named(tmp_path: Path) -> None:
    from PIL import Image

    from egl.experiments.commands import load_model

    Image.new("RGB", (8, 8)).save(tmp_path / "photo.png")  # the image passed where the model goes
    with pytest.raises(egl.InputError, match=r"'--checkpoint' expected a model file written by `egl train`, got "
                                             r"'.*photo.png', which torch.load could not read"):
        load_model(tmp_path / "photo.png")


def test_a_batch_of_one_inside_a_recipe_is_named_once() -> None:
    """ALIGN's explainer names it, and the training step around it does not name it again."""
    recipe = recipes.align(make_model("test_resnet", eval_mode=False), warmup_steps=0)
    with pytest.raises(egl.InputError) as info:
        recipe.fit([(torch.randn(1, 3, 32, 32), torch.tensor([0]))], 1, progress=False)
    assert str(info.value).count("expected") == 1


def test_an_explainer_on_a_wrapper_of_the_model_is_accepted() -> None:
    from torch import nn

    class Wrapper(nn.Module):  # a user-side wrapper sharing the model's parameters
        def __init__(self, inner: nn.Module) -> None:
            super().__init__()
            self.inner = inner

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.inner(x)

    model = make_model("test_resnet", eval_mode=False)
    assert recipes.align(model, explainer=GradCAM(Wrapper(model))).explainer.model.inner is model
