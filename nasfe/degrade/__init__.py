"""The image-formation model y = r * (k conv x) + n: kernels, camera pipeline, batched degradation."""

from nasfe.degrade.camera import ResponseCurves, bayer_masks, demosaic, mosaic
from nasfe.degrade.kernels import KernelBank, gaussian_kernel, motion_kernels
from nasfe.degrade.pipeline import DegradeParams, Degrader, blur, degrade, sample_params

__all__ = [
    "KernelBank",
    "ResponseCurves",
    "DegradeParams",
    "Degrader",
    "sample_params",
    "degrade",
    "blur",
    "mosaic",
    "demosaic",
    "bayer_masks",
    "gaussian_kernel",
    "motion_kernels",
]
