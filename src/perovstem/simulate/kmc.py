"""Degradation kinetic Monte Carlo of a CsPbBr₃ nanocrystal under the electron beam.

:func:`degradation_kmc` runs a lattice KMC on the perovskite sublattices of an
``ase.Atoms`` nanocrystal (see :class:`~perovstem.simulate.kmc_params.KineticParameters`
for the mechanisms and their parameters) and returns a :class:`KMCTrajectory` holding the
exact truth of every frame: atom lists with labels (host / Pb⁰ adatom / cluster id), counts,
cluster sizes and positions, birth and merge events with their parents, and per-frame event
counts.  The kinetic scheme is the one of ``notes/physics_simulation.md`` §1.3.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from perovstem._limits import (
    MAX_CUMULATIVE_DOSE_E_PER_A2,
    MAX_DOSE_E_PER_A2,
    MAX_KMC_EVENTS,
    MAX_KMC_FRAMES,
    MAX_KMC_TEMPERATURE_K,
    check_at_most,
)
from perovstem._validation import as_rng, check_choice, check_positive, refuse_text_numbers
from perovstem.errors import DataError, ParameterError
from perovstem.simulate.kmc_lattice import (
    KIND_BR,
    KIND_CD,
    KIND_CS,
    KIND_PB,
    HostLattice,
    build_lattice,
)
from perovstem.simulate.kmc_params import ATMOSPHERES, KineticParameters

__all__ = ["KMCTrajectory", "KineticParameters", "degradation_kmc"]

_LABEL_HOST, _LABEL_ADATOM, _LABEL_CLUSTER = 0, 1, 2

MAX_TEMPERATURE_K = MAX_KMC_TEMPERATURE_K
"""Highest temperature the KMC accepts, K (solid CsPbBr3 melts at ≈ 840 K)."""

MAX_FRAMES = MAX_KMC_FRAMES
"""Most frames one KMC run simulates (the per-frame tables grow with it)."""


@dataclass(frozen=True, eq=False)
class KMCTrajectory:
    """Result of :func:`degradation_kmc`: exact per-frame truth of the degradation.

    Frame ``k`` covers the time interval ``[k·Δt, (k+1)·Δt)`` (Δt = frame time); its
    snapshot (atoms, counts, clusters) is the state at the **end** of the frame, after
    the frame's dose.

    Attributes
    ----------
    params : KineticParameters
        The parameters used.
    frame_table : pandas.DataFrame
        One row per frame: ``frame``, ``time_s`` (frame start), ``time_end_s``,
        ``dose_e_per_A2`` (of the frame), ``cumulative_dose_e_per_A2`` (at the end of the
        frame), ``dose_rate_e_per_A2_s``, ``temperature_K``, ``pressure_Pa``, ``n_Br``,
        ``n_Br_surface``, ``n_Pb_host``, ``n_Cd``, ``n_Cs``, ``n_Pb0`` (adatoms + cluster
        atoms), ``n_adatoms``, ``n_cluster_atoms``, ``n_clusters``, ``mean_cluster_size``
        (atoms; NaN without clusters), and the events of the frame: ``n_Br_desorbed`` (all
        Br lost by desorption: beam-driven surface + bulk + thermal),
        ``n_Br_desorbed_surface`` and ``n_Br_desorbed_bulk`` (beam-driven),
        ``n_Br_desorbed_thermal``, ``n_Br_orphaned`` (Br that left with their last cation
        neighbour; 0 unless ``params.orphaned_br_leave``; not desorbed, so they reduce no
        Pb), ``n_Pb_reduced``, ``n_births``, ``n_merges``,
        ``n_deaths`` (clusters dissolved), ``n_detachments`` (Pb⁰ atoms detached from
        clusters, a death counting as one), ``n_attachments``, ``n_hops``,
        ``n_hops_blocked``, ``n_cluster_hops``, ``n_Cs_lost``, ``n_Cd_lost``,
        ``n_CsBr_stripped``, ``n_nucleation_rejected``, ``n_steps`` (``n_Cs_lost`` counts
        every Cs that left, by shrinkage and by CsBr strips; the strips' Br are counted in
        ``n_CsBr_stripped`` only, not in ``n_Br_desorbed``); the exact exposures
        ``exposure_Br_surface_e_per_A2`` and ``exposure_Br_bulk_e_per_A2`` (∫ n_Br,surface dD
        and ∫ n_Br,bulk dD over the frame, atoms·e⁻/Å², so that
        ``n_Br_desorbed_surface / exposure_Br_surface_e_per_A2`` is the maximum-likelihood
        estimate of 1/D_Br); ``expected_Br_desorbed_thermal`` (∫ r_thermal dt, the expected
        number of thermal desorptions given the path) and ``exposure_Br_thermal_s``
        (= that / ``desorption_rate_thermal_per_s``, i.e. ∫ Σ_i w_i dt with w_i the rate of
        Br i relative to a face Br, s; ``n_Br_desorbed_thermal / exposure_Br_thermal_s`` is
        the maximum-likelihood estimate of ν_Br·exp(−E_Br/k_B T)); ``expected_detachments``
        (∫ Σ_c k_det(n_c) dt); plus the rate constants in force: ``hop_rate_per_s`` (Γ per
        adatom), ``desorption_rate_surface_per_s``, ``desorption_rate_bulk_per_s``,
        ``strip_rate_per_s``, ``desorption_rate_thermal_per_s`` (a Br on a flat {100} face,
        ``q`` = 26).  ``attrs`` holds ``initial`` (counts before the first frame),
        ``params``, ``conditions`` and units.
    clusters : pandas.DataFrame
        ``frame, cluster_id, n_atoms, x_A, y_A, z_A, radius_A, n_hops, hop_rate_per_s,
        detach_rate_per_s`` for
        every cluster alive at the end of each frame (centre = centroid of its atoms; radius
        of the equal-volume fcc sphere; ``n_hops`` the cluster's cumulative lattice hops of
        one lattice vector a; ``hop_rate_per_s`` = Γ·cluster_mobility·n^(−α) at the frame's
        conditions; ``detach_rate_per_s`` = k_det(n), the rate at which it loses one atom).
        Centres also move when a cluster grows or shrinks (it is lifted off the surface by
        R − a/2) and jump at merges.
    events : pandas.DataFrame
        ``frame, time_s, cumulative_dose_e_per_A2, kind ("birth"|"merge"|"death"),
        cluster_id, parents (list of ids), n_atoms, site`` in time order; ``site`` is the
        nucleation site class of a birth (``"corner"``, ``"edge"``, ``"face"`` by the number
        of host B sites around it, or ``"support"`` on the support film), None otherwise.  A
        merge creates a new id whose parents end there; a death (a cluster that fell below
        ``critical_nucleus`` atoms by detachment and dissolved into ``n_atoms`` adatoms) ends
        its id.
    conditions : dict
        ``frame_time_s``, ``atmosphere``, ``pressure_Pa``, ``seed`` and lattice data.
    """

    params: KineticParameters
    frame_table: pd.DataFrame
    clusters: pd.DataFrame
    events: pd.DataFrame
    conditions: dict
    _lattice: HostLattice = field(repr=False)
    _present: list = field(repr=False)
    _adatoms: list = field(repr=False)
    _cell: Any = field(repr=False, default=None)

    @property
    def n_frames(self) -> int:
        return int(len(self.frame_table))

    def __repr__(self) -> str:
        ft = self.frame_table
        init = ft.attrs.get("initial", {})
        return (
            f"<KMCTrajectory {self.n_frames} frames of {self.conditions['frame_time_s']:g} s, "
            f"dose {ft['cumulative_dose_e_per_A2'].iloc[-1]:.3g} e⁻/Å², "
            f"{self.conditions['atmosphere']}, Pb {init.get('n_Pb_host', '?')} → "
            f"{int(ft['n_Pb_host'].iloc[-1])} host + {int(ft['n_Pb0'].iloc[-1])} Pb⁰, "
            f"{int(ft['n_clusters'].iloc[-1])} clusters at the end>"
        )

    def projected_area_A2(self, *, cell_A: float | None = None) -> np.ndarray:
        """Projected area of the host crystal (beam along −z) at the end of each frame, Å².

        The (x, y) of every host atom present is binned on a square grid of ``cell_A``
        (default half the pseudo-cubic lattice constant, so that each projected column of a
        [001] crystal fills one cell); the area is the number of occupied cells × cell².
        Truth for NC shrinkage and void growth.

        Returns
        -------
        (n_frames,) float
        """
        lat = self._lattice
        cell = 0.5 * lat.a_A if cell_A is None else check_positive("cell_A", cell_A)
        xy0 = lat.pos_A[:, :2].min(axis=0)
        ij = np.floor((lat.pos_A[:, :2] - xy0) / cell + 0.5).astype(np.int64)
        key = ij[:, 0] * (int(ij[:, 1].max()) + 1) + ij[:, 1]
        out = np.empty(self.n_frames)
        for k in range(self.n_frames):
            present = np.unpackbits(self._present[k + 1], count=lat.n_host).astype(bool)
            out[k] = np.unique(key[present]).size * cell**2
        return out

    def _check_k(self, k: int) -> int:
        n = self.n_frames
        if isinstance(k, bool) or not isinstance(k, int | np.integer) or not -n <= k < n:
            raise ParameterError(f"frame index `k` must be an integer in [0, {n}), got {k!r}")
        return int(k) % n

    def atoms(self, k: int) -> Any:
        """Atom list at the end of frame ``k`` as ``ase.Atoms``.

        Per-atom arrays ``label`` (0 host, 1 Pb⁰ adatom, 2 Pb cluster) and ``cluster_id``
        (−1 = none).  Cluster atoms are the ``n`` sites of an fcc Pb lattice
        (a = ``params.pb_lattice_A``, cube-on-cube epitaxy with the host) nearest to a
        lattice site, shifted so their centroid is the cluster centre of :attr:`clusters`.
        """
        k = self._check_k(k)
        return self._build_atoms(self._present[k + 1], self._adatoms[k + 1], k)

    def initial_atoms(self) -> Any:
        """Atom list before the first frame (after mapping the input onto the lattice)."""
        return self._build_atoms(self._present[0], self._adatoms[0], None)

    def _build_atoms(self, packed: np.ndarray, ad_nodes: np.ndarray, k: int | None) -> Any:
        from ase import Atoms

        lat = self._lattice
        present = np.unpackbits(packed, count=lat.n_host).astype(bool)
        sym = [lat.symbols[present]]
        pos = [lat.pos_A[present]]
        label = [np.zeros(int(present.sum()), dtype=np.int64)]
        cid = [np.full(int(present.sum()), -1, dtype=np.int64)]
        n_ad = len(ad_nodes)
        sym.append(np.full(n_ad, "Pb"))
        pos.append(lat.node_pos_A[ad_nodes].reshape(-1, 3))
        label.append(np.full(n_ad, _LABEL_ADATOM, dtype=np.int64))
        cid.append(np.full(n_ad, -1, dtype=np.int64))
        if k is None:
            cl = self.conditions["initial_clusters"]
        else:
            cl = self.clusters[self.clusters["frame"] == k]
        if len(cl):
            offs = _fcc_offsets(int(cl["n_atoms"].max()), self.params.pb_lattice_A, lat.rotation)
            for cid_, n, x, y, z in zip(
                cl["cluster_id"], cl["n_atoms"], cl["x_A"], cl["y_A"], cl["z_A"], strict=True
            ):
                o = offs[: int(n)]
                p = o - o.mean(axis=0) + np.array([x, y, z])
                sym.append(np.full(int(n), "Pb"))
                pos.append(p)
                label.append(np.full(int(n), _LABEL_CLUSTER, dtype=np.int64))
                cid.append(np.full(int(n), int(cid_), dtype=np.int64))
        atoms = Atoms(symbols=list(np.concatenate(sym)), positions=np.concatenate(pos))
        if self._cell is not None:
            atoms.set_cell(self._cell)
        atoms.new_array("label", np.concatenate(label))
        atoms.new_array("cluster_id", np.concatenate(cid))
        return atoms


def _fcc_offsets(n_max: int, a_A: float, rotation: np.ndarray) -> np.ndarray:
    """The ``n_max`` fcc lattice sites nearest to a site (compact clusters), Å, rotated."""
    r_need = (3.0 * n_max * a_A**3 / (16.0 * np.pi)) ** (1.0 / 3.0) + 2.0 * a_A
    m = int(np.ceil(r_need / a_A)) + 1
    g = np.arange(-m, m + 1)
    cells = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3).astype(float)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    pts = (cells[:, None, :] + basis[None]).reshape(-1, 3) * a_A
    d = np.linalg.norm(pts, axis=1)
    # deterministic tie-break inside a shell: prefer +z, then +y, then +x (grows compactly)
    order = np.lexsort((-pts[:, 0], -pts[:, 1], -pts[:, 2], np.round(d, 6)))
    return pts[order[:n_max]] @ rotation


def _per_frame(name: str, value: Any, n: int, *, positive: bool, allow_zero: bool) -> np.ndarray:
    a = np.asarray(value, dtype=float) if not isinstance(value, str) else None
    if a is None:
        raise ParameterError(f"`{name}` must be a number or one value per frame, got {value!r}")
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,):
        raise ParameterError(
            f"`{name}` must be a scalar or have one value per frame ({n}), got shape {a.shape}"
        )
    bad = ~np.isfinite(a) | (a < 0) | ((a == 0) & (not allow_zero))
    if positive and bad.any():
        bound = ">= 0" if allow_zero else "> 0"
        raise ParameterError(f"`{name}` must be finite and {bound}, got {float(a[bad][0])!r}")
    return a


def _estimated_events(
    params: KineticParameters,
    phi: np.ndarray,
    temp: np.ndarray,
    frame_time_s: float,
    *,
    n_br_surface: int,
    n_pb: int,
    n_pb0: int,
) -> float:
    """A low estimate of the KMC events a run needs, made before running it.

    The Br that the dose (``D/D_Br``: the desorption cross-section times the dose) and the
    heat (the thermal rate of a face Br) remove from the initial surface, ``L_k`` by the end
    of frame ``k``, leave one Pb⁰ per ``br_per_pb0`` Br: ``N_k`` Pb⁰ (plus those already
    there).  Those desorptions and reductions are events; the rest is the diffusion of Pb⁰,
    ``Γ(T_k, φ_k)·Δt`` hops (blocked ones included) per mobile atom in frame ``k``, counted
    twice from below:

    - the fewest movers the Pb⁰ can be, one cluster: ``Γ·cluster_mobility·N^(−α)`` per
      second (a lone adatom: ``Γ``; ``N < 1``: the chance that there is one);
    - every new Pb⁰ atom is an adatom until a cluster captures it.  In the mean-field
      nucleation theory (Venables, Rep. Prog. Phys. 47, 399 (1984)) the cluster density
      scales as ``(R/Γ)^(i/(i+2))`` for a deposition rate ``R`` per site and a critical
      nucleus of ``i + 1`` atoms, so an atom hops about ``(Γ/R)^(1/2)`` times (i = 2)
      before capture.  ``R`` is taken at its largest in the frame (at its start) and the
      hops at most ``Γ·Δt``, times 0.3 (the lower envelope measured): a low estimate.

    Measured on 20-60 Å cubes (240-320 K, 20-3e5 e⁻/Å²/s, 10-250 s; a tune grid of 270
    runs, 96 held-out runs of other sizes, rates and seeds in both CPU realisations, five
    hot long 50-60 Å runs), on runs of ≥ 1000 steps with ≥ 5 Pb⁰: 0.06-0.95 times the steps
    taken (before, the one-cluster hops plus every Br and Cs once: 0.0095-1.3, the hops
    alone down to 0.0002); a lone adatom hopping for the whole run is counted by its chance
    (its realisation: 0 or all the hops), so a low-dose run can take fewer steps.  Session 18
    (:func:`estimated_cpu_s`): 0.013-2.0 of the steps on 58 other runs; the lowest on hot
    runs with long frames (50 Å, 400 K, 100 e⁻/Å²/s, 30 frames of 5 s, five seeds:
    0.015-0.041), whose steps are hops of the few adatoms jammed in the emptied crystal.  A refusal (above
    :data:`~perovstem._limits.MAX_KMC_EVENTS`) means at least a quarter of an hour of work,
    mostly far more.
    """
    dt = float(frame_time_s)
    beam_rate = phi / params.D_Br_e_per_A2 if params.enable_desorption else np.zeros_like(phi)
    # thermal loss of a face Br (corners and edges go faster: a low estimate)
    t_u, t_i = np.unique(temp, return_inverse=True)  # (one call per distinct value)
    thermal_rate = np.array([params.thermal_desorption_rate_per_s(float(t)) for t in t_u])[t_i]
    removed = np.cumsum((beam_rate + thermal_rate) * dt)
    lost = n_br_surface * -np.expm1(-removed)
    pb0 = n_pb0 + np.minimum(n_pb, lost / params.br_per_pb0)
    tf_u, tf_i = np.unique(np.stack([temp, phi]), axis=1, return_inverse=True)
    gamma = np.array([params.hop_rate_per_s(float(t), float(f)) for t, f in tf_u.T])[tf_i.ravel()]
    migrate = params.enable_cluster_migration and params.cluster_mobility > 0
    one_cluster = (
        params.cluster_mobility * np.maximum(pb0, 1.0) ** -params.cluster_mobility_exponent
        if migrate
        else 0.0
    )
    movers = np.where(pb0 <= 1.0, pb0, one_cluster)
    # new adatoms, each hopping ~(Γ/R)^(1/2) times before a cluster captures it
    created = np.diff(pb0, prepend=float(n_pb0))
    before = np.concatenate([[0.0], removed[:-1]])
    rate_site = (beam_rate + thermal_rate) * np.exp(-before) / params.br_per_pb0
    with np.errstate(over="ignore"):  # a vanishing rate: the hops are capped at Γ·Δt
        ratio = np.divide(gamma, rate_site, out=np.zeros_like(gamma), where=rate_site > 0)
    capture_hops = np.minimum(_CAPTURE_HOPS_FACTOR * np.sqrt(ratio), gamma * dt)
    hops = np.sum(gamma * dt * movers) + np.sum(created * capture_hops)
    return float(hops + lost[-1] + (pb0[-1] - n_pb0))


_CAPTURE_HOPS_FACTOR = 0.3
"""Hops of a new Pb⁰ adatom before capture, in units of ``(Γ/R)^(1/2)`` (the lower envelope
measured on the tune grid of :func:`_estimated_events`)."""


def check_frame_dose(phi: Any, frame_time_s: float, *, per_frame: bool = False) -> None:
    """Refuse a frame dose ``φ·Δt`` above :data:`~perovstem._limits.MAX_DOSE_E_PER_A2`.

    The dose of a frame, not the dose rate alone: 1e9 e⁻/Å²/s is fine for a µs frame, and
    the KMC never ended at 1e17 e⁻/Å² per frame.  Shared by :func:`degradation_kmc` and the
    pipeline steps that run it (``perovstem run --check``).

    Parameters
    ----------
    phi : float or (n_frames,) array
        Dose rate(s), e⁻/Å²/s.
    frame_time_s : float
        Frame time, s.
    per_frame : bool
        ``phi`` was given per frame (the message names the frame).

    Raises
    ------
    ParameterError
        Naming ``dose_rate_e_per_A2_s`` × ``frame_time_s``, both values and the limit.
    """
    phi = np.atleast_1d(np.asarray(phi, dtype=float))
    frame_dose = phi * float(frame_time_s)
    k_max = int(np.argmax(frame_dose))
    check_at_most(
        "dose_rate_e_per_A2_s` × `frame_time_s",
        float(frame_dose[k_max]),
        MAX_DOSE_E_PER_A2,
        "e⁻/Å²",
        f"the dose of one frame{f' (frame {k_max})' if per_frame else ''}; "
        f"dose rate {phi[k_max]:g} e⁻/Å²/s, frame time {float(frame_time_s):g} s",
    )


def _duration(seconds: float) -> str:
    """``seconds`` as a short readable duration (s, min, h or days)."""
    for unit, size in (("days", 86400.0), ("h", 3600.0), ("min", 60.0)):
        if seconds >= size:
            return f"{seconds / size:.2g} {unit}"
    return f"{seconds:.2g} s"


def refuse_costly_run(n_events: float, request: str) -> None:
    """Refuse a run whose low event estimate exceeds :data:`~perovstem._limits.MAX_KMC_EVENTS`.

    ``request`` describes the run (frames, frame time, dose rate, temperature, crystal) in
    the message.
    """
    if n_events > MAX_KMC_EVENTS:
        # the step term of estimated_cpu_s: 0.5-80 steps per estimated event at the
        # measured 0.06-0.55 µs per step
        lo, hi = (_STEPS_PER_ESTIMATED_EVENT[i] * _COST_S_PER_STEP[i] for i in (0, 1))
        raise ParameterError(
            f"this run would need at least about {n_events:.2g} kinetic Monte Carlo events "
            f"(more than {MAX_KMC_EVENTS:.0e}; its steps alone would take "
            f"{_duration(n_events * lo)} to {_duration(n_events * hi)} of CPU time at the "
            f"measured {lo * 1e6:.2g}-{hi * 1e6:.2g} µs per estimated event, see "
            f"`estimated_cpu_s`): "
            f"{request}; lower `n_frames`, `frame_time_s`, `dose_rate_e_per_A2_s` or "
            "`temperature_K`, or use a smaller crystal"
        )


def _neighbour_counts(lat: HostLattice) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Br, B (Pb/Cd) and Cs neighbours of every host site of the full crystal (int32)."""
    kind = lat.kind
    H = lat.n_host
    cnt = np.zeros((3, H), dtype=np.int32)  # Br, B, Cs neighbours
    src = np.repeat(np.arange(H), np.diff(lat.nb_ptr))
    nk = kind[lat.nb_idx]
    for row, mask in (
        (0, nk == KIND_BR),
        (1, (nk == KIND_PB) | (nk == KIND_CD)),
        (2, nk == KIND_CS),
    ):
        np.add.at(cnt[row], src[mask], 1)
    cnt_br, cnt_b, cnt_cs = (np.ascontiguousarray(c) for c in cnt)
    return cnt_br, cnt_b, cnt_cs


