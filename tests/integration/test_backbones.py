"""'Any timm backbone', shown: Grad-CAM and three ALIGN steps over a fixed list of timm architectures.

Every model is built small, with random weights (never downloaded): timm's ``test_*`` models,
real architectures shrunk through their own keyword arguments, or the smallest real variants.
For each one that egl supports with ``layer="auto"`` the test checks:

* the target layer and the Grad-CAM path that ``layer="auto"`` resolves to (the table below
  is the source of ``docs/backbones.md``);
* saliency ``[B, 1, H, W]``, finite, for square and non-square inputs;
* where a fast path (``closed_form``, ``pooled``) is taken, that it equals the autograd path
  on the same target to 1e-5 (signed maps at feature resolution, so nothing is hidden);
* three ALIGN steps (``warmup_steps=1``, so the alignment term runs twice) with finite losses.

Architectures that ``auto`` cannot read raise ``egl.UnsupportedModelError`` naming the model
and a ``layer=`` to pass; with that layer they train too. ``docs/backbones.md`` carries the two
tables ``markdown_tables()`` prints from the lists below; a test fails when they differ.
"""

from __future__ import annotations

import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
import timm
import torch
from _helpers import NUM_CLASSES
from torch import nn

import egl
from egl import recipes
from egl.explainers import GradCAM, class_maps

FEATURES = "forward_features"
B = 2


@dataclass(frozen=True)
class Case:
    """One architecture: how to build it, the input it takes, what ``layer="auto"`` gives."""

    id: str
    name: str                       # timm model name (or the class built, for ``build``)
    kwargs: dict[str, Any] = field(default_factory=dict)
    path: str = "closed_form"       # expected GradCAM.last_path with path="auto"
    layer: str = FEATURES           # expected GradCAM.target_layer
    hw: tuple[int, int] = (64, 64)
    build: Callable[..., nn.Module] | None = None



def _cls(qualname: str) -> Callable[..., nn.Module]:
    """A timm model class, for architectures whose registered names fix the sizes we shrink."""
    module, name = qualname.rsplit(".", 1)
    return getattr(importlib.import_module(f"timm.models.{module}"), name)


TINY_VIT = {"depth": 2, "img_size": 64}
SWIN = {"depths": (1, 1, 1, 1), "embed_dim": 32, "num_heads": (1, 2, 4, 8), "img_size": 64, "window_size": 2}

