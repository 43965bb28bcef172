"""3D atomic models of perovskite nanocrystals from single-projection atom counts.

Starting point is StatSTEM's rule (atoms of each column stacked contiguously, centred on a
common mid-plane; De Backer et al., Ultramicroscopy 171 (2016) 104) or, for a crystal lying on
a support, bottom-aligned columns.  The model is then refined by a **constrained lattice-gas
Monte Carlo** (notes: physics_simulation.md §6.2): every column keeps a contiguous run of
atoms on its own sublattice (Pb-Br columns: Br-Pb-Br-...-Br, i.e. ``n`` Pb and ``n + 1`` Br;
Cs; Br; metallic Pb on an fcc [001] column with period a_Pb), and the runs slide along the beam
or, when count posteriors are given, grow/shrink by one unit with acceptance weighted by the
posterior (the Bayesian count prior of De Backer et al., npj Comput. Mater. 8 (2022) 216).
The energy is a broken-bond model on the 3D neighbour graph (Pb-Br 2.94 Å, Cs-Br 4.15 Å,
Pb⁰-Pb⁰ 3.50 Å, a hard core below 2.3 Å) plus an optional support adhesion and a
charge-neutrality penalty ``λ Q²``.  Metropolis chains with simulated annealing from
independent seeds give **site-occupation probabilities** (Alxneit, Ultramicroscopy 275 (2025)
114139); the lowest-energy chain is returned as the model.  Original 3D-from-counts idea:
Van Aert et al., Nature 470 (2011) 374; Bals et al., Nat. Commun. 3 (2012) 897.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from perovstem._validation import as_rng, check_positive, refuse_text_numbers
from perovstem.errors import DataError, ParameterError

__all__ = [
    "AtomicModel",
    "model_from_counts",
    "site_agreement",
    "DEFAULT_BONDS",
]

#: Pair energies (arbitrary units, kT-scale ~ 0.1): (element a, element b, d_min, d_max, energy).
DEFAULT_BONDS: tuple[tuple[str, str, float, float, float], ...] = (
    ("Pb", "Br", 2.5, 3.4, -1.0),
    ("Cs", "Br", 3.7, 4.6, -0.35),
    ("Pb0", "Pb0", 3.1, 3.9, -0.6),
    ("Pb0", "Br", 2.5, 3.4, -0.3),
)
_HARD_CORE_A = 2.3
# metallic Pb⁰ and host ions closer than this overlap (the simulator's clusters sit 3.04 Å
# from the host at the closest; with the 2.3 Å core 7 of a 40-atom cluster's atoms were
# placed 2.37-2.8 Å from host atoms, inside its outline: audit)
_HARD_CORE_METAL_HOST_A = 2.8
_HARD_CORE_E = 5.0
_CHARGE = {"Pb": 2.0, "Br": -1.0, "Cs": 1.0, "Pb0": 0.0}


@dataclass(frozen=True)
class _TypeSpec:
    """Sublattice of one column type along the beam."""

    step_frac: float  # slot spacing in units of the lattice parameter
    z0_frac: float  # z of slot 0 relative to the window origin (lattice units)
    elements: tuple[str, ...]  # element by slot parity (len 1 or 2)
    unit_len: int  # atoms per counted unit
    cap: int  # extra atoms per run (Br end caps of Pb-Br columns)
    stride: int  # slots between consecutive atoms of a run
    slide: int  # slots per slide move
    start_parity: int  # required parity of the run start (-1: any)
    metal: bool = False


_TYPES = {
    "PbBr": _TypeSpec(0.5, 0.0, ("Pb", "Br"), 2, 1, 1, 2, 1),
    "Cs": _TypeSpec(1.0, 0.5, ("Cs",), 1, 0, 1, 1, -1),
    "Br": _TypeSpec(1.0, 0.0, ("Br",), 1, 0, 1, 1, -1),
    "Pb": _TypeSpec(0.5, 0.0, ("Pb0",), 1, 0, 2, 1, -1, metal=True),
}


@dataclass(frozen=True)
class AtomicModel:
    """Result of :func:`model_from_counts`.

    Attributes
    ----------
    atoms : ase.Atoms
        Lowest-energy model (beam along −z; ``label`` array: 0 host, 2 metallic Pb).
    sites : DataFrame
        Every candidate site: ``x_A, y_A, z_A, element, column, p_occupied`` (fraction of
        chains occupying it) and ``occupied`` (in the returned model).
    columns : DataFrame
        Per column: ``x_A, y_A, type, n_atoms`` (returned model), ``n_atoms_mean`` (over
        chains), ``z_bottom_A``, ``z_top_A``, ``z_center_std_A`` (spread of the run centre
        over chains: the depth uncertainty).
    energies : ndarray, shape (M,)
        Final energy of each chain.
    charges : ndarray, shape (M,)
        Net charge (e) of each chain's model.
    params : dict
    """

    atoms: Any
    sites: pd.DataFrame
    columns: pd.DataFrame
    energies: np.ndarray
    charges: np.ndarray
    params: dict = field(default_factory=dict)

    def facet_fractions(self, **kwargs: Any) -> dict[str, float]:
        """Facet fractions of the model's surface (see :func:`perovstem.quantify.facets.facet_fractions`)."""
        from perovstem.quantify.facets import facet_fractions

        return facet_fractions(self.atoms, **kwargs)

    def site_table(self) -> pd.DataFrame:
        """Occupied sites of the returned model with their occupation probability."""
        return self.sites[self.sites["occupied"]].reset_index(drop=True)


