"""Pb-cluster counts on frozen-phonon multislice images (abTEM), not on our own fast model.

``tests/data/multislice_pb_clusters.npz`` comes from ``benchmarks/check_clusters_abtem.py``
(one NVIDIA H200, abTEM 1.0.11, 300 kV, 20 mrad, 65–200 mrad, 5–6 frozen-phonon
configurations per structure, whole periodic box scanned at 0.45 Å < 1/(2α/λ)): compact
fcc Pb clusters of 13–150 atoms in vacuum, epitaxial ([001] along the beam) and randomly
oriented, and epitaxial clusters on the entrance or exit surface of a periodic 4-cell
CsPbBr3 slab at several lateral registries.  Per structure it holds the configuration-mean
image (fraction of the incident probe per scan position; for slab structures the excess
over the bare slab of the same run, paired configuration by configuration) and the box SCS
of each configuration (Å²).

The cluster library (:func:`perovstem.insitu.cluster_scs_library`) is an incoherent sum of
abTEM-calibrated Pb-column SCS; the multislice images include cross-talk, the host under
or above the cluster and the loss of channelling of a randomly oriented cluster.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from perovstem._data import Image
from perovstem.insitu import atoms_from_scs, cluster_scs_library, detect_clusters

DATA = Path(__file__).resolve().parents[1] / "data" / "multislice_pb_clusters.npz"
DOSE = 2e4  # e⁻/Å²


@pytest.fixture(scope="module")
def ms():
    d = np.load(DATA)
    return {k: d[k] for k in d.files}


def _names(ms, prefix=""):
    return [str(n) for n in ms["names"] if str(n).startswith(prefix) and str(n) != "slab_bare"]


def _meta(ms, name):
    n, kind, group = (int(v) for v in ms[f"{name}__meta"])
    return n, ("epitaxial", "random")[kind], ("vacuum", "slab")[group]


def test_cluster_library_matches_multislice_scs(ms):
    """Library counts of the multislice SCS: measured within 2.6 % for epitaxial clusters
    in vacuum (13–150 atoms), −2.6…−7.1 % for randomly oriented ones (no channelling),
    +0.4…+5.2 % on the slab (host cross-talk); all 19 within the issue's 15 %."""
    lib = cluster_scs_library(400)
    errs = {}
    for name in _names(ms):
        n, orient, where = _meta(ms, name)
        scs = ms[f"{name}__scs_A2"]
        assert len(scs) >= 4, name  # configurations: the mean is not one phonon snapshot
        se = scs.std(ddof=1) / np.sqrt(len(scs))
        assert se < 0.03 * scs.mean(), (name, se)
        err = float(atoms_from_scs(np.array([scs.mean()]), lib)[0]) / n - 1
        errs[name] = err
        assert abs(err) <= 0.15, (name, err)
        if orient == "epitaxial" and where == "vacuum":
            assert abs(err) <= 0.05, (name, err)
    assert len(errs) == 19
    # a cluster that does not channel scatters less than the [001] library says
    rot = [errs[k] for k in errs if k.startswith("vac_rot")]
    epi = [errs[k] for k in ("vac_epi_25", "vac_epi_50", "vac_epi_100")]
    assert max(rot) < min(epi)


def _field(ms, name):
    """A frame around the structure: vacuum clusters padded with 40 px of vacuum; slab
    clusters in the centre tile of a 3 × 3 tiling of the bare slab (periodic, so the tiles
    join seamlessly): an 88 Å crystal field."""
    step = float(ms[f"{name}__step_A"][0])
    a = ms[f"{name}__mean"].astype(float)
    if _meta(ms, name)[2] == "vacuum":
        return np.pad(a, 40), step
    bare = ms["slab_bare__mean"].astype(float)
    t = np.tile(bare, (3, 3))
    h, w = bare.shape
    t[h : 2 * h, w : 2 * w] += a
    return t, step


def _counts(ms, name, seed):
    img, step = _field(ms, name)
    noisy = np.random.default_rng(seed).poisson(img * DOSE * step * step).astype(float)
    det = detect_clusters(Image(noisy, step, dose_e_per_A2=DOSE))
    return det