AUTO: list[Case] = [
    # ---- CNNs: global average pool then Linear (closed form) or a pooled head
    Case("test_resnet", "test_resnet"),
    Case("test_resnet-nonsquare", "test_resnet", hw=(64, 96)),
    Case("test_efficientnet", "test_efficientnet"),
    Case("test_convnext", "test_convnext", path="pooled"),
    Case("test_byobnet", "test_byobnet"),
    Case("test_nfnet", "test_nfnet"),
    Case("resnet10t", "resnet10t"),
    Case("resnext26ts", "resnext26ts"),
    Case("regnetx_002", "regnetx_002"),
    Case("efficientnet_b0", "efficientnet_b0"),
    Case("mobilenetv3_small_050", "mobilenetv3_small_050", path="pooled"),
    Case("mobilenetv4_conv_small_050", "mobilenetv4_conv_small_050", path="pooled"),
    Case("convnext_atto", "convnext_atto", path="pooled"),
    Case("convnextv2_atto", "convnextv2_atto", path="pooled"),
    Case("densenet121-shrunk", "densenet121", {"growth_rate": 8, "block_config": (1, 1, 1, 1)}),
    Case("inception_v3", "inception_v3", hw=(107, 107)),  # 107 px: the smallest input with a 2x2 map
    Case("inception_next_atto", "inception_next_atto", path="pooled"),
    Case("ghostnet_050", "ghostnet_050", path="pooled"),
    Case("hgnetv2_b0", "hgnetv2_b0", path="pooled"),
    Case("lcnet_050", "lcnet_050", path="pooled"),
    Case("mnasnet_small", "mnasnet_small"),
    Case("rexnet_100", "rexnet_100"),
    Case("ese_vovnet19b_dw", "ese_vovnet19b_dw"),
    Case("mobileone_s0", "mobileone_s0"),
    Case("hrnet_w18_small", "hrnet_w18_small"),
    Case("dpn48b-conv-classifier", "dpn48b", path="pooled"),  # a 1x1 Conv2d classifier: not Linear
    Case("dla46_c", "dla46_c", path="pooled"),
    Case("fasternet_t0", "fasternet_t0", path="pooled"),
    Case("starnet_s050", "starnet_s050"),
    Case("repvit_m0_9", "repvit_m0_9", path="pooled"),
    # head = conv before the pool: only autograd is exact
    Case("vgg-shrunk", "vgg.VGG", {"cfg": [16, "M", 32, "M", 64, "M", 64, "M", 64, "M"], "mlp_ratio": 0.01},
         path="autograd", build=_cls("vgg.VGG")),
    Case("efficientvit_b0", "efficientvit_b0", path="autograd"),
    # ---- conv / attention hybrids, mobile ViTs
    Case("test_maxvit", "test_maxvit", {"img_size": 64}),
    Case("test_coatnet", "test_coatnet", {"img_size": 64}),
    Case("mobilevit_xxs", "mobilevit_xxs"),
    Case("mobilevitv2_050", "mobilevitv2_050"),
    Case("fastvit_t8", "fastvit_t8"),
    Case("edgenext_xx_small", "edgenext_xx_small", path="pooled"),
    Case("efficientformerv2_s0", "efficientformerv2_s0", {"img_size": 64}, path="pooled"),
    Case("efficientvit_m0", "efficientvit_m0", hw=(96, 96)),
    Case("levit_conv_128s", "levit_conv_128s", {"img_size": 128}, path="pooled", hw=(128, 128)),
    Case("pvt_v2_b0", "pvt_v2_b0", {"depths": (1, 1, 1, 1)}),
    Case("davit-shrunk", "davit_tiny", {"depths": (1, 1, 1, 1), "embed_dims": (16, 32, 64, 128),
                                        "num_heads": (1, 2, 4, 8)}, path="pooled"),
    Case("tiny_vit-shrunk", "tiny_vit.TinyVit", {"embed_dims": (16, 32, 64, 128), "depths": (1, 1, 1, 1),
                                                 "num_heads": (1, 2, 4, 8), "window_sizes": (2, 2, 2, 2)},
         path="pooled", build=_cls("tiny_vit.TinyVit")),
    Case("focalnet-shrunk", "focalnet.FocalNet", {"embed_dim": 16, "depths": (1, 1, 1, 1)},
         build=_cls("focalnet.FocalNet")),
    Case("poolformer_s12", "poolformer_s12", path="pooled"),
    Case("nest-shrunk", "nest.Nest", {"img_size": 64, "embed_dims": (32, 64, 128), "num_heads": (1, 2, 4),
                                      "depths": (1, 1, 1)}, build=_cls("nest.Nest")),
    Case("gcvit-shrunk", "gcvit.GlobalContextVit", {"img_size": 64, "embed_dim": 16, "depths": (1, 1, 1, 1),
                                                    "num_heads": (1, 2, 4, 8)}, build=_cls("gcvit.GlobalContextVit")),
    Case("poolformerv2-shrunk", "metaformer.MetaFormer", {"depths": (1, 1, 1, 1), "dims": (16, 32, 64, 128)},
         path="pooled", build=_cls("metaformer.MetaFormer")),
    # ---- channels-last (NHWC) features
    Case("swin-shrunk", "swin_tiny_patch4_window7_224", SWIN),
    Case("swinv2-shrunk", "swinv2_tiny_window8_256", SWIN),
    Case("swinv2_cr-shrunk", "swinv2_cr_tiny_224", {"depths": (1, 1, 1, 1), "embed_dim": 32,
                                                    "num_heads": (1, 2, 4, 8), "img_size": 64, "window_size": 2}),
    Case("test_mambaout", "test_mambaout", path="pooled"),
    Case("mambaout_femto", "mambaout_femto", path="pooled"),  # MlpHead: pools in forward(), no pooling module
    Case("sequencer2d-shrunk", "sequencer2d_s", {"layers": (1, 1, 1, 1), "embed_dims": (32, 64, 64, 64),
                                                 "hidden_sizes": (8, 16, 16, 16)}, path="pooled"),
    # ---- token models: average-pooled tokens (pooled head) ...
    Case("test_vit2-avg", "test_vit2", {"img_size": 64}, path="pooled"),
    Case("test_vit_relpos-no-prefix", "test_vit_relpos", {"img_size": 64}, path="pooled"),
    Case("vit_tiny-avg-nonsquare", "vit_tiny_patch16_224", {**TINY_VIT, "dynamic_img_size": True, "global_pool": "avg"},
         path="pooled", hw=(48, 80)),
    Case("vit_reg4-avg", "vit_small_patch14_reg4_dinov2",
         {**TINY_VIT, "img_size": 56, "embed_dim": 64, "num_heads": 2, "global_pool": "avg"},
         path="pooled", hw=(56, 56)),
    Case("beit-shrunk", "beit_base_patch16_224", {**TINY_VIT, "embed_dim": 64, "num_heads": 2}, path="pooled"),
    Case("eva02_tiny-nonsquare", "eva02_tiny_patch14_224", {"depth": 2, "img_size": 56, "dynamic_img_size": True},
         path="pooled", hw=(42, 70)),
    Case("mixer-shrunk", "mlp_mixer.MlpMixer", {"img_size": 64, "patch_size": 16, "num_blocks": 2, "embed_dim": 64},
         path="pooled", build=_cls("mlp_mixer.MlpMixer")),
    Case("samvit-shrunk", "samvit_base_patch16", {"img_size": 64, "depth": 2, "embed_dim": 64, "num_heads": 2},
         path="pooled"),
    # ... and class-token models: Grad-CAM at the last block's attention input
    Case("test_vit-cls", "test_vit", {"img_size": 64}, path="autograd", layer="blocks.5.norm1"),
    Case("test_vit3-attnpool", "test_vit3", {"img_size": 64}, path="autograd", layer="blocks.8.norm1"),
    Case("vit_tiny", "vit_tiny_patch16_224", TINY_VIT, path="autograd", layer="blocks.1.norm1"),
    Case("vit_tiny-nonsquare", "vit_tiny_patch16_224", {**TINY_VIT, "dynamic_img_size": True},
         path="autograd", layer="blocks.1.norm1", hw=(48, 80)),
    Case("deit_tiny", "deit_tiny_patch16_224", TINY_VIT, path="autograd", layer="blocks.1.norm1"),
    Case("deit_tiny_distilled", "deit_tiny_distilled_patch16_224", TINY_VIT, path="autograd", layer="blocks.1.norm1"),
    Case("deit3_small", "deit3_small_patch16_224", TINY_VIT, path="autograd", layer="blocks.1.norm1"),
    Case("vit_reg4-cls", "vit_small_patch14_reg4_dinov2", {**TINY_VIT, "img_size": 56, "embed_dim": 64, "num_heads": 2},
         path="autograd", layer="blocks.1.norm1", hw=(56, 56)),
    Case("eva02_tiny-cls", "eva02_tiny_patch14_224", {"depth": 2, "img_size": 56, "global_pool": "token"},
         path="autograd", layer="blocks.1.norm1", hw=(56, 56)),
    Case("test_vit_relpos-cls", "test_vit_relpos", {"img_size": 64, "class_token": True, "global_pool": "token"},
         path="autograd", layer="blocks.8.norm1"),
    Case("cait-shrunk", "cait_xxs24_224", TINY_VIT, path="autograd", layer="blocks.1.norm1"),
    Case("xcit-shrunk", "xcit_nano_12_p16_224", TINY_VIT, path="autograd", layer="blocks.1.norm1"),
    Case("convit-shrunk", "convit_tiny", {**TINY_VIT, "local_up_to_layer": 1}, path="autograd", layer="blocks.1.norm1"),
]