def _check_table(columns: Any) -> pd.DataFrame:
    if not isinstance(columns, pd.DataFrame):
        raise DataError(f"`columns` must be a DataFrame, got {type(columns).__name__}")
    if len(columns) == 0:
        raise DataError("`columns` table is empty: no columns to build a model from")
    need = {"x_A", "y_A", "type", "n_atoms"}
    missing = need - set(columns.columns)
    if missing:
        raise DataError(f"`columns` lacks column(s) {sorted(missing)}; has {list(columns.columns)}")
    bad = set(columns["type"].astype(str)) - set(_TYPES)
    if bad:
        raise DataError(f"unknown column type(s) {sorted(bad)}; known {sorted(_TYPES)}")
    n = columns["n_atoms"].to_numpy()
    nf = n.astype(float)
    if not np.all(np.isfinite(nf)):
        raise DataError(
            f"`n_atoms` must be integers >= 0: {int(np.sum(~np.isfinite(nf)))} of {len(nf)} "
            "columns have none (NaN: columns `atoms count` did not count; leave them out)"
        )
    if np.any(n < 0) or np.any(n != np.round(n)):
        raise DataError("`n_atoms` must be integers >= 0")
    if np.any(n > _MAX_COUNT):
        # the site grid is (columns × max count): 1e9 asked numpy for hundreds of GiB
        raise DataError(
            f"`n_atoms` up to {_MAX_COUNT} atoms per column (a column ~{_MAX_COUNT * 5.87e-4:.1f}"
            f" µm long) are supported, got {int(np.max(n))}"
        )
    for c in ("x_A", "y_A"):
        xy = pd.to_numeric(columns[c], errors="coerce").to_numpy(dtype=float)
        if not np.all(np.isfinite(xy)):
            raise DataError(
                f"`{c}` must be finite numbers, got {int(np.sum(~np.isfinite(xy)))} NaN/inf or "
                "non-numeric value(s)"
            )
    return columns


_MAX_COUNT = 1000  # atoms per column: ~0.6 µm of CsPbBr3, far beyond any nanocrystal