def crystal_counts(atoms: Any) -> dict[str, int]:
    """What :func:`_estimated_events` needs of a crystal, as :func:`degradation_kmc` counts it.

    Returns
    -------
    dict
        ``n_host`` (host atoms on the lattice), ``n_br_surface`` (Br with fewer than 6 B +
        Cs neighbours), ``n_pb`` (host Pb²⁺) and ``n_pb0`` (Pb⁰ adatoms and cluster atoms).
    """
    sym_all = np.asarray(atoms.get_chemical_symbols())
    n_all = len(sym_all)
    label = np.asarray(atoms.arrays["label"]) if "label" in atoms.arrays else np.zeros(n_all, int)
    host = label == _LABEL_HOST
    lat = build_lattice(sym_all[host], np.asarray(atoms.get_positions(), dtype=float)[host])
    _, cnt_b, cnt_cs = _neighbour_counts(lat)
    br = np.flatnonzero(lat.kind == KIND_BR)
    return {
        "n_host": int(lat.n_host),
        "n_br_surface": int(np.sum((cnt_b[br] + cnt_cs[br]) < 6)),
        "n_pb": int(np.sum(lat.kind == KIND_PB)),
        "n_pb0": int(np.sum(label != _LABEL_HOST)),
    }


def estimated_events(
    crystal: dict[str, int],
    *,
    n_frames: int,
    frame_time_s: float,
    dose_rate_e_per_A2_s: float,
    temperature_K: float,
    params: KineticParameters | None = None,
) -> float:
    """:func:`_estimated_events` of a run at constant conditions on a crystal of
    :func:`crystal_counts` (the low estimate :func:`degradation_kmc` refuses on)."""
    params = KineticParameters() if params is None else params
    phi = np.full(int(n_frames), float(dose_rate_e_per_A2_s))
    temp = np.full(int(n_frames), float(temperature_K))
    return _estimated_events(
        params,
        phi,
        temp,
        float(frame_time_s),
        n_br_surface=crystal["n_br_surface"],
        n_pb=crystal["n_pb"],
        n_pb0=crystal["n_pb0"],
    )


