"""Public names of atom counting (GMM/ICL, library, hybrid, HMM) and composition.

Re-exported by :mod:`perovstem.atoms` so users write ``from perovstem.atoms import count_atoms``.
"""

from perovstem.atoms.composition import (
    CompositionResult,
    CountsComposition,
    composition_from_counts,
    estimate_composition,
    thickness_from_neighbours,
)
from perovstem.atoms.count import (
    GMMFit,
    GMMSweep,
    count_atoms,
    fit_gmm,
    gmm_sweep,
    ladder_check,
    select_components,
    single_atom_sensitivity,
)
from perovstem.atoms.hmm import HMMResult, fit_hmm
from perovstem.atoms.library import as_library, count_hybrid, count_library, fit_hybrid

__all__ = [
    "GMMFit",
    "GMMSweep",
    "count_atoms",
    "fit_gmm",
    "gmm_sweep",
    "ladder_check",
    "select_components",
    "single_atom_sensitivity",
    "as_library",
    "count_library",
    "count_hybrid",
    "fit_hybrid",
    "HMMResult",
    "fit_hmm",
    "CompositionResult",
    "CountsComposition",
    "composition_from_counts",
    "estimate_composition",
    "thickness_from_neighbours",
]