def _model_columns(tab: pd.DataFrame, lattice_A: float, count_moves: bool) -> pd.DataFrame:
    """The columns a model is built from: those counted 0 are vacuum and left out (a Pb-Br
    column of 0 atoms got one Br, its end cap); two rows at one position, a spacing that
    does not fit ``lattice_A`` (positions in nm, a lattice 10× off) and count moves
    without ``n_atoms_std`` are refused."""
    from scipy.spatial import cKDTree

    xy = tab[["x_A", "y_A"]].to_numpy(float)
    if len(xy) > 1:
        d, _ = cKDTree(xy).query(xy, k=2)
        dup = int(np.sum(d[:, 1] < 0.1))
        if dup:
            raise DataError(
                f"`columns`: {dup} rows share a position with another (within 0.1 Å): one row "
                "per column (a table concatenated twice?)"
            )
    types = tab["type"].astype(str).to_numpy()
    for t in ("PbBr", "Cs", "Br"):
        pts = xy[types == t]
        if len(pts) < 4:
            continue
        # the nearest column of a sublattice in [001] is a (Cs, Pb-Br) or a/√2 (Br) away
        nn = float(np.median(cKDTree(pts).query(pts, k=2)[0][:, 1]))
        if not 0.55 * lattice_A <= nn <= 1.45 * lattice_A:
            raise DataError(
                f"`columns`: the {t} columns are {nn:.3g} Å from their nearest {t} column "
                f"(median), where `lattice_A` = {lattice_A:g} Å puts them {lattice_A:.3g} Å "
                f"apart{' (a/√2 for Br)' if t == 'Br' else ''}: positions in another unit "
                "(nm?) or a wrong lattice constant"
            )
    if count_moves:
        if "n_atoms_std" not in tab:
            raise DataError(
                "`count_moves` needs the count posterior's `n_atoms_std` column (from "
                "`atoms count`); the table has none"
            )
        sd = pd.to_numeric(tab["n_atoms_std"], errors="coerce").to_numpy(float)
        if not np.all(np.isfinite(sd) & (sd >= 0)):
            raise DataError(
                f"`n_atoms_std` must be finite and >= 0: {int(np.sum(~(np.isfinite(sd) & (sd >= 0))))}"
                " value(s) are not"
            )
    empty = tab["n_atoms"].to_numpy() == 0
    if empty.all():
        raise DataError("every column is counted 0 atoms: no atoms to build a model from")
    return tab[~empty].reset_index(drop=True) if empty.any() else tab


