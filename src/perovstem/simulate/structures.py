"""Atomic models of CsPbBr3 / CsCd_xPb_{1-x}Br3 nanocrystals and epitaxial Pb clusters.

Everything is an :class:`ase.Atoms` (no home-made structure class).  Conventions:

* Lengths in Å.  The beam travels along −z of the returned ``Atoms``; a projection onto
  (x, y) is what the microscope sees.  The nanocrystal (NC) is centred on the origin.
* Per-atom arrays (kept by ASE through slicing/deletion):

  ``label``       0 host ion, 1 Pb⁰ adatom, 2 atom of a metallic Pb cluster
  ``cluster_id``  −1 for no cluster, otherwise the cluster number (0, 1, ...)
  ``sublattice``  0 A site (Cs), 1 B site (Pb/Cd), 2 X site (Br), 3 fcc Pb (cluster/adatom)
  ``site_index``  (N, 3) int: twice the pseudo-cubic fractional coordinate of a host site
                  (Pb on even/even/even, Br on one odd, Cs on all odd), ≥ 0; −1 for non-host atoms

* ``atoms.info``: ``a_pc_A`` (pseudo-cubic spacings along crystal x, y, z), ``phase``,
  ``termination``, ``zone_axis``, ``rotation`` (3×3, lab = rotation @ crystal, includes
  the mistilt), ``mistilt_rotation`` (3×3, the mistilt part only, lab = M @ zone-aligned),
  ``cd_fraction`` (nominal x), ``charge_e`` (net ionic charge), ``n_cells`` (3 ints).

Crystallography (notes/physics_simulation.md §2): cubic Pm-3m a = 5.87 Å; orthorhombic Pnma
a = 8.244, b = 11.735, c = 8.198 Å (Stoumpos et al., Cryst. Growth Des. 13, 2722 (2013)),
built here as the pseudo-cubic lattice (a/√2, b/2, c/√2) with the a⁻b⁺a⁻ Glazer tilt pattern
(Glazer, Acta Cryst. B28, 3384 (1972); Woodward, Acta Cryst. B53, 32 (1997)) applied as rigid
small-angle octahedral rotations.  Cd on the Pb (B) site with the Vegard contraction
a(x) = a₀·(1 − 0.08·x) [estimate from van der Stam et al., JACS 139, 4087 (2017)].
Pb clusters are fcc, a = 4.95 Å, in cube-on-cube orientation with the host.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from perovstem._validation import (
    as_rng,
    check_choice,
    check_positive,
    check_range,
    refuse_text_numbers,
)
from perovstem.errors import DataError, ParameterError

__all__ = [
    "A_CUBIC_A",
    "A_ORTHO_A",
    "A_PB_FCC_A",
    "CD_VEGARD_SLOPE",
    "ZONE_AXES",
    "nanocrystal",
    "add_pb_cluster",
    "composition",
    "zone_rotation",
]

A_CUBIC_A = 5.87
"""Cubic (α, Pm-3m) CsPbBr3 lattice parameter, Å."""
A_ORTHO_A = (8.244, 11.735, 8.198)
"""Orthorhombic (γ, Pnma) CsPbBr3 lattice parameters a, b, c, Å (Stoumpos 2013)."""
A_PB_FCC_A = 4.95
"""fcc Pb lattice parameter, Å."""
CD_VEGARD_SLOPE = 0.08
"""Relative lattice contraction per unit Cd fraction: a(x) = a₀(1 − 0.08 x) [estimate]."""
OCTAHEDRAL_TILT_DEG = 8.0
"""Tilt angle of the a⁻b⁺a⁻ pattern used for the Pnma model, degrees [estimate, 6–10°]."""
# The builder holds every site index in memory (a few hundred bytes per atom): 5·10⁶
# atoms is a ~60 nm cube, well above the nanocrystals studied (5–20 nm).
MAX_ATOMS = 5_000_000

ZONE_AXES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    # zone axis -> (beam direction in crystal frame, crystal direction put along lab x)
    "001": ((0, 0, 1), (1, 0, 0)),
    "100": ((1, 0, 0), (0, 1, 0)),
    "010": ((0, 1, 0), (0, 0, 1)),
    "011": ((0, 1, 1), (1, 0, 0)),
    "101": ((1, 0, 1), (0, 1, 0)),
    "110": ((1, 1, 0), (0, 0, 1)),
    "111": ((1, 1, 1), (1, -1, 0)),
}

_CHARGE = {"Cs": 1, "Pb": 2, "Cd": 2, "Br": -1}
_SHAPES = ("cube", "cuboid", "platelet")
_PHASES = ("cubic", "orthorhombic")
_TERMINATIONS = ("CsBr", "PbBr2")
_SITES = ("corner", "edge", "face")


def zone_rotation(zone_axis: str, *, mistilt_deg: float = 0.0, mistilt_azimuth_deg: float = 0.0):
    """Rotation matrices that bring a crystal zone axis onto the lab z axis.

    Parameters
    ----------
    zone_axis : str
        One of ``ZONE_AXES`` ("001", "011", "111", ...), indices of the pseudo-cubic cell.
    mistilt_deg : float
        Extra tilt away from the zone axis, degrees (|θ| ≤ 15).
    mistilt_azimuth_deg : float
        Azimuth of the mistilt rotation axis in the image plane, degrees from lab x.

    Returns
    -------
    rotation : (3, 3) ndarray
        Full rotation, ``lab = rotation @ crystal`` (column vectors).
    mistilt : (3, 3) ndarray
        Mistilt part only, ``lab = mistilt @ zone_aligned``.
    """
    refuse_text_numbers(locals())
    key = str(zone_axis).strip("[]() ").replace(",", "").replace(" ", "")
    if key not in ZONE_AXES:
        raise ParameterError(f"`zone_axis` must be one of {sorted(ZONE_AXES)}, got {zone_axis!r}")
    check_range("mistilt_deg", mistilt_deg, -15.0, 15.0)
    # any direction: a finite angle (NaN/inf was accepted, and NaN made every atom NaN)
    check_range("mistilt_azimuth_deg", mistilt_azimuth_deg, -360.0, 360.0)
    u, v = (np.asarray(w, dtype=float) for w in ZONE_AXES[key])
    ez = u / np.linalg.norm(u)
    ex = v / np.linalg.norm(v)
    ey = np.cross(ez, ex)
    zone = np.vstack([ex, ey, ez])  # rows: lab axes in crystal coordinates
    th = np.deg2rad(float(mistilt_deg))
    ph = np.deg2rad(float(mistilt_azimuth_deg))
    axis = np.array([np.cos(ph), np.sin(ph), 0.0])
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    mis = np.eye(3) + np.sin(th) * k + (1 - np.cos(th)) * (k @ k)  # Rodrigues
    return mis @ zone, mis


def _n_cells(
    edge_A: float | Sequence[float], shape: str, thickness_A: float | None, a_pc: np.ndarray
) -> np.ndarray:
    if thickness_A is not None and shape != "platelet":
        raise ParameterError(
            f"`thickness_A` applies to shape='platelet' only, got thickness_A={thickness_A!r} "
            f"with shape={shape!r}"
        )
    if np.ndim(edge_A) == 0:
        e = check_positive("edge_A", edge_A)
        if shape == "cube":
            edges = np.array([e, e, e])
        elif shape == "cuboid":
            edges = np.array([e, 1.5 * e, e])
        else:
            t = 30.0 if thickness_A is None else check_positive("thickness_A", thickness_A)
            edges = np.array([e, e, t])
    else:
        edges = np.asarray(edge_A, dtype=float)
        if edges.shape != (3,):
            raise ParameterError(
                f"`edge_A` must be a number or 3 numbers (x, y, z), got {edge_A!r}"
            )
        for v in edges:
            check_positive("edge_A", v)
        if shape == "cube" and not np.allclose(edges, edges[0]):
            raise ParameterError(f"`edge_A` must have equal edges for shape='cube', got {edge_A!r}")
    n = np.rint(edges / a_pc).astype(int)
    small = edges < a_pc * 0.999
    if small.any():
        raise ParameterError(
            f"`edge_A` must be at least one unit cell ({a_pc.min():.3f} Å) along every axis, "
            f"got {edge_A!r}" + ("" if thickness_A is None else f" (thickness_A={thickness_A!r})")
        )
    return np.maximum(n, 1)


def _host_sites(n: np.ndarray, termination: str) -> dict[str, np.ndarray]:
    """Doubled pseudo-cubic indices of the Cs, Pb and Br sites of an ideal NC."""
    nx, ny, nz = (int(v) for v in n)

    def grid(rx, ry, rz):
        g = np.stack(np.meshgrid(rx, ry, rz, indexing="ij"), axis=-1).reshape(-1, 3)
        return g.astype(np.int64)

    if termination == "CsBr":
        # Pb at 2i+1 (i = 0..n-1), Cs at even 0..2n, Br bridging on the outer shell too
        pb = grid(2 * np.arange(nx) + 1, 2 * np.arange(ny) + 1, 2 * np.arange(nz) + 1)
        cs = grid(2 * np.arange(nx + 1), 2 * np.arange(ny + 1), 2 * np.arange(nz + 1))
        bx = grid(2 * np.arange(nx + 1), 2 * np.arange(ny) + 1, 2 * np.arange(nz) + 1)
        by = grid(2 * np.arange(nx) + 1, 2 * np.arange(ny + 1), 2 * np.arange(nz) + 1)
        bz = grid(2 * np.arange(nx) + 1, 2 * np.arange(ny) + 1, 2 * np.arange(nz + 1))
    else:
        pb = grid(2 * np.arange(nx + 1), 2 * np.arange(ny + 1), 2 * np.arange(nz + 1))
        cs = grid(2 * np.arange(nx) + 1, 2 * np.arange(ny) + 1, 2 * np.arange(nz) + 1)
        bx = grid(2 * np.arange(nx) + 1, 2 * np.arange(ny + 1), 2 * np.arange(nz + 1))
        by = grid(2 * np.arange(nx + 1), 2 * np.arange(ny) + 1, 2 * np.arange(nz + 1))
        bz = grid(2 * np.arange(nx + 1), 2 * np.arange(ny + 1), 2 * np.arange(nz) + 1)
    return {"Cs": cs, "Pb": pb, "Br": np.vstack([bx, by, bz])}


def _tilt_displacement(
    br: np.ndarray, parity: np.ndarray, a_pc: np.ndarray, tilt_deg: float
) -> np.ndarray:
    """Br displacements (Å) of the a⁻b⁺a⁻ pattern for Br sites ``br`` (doubled indices).

    Octahedron at Pb index p rotates by ω(p) = (s_x α, s_y β, s_z α), with anti-phase signs
    s_x = s_z = (−1)^(i+j+k) and in-phase s_y = (−1)^(i+k); a Br at p + d·ê moves by ω × d·ê.
    The checkerboard signs make the shared-corner displacements consistent.
    """
    ang = np.deg2rad(tilt_deg)
    # the octahedron on the "minus" side of each Br along its odd axis
    odd = (br - parity) % 2 == 1
    p = (br - parity) // 2  # floor: Pb index on the low side (integer division)
    sx = np.where((p.sum(axis=1) % 2) == 0, 1.0, -1.0)
    sy = np.where(((p[:, 0] + p[:, 2]) % 2) == 0, 1.0, -1.0)
    w = np.stack([sx * ang, sy * ang, sx * ang], axis=1)
    d = np.zeros_like(br, dtype=float)
    axis = np.argmax(odd, axis=1)
    d[np.arange(len(br)), axis] = 0.5 * a_pc[axis]
    return np.cross(w, d)


def _occupancy(sites: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    occ = np.zeros(shape, dtype=bool)
    occ[sites[:, 0], sites[:, 1], sites[:, 2]] = True
    return occ


def _neighbour_count(sites: np.ndarray, occ: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    cnt = np.zeros(len(sites), dtype=int)
    lim = np.array(occ.shape)
    for o in offsets:
        q = sites + o
        ok = np.all((q >= 0) & (q < lim), axis=1)
        cnt[ok] += occ[q[ok, 0], q[ok, 1], q[ok, 2]]
    return cnt


_CS_BR_OFFSETS = np.array(
    [(a, b, 0) for a in (-1, 1) for b in (-1, 1)]
    + [(a, 0, b) for a in (-1, 1) for b in (-1, 1)]
    + [(0, a, b) for a in (-1, 1) for b in (-1, 1)]
)
_PB_BR_OFFSETS = np.array([(1, 0, 0), (-1, 0, 0), (0, 1, 0), (0, -1, 0), (0, 0, 1), (0, 0, -1)])


def _neutralise(sites: dict[str, np.ndarray], termination: str, rng: np.random.Generator):
    """Make the ideal NC charge neutral at its least-coordinated surface sites.

    A truncated perovskite lattice carries +(3n+1) e (CsBr-terminated cube of n cells) or
    +(3n+2) e (PbBr2-terminated).  Real NCs are neutralised by their ligand shell; here we
    remove the Cs with the fewest Br neighbours (corners, then edges) for CsBr termination,
    or add apical Br on surface Pb (random face sites) for PbBr2 termination.
    """
    q = len(sites["Cs"]) + 2 * len(sites["Pb"]) - len(sites["Br"])
    if q == 0:
        return sites
    allsites = np.vstack(list(sites.values()))
    shape = tuple(int(v) for v in allsites.max(axis=0) + 3)
    out = dict(sites)
    if termination == "CsBr" and q > 0:
        occ_br = _occupancy(sites["Br"], shape)
        coord = _neighbour_count(sites["Cs"], occ_br, _CS_BR_OFFSETS)
        order = np.lexsort((rng.random(len(coord)), coord))
        keep = np.ones(len(coord), dtype=bool)
        keep[order[:q]] = False
        out["Cs"] = sites["Cs"][keep]
    elif q > 0:
        # shift everything by +1 so that outward apical sites have index >= 0
        for k in out:
            out[k] = out[k] + 1
        shape = tuple(s + 2 for s in shape)
        occ_br = _occupancy(out["Br"], shape)
        cand = (out["Pb"][:, None, :] + _PB_BR_OFFSETS[None, :, :]).reshape(-1, 3)
        free = ~occ_br[cand[:, 0], cand[:, 1], cand[:, 2]]
        cand = np.unique(cand[free], axis=0)
        if len(cand) < q:  # pragma: no cover - impossible for n >= 1
            raise DataError(f"cannot neutralise NC: {len(cand)} apical sites for charge {q}")
        pick = rng.choice(len(cand), size=q, replace=False)
        out["Br"] = np.vstack([out["Br"], cand[pick]])
    else:
        occ_pb = _occupancy(sites["Pb"], shape)
        coord = _neighbour_count(sites["Br"], occ_pb, _PB_BR_OFFSETS)
        order = np.lexsort((rng.random(len(coord)), coord))
        keep = np.ones(len(coord), dtype=bool)
        keep[order[:-q]] = False
        out["Br"] = sites["Br"][keep]
    return out


def nanocrystal(
    edge_A: float | Sequence[float] = 80.0,
    *,
    shape: str = "cube",
    phase: str = "cubic",
    termination: str = "CsBr",
    cd_fraction: float = 0.0,
    br_vacancy_fraction: float = 0.0,
    cs_vacancy_fraction: float = 0.0,
    pb_vacancy_fraction: float = 0.0,
    zone_axis: str = "001",
    mistilt_deg: float = 0.0,
    mistilt_azimuth_deg: float = 0.0,
    thickness_A: float | None = None,
    neutral: bool = True,
    rng: Any = None,
):
    """Build a CsPbBr3 / CsCd_xPb_{1-x}Br3 nanocrystal.

    Parameters
    ----------
    edge_A : float or (3,) floats
        Edge length(s), Å (along crystal x, y, z).  Rounded to whole pseudo-cubic cells;
        must be ≥ one cell.  It is the distance between the outermost cation planes (Cs for
        CsBr, Pb for PbBr2 termination); the few apical Br that neutralise a PbBr2-terminated
        crystal sit a/2 beyond them (``edge_A=40``: Pb planes 41.1 Å apart, atoms 47.0 Å).  A scalar with ``shape="cuboid"`` gives edges (e, 1.5e, e);
        with ``shape="platelet"`` a square plate of lateral size e and ``thickness_A``.
    shape : {"cube", "cuboid", "platelet"}
    phase : {"cubic", "orthorhombic"}
        Pm-3m (a = 5.87 Å) or Pnma (a⁻b⁺a⁻ tilts, pseudo-cubic 5.829 × 5.868 × 5.797 Å).
    termination : {"CsBr", "PbBr2"}
        Outer layer of every {100} facet.
    cd_fraction : float
        Fraction x of B sites occupied by Cd (independent Bernoulli draws, so the realised
        fraction is binomial around x); the lattice contracts by (1 − 0.08x).
    br_vacancy_fraction : float
        Fraction of Br sites left empty (uniform at random), each vacancy adds +1 e.
    cs_vacancy_fraction, pb_vacancy_fraction : float
        Fractions of Cs (A) and Pb/Cd (B) sites left empty (uniform at random, after the
        neutralisation); each adds −1 e / −2 e.  Columns of the projection lose these atoms
        (``n_Cs``, ``n_Pb`` of :func:`project_columns`), e.g. to test column counting.
    zone_axis : str
        Crystal direction put along the beam: "001", "011", "111" (and permutations).
    mistilt_deg, mistilt_azimuth_deg : float
        Small tilt away from the zone axis (degrees) about an in-plane axis at the azimuth.
    thickness_A : float, optional
        Platelet thickness along crystal z, Å (default 30 Å, 3 nm nanosheets).
    neutral : bool
        Remove the surface charge of the ideal truncated lattice (see Notes).
    rng : None, int or Generator
        Random source for Cd, vacancies and the choice of neutralising sites.

    Returns
    -------
    ase.Atoms
        Centred on the origin, beam along −z; per-atom arrays and ``info`` as in the module
        docstring.

    Notes
    -----
    Stoichiometry and charge: a CsBr-terminated cube of n cells is Cs_{(n+1)³} Pb_{n³}
    Br_{3n²(n+1)} with net charge +(3n+1) e; a PbBr2-terminated one is Cs_{n³} Pb_{(n+1)³}
    Br_{3n(n+1)²} with +(3n+2) e.  With ``neutral=True`` (default) the excess is removed by
    taking away the least-coordinated Cs (CsBr) or adding apical Br (PbBr2), mimicking the
    charge balance by the ligand shell.  ``atoms.info["charge_e"]`` gives the final charge
    (0 unless Br vacancies were requested).
    """
    refuse_text_numbers(locals())
    check_choice("shape", shape, _SHAPES)
    check_choice("phase", phase, _PHASES)
    check_choice("termination", termination, _TERMINATIONS)
    x = check_range("cd_fraction", cd_fraction, 0.0, 1.0)
    fv = check_range("br_vacancy_fraction", br_vacancy_fraction, 0.0, 1.0)
    fcs = check_range("cs_vacancy_fraction", cs_vacancy_fraction, 0.0, 1.0)
    fpb = check_range("pb_vacancy_fraction", pb_vacancy_fraction, 0.0, 1.0)
    rotation, mistilt = zone_rotation(
        zone_axis, mistilt_deg=mistilt_deg, mistilt_azimuth_deg=mistilt_azimuth_deg
    )
    gen = as_rng(rng)
    from ase import Atoms

    if phase == "cubic":
        a_pc = np.full(3, A_CUBIC_A)
    else:
        a, b, c = A_ORTHO_A
        a_pc = np.array([a / np.sqrt(2), b / 2.0, c / np.sqrt(2)])
    a_pc = a_pc * (1.0 - CD_VEGARD_SLOPE * x)
    n = _n_cells(edge_A, shape, thickness_A, a_pc)
    n_atoms = 5 * int(np.prod(np.asarray(n, dtype=float)))
    if n_atoms > MAX_ATOMS:
        raise ParameterError(
            f"`edge_A` = {edge_A} gives {np.asarray(n).tolist()} cells (~{n_atoms:.2g} atoms), "
            f"more than this builder handles ({MAX_ATOMS:.0e}); nanocrystals of up to "
            f"~{A_CUBIC_A * (MAX_ATOMS / 5) ** (1 / 3):.0f} Å edge are supported"
        )
    sites = _host_sites(n, termination)
    if neutral:
        sites = _neutralise(sites, termination, gen)
    if fv > 0:
        keep = gen.random(len(sites["Br"])) >= fv
        sites["Br"] = sites["Br"][keep]
    # Cs/Pb vacancies drawn after the Br ones (Br-only calls keep their random stream)
    for el, f in (("Cs", fcs), ("Pb", fpb)):
        if f > 0:
            keep = gen.random(len(sites[el])) >= f
            if not keep.any():
                raise ParameterError(
                    f"`{el.lower()}_vacancy_fraction` = {f} leaves no {el} site in the crystal"
                )
            sites[el] = sites[el][keep]
    # shift so that every index is >= 0 (PbBr2 neutralisation may have added -1 sites)
    lo = np.vstack(list(sites.values())).min(axis=0)
    lo = lo - (lo % 2)  # keep the parity of every sublattice
    sites = {k: v - lo for k, v in sites.items()}
    parity = sites["Pb"][0] % 2 if len(sites["Pb"]) else np.zeros(3, dtype=int)

    species = ["Cs"] * len(sites["Cs"]) + ["Pb"] * len(sites["Pb"]) + ["Br"] * len(sites["Br"])
    idx = np.vstack([sites["Cs"], sites["Pb"], sites["Br"]])
    sub = np.concatenate(
        [np.zeros(len(sites["Cs"])), np.ones(len(sites["Pb"])), np.full(len(sites["Br"]), 2)]
    ).astype(int)
    pos = 0.5 * idx * a_pc
    if phase == "orthorhombic":
        isbr = sub == 2
        pos[isbr] += _tilt_displacement(idx[isbr], parity, a_pc, OCTAHEDRAL_TILT_DEG)
    if x > 0:
        ispb = np.flatnonzero(sub == 1)
        cd = ispb[gen.random(len(ispb)) < x]
        for i in cd:
            species[i] = "Cd"
    centre = 0.5 * (pos.min(axis=0) + pos.max(axis=0))
    lab = (pos - centre) @ rotation.T
    atoms = Atoms(species, positions=lab)
    atoms.set_array("label", np.zeros(len(atoms), dtype=np.int64))
    atoms.set_array("cluster_id", np.full(len(atoms), -1, dtype=np.int64))
    atoms.set_array("sublattice", sub.astype(np.int64))
    atoms.set_array("site_index", idx.astype(np.int64))
    atoms.info.update(
        {
            "a_pc_A": tuple(float(v) for v in a_pc),
            "phase": phase,
            "shape": shape,
            "termination": termination,
            "zone_axis": str(zone_axis).strip("[]() ").replace(",", "").replace(" ", ""),
            "mistilt_deg": float(mistilt_deg),
            "mistilt_azimuth_deg": float(mistilt_azimuth_deg),
            "rotation": rotation,
            "mistilt_rotation": mistilt,
            "crystal_origin_A": tuple(float(v) for v in centre),
            "cd_fraction": x,
            "br_vacancy_fraction": fv,
            "cs_vacancy_fraction": fcs,
            "pb_vacancy_fraction": fpb,
            "n_cells": tuple(int(v) for v in n),
        }
    )
    atoms.info["charge_e"] = composition(atoms)["charge_e"]
    return atoms


def composition(atoms) -> dict[str, Any]:
    """Count ions and the net ionic charge of a (possibly degraded) NC.

    Host ions carry Cs⁺, Pb²⁺, Cd²⁺, Br⁻; atoms with ``label`` ≥ 1 (Pb⁰ adatoms and
    metallic clusters) are neutral.

    Returns
    -------
    dict
        ``n_Cs``, ``n_Pb`` (host Pb²⁺), ``n_Cd``, ``n_Br``, ``n_Pb0`` (adatoms + clusters),
        ``charge_e`` (int), ``cd_fraction`` (Cd / (Cd + host Pb), the realised x; NaN
        without B cations), ``formula`` (e.g. "Cs1000Pb729Br2430").
    """
    refuse_text_numbers(locals())
    sym = np.asarray(atoms.get_chemical_symbols())
    label = atoms.arrays.get("label", np.zeros(len(atoms), dtype=int))
    host = label == 0
    out = {
        "n_Cs": int(np.sum(host & (sym == "Cs"))),
        "n_Pb": int(np.sum(host & (sym == "Pb"))),
        "n_Cd": int(np.sum(host & (sym == "Cd"))),
        "n_Br": int(np.sum(host & (sym == "Br"))),
        "n_Pb0": int(np.sum(~host & (sym == "Pb"))),
    }
    unknown = set(sym[host]) - set(_CHARGE)
    if unknown:
        raise DataError(f"`atoms` holds host species without a known charge: {sorted(unknown)}")
    out["charge_e"] = int(out["n_Cs"] + 2 * out["n_Pb"] + 2 * out["n_Cd"] - out["n_Br"])
    # the realised x of CsCd_xPb_{1-x}Br3 (Cd is drawn at random on the B sites)
    b = out["n_Pb"] + out["n_Cd"]
    out["cd_fraction"] = out["n_Cd"] / b if b else float("nan")
    out["formula"] = "".join(
        f"{el}{out['n_' + el]}" for el in ("Cs", "Pb", "Cd", "Br") if out["n_" + el]
    ) + (f"+Pb0_{out['n_Pb0']}" if out["n_Pb0"] else "")
    return out


def _crystal_frame(atoms) -> tuple[np.ndarray, np.ndarray]:
    rot = np.asarray(atoms.info.get("rotation", np.eye(3)), dtype=float)
    return atoms.get_positions() @ rot, rot


def _fcc_points(centre: np.ndarray, radius: float) -> np.ndarray:
    a = A_PB_FCC_A
    m = int(np.ceil(radius / a)) + 2
    r = np.arange(-m, m + 1)
    g = np.stack(np.meshgrid(r, r, r, indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    basis = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    pts = (g[:, None, :] + basis[None, :, :]).reshape(-1, 3) * a
    return pts + centre


def add_pb_cluster(
    atoms,
    n_atoms: int,
    *,
    site: str = "corner",
    contact_A: float = 3.0,
    rng: Any = None,
):
    """Attach a compact, epitaxial fcc Pb cluster to the NC surface.

    The cluster is the ``n_atoms`` sites of an fcc Pb lattice (a = 4.95 Å, cube-on-cube
    with the host pseudo-cubic axes) closest to its centre, i.e. a near-spherical particle,
    placed outside the NC at a random corner, edge or {100} face and slid along the outward
    normal until its closest atom is ``contact_A`` from the host.  Pb⁰ atoms in a cluster are
    labelled 2 and get a new ``cluster_id``.

    Parameters
    ----------
    atoms : ase.Atoms
        A structure from :func:`nanocrystal` (not modified).
    n_atoms : int
        Number of Pb atoms in the cluster (≥ 1).
    site : {"corner", "edge", "face"}
        Where to attach it.
    contact_A : float
        Closest cluster–host distance, Å (≈ Pb–Br bond 2.9–3.0 Å).
    rng : None, int or Generator

    Returns
    -------
    ase.Atoms
        A new structure with the cluster appended.
    """
    refuse_text_numbers(locals())
    from ase import Atoms
    from scipy.spatial import cKDTree

    n = int(check_positive("n_atoms", n_atoms))
    if n != n_atoms:
        raise ParameterError(f"`n_atoms` must be a whole number, got {n_atoms!r}")
    check_choice("site", site, _SITES)
    check_positive("contact_A", contact_A)
    if len(atoms) == 0:
        raise DataError("`atoms` is empty: cannot attach a Pb cluster")
    gen = as_rng(rng)
    crys, rot = _crystal_frame(atoms)
    label = atoms.arrays.get("label", np.zeros(len(atoms), dtype=int))
    host = crys[label == 0] if np.any(label == 0) else crys
    lo, hi = host.min(axis=0), host.max(axis=0)
    mid, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    signs = gen.choice([-1.0, 1.0], size=3)
    if site == "corner":
        normal = signs.copy()
        anchor = mid + signs * half
    elif site == "edge":
        free = gen.integers(3)
        normal = signs.copy()
        normal[free] = 0.0
        anchor = mid + normal * half
        anchor[free] = mid[free] + gen.uniform(-0.4, 0.4) * 2 * half[free]
    else:
        ax = gen.integers(3)
        normal = np.zeros(3)
        normal[ax] = signs[ax]
        anchor = mid + normal * half
        for k in range(3):
            if k != ax:
                anchor[k] = mid[k] + gen.uniform(-0.3, 0.3) * 2 * half[k]
    normal = normal / np.linalg.norm(normal)
    r_cl = (3.0 * n / (4.0 * np.pi * 4.0 / A_PB_FCC_A**3)) ** (1.0 / 3.0)
    # fcc lattice registered on the nearest host site of the anchor (epitaxy)
    tree = cKDTree(host)
    _, i0 = tree.query(anchor)
    origin = host[i0]
    centre0 = anchor + normal * (r_cl + contact_A)
    pts = _fcc_points(origin, np.linalg.norm(centre0 - origin) + r_cl + 2 * A_PB_FCC_A)
    d = np.linalg.norm(pts - centre0, axis=1)
    order = np.lexsort((gen.random(len(d)) * 1e-9, np.round(d, 6)))
    cl = pts[order[:n]]
    cl = cl - cl.mean(axis=0) + centre0
    # slide along the normal: inwards until touching, keeping the closest distance >= contact
    step = 0.05
    shift = 0.0
    for _ in range(4000):
        dmin = tree.query(cl - normal * (shift + step))[0].min()
        if dmin < contact_A:
            break
        shift += step
    cl = cl - normal * shift
    new = Atoms(["Pb"] * n, positions=cl @ rot.T)
    out = atoms.copy()
    cid = int(out.arrays["cluster_id"].max()) + 1 if "cluster_id" in out.arrays else 0
    cid = max(cid, 0)
    arrays = {
        "label": np.full(n, 2, dtype=np.int64),
        "cluster_id": np.full(n, cid, dtype=np.int64),
        "sublattice": np.full(n, 3, dtype=np.int64),
        "site_index": np.full((n, 3), -1, dtype=np.int64),
    }
    for k, v in arrays.items():
        if k in out.arrays:
            new.set_array(k, v)
    for k in list(out.arrays):
        if k not in ("numbers", "positions") and k not in new.arrays:
            shape = out.arrays[k].shape[1:]
            new.set_array(k, np.zeros((n, *shape), dtype=out.arrays[k].dtype))
    out.extend(new)
    out.info["charge_e"] = composition(out)["charge_e"]
    return out
