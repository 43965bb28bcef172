"""Electron tomography: alignment, projectors, reconstruction, segmentation, facets, 4-D.

Geometry: tilt axis along image x; volumes are ``(nz, ny, nx)`` = (beam at 0°, rows, axis);
see :mod:`perovstem.tomo.projector`.
"""

from perovstem.tomo.align import (
    Alignment,
    align,
    apply_alignment,
    bin_tilt_series,
    com_shifts,
    preprocess,
    projection_matching,
    tilt_axis_from_com,
    tilt_axis_reprojection,
    tilt_axis_search,
    xcorr_shifts,
)
from perovstem.tomo.facets import (
    FAMILIES,
    FacetCalibration,
    calibrate_facets,
    estimate_orientation,
    facet_fractions,
    mesh_sigma_px,
    misorientation_deg,
    missing_wedge_mask,
    nearest_equivalent,
    polyhedron_facets,
    refine_orientation,
    volume_noise,
)
from perovstem.tomo.fourd import check_sequence, reconstruct_sequence
from perovstem.tomo.metrics import dice, layer_flatness, relative_l2
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
    sirt_dual_axis,
    tv_reconstruct,
)
from perovstem.tomo.segment import label_volumes, multi_otsu_thresholds, otsu_threshold, segment
from perovstem.tomo.surface import SurfaceMesh, surface_mesh

__all__ = [
    "Alignment",
    "align",
    "apply_alignment",
    "bin_tilt_series",
    "com_shifts",
    "preprocess",
    "projection_matching",
    "tilt_axis_from_com",
    "tilt_axis_search",
    "tilt_axis_reprojection",
    "xcorr_shifts",
    "FAMILIES",
    "FacetCalibration",
    "calibrate_facets",
    "volume_noise",
    "mesh_sigma_px",
    "estimate_orientation",
    "refine_orientation",
    "nearest_equivalent",
    "misorientation_deg",
    "polyhedron_facets",
    "facet_fractions",
    "missing_wedge_mask",
    "reconstruct_sequence",
    "check_sequence",
    "dice",
    "layer_flatness",
    "relative_l2",
    "Projector",
    "check_angles",
    "METHODS",
    "Reconstruction",
    "reconstruct",
    "fbp",
    "sirt",
    "sirt_dual_axis",
    "sart",
    "cgls",
    "tv_reconstruct",
    "dart",
    "estimate_noise_sigma",
    "label_volumes",
    "multi_otsu_thresholds",
    "otsu_threshold",
    "segment",
    "SurfaceMesh",
    "surface_mesh",
]