# The host test used to misfire on a perfect host for some registries of a 50-atom
# cluster on the entrance surface: the cluster's own resolved columns (2.475 Å) beat with
# the host's empty-site grid (2.935 Å) over ~16 Å, so a cluster smaller than that puts
# Q_c/M_c = 0.79–0.84 (measured on the cluster-only excess; 1.01–1.02 at the other two
# registries) on the empty sites, E − D read as "host excess" (22–29 % of E) and the
# count moved to the host-free map D: −30…−38 % (noise-free too).  The cluster's empty-site
# ratio is now estimated from its own Pb fringes (0.79–0.83 estimated on these noisy
# frames) and a host excess it explains is vetoed: +2…+7 % at all five registries.  A
# 20-atom cluster on the 4-cell slab is still missed in 2–4 of 4 frames (noise-free
# included) at two registries (Q_c/M_c 0.62–0.67: detection stays on the uncorrected D)
# and over-counted +13…+19 % where found; found within 13 % at the third.
_SMALL_ON_HOST = pytest.mark.xfail(
    strict=True,
    reason="known limitation (multislice): a 20-atom cluster on the entrance surface of a "
    "4-cell slab is missed or over-counted at 2e4 e/A2 at some registries",
)
_CASES = [
    "vac_epi_13",
    "vac_epi_25",
    "vac_epi_50",
    "vac_epi_100",
    "vac_epi_150",
    "vac_rot_25",
    "vac_rot_50",
    "vac_rot_100",
    "slab_top_100",
    "slab_bottom_50",
    "slab_bottom_100",
    "slab_top_50_x0.25_y0",
    "slab_top_50_x0.125_y0.375",
    "slab_top_50",
    "slab_top_50_x0.5_y0",
    "slab_top_50_x0.5_y0.5",
    pytest.param("slab_top_20", marks=_SMALL_ON_HOST),
    "slab_top_20_x0.25_y0",
    pytest.param("slab_top_20_x0.5_y0", marks=_SMALL_ON_HOST),
]


@pytest.mark.parametrize("name", _CASES)
def test_detect_clusters_counts_multislice(ms, name):
    """End to end on Poisson-noisy multislice frames (2·10⁴ e⁻/Å², 0.45 Å pixels, three
    noise seeds): one detection at the cluster, its atom count within 15 % of the truth.
    Measured: vacuum epitaxial −3…+4 %, randomly oriented −2.5…−8 %; slab 50–100 atoms
    +1…+8 % (three 50-atom registries −30…−38 % before the registry veto; see above)."""
    n = _meta(ms, name)[0]
    for seed in range(3):
        det = _counts(ms, name, seed)
        assert len(det) >= 1, (name, seed)
        best = det.iloc[int(np.argmax(det["n_atoms"].to_numpy()))]
        assert best["n_atoms"] == pytest.approx(n, rel=0.15), (name, seed, best["n_atoms"])
        # nothing else of cluster size in the field (the host is not detected)
        others = det.drop(index=best.name)
        assert (others["n_atoms"] < 0.25 * n).all(), (name, seed, others)


def test_lattice_estimate_on_multislice_slab(ms):
    """The 88 Å field of the slab (a crystal filling the frame) is the 5.87 Å cell along the
    image axes.  The estimate stepped from the 100 (strongest after the 110) on to a weak
    peak at the ½½0 position (a√2 = 8.3 Å at 45°): the field tiles a 5-cell (29 Å) slab
    3 × 3, so the residual of its few frozen-phonon configurations repeats and gives sharp
    peaks on the 1/29 Å⁻¹ grid (20–30 × the annulus median noise-free, 1–2·10⁻³ of the
    110's power; the 3 × 3 pixel search at ½½0 catches one of them) and reported 7.2–9.8 Å at
    41–52° on 36 of 220 frames (seeds 10–29 of the 11 slab structures; ``slab_bottom_100``
    and ``slab_top_20_x0.25_y0`` at seed 2 among them); detect_clusters then left the host
    lattice in its cell average (noise floor 2.45 instead of 0.77).  Now the step down needs
    1 % of the strongest reflection's power: 0 of 220."""
    from perovstem.insitu import estimate_lattice

    for name in _names(ms, "slab_"):
        img, step = _field(ms, name)
        for seed in range(6):
            noisy = np.random.default_rng(seed).poisson(img * DOSE * step * step).astype(float)
            a, ang, strength = estimate_lattice(noisy, step)
            assert a == pytest.approx(5.87, abs=0.05), (name, seed, a, ang)
            assert min(ang, 90 - ang) < 1.0, (name, seed, a, ang)
            assert strength > 20