#: Measured (session 18, 2 shared cores, CPU time of :func:`degradation_kmc`, the crystal
#: already built), (lowest, highest) seen: setup per host atom (20-200 Å cubes), s; per
#: frame (snapshots, tables; 60-200 Å, 100-1000 frames of few steps), s; per KMC step on
#: runs of >= 10⁶ steps (null hops of jammed adatoms are the cheap ones), s; the realised
#: steps over :func:`estimated_events` (58 runs: 20-200 Å cubes, 300-450 K,
#: 100-1000 e⁻/Å²/s, 2-60 frames of 0.5-5 s, three of them on 5 seeds).
_COST_S_PER_HOST = (2.8e-6, 3.8e-6)
_COST_S_PER_FRAME = (2.0e-4, 7.4e-4)
_COST_S_PER_STEP = (0.06e-6, 0.55e-6)
_STEPS_PER_ESTIMATED_EVENT = (0.5, 80.0)


def estimated_cpu_s(
    crystal: dict[str, int], n_events: float, *, n_frames: int
) -> tuple[float, float]:
    """The lowest and highest CPU time a KMC run may take, s, before running it.

    ``setup + frames + steps``: ``c_h·N_host`` to set the run up, ``c_f`` per frame
    (snapshots, tables) and the KMC steps, between ``0.5`` and ``80`` times the low event
    estimate ``n_events`` (:func:`estimated_events`) at 0.06-0.55 µs each — the extremes
    measured (:data:`_STEPS_PER_ESTIMATED_EVENT`, :data:`_COST_S_PER_STEP`; the highest
    doubles the setup and frame terms); a small low-dose run can take far fewer steps (20 Å,
    350 K, 300 e⁻/Å²/s, 5 frames: none, against 3.8·10⁴ estimated), its time then being the
    setup and frames.  Every one of the 63 runs the constants were
    measured on lies in the range (1.05-137 × the lowest value), and so do 12 held-out runs
    (22-70 Å, 320-600 K, 100-3000 e⁻/Å²/s, 8-1000 frames of 1-10 s: 3.1-19 × the lowest,
    1/464-1/12 of the highest).  No single value is closer than that before the run: the
    median CPU per estimated event of those runs (1.3 µs) put the held-out runs at
    0.07-2.0 × their time (a 600 K run, 50 frames of 10 s on 40 Å: 3.6 s against 49 s),
    five seeds of one hot run (50 Å, 400 K, 100 e⁻/Å²/s, 30 frames of 5 s) took
    1.6-4.2·10⁷ steps and 1.0-3.5 s, and the steps of adatoms jammed in the emptied crystal
    cost a tenth of the others.  The times are those of the machine they were measured on
    (a 2026 x86-64 CPU, numba kernels).

    Parameters
    ----------
    crystal : dict
        :func:`crystal_counts` of the crystal (``n_host`` is used).
    n_events : float
        :func:`estimated_events` of the run.
    n_frames : int
        Frames of the run.

    Returns
    -------
    (float, float)
        Lowest and highest CPU time, s.
    """
    n_host = float(crystal["n_host"])
    lo, hi = (
        n_host * _COST_S_PER_HOST[i]
        + n_frames * _COST_S_PER_FRAME[i]
        + _STEPS_PER_ESTIMATED_EVENT[i] * n_events * _COST_S_PER_STEP[i]
        for i in (0, 1)
    )
    fixed_hi = n_host * _COST_S_PER_HOST[1] + n_frames * _COST_S_PER_FRAME[1]
    return float(lo), float(hi + fixed_hi)


