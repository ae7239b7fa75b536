"""When two passes of one model over two batches may run as one pass over both, exactly.

They may when no layer mixes samples and the forward draws no random numbers:

* a BatchNorm layer computes batch statistics in training mode (and in eval mode without
  running statistics), so batching would change what each half sees; other normalisations
  (LayerNorm, GroupNorm, InstanceNorm, frozen BatchNorm) are per sample;
* dropout and drop-path in training mode draw their masks from the global RNG, so one pass
  over both halves draws other masks than two passes (the same distribution, other values).

Detected: torch's BatchNorm and dropout families, anything with a positive ``drop_prob``
(timm's ``DropPath``/``DropBlock``), and any module in training mode with a positive
``drop_rate`` (timm's ResNet and EfficientNet families call ``F.dropout(x, p=self.drop_rate)``
in their head: no dropout module to find). Other batch-dependent or random layers are not: turn
batching off for such models.
"""

from __future__ import annotations

from torch import nn

__all__ = ["uses_batch_statistics", "is_stochastic", "batchable"]


def uses_batch_statistics(model: nn.Module) -> bool:
    """True if a forward of ``model`` in its current mode normalises with batch statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
               for m in model.modules())


def is_stochastic(model: nn.Module) -> bool:
    """True if a forward of ``model`` in its current mode draws dropout or drop-path masks."""
    for m in model.modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0:
            return True
        for attr in ("drop_prob", "drop_rate"):  # drop_rate: functional dropout (timm's heads)
            drop = getattr(m, attr, 0.0)
            if isinstance(drop, (int, float)) and not isinstance(drop, bool) and drop > 0:
                return True
    return False


def batchable(model: nn.Module) -> bool:
    """One pass over two batches gives exactly what two passes give (see the module docstring)."""
    return not uses_batch_statistics(model) and not is_stochastic(model)
