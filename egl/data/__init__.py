"""Data: the built-in synthetic shortcut benchmark (``egl.data.synthetic``)."""

from egl.data.synthetic import SPLITS, SyntheticConfig, SyntheticShortcuts, build

__all__ = ["SyntheticConfig", "SyntheticShortcuts", "build", "SPLITS"]
