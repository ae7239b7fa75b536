"""egl.recipes._batching.uses_batch_statistics: when two passes may run as one."""

from __future__ import annotations

from torch import nn

from egl.recipes import freeze_batchnorm
from egl.recipes._batching import batchable, is_stochastic, uses_batch_statistics


def test_batchnorm_in_training_mode_or_without_running_statistics() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    assert uses_batch_statistics(net.train())
    assert not uses_batch_statistics(net.eval())
    no_stats = nn.Sequential(nn.BatchNorm1d(4, track_running_stats=False)).eval()
    assert uses_batch_statistics(no_stats)  # eval mode, but still batch statistics
    assert not uses_batch_statistics(freeze_batchnorm(net).train())


def test_per_sample_normalisations() -> None:
    net = nn.Sequential(nn.LayerNorm(4), nn.GroupNorm(2, 4), nn.InstanceNorm2d(4), nn.Dropout()).train()
    assert not uses_batch_statistics(net)


def test_dropout_and_drop_path_in_training_mode_are_stochastic() -> None:
    from timm.layers import DropPath

    for layer in (nn.Dropout(0.1), nn.Dropout2d(0.2), DropPath(0.1)):
        net = nn.Sequential(nn.Linear(4, 4), layer)
        assert is_stochastic(net.train()) and not batchable(net)
        assert not is_stochastic(net.eval()) and batchable(net)
    for layer in (nn.Dropout(0.0), DropPath(0.0)):
        assert not is_stochastic(nn.Sequential(layer).train())


def test_timm_functional_dropout_counts() -> None:
    """timm's ResNet and EfficientNet drop with ``F.dropout(x, p=self.drop_rate)``: no module to
    find, so with BatchNorm frozen a drop_rate=0.5 model was called batchable."""
    import timm

    for name in ("test_resnet", "test_efficientnet"):
        net = freeze_batchnorm(timm.create_model(name, num_classes=3, drop_rate=0.5)).train()
        assert not uses_batch_statistics(net)
        assert is_stochastic(net) and not batchable(net)
        assert not is_stochastic(net.eval())
        plain = freeze_batchnorm(timm.create_model(name, num_classes=3)).train()
        assert not is_stochastic(plain) and batchable(plain)