def _initial_clusters(atoms_sym, pos, label, cluster_id, lat: HostLattice, node_free):
    """Group label-2 atoms by cluster id → (ids, n, anchor nodes)."""
    sel = label == _LABEL_CLUSTER
    if not sel.any():
        return [], [], []
    if np.any(atoms_sym[sel] != "Pb"):
        raise DataError("atoms labelled 2 (Pb cluster) must be Pb")
    ids, ns, anchors = [], [], []
    cids = cluster_id[sel]
    if np.any(cids < 0):
        raise DataError("atoms labelled 2 (Pb cluster) need a `cluster_id` >= 0")
    for c in np.unique(cids):
        p = pos[sel][cids == c]
        ids.append(int(c))
        ns.append(len(p))
        anchors.append(_nearest_free_node(p.mean(axis=0), lat, node_free))
    return ids, ns, anchors


def _nearest_free_node(xyz: np.ndarray, lat: HostLattice, node_free: np.ndarray) -> int:
    cand = np.flatnonzero(node_free)
    if cand.size == 0:
        raise DataError("no free lattice node to place a Pb⁰ atom")
    d = np.linalg.norm(lat.node_pos_A[cand] - xyz, axis=1)
    return int(cand[np.argmin(d)])


def _support_nodes(lat: HostLattice, node_host: np.ndarray) -> np.ndarray:
    """Nodes of the layer just below the lowest host B site (along lab z)."""
    z = lat.node_pos_A[:, 2]
    z0 = z[node_host].min()
    step = np.abs(lat.lattice_A[:, 2]).max()
    return (z < z0 - 0.5 * step) & (z >= z0 - 1.5 * step) & ~lat.node_border


