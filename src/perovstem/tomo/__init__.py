"""Electron tomography: alignment, projectors, reconstruction, segmentation, facets, 4-D."""

from perovstem.tomo.projector import Projector, check_angles
from perovstem.tomo.reconstruct import (
    METHODS,
    Reconstruction,
    cgls,
    dart,
    estimate_noise_sigma,
    fbp,
    reconstruct,
    sart,
    sirt,
    tv_reconstruct,
)

__all__ = [
    "Projector",
    "check_angles",
    "METHODS",
    "Reconstruction",
    "reconstruct",
    "fbp",
    "sirt",
    "sart",
    "cgls",
    "tv_reconstruct",
    "dart",
    "estimate_noise_sigma",
]
