"""Atom-column quantification: finding, joint Gaussian fitting, cross-sections, CRLB.

Public API (see ``docs/CONTRACTS.md``):

* :func:`find_columns`, :func:`find_peaks`, :func:`estimate_lattice` — column detection;
* :func:`map_columns` — number of columns of a low-dose image by its posterior (MAP rule);
* :func:`fit_columns`, :func:`normalize_image`, :func:`model_image` — joint Gaussian model;
* :func:`estimate_noise_model` — detector gain, offset and read noise from the shot noise;
* :func:`crlb`, :func:`voronoi_intensities` — precision bound and model-free intensities;
* :func:`fit_lattice`, :func:`lattice_strain`, :func:`projected_unit_cell`,
  :func:`strain_analysis` — displacement and
  strain maps, the measured projected unit cell;
* :class:`ProjectedCell`, :func:`cspbbr3_001_cell`, :func:`cspbbr3_011_cell`,
  :func:`cspbbr3_111_cell` — projected unit cells;
* :func:`fitted_scs_library` — SCS library measured by this package's own column fit on
  simulated slabs (the counting library of in-situ series); :func:`fitted_library_for` —
  the one that matches a table of :func:`fit_columns` (its image size, dose and fit).
"""

from __future__ import annotations

from perovstem.atoms._counting import *  # noqa: F403  (counting, HMM, composition; issue 6)
from perovstem.atoms.cell import (
    ProjectedCell,
    cspbbr3_001_cell,
    cspbbr3_011_cell,
    cspbbr3_111_cell,
)
from perovstem.atoms.crlb import crlb
from perovstem.atoms.find import estimate_lattice, find_columns, find_peaks, fit_lattice_vectors
from perovstem.atoms.fit import FIT_COLUMNS, fit_columns, model_image
from perovstem.atoms.fitted_library import fitted_library_for, fitted_scs_library
from perovstem.atoms.hyperspy import to_hyperspy
from perovstem.atoms.lattice import (
    fit_lattice,
    lattice_strain,
    projected_unit_cell,
    strain_analysis,
    unit_cell_table,
)
from perovstem.atoms.map import MapResult, map_columns
from perovstem.atoms.noise import NoiseModel, estimate_noise_model
from perovstem.atoms.normalize import normalize_image
from perovstem.atoms.voronoi import voronoi_intensities

__all__ = [
    "FIT_COLUMNS",
    "MapResult",
    "NoiseModel",
    "ProjectedCell",
    "crlb",
    "cspbbr3_001_cell",
    "cspbbr3_011_cell",
    "cspbbr3_111_cell",
    "estimate_lattice",
    "estimate_noise_model",
    "find_columns",
    "find_peaks",
    "fit_columns",
    "fit_lattice",
    "fit_lattice_vectors",
    "fitted_library_for",
    "fitted_scs_library",
    "lattice_strain",
    "strain_analysis",
    "unit_cell_table",
    "map_columns",
    "model_image",
    "normalize_image",
    "projected_unit_cell",
    "to_hyperspy",
    "voronoi_intensities",
]

from perovstem.atoms import _counting as _counting_mod  # noqa: E402

__all__ += list(getattr(_counting_mod, "__all__", []))