def degradation_kmc(
    atoms: Any,
    *,
    n_frames: int,
    frame_time_s: float,
    dose_rate_e_per_A2_s: Any,
    temperature_K: Any = 300.0,
    atmosphere: str = "vacuum",
    pressure_Pa: float | None = None,
    params: KineticParameters | None = None,
    initial_dose_e_per_A2: float = 0.0,
    support_film: bool = True,
    rng: Any = None,
) -> KMCTrajectory:
    """Simulate beam-induced degradation of a perovskite nanocrystal, frame by frame.

    Lattice kinetic Monte Carlo (rejection-free BKL/Gillespie, numba) of the kinetic scheme
    of ``notes/physics_simulation.md`` §1.3: dose-driven surface/bulk Br desorption
    (radiolysis, Dang et al., ACS Nano 11, 2124 (2017)) and thermal, coordination-dependent
    Br desorption (edges and corners first, Luo et al. 2023), Pb²⁺ → Pb⁰ reduction (one Pb⁰
    per two Br lost), Arrhenius + beam-enhanced Pb⁰ surface diffusion (none below 233 K),
    nucleation favouring corners/edges, growth, coalescence of touching clusters into
    compact fcc clusters, Pb⁰ detachment with a Gibbs–Thomson size dependence (Ostwald
    ripening), shrinkage of the crystal when units are exhausted, and CsBr loss
    (CsPbBr₃ → CsPb₂Br₅) in H₂O/O₂ or on heating.  See :class:`KineticParameters` for the
    rates.

    Parameters
    ----------
    atoms : ase.Atoms
        Nanocrystal (e.g. from :func:`perovstem.simulate.nanocrystal`): Cs, Pb, Cd, Br host
        atoms (``label`` 0 or no ``label`` array); optional Pb⁰ adatoms (label 1) and Pb
        clusters (label 2 with ``cluster_id``).  Not modified.
    n_frames : int
        Number of frames (≥ 1).
    frame_time_s : float
        Frame time Δt, s (> 0).  Frame ``k`` covers ``[k·Δt, (k+1)·Δt)``.
    dose_rate_e_per_A2_s : float or (n_frames,) array_like
        Dose rate φ, e⁻/Å²/s (≥ 0; 0 = beam blanked); per-frame values allowed.
    temperature_K : float or (n_frames,) array_like
        Temperature, K (> 0); an array gives a temperature ramp (constant within a frame).
    atmosphere : {"vacuum", "N2", "Ar", "O2", "H2O", "air"}
        Gas around the crystal; O₂/H₂O/air switch on the CsBr-stripping channel.
    pressure_Pa : float, optional
        Gas pressure, Pa (> 0); scales the stripping rate (default: the reference pressure).
    params : KineticParameters, optional
        Rate constants and switches (defaults of the notes).
    initial_dose_e_per_A2 : float
        Dose received before the first frame, e⁻/Å² (bookkeeping only).
    support_film : bool
        If True (default) the crystal lies on a support film: Pb⁰ adatoms and clusters can
        also sit and move on the node layer just below the crystal (lab −z), so they stay
        mobile when the crystal underneath has gone.
    rng : None, int or numpy.random.Generator
        Random source; the same seed reproduces the trajectory exactly.

    Returns
    -------
    KMCTrajectory
        Exact truth per frame (see :class:`KMCTrajectory`).

    Raises
    ------
    ParameterError
        Negative dose rate, temperature ≤ 0, unknown atmosphere, bad frame count or time.
    DataError
        Atoms that are not a perovskite nanocrystal.
    """
    refuse_text_numbers(locals())
    from perovstem.simulate import kmc_core as core

    if (
        isinstance(n_frames, bool)
        or not isinstance(n_frames, int | np.integer)
        or not 1 <= n_frames <= MAX_FRAMES
    ):
        raise ParameterError(
            f"`n_frames` must be an integer in [1, {MAX_FRAMES}], got {n_frames!r}"
        )
    n_frames = int(n_frames)
    frame_time_s = check_positive("frame_time_s", frame_time_s)
    phi = _per_frame(
        "dose_rate_e_per_A2_s", dose_rate_e_per_A2_s, n_frames, positive=True, allow_zero=True
    )
    # the dose of a frame, not the dose rate alone: 1e9 e⁻/Å²/s is fine for a µs frame and
    # the KMC never ended at 1e17 e⁻/Å² per frame
    check_frame_dose(phi, frame_time_s, per_frame=bool(np.ndim(dose_rate_e_per_A2_s)))
    temp = _per_frame("temperature_K", temperature_K, n_frames, positive=True, allow_zero=False)
    if temp.max() > MAX_TEMPERATURE_K:
        # CsPbBr3 melts at ≈ 840 K (567 °C; Stoumpos et al., Cryst. Growth Des. 13, 2722
        # (2013)): a lattice model of the solid has no meaning above it, and its null hops
        # grow without bound (a run at 1e6 K never ends)
        raise ParameterError(
            f"`temperature_K` must be <= {MAX_TEMPERATURE_K:g} K (solid CsPbBr3; it melts at "
            f"about 840 K), got {float(temp.max())!r}"
        )
    check_choice("atmosphere", atmosphere, ATMOSPHERES)
    if pressure_Pa is not None:
        pressure_Pa = check_positive("pressure_Pa", pressure_Pa)
        if atmosphere == "vacuum" and pressure_Pa > 0:
            # (the truth recorded gas "vacuum" at 100 Pa)
            raise ParameterError(
                f"`pressure_Pa` = {pressure_Pa:g} with `atmosphere` = 'vacuum': give the gas "
                "(N2, Ar, O2, H2O, air), or no pressure"
            )
    initial_dose = check_positive("initial_dose_e_per_A2", initial_dose_e_per_A2, allow_zero=True)
    check_at_most(
        "initial_dose_e_per_A2",
        initial_dose,
        MAX_CUMULATIVE_DOSE_E_PER_A2,
        "e⁻/Å²",
        "the largest cumulative dose",
    )
    if params is None:
        params = KineticParameters()
    if not isinstance(params, KineticParameters):
        raise ParameterError(f"`params` must be a KineticParameters, got {type(params).__name__}")
    gen = as_rng(rng)
    seed = int(gen.integers(0, 2**62))

    # ---------------------------------------------------------------- input atoms
    if not (hasattr(atoms, "get_chemical_symbols") and hasattr(atoms, "get_positions")):
        raise DataError(f"`atoms` must be an ase.Atoms, got {type(atoms).__name__}")
    sym_all = np.asarray(atoms.get_chemical_symbols())
    pos_all = np.asarray(atoms.get_positions(), dtype=float)
    n_all = len(sym_all)
    label = np.asarray(atoms.arrays["label"]) if "label" in atoms.arrays else np.zeros(n_all, int)
    cluster_id = (
        np.asarray(atoms.arrays["cluster_id"])
        if "cluster_id" in atoms.arrays
        else np.full(n_all, -1)
    )
    if not np.all(np.isin(label, (0, 1, 2))):
        raise DataError(f"`label` must be 0, 1 or 2, got {sorted(set(label.tolist()))}")
    host = label == _LABEL_HOST
    lat = build_lattice(sym_all[host], pos_all[host])
    H = lat.n_host
    G = int(np.prod(lat.grid_shape))

    kind = lat.kind
    present = np.ones(H, dtype=np.bool_)
    cnt_br, cnt_b, cnt_cs = _neighbour_counts(lat)

    counters = np.zeros(core.N_COUNTERS, dtype=np.int64)
    surf_list = np.zeros(H, np.int64)
    surf_where = np.full(H, -1, np.int64)
    bulk_list = np.zeros(H, np.int64)
    bulk_where = np.full(H, -1, np.int64)
    cs_list = np.zeros(H, np.int64)
    cs_where = np.full(H, -1, np.int64)
    br = np.flatnonzero(kind == KIND_BR)
    is_surf = (cnt_b[br] + cnt_cs[br]) < 6
    for lst, where, ci, members in (
        (surf_list, surf_where, core.C_NSURF, br[is_surf]),
        (bulk_list, bulk_where, core.C_NBULK, br[~is_surf]),
    ):
        lst[: len(members)] = members
        where[members] = np.arange(len(members))
        counters[ci] = len(members)
    cs = np.flatnonzero(kind == KIND_CS)
    cs_s = cs[(cnt_br[cs] < 12) | (cnt_b[cs] < 8)]
    cs_list[: len(cs_s)] = cs_s
    cs_where[cs_s] = np.arange(len(cs_s))
    counters[core.C_NCS_SURF] = len(cs_s)
    counters[core.C_NPB] = int(np.sum(kind == KIND_PB))
    counters[core.C_NCS] = len(cs)
    counters[core.C_NB] = int(np.sum((kind == KIND_PB) | (kind == KIND_CD)))
    counters[core.C_NBR] = len(br)
    stack = np.zeros(len(lat.nb_idx) + H + 1, np.int64)

    # refuse a run that would take hours before any of it (a legitimate-looking request
    # such as 1000 frames of 1e9 e⁻/Å² hopped each Pb⁰ atom ~1e4 times per frame)
    n_events = _estimated_events(
        params,
        phi,
        temp,
        frame_time_s,
        n_br_surface=int(np.sum(is_surf)),
        n_pb=int(np.sum(kind == KIND_PB)),
        n_pb0=int(np.sum(label != _LABEL_HOST)),
    )
    refuse_costly_run(
        n_events,
        f"{n_frames} frames of {frame_time_s:g} s at dose rates up to {phi.max():g} e⁻/Å²/s "
        f"and temperatures up to {temp.max():g} K on a crystal of {H} host atoms",
    )

    # ---------------------------------------------------------------- nodes
    from scipy import ndimage

    node_host = np.zeros(G, np.bool_)
    node_host[lat.node_of[lat.node_of >= 0]] = True
    kern = np.ones((3, 3, 3))
    kern[1, 1, 1] = 0
    host_nb = (
        ndimage.convolve(
            node_host.reshape(lat.grid_shape).astype(np.int32),
            kern.astype(np.int32),
            mode="constant",
        )
        .ravel()
        .astype(np.int32)
    )
    # thermal Br classes: coordination q from the host B sites around the two bridged nodes
    node_br, tb = _thermal_classes(lat, host_nb, br, is_surf, H)
    # the support film: the node layer just below the crystal (beam along −z) always holds
    # Pb⁰ and counts as a flat face (9 neighbours) for nucleation
    support = _support_nodes(lat, node_host) if support_film else np.zeros(G, bool)
    host_nb[support] += 9
    node_ad = np.full(G, -1, np.int64)
    nx, ny, nz = lat.grid_shape
    strides = np.array([ny * nz, nz, 1], dtype=np.int64)
    off6 = np.array([s * d for s in strides for d in (1, -1)], dtype=np.int64)
    off26 = np.array(
        [
            i * strides[0] + j * strides[1] + k * strides[2]
            for i in (-1, 0, 1)
            for j in (-1, 0, 1)
            for k in (-1, 0, 1)
            if (i, j, k) != (0, 0, 0)
        ],
        dtype=np.int64,
    )
    inv_m = np.linalg.inv(lat.lattice_A)
    grid = np.array(lat.grid_shape, dtype=np.int64)

    # ---------------------------------------------------------------- Pb⁰ already present
    n_pb0_in = int(np.sum(label != _LABEL_HOST))
    if np.any(sym_all[label == _LABEL_ADATOM] != "Pb"):
        raise DataError("atoms labelled 1 (Pb⁰ adatom) must be Pb")
    cap = 2 * (int(np.sum(kind == KIND_PB)) + n_pb0_in) + 16
    At = (np.zeros((7, cap), np.int64), np.zeros(7, np.int64))  # adatoms by open directions
    node_free = ~node_host & ~lat.node_border
    initial_adatoms = []
    for p in pos_all[label == _LABEL_ADATOM]:
        nd = _nearest_free_node(p, lat, node_free)
        node_free[nd] = False
        initial_adatoms.append(nd)
    in_ids, in_n, in_anchor = _initial_clusters(
        sym_all, pos_all, label, cluster_id, lat, ~node_host & ~lat.node_border
    )

    cl_alive = np.zeros(cap, np.bool_)
    cl_n = np.zeros(cap, np.int64)
    cl_anchor = np.zeros(cap, np.int64)
    cl_centre = np.zeros((cap, 3))
    cl_R = np.zeros(cap)
    cl_live = np.zeros(cap, np.int64)
    cl_where = np.full(cap, -1, np.int64)
    E = (
        np.zeros(cap, np.int64),
        np.zeros(cap),
        np.zeros(cap, np.int64),
        np.zeros(cap, np.int64),
        np.zeros(cap, np.int64),
        np.zeros(cap, np.int64),
        np.full(cap, -1, np.int64),
    )

    fp = np.zeros(core.N_FPARAMS)
    fp[core.P_CLMOB] = params.cluster_mobility
    fp[core.P_CLALPHA] = params.cluster_mobility_exponent
    fp[core.P_MINCS] = params.min_cs_per_b
    fp[core.P_RCOEF] = float(params.cluster_radius_A(1.0))
    fp[core.P_CAPTURE] = params.capture_radius_A
    fp[core.P_GAP] = params.contact_gap_A
    fp[core.P_HALFA] = 0.5 * lat.a_A
    fp[core.P_PCORNER] = params.nucleation_probability_corner
    fp[core.P_PEDGE] = params.nucleation_probability_edge
    fp[core.P_PFACE] = params.nucleation_probability_face
    n_pb_total = int(np.sum(kind == KIND_PB)) + n_pb0_in
    det_tab = np.zeros(n_pb_total + 2)  # detachment rate of a cluster of n atoms, s⁻¹
    det_n = np.arange(det_tab.size)
    q_of_key = (np.arange(core.N_TKEYS) - 1) // 2
    bulk_of_key = (np.arange(core.N_TKEYS) - 1) % 2 == 1
    ip = np.zeros(core.N_IPARAMS, np.int64)
    ip[core.I_NCRIT] = params.critical_nucleus
    ip[core.I_BRPERPB] = params.br_per_pb0
    ip[core.I_SHRINK] = int(params.enable_shrinkage)
    ip[core.I_NUCLEATE] = int(params.enable_nucleation)
    ip[core.I_CLMIG] = int(params.enable_cluster_migration and params.enable_diffusion)
    ip[core.I_ORPHAN] = int(params.orphaned_br_leave)
    fs = np.zeros(core.N_FSTATE)

    Ht = (present, kind, lat.nb_ptr, lat.nb_idx, lat.node_of, cnt_br, cnt_b, cnt_cs, lat.pos_A)
    tb_arr, tb_pos, tb_key, tb_start = tb
    kth = np.zeros(core.N_TKEYS)  # thermal desorption rate per Br of each class, s⁻¹
    tb_rate = np.zeros(1)
    Lt = (
        surf_list,
        surf_where,
        bulk_list,
        bulk_where,
        cs_list,
        cs_where,
        stack,
        tb_arr,
        tb_pos,
        tb_key,
        tb_start,
        kth,
        tb_rate,
    )
    Nt = (
        node_host,
        host_nb,
        node_ad,
        lat.node_pos_A,
        lat.node_out,
        lat.node_border,
        off6,
        off26,
        inv_m,
        grid,
        support,
        node_br,
    )
    cl_hops = np.zeros(cap, np.int64)  # cumulative hops of each cluster id
    Ct = (cl_alive, cl_n, cl_anchor, cl_centre, cl_R, cl_live, cl_where, cl_hops, det_tab)

    core.seed(seed)
    for nd in initial_adatoms:
        core._add_adatom(nd, Nt, At, counters)
    for n, anc in zip(in_n, in_anchor, strict=True):
        core._new_cluster(n, anc, Nt, Ct, counters, fp)
        counters[core.C_NCLATOMS] += n
    core.settle(Nt, At, Ct, E, counters, fp, ip, fs)
    counters[core.FRAME_COUNTERS] = 0
    counters[core.FRAME_COUNTERS_2] = 0
    # events during settling (merges of input clusters) are frame -1 / time 0
    n_ev_done = 0

    def snapshot_clusters() -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        live = np.sort(Ct[5][: counters[core.C_NLIVE]])
        return live, Ct[1][live].copy(), Ct[3][live].copy(), Ct[4][live].copy()

    present_snaps = [np.packbits(present)]
    ad_snaps = [_adatom_nodes(At, counters, core)]
    live, n0, c0, r0 = snapshot_clusters()
    initial_clusters = pd.DataFrame(
        {
            "cluster_id": live,
            "n_atoms": n0,
            "x_A": c0[:, 0],
            "y_A": c0[:, 1],
            "z_A": c0[:, 2],
            "radius_A": r0,
        }
    )
    initial = _counts(counters, core)

    rows: list[dict[str, Any]] = []
    cl_rows: list[pd.DataFrame] = []
    ev_rows: list[dict[str, Any]] = []
    frame_dose = phi * frame_time_s
    cum_end = initial_dose + np.cumsum(frame_dose)
    cum_start = cum_end - frame_dose
    kinds = {core.EV_BIRTH: "birth", core.EV_MERGE: "merge", core.EV_DEATH: "death"}
    sites = {
        core.SITE_CORNER: "corner",
        core.SITE_EDGE: "edge",
        core.SITE_FACE: "face",
        core.SITE_SUPPORT: "support",
    }
    # the pressure the gas channel uses: a reactive gas without one is at the parameters'
    # reference pressure (the truth recorded NaN while 100 Pa set its strip rate)
    pressure_used = (
        float(pressure_Pa)
        if pressure_Pa is not None
        else float(params.reference_pressure_Pa)
        if atmosphere in ("O2", "H2O", "air")
        else np.nan
    )
    for k in range(n_frames):
        t0 = k * frame_time_s
        t1 = (k + 1) * frame_time_s
        gam = params.hop_rate_per_s(temp[k], phi[k])
        k_surf = params.desorption_rate_per_s(phi[k], surface=True)
        k_bulk = params.desorption_rate_per_s(phi[k], surface=False)
        k_strip = params.strip_rate_per_s(atmosphere, pressure_Pa, temp[k])
        k_th_ref = params.thermal_desorption_rate_per_s(temp[k])
        cold = params.is_cold(temp[k])
        fp[core.P_KSURF] = k_surf
        fp[core.P_KBULK] = k_bulk
        fp[core.P_GAMMA] = gam
        fp[core.P_KSTRIP] = k_strip
        fp[core.P_KTHREF] = k_th_ref
        kth[1:] = params.thermal_desorption_rate_per_s(temp[k], q_of_key[1:])
        kth[1:][bulk_of_key[1:]] *= params.bulk_to_surface_ratio
        det_tab[:] = params.detachment_rate_per_s(det_n, temp[k])
        ip[core.I_NUCLEATE] = int(params.enable_nucleation and not cold)
        counters[core.FRAME_COUNTERS] = 0
        counters[core.FRAME_COUNTERS_2] = 0
        fs[core.S_EXPO_SURF] = 0.0
        fs[core.S_EXPO_BULK] = 0.0
        fs[core.S_COMP_TH] = 0.0
        fs[core.S_COMP_DET] = 0.0
        t = t0
        while t < t1:
            t = core.run_interval(t, t1, Ht, Lt, Nt, At, Ct, E, counters, fp, ip, fs, 10_000_000)
            if t < t1:
                Ct, E = _grow_if_full(Ct, E, counters, core)
        present_snaps.append(np.packbits(present))
        ad_snaps.append(_adatom_nodes(At, counters, core))
        live, n_live, centres, radii = snapshot_clusters()
        cl_rows.append(
            pd.DataFrame(
                {
                    "frame": np.full(len(live), k, dtype=np.int64),
                    "cluster_id": live,
                    "n_atoms": n_live,
                    "x_A": centres[:, 0],
                    "y_A": centres[:, 1],
                    "z_A": centres[:, 2],
                    "radius_A": radii,
                    "n_hops": Ct[7][live].copy(),
                    "hop_rate_per_s": (
                        gam
                        * params.cluster_mobility
                        * n_live ** (-params.cluster_mobility_exponent)
                        if ip[core.I_CLMIG]
                        else np.zeros(len(live))
                    ),
                    "detach_rate_per_s": det_tab[n_live].copy(),
                }
            )
        )
        n_ev = int(counters[core.C_NEV])
        for e in range(n_ev_done, n_ev):
            te = float(E[1][e])
            parents = [] if E[3][e] < 0 else [int(E[3][e]), int(E[4][e])]
            ev_rows.append(
                {
                    "frame": k if te > 0 or k > 0 else -1,
                    "time_s": te,
                    "cumulative_dose_e_per_A2": float(cum_start[k] + phi[k] * max(te - t0, 0.0)),
                    "kind": kinds[int(E[0][e])],
                    "cluster_id": int(E[2][e]),
                    "parents": parents,
                    "n_atoms": int(E[5][e]),
                    "site": sites.get(int(E[6][e])),
                }
            )
        n_ev_done = n_ev
        row = {
            "frame": k,
            "time_s": t0,
            "time_end_s": t1,
            "dose_e_per_A2": frame_dose[k],
            "cumulative_dose_e_per_A2": cum_end[k],
            "dose_rate_e_per_A2_s": phi[k],
            "temperature_K": temp[k],
            "pressure_Pa": pressure_used,
            "gas": atmosphere,  # (as a Series' frames carry it: conditions told apart by gas)
        }
        row.update(_counts(counters, core))
        row["mean_cluster_size"] = float(n_live.mean()) if len(n_live) else np.nan
        row.update(
            {
                "n_Br_desorbed": int(
                    counters[core.C_DES_SURF] + counters[core.C_DES_BULK] + counters[core.C_DES_TH]
                ),
                "n_Br_desorbed_surface": int(counters[core.C_DES_SURF]),
                "n_Br_desorbed_bulk": int(counters[core.C_DES_BULK]),
                "n_Br_desorbed_thermal": int(counters[core.C_DES_TH]),
                "n_Br_orphaned": int(counters[core.C_BR_ORPHANED]),
                "n_Pb_reduced": int(counters[core.C_REDUCED]),
                "n_births": int(counters[core.C_BIRTHS]),
                "n_merges": int(counters[core.C_MERGES]),
                "n_attachments": int(counters[core.C_ATTACH]),
                "n_hops": int(counters[core.C_HOP_ACC]),
                "n_hops_blocked": int(counters[core.C_HOP_REJ]),
                "n_cluster_hops": int(counters[core.C_CL_HOPS]),
                "n_Cs_lost": int(counters[core.C_CS_LOST]),
                "n_Cd_lost": int(counters[core.C_CD_LOST]),
                "n_CsBr_stripped": int(counters[core.C_STRIPS]),
                "n_detachments": int(counters[core.C_DETACH]),
                "n_deaths": int(counters[core.C_DEATHS]),
                "expected_detachments": float(fs[core.S_COMP_DET]),
                "n_nucleation_rejected": int(counters[core.C_NUC_REJ]),
                "n_steps": int(counters[core.C_STEPS]),
                "exposure_Br_surface_e_per_A2": float(fs[core.S_EXPO_SURF] * phi[k]),
                "exposure_Br_bulk_e_per_A2": float(fs[core.S_EXPO_BULK] * phi[k]),
                "expected_Br_desorbed_thermal": float(fs[core.S_COMP_TH]),
                "exposure_Br_thermal_s": (
                    float(fs[core.S_COMP_TH] / k_th_ref) if k_th_ref > 0 else np.nan
                ),
                "hop_rate_per_s": gam,
                "desorption_rate_surface_per_s": k_surf,
                "desorption_rate_bulk_per_s": k_bulk,
                "strip_rate_per_s": k_strip,
                "desorption_rate_thermal_per_s": k_th_ref,
            }
        )
        rows.append(row)

    frame_table = pd.DataFrame(rows)
    conditions = {
        "frame_time_s": frame_time_s,
        "atmosphere": atmosphere,
        "pressure_Pa": None if np.isnan(pressure_used) else pressure_used,
        "initial_dose_e_per_A2": initial_dose,
        "seed": seed,
        "lattice_A": lat.lattice_A.tolist(),
        "a_A": lat.a_A,
        "input_cluster_ids": in_ids,
        "initial_clusters": initial_clusters,
    }
    frame_table.attrs.update(
        {
            "initial": initial,
            "params": params.as_dict(),
            "conditions": {k: v for k, v in conditions.items() if k != "initial_clusters"},
            "units": {
                "time_s": "s",
                "dose_e_per_A2": "e-/A^2",
                "temperature_K": "K",
                "pressure_Pa": "Pa",
                "hop_rate_per_s": "1/s",
            },
            "source": "perovstem.simulate.degradation_kmc",
        }
    )
    clusters = pd.concat(cl_rows, ignore_index=True) if cl_rows else pd.DataFrame()
    clusters.attrs["units"] = {"x_A": "A", "y_A": "A", "z_A": "A", "radius_A": "A"}
    events = pd.DataFrame(
        ev_rows,
        columns=[
            "frame",
            "time_s",
            "cumulative_dose_e_per_A2",
            "kind",
            "cluster_id",
            "parents",
            "n_atoms",
            "site",
        ],
    )
    cell = atoms.get_cell() if hasattr(atoms, "get_cell") else None
    return KMCTrajectory(
        params=params,
        frame_table=frame_table,
        clusters=clusters,
        events=events,
        conditions=conditions,
        _lattice=lat,
        _present=present_snaps,
        _adatoms=ad_snaps,
        _cell=cell,
    )


