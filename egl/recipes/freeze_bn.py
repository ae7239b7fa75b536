"""Frozen BatchNorm: keep every BatchNorm layer in eval mode while the rest trains.

DomainBed's ResNet-50 (and so DRE's protocol) trains with frozen BatchNorm: the running
statistics stay those of the pretrained weights and normalise every batch, while the affine
parameters still learn. ``freeze_batchnorm(model)`` gives any model that behaviour: each
BatchNorm layer's ``train()`` keeps it in eval mode, whatever a recipe or ``fit`` asks, until
``unfreeze_batchnorm(model)``.

Example:
    >>> import timm
    >>> from egl.recipes import freeze_batchnorm
    >>> model = freeze_batchnorm(timm.create_model("test_resnet", num_classes=3))
    >>> model.train().bn1.training, model.training
    (False, True)
"""

from __future__ import annotations

from torch import nn

__all__ = ["freeze_batchnorm", "unfreeze_batchnorm"]


class _EvalOnly:
    """Stands in for a BatchNorm layer's ``train``: the layer stays in eval mode. A class (not a
    bound function) so that ``torch.save(model)``, pickling and ``deepcopy`` keep working."""

    def __init__(self, module: nn.Module) -> None:
        self.module = module

    def __call__(self, mode: bool = True) -> nn.Module:
        return nn.Module.train(self.module, False)


def freeze_batchnorm(model: nn.Module) -> nn.Module:
    """Keep every ``nn.BatchNorm*`` / ``SyncBatchNorm`` of ``model`` in eval mode; returns ``model``."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.train = _EvalOnly(m)  # type: ignore[method-assign]
            nn.Module.train(m, False)
    return model


def unfreeze_batchnorm(model: nn.Module) -> nn.Module:
    """Undo :func:`freeze_batchnorm`: BatchNorm layers follow ``train()`` again (mode unchanged)."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and "train" in vars(m):
            del m.train
    return model
