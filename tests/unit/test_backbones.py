"""timm glue: token layout, target resolution, head detection."""

from __future__ import annotations

import pytest
import torch
from _helpers import NUM_CLASSES, make_model
from torch import Tensor, nn

import egl
from egl.backbones import FEATURES, head_kind, is_timm_model, is_vit, resolve_target, tokens_to_grid
from egl.errors import InputError


class FakeViT(nn.Module):
    """Just the metadata tokens_to_grid reads: 16 px patches, one class token."""

    def __init__(self, prefix: int = 1) -> None:
        super().__init__()
        self.patch_embed = nn.Module()
        self.patch_embed.patch_size = (16, 16)
        self.patch_embed.grid_size = None
        self.num_prefix_tokens = prefix


def coded_tokens(b: int, prefix: int, h: int, w: int, c: int) -> Tensor:
    """Token p + i*w + j holds 1000*b + 100*c + 10*i + j; prefix tokens hold -1."""
    t = torch.full((b, prefix + h * w, c), -1.0)
    for bi in range(b):
        for i in range(h):
            for j in range(w):
                for ci in range(c):
                    t[bi, prefix + i * w + j, ci] = 1000 * bi + 100 * ci + 10 * i + j
    return t


@pytest.mark.parametrize("prefix", [0, 1, 5])
def test_tokens_to_grid_row_major_prefix_dropped(prefix: int) -> None:
    h, w = 3, 4  # a non-square grid catches a swapped h/w
    grid = tokens_to_grid(coded_tokens(2, prefix, h, w, 2), FakeViT(prefix), (16 * h, 16 * w))
    assert grid.shape == (2, 2, h, w)
    for b in range(2):
        for c in range(2):
            for i in range(h):
                for j in range(w):
                    assert grid[b, c, i, j] == 1000 * b + 100 * c + 10 * i + j


def test_tokens_to_grid_on_a_timm_vit() -> None:
    model = make_model("test_vit", dynamic_img_size=True)
    prefix = model.num_prefix_tokens
    grid = tokens_to_grid(coded_tokens(1, prefix, 3, 4, 1), model, (48, 64))
    assert grid.shape == (1, 1, 3, 4)
    assert grid[0, 0, 2, 1] == 21 and grid[0, 0, 0, 3] == 3
    with torch.no_grad():  # the model's own tokens have this layout too
        feats = model.forward_features(torch.randn(1, 3, 48, 64))
    assert tokens_to_grid(feats, model, (48, 64)).shape == (1, feats.shape[-1], 3, 4)


def test_tokens_to_grid_wrong_count() -> None:
    with pytest.raises(egl.UnsupportedModelError, match=r"1 prefix tokens plus a 3x4 patch grid .*FakeViT.*layer="):
        tokens_to_grid(torch.zeros(2, 12, 8), FakeViT(1), (48, 64))
    model = make_model("test_vit")
    with pytest.raises(egl.UnsupportedModelError, match="4x4 patch grid"):
        tokens_to_grid(torch.zeros(1, 16, 8), model, (64, 64))


def test_model_kinds() -> None:
    resnet, vit = make_model("test_resnet"), make_model("test_vit")
    assert is_timm_model(resnet) and not is_vit(resnet)
    assert is_timm_model(vit) and is_vit(vit)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    assert not is_timm_model(plain) and not is_vit(plain)


@pytest.mark.parametrize("name,head,fmt", [
    ("test_resnet", "pooled", "NCHW"),
    ("test_convnext", "pooled", "NCHW"),
    ("test_efficientnet", "pooled", "NCHW"),
])
def test_resolve_cnn(name: str, head: str, fmt: str) -> None:
    target = resolve_target(make_model(name))
    assert (target.name, target.module, target.head, target.fmt) == (FEATURES, None, head, fmt)


@pytest.mark.parametrize("name,kind", [("test_resnet", "linear"), ("test_efficientnet", "linear"),
                                       ("test_convnext", "pooled")])
def test_head_kind(name: str, kind: str, images: Tensor) -> None:
    model = make_model(name)
    target = resolve_target(model)
    with torch.no_grad():
        feats = model.forward_features(images)
    before = [b.clone() for b in model.buffers()]
    assert head_kind(model, target, feats) == kind
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_head_kind_depends_on_mode_with_dropout(images: Tensor) -> None:
    model = make_model("test_resnet", drop_rate=0.5)
    target = resolve_target(model)
    with torch.no_grad():
        feats = model.forward_features(images)
    assert head_kind(model, target, feats) == "linear"
    model.train()
    state = torch.random.get_rng_state()
    assert head_kind(model, target, feats) == "pooled"
    assert torch.equal(torch.random.get_rng_state(), state)  # the probe draws no dropout masks from the global RNG
    model.eval()
    assert head_kind(model, target, feats) == "linear"



def test_head_kind_probe_rejects_a_conv_before_the_pool(images: Tensor) -> None:
    """VGG's head runs a 7x7 conv (``pre_logits``) before its pool: the pooled shortcut would be wrong."""
    import timm.models.vgg

    torch.manual_seed(0)
    model = timm.models.vgg.VGG([8, "M", 8, "M", 8, "M", 8, "M", 8, "M"], num_classes=NUM_CLASSES, mlp_ratio=0.01)
    target = resolve_target(model.train())
    assert target.head == "pooled"  # the structural hint sees the ClassifierHead's pool...
    with torch.no_grad():
        feats = model.forward_features(images)
    state, before = torch.random.get_rng_state(), [b.clone() for b in model.buffers()]
    assert head_kind(model, target, feats) == "none"  # ...the probe sees the conv in front of it
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a, b) for a, b in zip(before, model.buffers()))