@pytest.mark.parametrize("name", ["vac_epi_50", "vac_epi_100"])
def test_binned_multislice_frame_without_lattice_hint(ms, name):
    """The same noisy frame binned 2 × 2 (0.89 Å pixels, still ≤ 1 Å) with no lattice given:
    the count stays within its n_atoms_err of the unbinned one.  Before, the estimated
    "host lattice" was the cluster's own ~2.95 Å fringes and the host model removed
    50–92 % of the atoms (25 of 50, 8 of 100); and at ≥ 1.5 Å pixels detect_clusters
    raised instead of using the default lattice."""
    img, step = _field(ms, name)
    noisy = np.random.default_rng(0).poisson(img * DOSE * step * step).astype(float)
    ref = detect_clusters(Image(noisy, step, dose_e_per_A2=DOSE))
    h, w = (s // 2 * 2 for s in noisy.shape)
    binned = noisy[:h, :w].reshape(h // 2, 2, w // 2, 2).sum((1, 3))
    det = detect_clusters(Image(binned, 2 * step, dose_e_per_A2=DOSE))
    assert len(ref) == len(det) == 1
    assert abs(det["n_atoms"].iloc[0] - ref["n_atoms"].iloc[0]) < det["n_atoms_err"].iloc[0]
    h, w = (s // 4 * 4 for s in noisy.shape)
    coarse = noisy[:h, :w].reshape(h // 4, 4, w // 4, 4).sum((1, 3))  # 1.8 Å pixels
    assert len(detect_clusters(Image(coarse, 4 * step, dose_e_per_A2=DOSE))) >= 1


def test_phase_check_on_multislice_clusters_and_slab(ms):
    """Pb clusters alone in vacuum lit the CsPbBr₃ 200 annulus (their 111 at 2.86 Å lies in
    it): the phase check said "CsPbBr3+Pb" with no perovskite in the field.  The 200 no
    longer decides (it still sets the scale of ``min_fraction``); the bare slab stays
    CsPbBr₃."""
    from perovstem.insitu import fft_phase_check

    for name in ("vac_epi_50", "vac_epi_100", "vac_rot_100"):
        img, step = _field(ms, name)
        noisy = np.random.default_rng(0).poisson(img * DOSE * step * step).astype(float)
        assert fft_phase_check(noisy, pixel_size_A=step)["phase"] == "Pb", name
    step = float(ms["slab_top_100__step_A"][0])
    bare = np.tile(ms["slab_bare__mean"].astype(float), (3, 3))
    noisy = np.random.default_rng(0).poisson(bare * DOSE * step * step).astype(float)
    assert fft_phase_check(noisy, pixel_size_A=step)["phase"] == "CsPbBr3"


def test_field_without_a_crystal_reports_no_crystal_metrics(ms):
    """Two multislice Pb clusters (50 + 100 atoms) on a thin support and no nanocrystal:
    the brightest object (the 100-atom cluster) was segmented as "the crystal", with an
    area, an integrated intensity and a mass-loss row for a crystal that is not there."""
    import warnings

    from scipy import ndimage

    from perovstem._data import Series
    from perovstem.insitu import analyze_series

    step = float(ms["vac_epi_50__step_A"][0])
    field = np.zeros((200, 200))
    for name, (y, x) in (("vac_epi_50", (30, 40)), ("vac_epi_100", (110, 100))):
        a = ms[f"{name}__mean"].astype(float)
        field[y : y + a.shape[0], x : x + a.shape[1]] += a
    rng = np.random.default_rng(0)
    support = 0.002 * (1 + ndimage.gaussian_filter(rng.standard_normal(field.shape), 3))
    lam = np.clip(field + support, 0, None) * DOSE * step * step
    s = Series(
        rng.poisson(lam, size=(6, *field.shape)).astype(float),
        step,
        time_s=np.arange(6.0),
        dose_e_per_A2=np.full(6, DOSE),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = analyze_series(s, ci="wald", phase_check=False)
    f = res.frames
    assert (f["crystal_cluster_share"] > 0.9).all()
    assert f["area_A2"].isna().all() and f["integrated_counts"].isna().all()
    assert "mass_loss" not in set(res.summary.get("process", []))
    assert any(n.startswith("no nanocrystal in the field") for n in res.notes)
    # the clusters are still counted: 150 atoms in every frame
    assert np.allclose(f["n_Pb0_detected"], 150, rtol=0.1), f["n_Pb0_detected"].tolist()
