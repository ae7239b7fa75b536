"""Input normalisation in the model's stem: the same as normalising the images, on every path
into the network, invisible to state_dict, kept by deepcopy, checked arguments."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
from torch import nn

import egl
from egl.normalization import IMAGENET_MEAN, IMAGENET_STD, input_normalization, normalize_inputs


def _by_hand(x: torch.Tensor, mean: tuple, std: tuple) -> torch.Tensor:
    return (x - torch.tensor(mean).view(1, -1, 1, 1)) / torch.tensor(std).view(1, -1, 1, 1)


@pytest.mark.parametrize("arch, stem", [("test_resnet", "conv1.0"), ("test_vit", "patch_embed.proj"),
                                        ("test_convnext", "stem.0")])
def test_the_stem_normalises_on_every_path_and_deepcopy_keeps_it(arch: str, stem: str) -> None:
    torch.manual_seed(0)
    model = timm.create_model(arch, num_classes=3).eval()
    x = torch.rand(2, 3, *model.pretrained_cfg["input_size"][-2:])
    mean, std = model.pretrained_cfg["mean"], model.pretrained_cfg["std"]
    want = model(_by_hand(x, mean, std))
    keys = list(model.state_dict())
    assert normalize_inputs(model) is model
    assert input_normalization(model) == (stem, pytest.approx(mean), pytest.approx(std))
    torch.testing.assert_close(model(x), want)
    torch.testing.assert_close(model.forward_head(model.forward_features(x)), want)  # (SGDrop's, class maps')
    torch.testing.assert_close(copy.deepcopy(model)(x), want)  # (the parameter randomisation test's copies)
    assert list(model.state_dict()) == keys  # checkpoints and weight files unchanged


def test_the_input_gradient_is_the_pixels_and_applying_twice_replaces() -> None:
    torch.manual_seed(0)
    model = timm.create_model("test_resnet", num_classes=3).eval()
    x = torch.rand(2, 3, 32, 32)
    leaf = x.clone().requires_grad_(True)
    model(_by_hand(leaf, IMAGENET_MEAN, IMAGENET_STD))[:, 0].sum().backward()
    normalize_inputs(model, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    normalize_inputs(model, "imagenet")  # replaces the first, one hook
    assert len(model.conv1[0]._forward_pre_hooks) == 1
    mine = x.clone().requires_grad_(True)
    model(mine)[:, 0].sum().backward()
    torch.testing.assert_close(mine.grad, leaf.grad)


def test_bad_arguments_and_models_are_named() -> None:
    model = timm.create_model("test_resnet", num_classes=3)
    with pytest.raises(egl.InputError, match=r"normalize_inputs: 'mean' expected 'timm', 'imagenet' or one value"):
        normalize_inputs(model, "cifar")
    with pytest.raises(egl.InputError, match=r"'std' expected None with mean='imagenet'"):
        normalize_inputs(model, "imagenet", (0.5, 0.5, 0.5))
    with pytest.raises(egl.InputError, match=r"'mean' expected one finite mean and one positive std per input channel"):
        normalize_inputs(model, (0.5, 0.5), (0.5, 0.5, 0.5))
    with pytest.raises(egl.InputError, match=r"one finite mean and one positive std"):
        normalize_inputs(model, (0.5, 0.5, 0.5), (0.5, 0.0, 0.5))
    with pytest.raises(egl.InputError, match=r"'mean' expected one value per input channel \(3: the first "):
        normalize_inputs(model, (0.5,), (0.5,))  # one channel for a three-channel stem
    with pytest.raises(egl.InputError, match=r"'model' expected a model that takes a blank \[1, 3, 7, 7\]"):
        normalize_inputs(timm.create_model("test_vit", num_classes=3), "imagenet", probe_size=(7, 7))
    with pytest.raises(egl.InputError, match=r"'timm' for a timm model whose pretrained_cfg names"):
        normalize_inputs(nn.Sequential(nn.Conv2d(3, 2, 3), nn.Flatten()))

    class Rescales(nn.Module):  # changes its input before any submodule sees it
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(2 * x - 1)

    with pytest.raises(egl.InputError, match=r"whose forward changes the input before any submodule sees it"):
        normalize_inputs(Rescales(), "imagenet")
    plain = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert input_normalization(normalize_inputs(plain, "imagenet"))[0] == "0"  # any module: its first submodule
    assert input_normalization(timm.create_model("test_resnet")) is None


def test_every_path_and_mode_is_kept_and_a_second_entry_is_refused() -> None:
    torch.manual_seed(0)

    class Wrapper(nn.Module):  # forward_features goes to the inner model directly
        def __init__(self) -> None:
            super().__init__()
            self.net = timm.create_model("test_resnet", num_classes=3)

        def forward_features(self, x: torch.Tensor) -> torch.Tensor:
            return self.net.forward_features(x)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    wrapped = Wrapper().eval()
    x = torch.rand(2, 3, 32, 32)
    want = wrapped.net.forward_features(_by_hand(x, IMAGENET_MEAN, IMAGENET_STD))
    wrapped.net.bn1.train()  # a module kept in another mode than the model's stays so
    normalize_inputs(wrapped, "imagenet")
    assert input_normalization(wrapped)[0] == "net.conv1.0" and wrapped.net.bn1.training and not wrapped.training
    wrapped.net.bn1.eval()
    torch.testing.assert_close(wrapped.forward_features(x), want)

    class TwoEntries(nn.Module):  # a second branch reads the image too: it would arrive un-normalised
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 2, 3), nn.Conv2d(3, 2, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            small = nn.functional.interpolate(x, scale_factor=0.5)
            return self.a(x).mean((2, 3)) + self.b(small).mean((2, 3))

    two = TwoEntries()
    with pytest.raises(egl.InputError, match=r"a model that reads its input through one module \('a', normalised\)"
                       r", got TwoEntries, whose 'b' receives the image as it is too"):
        normalize_inputs(two, "imagenet", probe_size=(16, 16))
    assert input_normalization(two) is None and not two.a._forward_pre_hooks  # left as it was
    vit = timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=3)  # pretrained_cfg still says 224
    assert input_normalization(normalize_inputs(vit))[0] == "patch_embed.proj"
