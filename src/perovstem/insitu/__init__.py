"""In-situ series analysis: drift registration, dose bookkeeping, conditions, nanocrystal and
Pb-cluster detection, tracking with merges.

Data flow: ``Series`` → :func:`assign_dose` → :func:`register_drift` / :func:`apply_drift` →
per-frame detection → :func:`track_clusters` → lineage → :mod:`perovstem.quantify.kinetics`.
"""

from perovstem.insitu._frames import frame_quality, iter_frames
from perovstem.insitu.analysis import (
    InsituResult,
    analyze_series,
    pb0_dips,
    pb0_falls_later,
    shift_frame,
)
from perovstem.insitu.clusters import (
    CLUSTER_COLUMNS,
    atoms_from_scs,
    cluster_scs_library,
    detect_clusters,
    persistent_clusters,
)
from perovstem.insitu.conditions import (
    attach_conditions,
    interpolate_conditions,
    time_offset_from_clocks,
)
from perovstem.insitu.dose import E_CHARGE_C, assign_dose, dose_table, frame_dose
from perovstem.insitu.evaluation import (
    interval_verdict,
    match_clusters,
    match_objects,
    merge_matches,
    merge_scores,
    projected_objects,
    ratio_interval,
    score_detections,
)
from perovstem.insitu.lattice import (
    column_width,
    estimate_lattice,
    fourfold_ratio,
    unit_cell_average,
)
from perovstem.insitu.nanocrystal import (
    PHASE_SPACINGS_A,
    area_change,
    area_noise,
    fft_phase_check,
    nanocrystal_metrics,
    segment_nanocrystal,
)
from perovstem.insitu.register import (
    apply_drift,
    correct_scan_distortion,
    measure_line_jitter,
    phase_correlate,
    register_drift,
)
from perovstem.insitu.study import combine_series, hop_tracks
from perovstem.insitu.tracking import lineage_events, mobility_tracks, track_clusters

__all__ = [
    "attach_conditions",
    "interpolate_conditions",
    "time_offset_from_clocks",
    "InsituResult",
    "analyze_series",
    "combine_series",
    "hop_tracks",
    "pb0_dips",
    "pb0_falls_later",
    "shift_frame",
    "CLUSTER_COLUMNS",
    "atoms_from_scs",
    "cluster_scs_library",
    "detect_clusters",
    "persistent_clusters",
    "column_width",
    "estimate_lattice",
    "fourfold_ratio",
    "unit_cell_average",
    "lineage_events",
    "mobility_tracks",
    "match_clusters",
    "match_objects",
    "merge_matches",
    "merge_scores",
    "projected_objects",
    "ratio_interval",
    "interval_verdict",
    "score_detections",
    "PHASE_SPACINGS_A",
    "area_change",
    "area_noise",
    "fft_phase_check",
    "nanocrystal_metrics",
    "segment_nanocrystal",
    "track_clusters",
    "E_CHARGE_C",
    "apply_drift",
    "assign_dose",
    "correct_scan_distortion",
    "dose_table",
    "frame_dose",
    "frame_quality",
    "iter_frames",
    "measure_line_jitter",
    "phase_correlate",
    "register_drift",
]
