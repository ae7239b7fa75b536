"""Data: the built-in synthetic shortcut benchmark and DomainBed-layout folders."""

from egl.data.domain_folder import DomainFolder
from egl.data.synthetic import SPLITS, SyntheticConfig, SyntheticShortcuts, build

__all__ = ["SyntheticConfig", "SyntheticShortcuts", "build", "SPLITS", "DomainFolder"]
