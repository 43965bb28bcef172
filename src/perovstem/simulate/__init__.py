"""Ground-truth simulation: nanocrystal structures, degradation kinetics, HAADF images,
in-situ series and tilt series (names and shapes in ``docs/CONTRACTS.md``).

* :func:`nanocrystal`, :func:`add_pb_cluster`, :func:`composition` — ASE structures;
* :func:`scs_table`, :func:`scs_library`, :func:`column_scs` — abTEM-calibrated column
  cross-sections;
* :func:`haadf_image` — fast quantitative HAADF image + truth table;
  :func:`haadf_image_multislice` — abTEM reference image (``sim`` extra);
* :func:`degradation_kmc`, :class:`KineticParameters`, :class:`KMCTrajectory` — degradation
  kinetic Monte Carlo; :func:`insitu_series` — in-situ HAADF series;
* :func:`nanocrystal_phantom`, :func:`tilt_series` — tomography tilt series.
"""

from perovstem.simulate.columns import project_columns
from perovstem.simulate.haadf import haadf_image, haadf_image_multislice, render_intensity
from perovstem.simulate.kmc import KineticParameters, KMCTrajectory, degradation_kmc
from perovstem.simulate.probe import ProbeModel, default_probe, electron_wavelength_A
from perovstem.simulate.scs import column_scs, scs_library, scs_table
from perovstem.simulate.series import insitu_series, iter_insitu_frames
from perovstem.simulate.structures import add_pb_cluster, composition, nanocrystal, zone_rotation

__all__ = [
    "nanocrystal",
    "add_pb_cluster",
    "composition",
    "zone_rotation",
    "project_columns",
    "scs_table",
    "scs_library",
    "column_scs",
    "haadf_image",
    "haadf_image_multislice",
    "render_intensity",
    "ProbeModel",
    "default_probe",
    "electron_wavelength_A",
]
__all__ += [
    "KineticParameters",
    "KMCTrajectory",
    "degradation_kmc",
    "insitu_series",
    "iter_insitu_frames",
]
from perovstem.simulate.tilt import *  # noqa: E402,F401,F403  (nanocrystal_phantom, tilt_series, ...)