def test_resolve_channels_last() -> None:
    target = resolve_target(make_model("test_mambaout"))  # pools inside its head, output_fmt="NHWC"
    assert (target.name, target.fmt) == (FEATURES, "NHWC")
    swin = make_model("swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8),
                      img_size=64, window_size=2)  # SelectAdaptivePool2d(input_fmt="NHWC")
    assert resolve_target(swin).fmt == "NHWC"


def test_tokens_to_grid_explicit_prefix() -> None:
    grid = tokens_to_grid(coded_tokens(1, 0, 3, 4, 1), FakeViT(1), (48, 64), prefix=0)  # CaiT's patch-only blocks
    assert grid[0, 0, 2, 1] == 21

def test_resolve_vit() -> None:
    model = make_model("test_vit")
    target = resolve_target(model)
    assert target.name == "blocks.5.norm1" and target.module is model.blocks[5].norm1
    assert (target.head, target.fmt) == ("none", "NLC")
    avg = resolve_target(make_model("test_vit", global_pool="avg"))
    assert (avg.name, avg.module, avg.head, avg.fmt) == (FEATURES, None, "pooled", "NLC")


def test_resolve_dotted_names() -> None:
    model = make_model("test_vit")
    neg = resolve_target(model, "blocks.-1.norm1")
    assert neg.module is model.blocks[5].norm1 and neg.head == "none" and neg.fmt == "NLC"
    resnet = make_model("test_resnet")
    t = resolve_target(resnet, "layer4.0.conv2")
    assert t.module is resnet.layer4[0].conv2 and t.fmt == "NCHW"
    with pytest.raises(InputError, match=r"'blocks.9'.*'9' is not a child of blocks; children there are \['0', '1'"):
        resolve_target(model, "blocks.9")
    with pytest.raises(InputError, match="'layer' expected 'auto', a dotted module path such as 'layer4', or a "
                                         "submodule of the model, got NoneType None"):
        resolve_target(model, None)  # type: ignore[arg-type]


def test_resolve_plain_model_needs_an_input(images: Tensor) -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, stride=2, padding=1),
                          nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, NUM_CLASSES))
    with pytest.raises(InputError, match="'x' expected an input batch"):
        resolve_target(model)
    target = resolve_target(model, x=images)
    assert target.name == "3" and target.module is model[3] and target.head == "none"
    assert not any(m._forward_hooks for m in model.modules())


def test_resolve_plain_model_without_a_map(images: Tensor) -> None:
    class Flat(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3 * 64 * 64, NUM_CLASSES)

        def forward(self, x: Tensor) -> Tensor:
            return self.fc(x.flatten(1))

    model = Flat()
    with pytest.raises(egl.UnsupportedModelError, match=r"Flat has no layer .* Pass layer="):
        resolve_target(model, x=images)
    assert not any(m._forward_hooks for m in model.modules())


class _GeM(nn.Module):
    """Generalised-mean pooling (p=3): not average pooling, so no closed form."""

    def forward(self, a: Tensor) -> Tensor:
        return a.clamp_min(1e-6).pow(3).mean((2, 3)).pow(1 / 3)


@pytest.mark.parametrize("change", ["gem_pool", "mlp_head", "reset_classifier"])
def test_the_head_probes_run_again_once_the_head_is_replaced(change: str, images: Tensor) -> None:
    """The head's answers were cached on the model alone: a GeM pool swapped in after a
    closed-form call kept the closed form (maps 5% off, silently); an MLP head crashed with an
    AttributeError on ``.weight``."""
    from egl.explainers import GradCAM, grad_cam

    model = make_model("test_resnet")
    grad_cam(model, images)
    assert GradCAM(model).explain(images).logits is not None
    if change == "gem_pool":
        model.global_pool = _GeM()
    elif change == "mlp_head":
        model.fc = nn.Sequential(nn.Linear(model.num_features, 16), nn.ReLU(), nn.Linear(16, NUM_CLASSES))
    else:
        model.reset_classifier(NUM_CLASSES + 2)
    cam = GradCAM(model)
    got = cam.explain(images)
    want = GradCAM(model, path="autograd").explain(images)
    assert cam.last_path == {"gem_pool": "autograd", "mlp_head": "pooled", "reset_classifier": "closed_form"}[change]
    torch.testing.assert_close(got.saliency, want.saliency, atol=1e-5, rtol=1e-4)
    with torch.no_grad():
        torch.testing.assert_close(got.logits, model(images), atol=1e-5, rtol=1e-4)


def test_structure_stamp_follows_submodule_replacement_only() -> None:
    from egl._module_hooks import structure_stamp

    model = make_model("test_resnet")
    first = structure_stamp(model)
    nn.Linear(3, 3)  # other modules built elsewhere: no change
    assert structure_stamp(model) == first
    model.eval().train().eval()
    assert structure_stamp(model) == first
    model.layer4[0].conv1 = nn.Conv2d(model.layer4[0].conv1.in_channels, model.layer4[0].conv1.out_channels, 3,
                                      stride=model.layer4[0].conv1.stride, padding=1, bias=False)  # nested
    second = structure_stamp(model)
    assert second != first and structure_stamp(model) == second
    fc = model.fc
    model.fc = fc  # the same object again: no change
    assert structure_stamp(model) == second
