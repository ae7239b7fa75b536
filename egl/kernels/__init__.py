"""Fused kernels with PyTorch fallbacks (chosen automatically)."""

from egl.kernels.cam_epilogue import cam_epilogue, cam_epilogue_reference, triton_available

__all__ = ["cam_epilogue", "cam_epilogue_reference", "triton_available"]
