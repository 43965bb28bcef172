"""Quantification: kinetics and mechanism models, 3D atomic models from counts, validation."""

from perovstem.quantify.br_loss import (  # noqa: F401
    BrLossResult,
    br_loss_from_images,
    br_structure_template,
    fit_br_desorption,
    pool_br_desorption,
)
from perovstem.quantify.facets import facet_fractions, surface_facets  # noqa: F401,E402
from perovstem.quantify.kinetics import (  # noqa: F401
    MODELS,
    FitResult,
    KineticModel,
    compare_models,
    fit_arrhenius,
    fit_dose_rate_dependence,
    fit_model,
)
from perovstem.quantify.mobility import (  # noqa: F401
    cluster_hop_rate,
    fit_desorption_hazard,
    pool_field_tracks,
)
from perovstem.quantify.model3d import AtomicModel, model_from_counts, site_agreement  # noqa: F401,E402
from perovstem.quantify.nucleation import (  # noqa: F401
    NucleationProfile,
    NucleationRate,
    detectable_births,
    kmc_nucleation_rate,
    nucleation_profile,
    nucleation_rate,
    nucleation_templates,
)