def model_from_counts(
    columns: pd.DataFrame,
    *,
    lattice_A: float = 5.87,
    pb_lattice_A: float = 4.95,
    start: str = "center",
    n_chains: int = 16,
    n_sweeps: int = 200,
    t_start: float = 1.0,
    t_end: float = 0.02,
    bonds: Any = None,
    support_energy: float = 0.0,
    count_moves: bool = False,
    max_count_change: int = 1,
    charge_weight: float = 0.0,
    composition: pd.DataFrame | None = None,
    rng: Any = None,
) -> AtomicModel:
    """Build a 3D atomic model from per-column atom counts by lattice-gas Monte Carlo.

    Parameters
    ----------
    columns : DataFrame
        ``x_A, y_A`` (projected positions, Å, crystal axes along x and y), ``type`` (``"PbBr"``
        counts unit cells = Pb atoms; ``"Cs"``; ``"Br"``; ``"Pb"`` metallic fcc columns) and
        ``n_atoms``; optional ``n_atoms_mean``/``n_atoms_std`` (count posteriors, e.g. from
        :func:`perovstem.atoms.count_atoms`) used as a Gaussian prior for count moves, and
        ``n_Br`` (Br atoms of Pb-Br columns; default ``n_atoms + 1``, i.e. Br at both ends
        as in a CsBr-terminated crystal).
    lattice_A, pb_lattice_A : float
        Perovskite (pseudo-cubic) and fcc Pb lattice parameters, Å.
    start : {"center", "bottom", "random"}
        Initial stacking: centred on a common mid-plane (StatSTEM), bottom-aligned (crystal on
        a support; combine with ``support_energy``) or random depth offsets.
    n_chains, n_sweeps : int
        Independent annealing chains and Monte Carlo sweeps (one sweep = one move per column).
    t_start, t_end : float
        Annealing temperatures (energy units of ``bonds``; geometric schedule).
    bonds : sequence of (el_a, el_b, d_min_A, d_max_A, energy), optional
        Pair energies (default :data:`DEFAULT_BONDS`; "Pb0" is metallic Pb).
    support_energy : float
        Adhesion energy (>= 0) gained by each atom in the first layer above the support plane
        (the plane just under the lowest atom of the starting model); atoms cannot go below
        it.  Use with ``start="bottom"`` (or ``"center"``: the support is then under the
        thickest column, and the thinner ones are pulled down by the MC).
    count_moves : bool
        Allow ±1 count changes weighted by the count posterior (default False).
        *Experimental*: the broken-bond energy has no chemical potential yet, so at low
        temperature added atoms are always favoured and counts drift upward (measured: ~18 %
        more atoms on a 1551-atom test crystal).  Keep it off for quantitative models.
    max_count_change : int
        Largest deviation from the input count allowed.
    charge_weight : float
        λ of the charge-neutrality penalty ``λ Q²`` (e², relevant with count moves).
    composition : DataFrame, optional
        Cd atoms per Pb-Br column of CsCd_xPb_(1-x)Br3: ``x_A, y_A, n_cd`` (the table of
        ``perovstem atoms composition`` / :func:`perovstem.atoms.composition_from_counts`),
        matched to the Pb-Br columns within 0.5 Å.  The Monte Carlo treats Cd as Pb (same
        bonds and charge); afterwards each column's Cd replace that many of its Pb in the
        returned model, at depths drawn at random: one projection's cross-section tells how
        many Cd a column holds, not where along the beam.  Without it the model holds no Cd.
    rng : None, int or Generator

    Returns
    -------
    AtomicModel
    """
    refuse_text_numbers(locals())
    from scipy.spatial import cKDTree

    from perovstem.quantify._model3d_numba import run_chains

    tab = _check_table(columns)
    comp = None if composition is None else _check_composition(composition)  # before the MC
    a = check_positive("lattice_A", lattice_A)
    tab = _model_columns(tab, a, count_moves)
    a_pb = check_positive("pb_lattice_A", pb_lattice_A)
    if start not in ("center", "bottom", "random"):
        raise ParameterError(f"`start` must be 'center', 'bottom' or 'random', got {start!r}")
    n_chains = int(check_positive("n_chains", n_chains))
    n_sweeps = int(check_positive("n_sweeps", n_sweeps))
    # upper bounds: 1e9 sweeps ran for days with no output (a hang to the user)
    if n_chains > 10_000 or n_sweeps > 1_000_000:
        raise ParameterError(
            "`n_chains` must be <= 10000 and `n_sweeps` <= 1000000, got "
            f"n_chains={n_chains}, n_sweeps={n_sweeps}"
        )
    check_positive("t_start", t_start)
    check_positive("t_end", t_end)
    check_positive("support_energy", support_energy, allow_zero=True)
    check_positive("charge_weight", charge_weight, allow_zero=True)
    gen = as_rng(rng)
    bonds = DEFAULT_BONDS if bonds is None else tuple(bonds)

    types = tab["type"].astype(str).to_numpy()
    n_in = tab["n_atoms"].to_numpy().astype(np.int64)
    xy = tab[["x_A", "y_A"]].to_numpy(dtype=float)
    C = len(tab)
    dn = int(max_count_change) if count_moves else 0
    n_min = np.maximum(n_in - dn, 0)
    n_max = n_in + dn
    # a common z window for all columns, in Å, wide enough for any run and its slides
    z_span = float(np.max(n_max * np.where(types == "Pb", a_pb, a))) + 4 * a
    half = 0.5 * z_span + 2 * a
    specs = [_TYPES[t] for t in types]
    steps = np.array([s.step_frac * (a_pb if s.metal else a) for s in specs])
    nslot = np.ceil(2 * half / steps).astype(np.int64) + 1
    # window origin on a multiple of the lattice so parities mean the same for all columns
    z_origin = -np.ceil(half / a) * a
    z0 = np.array([z_origin + s.z0_frac * (a_pb if s.metal else a) for s in specs])
    col_start = np.concatenate([[0], np.cumsum(nslot)[:-1]]).astype(np.int64)
    S = int(nslot.sum())
    site_col = np.repeat(np.arange(C), nslot)
    site_slot = np.arange(S) - col_start[site_col]
    site_z = z0[site_col] + site_slot * steps[site_col]
    site_xyz = np.column_stack([xy[site_col], site_z])
    el = np.empty(S, dtype=object)
    for c, s in enumerate(specs):
        sl = slice(col_start[c], col_start[c] + nslot[c])
        el[sl] = [s.elements[k % len(s.elements)] for k in range(nslot[c])]
    charge = np.array([_CHARGE[e] for e in el])

    # neighbour graph between sites of different columns, with the lateral offsets of host
    # columns on the a/2 grid of the [001] projection: fitted positions scatter (0.2 Å rms
    # lost bonds past the windows' edges, and the freed columns slid: a model twice as high)
    dmax = max(max(b[3] for b in bonds), _HARD_CORE_A)
    tree = cKDTree(site_xyz)
    pairs = tree.query_pairs(dmax + _POSITION_SLACK_A, output_type="ndarray")
    pairs = pairs[site_col[pairs[:, 0]] != site_col[pairs[:, 1]]]
    delta = site_xyz[pairs[:, 1]] - site_xyz[pairs[:, 0]]
    theta = _host_orientation(xy, types, a)
    if theta is not None:
        host = types != "Pb"
        on = host[site_col[pairs[:, 0]]] & host[site_col[pairs[:, 1]]]
        c, s_ = np.cos(theta), np.sin(theta)
        rot = np.array([[c, -s_], [s_, c]])  # crystal -> image
        lat = delta[on, :2] @ rot  # image -> crystal frame (row vectors)
        delta[on, :2] = (np.round(lat / (0.5 * a)) * (0.5 * a)) @ rot.T
    d = np.linalg.norm(delta, axis=1)
    pairs, d = pairs[d <= dmax], d[d <= dmax]
    e_pair = np.zeros(len(pairs))
    ea, eb = el[pairs[:, 0]], el[pairs[:, 1]]
    for x1, x2, lo, hi, en in bonds:
        m = (((ea == x1) & (eb == x2)) | ((ea == x2) & (eb == x1))) & (d >= lo) & (d <= hi)
        e_pair[m] = en
    e_pair[d < _HARD_CORE_A] = _HARD_CORE_E
    e_pair[((ea == "Pb0") != (eb == "Pb0")) & (d < _HARD_CORE_METAL_HOST_A)] = _HARD_CORE_E
    keep = e_pair != 0
    pairs, e_pair = pairs[keep], e_pair[keep]
    i2 = np.concatenate([pairs[:, 0], pairs[:, 1]])
    j2 = np.concatenate([pairs[:, 1], pairs[:, 0]])
    e2 = np.concatenate([e_pair, e_pair])
    order = np.argsort(i2, kind="stable")
    nbr, eij = j2[order].astype(np.int64), e2[order]
    indptr = np.concatenate([[0], np.cumsum(np.bincount(i2, minlength=S))]).astype(np.int64)

    unit_len = np.array([s.unit_len for s in specs], np.int64)
    cap = np.array([s.cap for s in specs], np.int64)
    stride = np.array([s.stride for s in specs], np.int64)
    slide = np.array([s.slide for s in specs], np.int64)
    parity = np.array([s.start_parity for s in specs], np.int64)
    if "n_Br" in tab.columns:
        # known Br per Pb-Br column: n + 1 (Br at both ends), n (one end) or n - 1 (none)
        pbbr = types == "PbBr"
        n_br = tab["n_Br"].to_numpy()
        cap[pbbr] = np.clip(n_br[pbbr] - n_in[pbbr], -1, 1).astype(np.int64)
        parity[pbbr] = np.select([cap[pbbr] == 1, cap[pbbr] == -1], [1, 0], -1)
        slide[pbbr] = np.where(cap[pbbr] == 0, 1, 2)
    # initial runs
    L = unit_len * n_in + cap
    extent = stride * (np.maximum(L, 1) - 1) * steps  # Å from first to last atom
    if start == "center":
        first_z = -0.5 * extent
    elif start == "bottom":
        first_z = np.full(C, -0.5 * float(extent.max()))
    else:  # random depth offsets: a test of the Monte Carlo's ability to assemble the crystal
        first_z = -0.5 * extent + gen.uniform(-0.5, 0.5, C) * float(extent.max())
    b0 = np.ceil((first_z - z0) / steps - 1e-9).astype(np.int64)
    fix = (parity >= 0) & (b0 % 2 != parity)
    b0[fix] += 1
    b0 = np.clip(b0, 0, None)
    if np.any(b0 + stride * (L - 1) >= nslot):
        raise DataError("z window too small for the counts (internal error)")
    # support: the plane under the lowest atom of the starting model; atoms in the first
    # layer above it gain the adhesion energy, atoms below it are forbidden
    ext = np.zeros(S)
    z_support = float(np.min(z0 + b0 * steps)) - 0.25 * a
    if support_energy > 0:
        ext[(site_z > z_support) & (site_z < z_support + 0.75 * a)] = -support_energy
        ext[site_z < z_support] = _HARD_CORE_E * 10
    # Gaussian count prior from posteriors
    width = 2 * dn + 1
    logprior = np.zeros((C, width))
    if dn > 0:
        mean = tab["n_atoms_mean"].to_numpy(float) if "n_atoms_mean" in tab else n_in.astype(float)
        sd = np.maximum(tab["n_atoms_std"].to_numpy(float), 0.3)
        kk = n_min[:, None] + np.arange(width)[None, :]
        logprior = -0.5 * ((kk - mean[:, None]) / sd[:, None]) ** 2
    seeds = gen.integers(0, 2**31 - 1, n_chains).astype(np.int64)
    B, N, E, Q = run_chains(
        b0,
        n_in,
        unit_len,
        cap,
        stride,
        slide,
        col_start,
        nslot,
        indptr,
        nbr,
        eij,
        charge,
        ext,
        logprior,
        n_min.astype(np.int64),
        n_max.astype(np.int64),
        float(charge_weight),
        float(t_start),
        float(t_end),
        n_sweeps,
        seeds,
    )
    best = int(np.argmin(E))
    # a projection fixes no depth origin: align every chain to the best one by a whole number
    # of lattice periods before computing occupation probabilities and depth spreads
    centres = z0[None, :] + (B + 0.5 * stride[None, :] * ((unit_len * N + cap) - 1)) * steps
    if support_energy == 0:
        k = np.round(np.median(centres - centres[best][None, :], axis=1) / a)
        shift = np.round(k[:, None] * a / steps[None, :]).astype(np.int64)
        Bs = B - shift
        Lall = unit_len[None, :] * N + cap[None, :]
        inside = (Bs >= 0) & (Bs + stride[None, :] * (Lall - 1) < nslot[None, :])
        B = np.where(inside, Bs, B)
        centres = z0[None, :] + (B + 0.5 * stride[None, :] * (Lall - 1)) * steps
    # occupancy per chain
    occ = np.zeros((n_chains, S), bool)
    for m in range(n_chains):
        Lm = unit_len * N[m] + cap
        for c in range(C):
            if Lm[c] > 0:
                occ[m, col_start[c] + B[m, c] + stride[c] * np.arange(Lm[c])] = True
    sites = pd.DataFrame(
        {
            "x_A": site_xyz[:, 0],
            "y_A": site_xyz[:, 1],
            "z_A": site_z,
            "element": el.astype(str),
            "column": site_col,
            "p_occupied": occ.mean(0),
            "occupied": occ[best],
        }
    )
    Lb = unit_len * N[best] + cap
    z_lo = z0 + B[best] * steps
    z_hi = z_lo + stride * (Lb - 1) * steps
    cols = tab[["x_A", "y_A", "type"]].copy()
    cols["n_atoms"] = N[best]
    cols["n_atoms_mean"] = N.mean(0)
    cols["z_bottom_A"] = z_lo
    cols["z_top_A"] = z_hi
    cols["z_center_std_A"] = centres.std(0)
    cd_info: dict[str, Any] = {}
    if comp is not None:
        cd_info = _place_cd(sites, cols, comp, gen)
    atoms = _to_atoms(sites[sites["occupied"]])
    params = {
        "lattice_A": a,
        "pb_lattice_A": a_pb,
        "start": start,
        "n_chains": n_chains,
        "n_sweeps": n_sweeps,
        "t_start": t_start,
        "t_end": t_end,
        "support_energy": support_energy,
        "count_moves": bool(count_moves),
        "charge_weight": charge_weight,
        "bonds": [list(b) for b in bonds],
        **cd_info,
    }
    cols.attrs["model3d"] = params
    return AtomicModel(atoms, sites, cols, E, Q, params)