def _adatom_nodes(At: tuple, counters: np.ndarray, core: Any) -> np.ndarray:
    """Nodes of all Pb⁰ adatoms (mobile and trapped), sorted."""
    return np.sort(np.concatenate([At[0][b, : At[1][b]] for b in range(7)]))


def _counts(counters: np.ndarray, core: Any) -> dict[str, Any]:
    n_ad = int(counters[core.C_NAD])
    n_cl_atoms = int(counters[core.C_NCLATOMS])
    n_b = int(counters[core.C_NB])
    n_pb = int(counters[core.C_NPB])
    return {
        "n_Br": int(counters[core.C_NBR]),
        "n_Br_surface": int(counters[core.C_NSURF]),
        "n_Pb_host": n_pb,
        "n_Cd": n_b - n_pb,
        "n_Cs": int(counters[core.C_NCS]),
        "n_Pb0": n_ad + n_cl_atoms,
        "n_adatoms": n_ad,
        "n_cluster_atoms": n_cl_atoms,
        "n_clusters": int(counters[core.C_NLIVE]),
    }


def _thermal_classes(
    lat: HostLattice, host_count: np.ndarray, br: np.ndarray, is_surf: np.ndarray, n_host: int
) -> tuple[np.ndarray, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """Coordination classes of the Br for thermal desorption.

    Each Br bridges two nodes of the B-site lattice (its two B sites, present or not); its
    coordination ``q`` is the number of host B sites among the 26 neighbours of each node,
    summed over both (52 in the bulk, 26 on a {100} face, 17 at an edge, 11 at a corner of
    a CsBr-terminated cube).  Returns ``node_br`` (G, 6), the Br on the six bonds of each
    node (−1 = none), and the class arrays ``(tb_arr, tb_pos, tb_key, tb_start)`` with key
    ``1 + 2q + bulk`` (0 = desorbed).
    """
    from perovstem.simulate import kmc_core as core
    from perovstem.simulate.kmc_params import BR_COORDINATION_MAX

    G = int(np.prod(lat.grid_shape))
    shape = np.asarray(lat.grid_shape)
    frac = (lat.pos_A[br] - lat.node_pos_A[0]) @ np.linalg.inv(lat.lattice_A)
    off = np.abs(frac - np.rint(frac))
    axis = np.argmax(off, axis=1)
    ijk1 = np.rint(frac).astype(np.int64)
    rows = np.arange(len(br))
    ijk1[rows, axis] = np.floor(frac[rows, axis]).astype(np.int64)
    ijk1 = np.clip(ijk1, 0, shape - 1)
    ijk2 = ijk1.copy()
    ijk2[rows, axis] = np.minimum(ijk1[rows, axis] + 1, shape[axis] - 1)
    n1 = lat.node_index(ijk1)
    n2 = lat.node_index(ijk2)
    q = np.clip(host_count[n1] + host_count[n2], 0, BR_COORDINATION_MAX).astype(np.int64)
    node_br = np.full((G, 6), -1, dtype=np.int64)
    node_br[n1, 2 * axis] = br  # bond along +axis of node n1 …
    node_br[n2, 2 * axis + 1] = br  # … is the bond along −axis of node n2
    key_br = 1 + 2 * q + (~is_surf).astype(np.int64)
    tb_key = np.zeros(n_host, dtype=np.int64)
    tb_key[br] = key_br
    order = np.argsort(key_br, kind="stable")
    tb_arr = np.ascontiguousarray(br[order], dtype=np.int64)
    tb_pos = np.full(n_host, -1, dtype=np.int64)
    tb_pos[tb_arr] = np.arange(len(tb_arr))
    tb_start = np.searchsorted(key_br[order], np.arange(core.N_TKEYS + 1)).astype(np.int64)
    return node_br, (tb_arr, tb_pos, tb_key, tb_start)


def _grow_if_full(Ct: tuple, E: tuple, counters: np.ndarray, core: Any) -> tuple[tuple, tuple]:
    """Double the cluster-id and event arrays when the kernel stopped because they are full
    (clusters that dissolve and re-form consume new ids without bound)."""
    live = int(counters[core.C_NLIVE])
    cap_cl, cap_ev = Ct[0].shape[0], E[0].shape[0]
    if int(counters[core.C_NEXTID]) + live + 8 >= cap_cl:
        fills = (False, 0, 0, 0.0, 0.0, 0, -1, 0)
        new = []
        for arr, fill in zip(Ct[:8], fills, strict=True):
            g = np.full((2 * cap_cl,) + arr.shape[1:], fill, dtype=arr.dtype)
            g[:cap_cl] = arr
            new.append(g)
        Ct = (*new, Ct[8])
    if int(counters[core.C_NEV]) + live + 8 >= cap_ev:
        new = []
        for arr, fill in zip(E, (0, 0.0, 0, 0, 0, 0, -1), strict=True):
            g = np.full(2 * cap_ev, fill, dtype=arr.dtype)
            g[:cap_ev] = arr
            new.append(g)
        E = tuple(new)
    return Ct, E