@dataclass(frozen=True)
class Manual:
    """An architecture ``layer="auto"`` cannot read: the error must name it and a working layer."""

    id: str
    name: str
    kwargs: dict[str, Any]
    layer: str | None                # the layer the message suggests (None: no convolution at all)
    why: str                         # a fragment of the message
    build: Callable[..., nn.Module] | None = None
    hw: tuple[int, int] = (64, 64)


MANUAL: list[Manual] = [
    Manual("levit-tokens", "levit_128s", {"img_size": 128}, "stem.conv4.linear",
           r"forward_features returned \[2, 4, 384\]", hw=(128, 128)),
    Manual("twins", "twins_svt_small", {"depths": (1, 1, 1, 1), "embed_dims": (16, 32, 64, 128), "img_size": 64},
           "pos_block.3.proj.0", r"forward_features returned \[2, 4, 128\]"),
    Manual("pit", "pit_ti_224", {"img_size": 64, "depth": (1, 1, 1)}, "transformers.2.pool.conv",
           r"tokens of shape \[2, 1, 256\] do not match 0 prefix tokens plus a 7x7 patch grid"),
    Manual("hiera", "hiera_tiny_224", {"img_size": 64, "embed_dim": 32, "stages": (1, 1, 1, 1)}, "patch_embed.proj",
           r"forward_features returned \[2, 4, 256\]"),
    Manual("coat_lite-shrunk", "coat.CoaT", {"img_size": 64, "patch_size": 4, "embed_dims": (16, 32, 64, 128),
                                             "serial_depths": (1, 1, 1, 1), "num_heads": 8},
           "crpe4.conv_list.2", r"forward_features returned \[2, 5, 128\]", build=_cls("coat.CoaT")),
    Manual("volo-shrunk", "volo.VOLO", {"layers": [1, 1, 1, 1], "img_size": 64, "embed_dims": [32, 64, 64, 64],
                                        "num_heads": [1, 2, 2, 2]},
           "network.1.proj", r"forward_features returned \[2, 17, 64\]", build=_cls("volo.VOLO")),
    Manual("crossvit-shrunk", "crossvit.CrossVit", {"img_size": 64, "img_scale": (1.0, 1.0), "patch_size": (8, 16),
                                                    "embed_dim": (32, 64), "depth": ((1, 1, 0),), "num_heads": (1, 2)},
           "patch_embed.1.proj", r"forward_features returned a list", build=_cls("crossvit.CrossVit")),
    Manual("tnt", "tnt_s_patch16_224", {"img_size": 64, "depth": 2}, None, r"forward_features returned \[2, 17, 384\]"),
]