_POSITION_SLACK_A = 1.0  # candidate neighbours up to this much beyond a bond window's end


def _host_orientation(xy: np.ndarray, types: np.ndarray, a: float) -> float | None:
    """Angle (rad) of the crystal's a axis in the image, from the nearest same-type
    neighbours of the Pb-Br and Cs columns (a apart along the axes in [001]); None when
    they are too few or point no common way (then the measured offsets are used)."""
    from scipy.spatial import cKDTree

    vecs = []
    for t in ("PbBr", "Cs"):
        pts = xy[types == t]
        if len(pts) < 4:
            continue
        dist, k = cKDTree(pts).query(pts, k=2)
        ok = np.abs(dist[:, 1] - a) < 0.25 * a
        vecs.append(pts[k[ok, 1]] - pts[ok])
    if not vecs:
        return None
    v = np.vstack(vecs)
    if len(v) < 4:
        return None
    z = np.mean(np.exp(4j * np.arctan2(v[:, 1], v[:, 0])))  # 4-fold: one axis, mod 90°
    if abs(z) < 0.5:
        return None
    return float(np.angle(z) / 4)


_CD_MATCH_A = 0.5  # a composition row and a Pb-Br column farther apart are not the same


def _check_composition(composition: Any) -> pd.DataFrame:
    """The rows of a Cd-per-column table (``x_A, y_A, n_cd``) that carry a Cd count."""
    if not isinstance(composition, pd.DataFrame):
        raise DataError(
            f"`composition` must be a DataFrame (x_A, y_A, n_cd), got {type(composition).__name__}"
        )
    missing = {"x_A", "y_A", "n_cd"} - set(composition.columns)
    if missing:
        raise DataError(
            f"`composition` lacks column(s) {sorted(missing)} (the table of `perovstem atoms "
            f"composition`); has {list(composition.columns)}"
        )
    n_cd = pd.to_numeric(composition["n_cd"], errors="coerce")
    comp = composition[n_cd.notna()]
    v = n_cd[n_cd.notna()].to_numpy(float)
    xy = comp[["x_A", "y_A"]].apply(pd.to_numeric, errors="coerce").to_numpy(float)
    if np.any(~np.isfinite(v)) or np.any(v < 0) or np.any(v != np.round(v)):
        raise DataError("`composition`: `n_cd` must be whole numbers of Cd atoms >= 0")
    if not np.all(np.isfinite(xy)):
        raise DataError("`composition`: `x_A`, `y_A` must be finite numbers")
    return comp


