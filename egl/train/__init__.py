"""The built-in training loop for recipes."""

from egl.train.loop import fit

__all__ = ["fit"]
