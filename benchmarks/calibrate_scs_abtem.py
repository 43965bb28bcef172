"""Calibrate perovstem's fast HAADF model against abTEM frozen-phonon multislice.

Writes the shipped table ``src/perovstem/simulate/data/scs_abtem.csv`` (raw abTEM numbers:
probe-integrated scattering cross-sections per column, Voronoi integration) and
``benchmarks/results/calibrate_scs_abtem.json`` (run conditions, timing, and the check of the
fast model against abTEM on the same cells).

Needs the optional ``sim`` extra (``pip install 'perovstem[sim]'``, i.e. abtem >= 1.0).
It is a research script, not package code; it is not run by the tests.

What is simulated (for each beam energy, 20 mrad convergence, HAADF 65–200 mrad, no
aberrations, frozen phonons with the rms displacements in ``SIGMAS``):

* ``slab``: periodic [001] slabs of cubic CsPbBr3 and of the hypothetical fully substituted
  CsCdBr3 (same a = 5.87 Å, so only the species differ), ``--ncells`` cells thick, exit wave
  after every unit cell -> SCS(N) of the Pb–Br (Cd–Br), Cs and Br columns.  Only the
  irreducible 1/8 of the projected cell (p4mm) is scanned; the full cell is unfolded by
  symmetry before the Voronoi integration (ties on cell borders are shared).
* ``pb``: periodic fcc Pb (a = 4.95 Å) along [001]: four equivalent columns per cell at
  2.475 Å spacing, one atom per 4.95 Å in each column -> SCS(N) of a metallic Pb column.
* ``atoms``: isolated Pb, Cs, Br, Cd atoms (single-atom SCS, integrated over the whole box).

Typical run (about 15 min on 2 CPU cores)::

    python benchmarks/calibrate_scs_abtem.py --voltages 300 200 --configs 4
    python benchmarks/calibrate_scs_abtem.py --validate-only   # fast-model check, no abTEM

References: Madsen & Susi, Open Res. Europe 1, 24 (2021) (abTEM); E et al.,
Ultramicroscopy 133, 109 (2013) (probe-integrated cross-section); notes §3.3.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CSV = ROOT / "src" / "perovstem" / "simulate" / "data" / "scs_abtem.csv"
JSON = HERE / "results" / "calibrate_scs_abtem.json"

A_CUBIC = 5.87
A_PB = 4.95
SIGMAS = {"Cs": 0.20, "Pb": 0.14, "Br": 0.20, "Cd": 0.14}  # Å per direction, host ions
SIGMA_PB_METAL = 0.16  # Å, fcc Pb at room temperature (B ≈ 2 Å^2)
SEMIANGLE = 20.0
INNER, OUTER = 65.0, 200.0


def _good_gpts(n: int) -> int:
    """Smallest m >= n whose prime factors are 2, 3 and 5 (fast FFTs)."""
    m = n
    while True:
        k = m
        for p in (2, 3, 5):
            while k % p == 0:
                k //= p
        if k == 1:
            return m
        m += 1


def _sampling_for(voltage_kV: float, outer_mrad: float) -> float:
    """Real-space sampling so that the 2/3 antialiasing aperture reaches ``outer_mrad``."""
    v = voltage_kV * 1e3
    lam = 12.264259 / np.sqrt(v * (1.0 + 0.978476e-6 * v))  # relativistic, Å
    return 0.97 * (2.0 / 3.0) * lam / (2.0 * outer_mrad * 1e-3)


def perovskite_cell(b_site: str = "Pb"):
    from ase import Atoms

    # atoms at z = a/4 and 3a/4: centred in the a/2-thick slices
    frac = np.array(
        [[0, 0, 0.25], [0.5, 0, 0.25], [0, 0.5, 0.25], [0, 0, 0.75], [0.5, 0.5, 0.75]], float
    )
    return Atoms(f"{b_site}Br3Cs", scaled_positions=frac, cell=[A_CUBIC] * 3, pbc=True)


def pb_cell():
    from ase import Atoms

    frac = np.array([[0, 0, 0.25], [0.5, 0.5, 0.25], [0.5, 0, 0.75], [0, 0.5, 0.75]], float)
    return Atoms("Pb4", scaled_positions=frac, cell=[A_PB] * 3, pbc=True)


def _triangle(k: int) -> np.ndarray:
    """Indices (i, j), 0 <= j <= i <= k, of the irreducible wedge of a p4mm cell."""
    return np.array([(i, j) for i in range(k + 1) for j in range(i + 1)])


def _unfold(values: np.ndarray, n_div: int) -> np.ndarray:
    """(..., n_tri) wedge values -> (..., n_div, n_div) full periodic cell grid."""
    k = n_div // 2
    tri = _triangle(k)
    lookup = {(int(i), int(j)): t for t, (i, j) in enumerate(tri)}
    idx = np.empty((n_div, n_div), dtype=int)
    for i in range(n_div):
        for j in range(n_div):
            fi, fj = min(i, n_div - i), min(j, n_div - j)
            idx[i, j] = lookup[(max(fi, fj), min(fi, fj))]
    return values[..., idx]


def voronoi_weights(n_div: int, cell_A: float, sites: list[tuple[float, float]]) -> np.ndarray:
    """(n_sites, n_div, n_div) share of each scan point in each column's Voronoi cell."""
    g = np.arange(n_div) * cell_A / n_div
    X, Y = np.meshgrid(g, g, indexing="ij")
    d2 = np.full((len(sites), n_div, n_div), np.inf)
    for s, (sx, sy) in enumerate(sites):
        for ox in (-cell_A, 0.0, cell_A):
            for oy in (-cell_A, 0.0, cell_A):
                d2[s] = np.minimum(d2[s], (X - sx - ox) ** 2 + (Y - sy - oy) ** 2)
    w = (d2 <= d2.min(axis=0) + 1e-9).astype(float)
    return w / w.sum(axis=0)