def _place_cd(
    sites: pd.DataFrame, cols: pd.DataFrame, comp: pd.DataFrame, gen: np.random.Generator
) -> dict[str, Any]:
    """Turn ``n_cd`` of each matched Pb-Br column's occupied Pb sites (chosen at random)
    into Cd, in ``sites`` and ``cols["n_Cd"]``; ``comp`` as checked by
    :func:`_check_composition`.  Returns the record for ``params``."""
    from scipy.spatial import cKDTree

    n_cd = comp["n_cd"].to_numpy(float)
    cols["n_Cd"] = 0
    pbbr = np.flatnonzero(cols["type"].astype(str).to_numpy() == "PbBr")
    matched = clipped = 0
    if len(comp) and len(pbbr):
        d, k = cKDTree(comp[["x_A", "y_A"]].to_numpy(float)).query(
            cols[["x_A", "y_A"]].to_numpy(float)[pbbr]
        )
        # the returned model's Pb sites, and their columns (one pass, not a mask per column)
        pb_occ = np.flatnonzero(
            sites["occupied"].to_numpy() & (sites["element"] == "Pb").to_numpy()
        )
        pb_col = sites["column"].to_numpy()[pb_occ]
        element = sites["element"].to_numpy(dtype=object).copy()
        for c, dist, j in zip(pbbr, d, k, strict=True):
            if dist > _CD_MATCH_A:
                continue
            matched += 1
            want = int(n_cd[j])
            pb_sites = pb_occ[pb_col == c]
            take = min(want, len(pb_sites))
            clipped += want - take
            if take:
                element[gen.choice(pb_sites, size=take, replace=False)] = "Cd"
            cols.iloc[c, cols.columns.get_loc("n_Cd")] = take
        sites["element"] = element.astype(str)
    return {
        "cd_placement": "random depth along each Pb-Br column (not given by one projection)",
        "cd_columns_matched": int(matched),
        "cd_columns_unmatched": int(len(pbbr) - matched),
        "cd_atoms": int(cols["n_Cd"].sum()),
        "cd_clipped": int(clipped),
    }


