"""Quantification: kinetics and mechanism models, 3D atomic models from counts, validation."""

from perovstem.quantify.kinetics import (  # noqa: F401
    MODELS,
    FitResult,
    KineticModel,
    compare_models,
    fit_arrhenius,
    fit_dose_rate_dependence,
    fit_model,
)
from perovstem.quantify.mobility import cluster_hop_rate, fit_desorption_hazard  # noqa: F401
