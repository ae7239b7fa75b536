"""Score-CAM (Wang et al., "Score-CAM: Score-Weighted Visual Explanations for Convolutional
Neural Networks", CVPR Workshops 2020): channel weights from forward passes, no gradient.

Each channel ``A_k`` of the target layer, upsampled to the input and min-max normalised to
[0, 1], masks the image; the weight of the channel is the target class's softmax probability
on the masked image::

    M_k = minmax(upsample(A_k)),  w_k = softmax(f(x · M_k))_y,  map = ReLU(sum_k w_k A_k)

then upsampling and min-max normalisation as :class:`~egl.explainers.GradCAM`'s (the same
target layer, ``layer="auto"``). ``C`` forward passes per image (512 on a ResNet-18's last
stage): the price of a gradient-free map, batched ``batch_size`` masked images per pass.

Choices where the paper is silent or its code differs:

* The weight is the probability itself, as in the authors' code; the paper's "increase of
  confidence" subtracts the baseline image's score, a constant per image that the code leaves
  out.
* A channel that is constant over the image (its mask would be 0/0) gets weight 0, as in the
  authors' code.
* The ReLU acts on the weighted sum at the layer's resolution, before upsampling (egl's
  epilogue, as for Grad-CAM); the authors' code sums the upsampled channels, then applies it.
  The maps are the same wherever the weighted sum is non-negative (probabilities times a CNN's
  post-ReLU activations); on signed activations (ViT tokens) they may differ.
* Inference only (``differentiable = False``); the forward passes run in the model's current
  mode, and a model with BatchNorm in training mode is refused (its layers would normalise with,
  and update their running statistics from, the masked images): call ``model.eval()`` first.
* ``x · M_k`` is taken in the model's normalised space, as the authors' code multiplies its
  normalised tensors: for a model whose stem normalises egl's [0, 1] images
  (:func:`egl.normalization.normalize_inputs`) the masked-out pixels take the stem's mean colour.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from egl._check import check_eval_mode, check_int
from egl._transfer import upload
from egl.explainers._gradient_free import GradientFreeCAM
from egl.explainers.grad_cam import CAMParts
from egl.normalization import stem_mean

__all__ = ["ScoreCAM", "score_cam"]


class ScoreCAM(GradientFreeCAM):
    """Score-CAM bound to a model and a target layer.

    Args:
        model, layer, upsample, normalize, relu, backend: as :class:`~egl.explainers.GradCAM`.
        batch_size: masked images per forward pass (64).

    Shape:
        x: ``B C H W``; returns ``B 1 H W`` (or ``B 1 h w`` with ``upsample=False``).

    Example:
        >>> import timm, torch
        >>> from egl.explainers import ScoreCAM
        >>> model = timm.create_model("test_resnet", num_classes=5).eval()
        >>> with ScoreCAM(model, layer="layer3") as cam:
        ...     maps = cam(torch.randn(2, 3, 64, 64), target=[0, 3])
        >>> maps.shape
        torch.Size([2, 1, 64, 64])
    """

    name = "score_cam"  # (inference only: GradientFreeCAM refuses create_graph=True)

    def __init__(self, model: nn.Module, layer: str = "auto", *, upsample: bool = True, normalize: bool = True,
                 relu: bool = True, batch_size: int = 64, backend: str = "auto") -> None:
        super().__init__(model, layer, upsample=upsample, normalize=normalize, relu=relu, backend=backend)
        self.batch_size = check_int(batch_size, f"egl.explainers.{type(self).__name__}", "batch_size", low=1,
                                    fix="Pass e.g. batch_size=64 (masked images per forward pass)")

    def _forward_activations(self, x: Tensor, fn: str, hw: tuple[int, int]) -> tuple[Tensor, Tensor]:
        check_eval_mode(self.model, fn, batchnorm_only=True,  # (before the first forward pass)
                        why="BatchNorm in training mode would normalise the masked images together and move its "
                            "running statistics towards them", fix="Call model.eval() first (Score-CAM explains "
                                                                   "a trained model; it trains nothing)")
        return super()._forward_activations(x, fn, hw)

    def parts(self, x: Tensor, acts: Tensor, t: Tensor) -> CAMParts:
        return acts, self.channel_scores(x, acts, t), 1.0

    def channel_scores(self, x: Tensor, acts: Tensor, t: Tensor) -> Tensor:
        """``w[b, k]``: the softmax probability of class ``t[b]`` on ``x[b]`` masked by channel ``k``'s
        normalised, upsampled activation (0 for a constant channel); at most ``batch_size`` masked
        images a forward pass (blocks of images times blocks of channels)."""
        b, c = acts.shape[:2]
        hw = x.shape[-2:]
        mean = stem_mean(self.model)  # masked-out pixels are zero in the model's normalised space
        if mean is not None:
            mean = upload(mean, x.device, x.dtype)
        images = min(b, self.batch_size)  # images per block
        out = acts.new_zeros(b, c, dtype=torch.float32)
        for i in range(0, b, images):
            xi, ti = x[i:i + images], t[i:i + images].view(-1, 1, 1)
            per = max(1, self.batch_size // xi.shape[0])  # channels per pass (a smaller last block: more)
            for k in range(0, c, per):
                up = F.interpolate(acts[i:i + images, k:k + per].float(), size=hw, mode="bilinear",
                                   align_corners=False)
                lo = up.amin(dim=(2, 3), keepdim=True)
                span = up.amax(dim=(2, 3), keepdim=True) - lo
                masks = torch.where(span > 0, (up - lo) / span.clamp(min=torch.finfo(up.dtype).tiny), 0.0)
                m, n = masks.shape[:2]
                keep = masks[:, :, None].to(x.dtype)
                masked = (xi[:, None] * keep if mean is None else mean + (xi[:, None] - mean) * keep
                          ).flatten(0, 1)  # [m * n, C_in, H, W]
                probs = self.model(masked).float().softmax(dim=1).view(m, n, -1)
                scores = probs.gather(2, ti.expand(m, n, 1)).squeeze(2)
                out[i:i + m, k:k + n] = torch.where(span.view(m, n) > 0, scores, 0.0)
        return out


def score_cam(model: nn.Module, x: Tensor, target: Any = None, *, layer: str = "auto", upsample: bool = True,
              normalize: bool = True, relu: bool = True, batch_size: int = 64) -> Tensor:
    """Functional Score-CAM: ``ScoreCAM(model, layer, ...)(x, target)``.

    Example:
        >>> import timm, torch
        >>> from egl.explainers import score_cam
        >>> model = timm.create_model("test_resnet", num_classes=5).eval()
        >>> score_cam(model, torch.randn(2, 3, 64, 64), 1, layer="layer3", upsample=False).shape
        torch.Size([2, 1, 4, 4])
    """
    return ScoreCAM(model, layer, upsample=upsample, normalize=normalize, relu=relu,
                    batch_size=batch_size)(x, target)