def _to_atoms(occ_sites: pd.DataFrame):
    from ase import Atoms

    el = occ_sites["element"].to_numpy()
    sym = np.where(el == "Pb0", "Pb", el)
    atoms = Atoms(symbols=list(sym), positions=occ_sites[["x_A", "y_A", "z_A"]].to_numpy())
    atoms.set_array("label", np.where(el == "Pb0", 2, 0).astype(int))
    atoms.set_array("column", occ_sites["column"].to_numpy().astype(int))
    return atoms


def site_agreement(
    model: Any, truth: Any, *, lattice_A: float = 5.87, tol_A: float = 0.8
) -> dict[str, float]:
    """Fraction of atoms of ``truth`` that ``model`` places on the right site.

    A projection has no depth origin, so the best common shift along z (multiples of
    ``lattice_A / 4`` over the whole range) is applied to ``model`` first.  Atoms match when
    they have the same element within ``tol_A``.

    Parameters
    ----------
    model, truth : ase.Atoms
        Same lateral frame (x, y).

    Returns
    -------
    dict
        ``fraction`` (matched / truth atoms), ``precision`` (matched / model atoms),
        ``shift_A``, ``n_truth``, ``n_model``.
    """
    refuse_text_numbers(locals())
    from scipy.spatial import cKDTree

    pm, pt = model.get_positions(), truth.get_positions()
    sm = np.array(model.get_chemical_symbols())
    st = np.array(truth.get_chemical_symbols())
    # Cd sits on Pb sites: compare the B site, not the species
    sm = np.where(sm == "Cd", "Pb", sm)
    st = np.where(st == "Cd", "Pb", st)
    if len(pm) == 0 or len(pt) == 0:
        raise DataError("model and truth must both contain atoms")
    span = (pt[:, 2].max() - pt[:, 2].min()) + (pm[:, 2].max() - pm[:, 2].min())
    dz0 = np.median(pt[:, 2]) - np.median(pm[:, 2])
    q = lattice_A / 4
    shifts = dz0 + q * np.arange(-int(span / q) - 2, int(span / q) + 3)
    best = (-1, 0.0)
    trees = {e: cKDTree(pt[st == e]) for e in np.unique(st)}
    for dz in shifts:
        hit = 0
        for e, tr in trees.items():
            p = pm[sm == e] + [0, 0, dz]
            if len(p):
                dd, _ = tr.query(p, distance_upper_bound=tol_A)
                hit += int(np.sum(np.isfinite(dd)))
        if hit > best[0]:
            best = (hit, float(dz))
    return {
        "fraction": best[0] / len(pt),
        "precision": best[0] / len(pm),
        "shift_A": best[1],
        "n_truth": len(pt),
        "n_model": len(pm),
    }