def _build(case: Case | Manual) -> nn.Module:
    torch.manual_seed(0)
    if case.build is not None:
        model = case.build(num_classes=NUM_CLASSES, **case.kwargs)
    else:
        model = timm.create_model(case.name, pretrained=False, num_classes=NUM_CLASSES, **case.kwargs)
    head = model.get_classifier()  # type: ignore[operator]
    head = head if isinstance(head, nn.Linear) else getattr(head, "fc", None)  # Sequencer returns its ClassifierHead
    if isinstance(head, nn.Linear) and not head.weight.any():
        # MLP-Mixer and Sequencer start from a zero classifier: every Grad-CAM map is zero, and
        # fast path == autograd would hold trivially. Fine-tuning starts from trained weights.
        nn.init.normal_(head.weight, std=0.02)
    return model.eval()


def _batch(hw: tuple[int, int]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    h, w = hw
    mask = torch.zeros(B, 1, h, w)
    mask[..., h // 4: 3 * h // 4, w // 4: 3 * w // 4] = 1
    return {"image": torch.randn(B, 3, h, w, generator=g), "label": torch.arange(B) % NUM_CLASSES, "mask": mask}


def _align_three_steps(model: nn.Module, batch: dict[str, torch.Tensor], **kwargs: Any) -> None:
    model.train()
    logs = recipes.align(model, warmup_steps=1, **kwargs).fit([batch], steps=3, progress=False)
    assert len(logs) == 3 and "classifier/align" in logs[-1], logs[-1]
    bad = {k: v for row in logs for k, v in row.items() if not math.isfinite(v)}
    assert not bad, bad


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in AUTO])
def test_auto(case: Case) -> None:
    model = _build(case)
    batch = _batch(case.hw)
    x, y = batch["image"], batch["label"]

    cam = GradCAM(model)
    maps = cam(x, y)
    assert cam.target_layer == case.layer
    assert cam.last_path == case.path
    assert maps.shape == (B, 1, *case.hw) and torch.isfinite(maps).all()

    if case.path != "autograd":  # the fast path equals autograd on the same target
        opts = {"relu": False, "normalize": False, "upsample": False}
        fast = GradCAM(model, **opts)(x, y)
        ref_cam = GradCAM(model, path="autograd", **opts)
        ref = ref_cam(x, y)
        assert ref_cam.target_layer == case.layer and ref_cam.last_path == "autograd"
        scale = float(ref.abs().max())
        assert scale > 0  # a non-trivial map, or the comparison proves nothing
        torch.testing.assert_close(fast, ref, rtol=1e-5, atol=1e-5 * scale)

    _align_three_steps(model, batch)


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id) for c in MANUAL])
def test_unsupported_names_the_layer(case: Manual) -> None:
    model = _build(case)
    batch = _batch(case.hw)
    x, y = batch["image"], batch["label"]
    arch = type(model).__name__ if case.build else f"{type(model).__name__} ('{case.name}')"
    with pytest.raises(egl.UnsupportedModelError) as info:
        GradCAM(model)(x, y)
    msg = str(info.value)
    assert msg.startswith(f"egl.explainers.grad_cam: {arch} is not supported with layer='auto'"), msg
    assert re.search(case.why, msg), msg
    assert not any(m._forward_hooks for m in model.modules())
    if case.layer is None:
        assert "input_gradient" in msg
        return
    assert f"Pass layer='{case.layer}'" in msg
    cam = GradCAM(model, layer=case.layer)  # the suggestion works, for saliency and for training
    maps = cam(x, y)
    assert cam.last_path == "autograd" and maps.shape == (B, 1, *x.shape[-2:]) and torch.isfinite(maps).all()
    _align_three_steps(model, batch, layer=case.layer)


