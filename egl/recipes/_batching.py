"""When two passes of one model over two batches may run as one pass over both.

They may when no layer mixes samples: a BatchNorm layer computes batch statistics in training
mode (and in eval mode without running statistics), so batching would change what each half
sees. Other normalisations (LayerNorm, GroupNorm, InstanceNorm, frozen BatchNorm) are per
sample. Layers outside torch's BatchNorm family that use batch statistics are not detected:
turn batching off for such models.
"""

from __future__ import annotations

from torch import nn

__all__ = ["uses_batch_statistics"]


def uses_batch_statistics(model: nn.Module) -> bool:
    """True if a forward of ``model`` in its current mode normalises with batch statistics."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and (m.training or m.running_mean is None)
               for m in model.modules())