def run_periodic(cell, n_cells, cell_A, n_div, voltage_kV, configs, lateral, sigmas, seed=1):
    """Scan the irreducible wedge of one projected cell; return (exit, n_div, n_div) image."""
    import abtem

    slab = cell.repeat((lateral, lateral, n_cells))
    sampling = _sampling_for(voltage_kV, OUTER)
    gpts = _good_gpts(int(np.ceil(lateral * cell_A / sampling)))
    atoms_in = (
        abtem.FrozenPhonons(slab, num_configs=configs, sigmas=sigmas, seed=seed)
        if configs > 1
        else slab
    )
    pot = abtem.Potential(
        atoms_in,
        gpts=gpts,
        slice_thickness=(cell_A / 2,) * (2 * n_cells),
        projection="infinite",
        exit_planes=2,
        parametrization="lobato",
    )
    probe = abtem.Probe(energy=voltage_kV * 1e3, semiangle_cutoff=SEMIANGLE)
    probe.grid.match(pot)
    x0 = cell_A * (lateral // 2)
    step = cell_A / n_div
    pos = x0 + _triangle(n_div // 2) * step
    scan = abtem.CustomScan(pos)
    det = abtem.AnnularDetector(inner=INNER, outer=OUTER)
    t0 = time.perf_counter()
    meas = probe.scan(pot, scan=scan, detectors=det).compute()
    seconds = time.perf_counter() - t0
    arr = np.asarray(meas.array, dtype=float)
    while arr.ndim > 2:  # ensemble axis if not reduced
        arr = arr.mean(axis=0)
    exit_t = np.asarray(pot.exit_thicknesses, dtype=float)
    full = _unfold(arr, n_div)
    info = {
        "gpts": int(gpts),
        "sampling_A": float(lateral * cell_A / gpts),
        "scan_step_A": step,
        "scan_positions": len(pos),
        "seconds": seconds,
        "seconds_per_position_per_config": seconds / (len(pos) * max(configs, 1)),
    }
    return exit_t, full, info


def run_atoms(voltage_kV: float) -> dict[str, float]:
    import abtem
    from ase import Atoms

    box = 12.0
    sampling = _sampling_for(voltage_kV, OUTER)
    gpts = _good_gpts(int(np.ceil(box / sampling)))
    out = {}
    for el in ("Pb", "Cs", "Br", "Cd"):
        atoms = Atoms(el, positions=[[box / 2, box / 2, 1.0]], cell=[box, box, 2.0], pbc=True)
        pot = abtem.Potential(
            atoms, gpts=gpts, slice_thickness=2.0, projection="infinite", parametrization="lobato"
        )
        probe = abtem.Probe(energy=voltage_kV * 1e3, semiangle_cutoff=SEMIANGLE)
        probe.grid.match(pot)
        scan = abtem.GridScan(start=(0, 0), end=(box, box), sampling=0.2)
        det = abtem.AnnularDetector(inner=INNER, outer=OUTER)
        m = probe.scan(pot, scan=scan, detectors=det).compute()
        out[el] = float(np.asarray(m.array).sum() * 0.2 * 0.2)
    return out


def calibrate(args) -> tuple[list[dict], dict]:
    import abtem

    abtem.config.set({"diagnostics.progress_bar": False})
    rows: list[dict] = []
    runs: dict = {"abtem_version": abtem.__version__}
    pk_sites = [(0.0, 0.0), (A_CUBIC / 2, 0.0), (0.0, A_CUBIC / 2), (A_CUBIC / 2, A_CUBIC / 2)]
    for kv in args.voltages:
        base = {
            "voltage_kV": kv,
            "semiangle_mrad": SEMIANGLE,
            "inner_mrad": INNER,
            "outer_mrad": OUTER,
        }
        t0 = time.perf_counter()
        atoms = run_atoms(kv)
        runs[f"atoms_{kv:g}kV_seconds"] = time.perf_counter() - t0
        for el, v in atoms.items():
            rows.append(
                {
                    **base,
                    "column_type": f"atom_{el}",
                    "n": 1,
                    "repeat_A": 0.0,
                    "scs_voronoi_A2": v,
                    "configs": 1,
                }
            )
        print(f"{kv} kV atoms {atoms}", flush=True)
        for bsite, name in (("Pb", "PbBr"), ("Cd", "CdBr")):
            sig = dict(SIGMAS)
            exit_t, full, info = run_periodic(
                perovskite_cell(bsite),
                args.ncells,
                A_CUBIC,
                args.ndiv,
                kv,
                args.configs,
                args.lateral,
                sig,
            )
            w = voronoi_weights(args.ndiv, A_CUBIC, pk_sites)
            step_area = (A_CUBIC / args.ndiv) ** 2
            cols = np.einsum("tij,sij->ts", full, w) * step_area  # (exit, site)
            per = {name: cols[:, 0], "Br": 0.5 * (cols[:, 1] + cols[:, 2]), "Cs": cols[:, 3]}
            runs[f"{name}_{kv:g}kV"] = info
            print(f"{kv} kV {name}: {info}", flush=True)
            for ctype, vals in per.items():
                if bsite == "Cd" and ctype != "CdBr":
                    continue  # Cs and Br columns come from the CsPbBr3 run
                for t, v in zip(exit_t, vals, strict=True):
                    n = int(round(t / A_CUBIC))
                    if n == 0:
                        continue
                    rows.append(
                        {
                            **base,
                            "column_type": ctype,
                            "n": n,
                            "repeat_A": A_CUBIC,
                            "scs_voronoi_A2": float(v),
                            "configs": args.configs,
                        }
                    )
        exit_t, full, info = run_periodic(
            pb_cell(),
            args.ncells_pb,
            A_PB,
            args.ndiv_pb,
            kv,
            args.configs,
            args.lateral + 1,
            {"Pb": SIGMA_PB_METAL},
        )
        # four equivalent columns per projected fcc cell
        vals = full.sum(axis=(1, 2)) * (A_PB / args.ndiv_pb) ** 2 / 4.0
        runs[f"Pb_{kv:g}kV"] = info
        print(f"{kv} kV Pb: {info}", flush=True)
        for t, v in zip(exit_t, vals, strict=True):
            n = int(round(t / A_PB))
            if n == 0:
                continue
            rows.append(
                {
                    **base,
                    "column_type": "Pb",
                    "n": n,
                    "repeat_A": A_PB,
                    "scs_voronoi_A2": float(v),
                    "configs": args.configs,
                }
            )
    return rows, runs


def write_csv(rows: list[dict], runs: dict, args) -> None:
    header = [
        "# perovstem SCS calibration table: abTEM frozen-phonon multislice (Voronoi-integrated",
        "# probe-integrated scattering cross-sections, Å^2 = detected fraction x Å^2).",
        f"# generated by benchmarks/calibrate_scs_abtem.py, abTEM {runs.get('abtem_version')},",
        f"# {time.strftime('%Y-%m-%d')}, {args.configs} frozen-phonon configurations, seed 1.",
        "# Conditions: 20 mrad semi-angle, no aberrations, HAADF 65-200 mrad, Lobato potentials,",
        "# infinite projection, one slice per atomic plane; periodic slabs along [001].",
        "# PbBr/Cs/Br: cubic CsPbBr3 a = 5.87 A; CdBr: CsCdBr3 with the same a (species only);",
        "# Pb: fcc Pb a = 4.95 A, column = one atom per 4.95 A, columns 2.475 A apart;",
        "# atom_X: isolated atom, integrated over a 12 A box.  rms displacements per direction:",
        f"# {SIGMAS} (host), Pb metal {SIGMA_PB_METAL} A.  n = repeats (unit cells) per column.",
        "# scs_voronoi_A2 includes probe-tail cross-talk of the periodic neighbours; perovstem",
        "# deconvolves it with its own probe model at load time (simulate/scs.py).",
    ]
    cols = [
        "voltage_kV",
        "semiangle_mrad",
        "inner_mrad",
        "outer_mrad",
        "column_type",
        "n",
        "repeat_A",
        "scs_voronoi_A2",
        "configs",
    ]
    CSV.parent.mkdir(parents=True, exist_ok=True)
    tmp = CSV.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write("\n".join(header) + "\n")
        fh.write(",".join(cols) + "\n")
        for r in rows:
            fh.write(
                ",".join(f"{r[c]:.6g}" if isinstance(r[c], float) else str(r[c]) for c in cols)
                + "\n"
            )
    os.replace(tmp, CSV)


def validate() -> dict:
    """Fast model vs abTEM on the same periodic cells (same Voronoi estimator on both)."""
    from perovstem.simulate.scs import fast_model_voronoi, load_table

    tab = load_table()
    out: dict = {}
    worst = 0.0
    for kv in sorted(tab["voltage_kV"].unique()):
        t = tab[tab["voltage_kV"] == kv]
        res = {}
        for ctype in ("PbBr", "Cs", "Br", "CdBr", "Pb"):
            sub = t[t["column_type"] == ctype].sort_values("n")
            if sub.empty:
                continue
            ref = sub["scs_voronoi_A2"].to_numpy()
            fast = fast_model_voronoi(ctype, sub["n"].to_numpy(), voltage_kV=kv)
            rel = fast / ref - 1.0
            use = sub["n"].to_numpy() >= 2
            worst = max(worst, float(np.abs(rel[use]).max()))
            res[ctype] = {
                "n": sub["n"].tolist(),
                "abtem_voronoi_A2": ref.round(6).tolist(),
                "fast_voronoi_A2": np.round(fast, 6).tolist(),
                "rel_diff": np.round(rel, 4).tolist(),
            }
        pb = t[t["column_type"] == "PbBr"].set_index("n")["scs_voronoi_A2"]
        for other in ("Cs", "Br"):
            o = t[t["column_type"] == other].set_index("n")["scs_voronoi_A2"]
            r = (o / pb).dropna()
            res[f"{other}/PbBr_ratio_3_to_11_cells"] = [
                float(r.loc[3:11].min()),
                float(r.loc[3:11].max()),
            ]
        out[f"{kv:g}kV"] = res
    out["max_abs_rel_diff_n_ge_2"] = worst
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voltages", type=float, nargs="+", default=[300.0, 200.0])
    p.add_argument("--configs", type=int, default=4)
    p.add_argument("--ncells", type=int, default=16, help="perovskite cells (5.87 A)")
    p.add_argument("--ncells-pb", type=int, default=20, help="fcc Pb cells (4.95 A)")
    p.add_argument("--ndiv", type=int, default=20, help="scan points per 5.87 A cell edge")
    p.add_argument("--ndiv-pb", type=int, default=10, help="scan points per 4.95 A cell edge")
    p.add_argument("--lateral", type=int, default=3, help="lateral repeats of the cell")
    p.add_argument("--validate-only", action="store_true")
    args = p.parse_args(argv)
    record: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
        },
    }
    if not args.validate_only:
        t0 = time.perf_counter()
        rows, runs = calibrate(args)
        runs["total_seconds"] = time.perf_counter() - t0
        write_csv(rows, runs, args)
        record["abtem_runs"] = runs
        record["settings"] = {k: v for k, v in vars(args).items() if k != "validate_only"}
    elif JSON.exists():
        old = json.loads(JSON.read_text())
        record.update({k: v for k, v in old.items() if k in ("abtem_runs", "settings")})
    JSON.parent.mkdir(parents=True, exist_ok=True)
    JSON.write_text(json.dumps(record, indent=1))
    record["validation"] = validate()
    JSON.write_text(json.dumps(record, indent=1))
    print(json.dumps(record["validation"], indent=1)[:4000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