def test_dotted_layer_on_channels_last_model() -> None:
    """A dotted ``layer=`` on Swin: a convolution's NCHW output works (the stage outputs are NHWC)."""
    model = _build(AUTO[[c.id for c in AUTO].index("swin-shrunk")])
    x = _batch((64, 64))["image"]
    maps = GradCAM(model, layer="patch_embed.proj")(x, [0, 1])
    assert maps.shape == (B, 1, 64, 64) and torch.isfinite(maps).all()


@pytest.mark.parametrize("case_id", ["swin-shrunk", "test_mambaout", "mixer-shrunk", "samvit-shrunk", "vit_reg4-avg"])
def test_class_maps_on_channels_last_and_token_models(case_id: str) -> None:
    """``class_maps`` reads the same layouts: channel k is class k's signed Grad-CAM."""
    case = AUTO[[c.id for c in AUTO].index(case_id)]
    model = _build(case)
    x = _batch(case.hw)["image"]
    out = class_maps(model, x)
    assert out.saliency.shape[:2] == (B, NUM_CLASSES)
    for k in range(NUM_CLASSES):
        ref = GradCAM(model, relu=False, normalize=False, upsample=False)(x, k)
        torch.testing.assert_close(out.saliency[:, k: k + 1], ref, rtol=1e-5, atol=1e-5 * float(ref.abs().max()))


# ---- docs/backbones.md: its tables are this file's expectations, which the tests above check
def markdown_tables() -> str:
    """The two tables of docs/backbones.md (``PYTHONPATH=tests python tests/integration/test_backbones.py``)."""
    def args(kwargs: dict[str, Any]) -> str:
        return ", ".join(f"{k}={v!r}" for k, v in kwargs.items()).replace("|", "\\|")

    def model(c: Case | Manual) -> str:
        return f"`timm.models.{c.name}`" if c.build else f"`{c.name}`"

    rows = ["| case | model | built with | input | target (`layer=\"auto\"`) | path |", "|---|---|---|---|---|---|"]
    for c in AUTO:
        rows.append(f"| {c.id} | {model(c)} | {args(c.kwargs) or 'defaults'} | {c.hw[0]}x{c.hw[1]} "
                    f"| `{c.layer}` | {c.path} |")
    rows += ["", "| case | model | built with | what `auto` finds | `layer=` named by the error |",
             "|---|---|---|---|---|"]
    for m in MANUAL:
        why = m.why.replace("\\", "")
        rows.append(f"| {m.id} | {model(m)} | {args(m.kwargs)} | {why} | "
                    f"{f'`{m.layer}`' if m.layer else 'none (use `input_gradient`)'} |")
    return "\n".join(rows) + "\n"


def test_docs_tables_are_the_tested_ones() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "backbones.md").read_text()
    assert markdown_tables() in doc, "docs/backbones.md is stale: regenerate its tables (see markdown_tables)"


if __name__ == "__main__":
    print(markdown_tables(), end="")
