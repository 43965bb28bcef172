"""Atom counting of CsPbBr3 [001] columns on frozen-phonon multislice images (abTEM, CPU).

The column counts of :func:`perovstem.atoms.count_library` rest on the SCS that
:func:`perovstem.atoms.fit_columns` measures.  This script checks that chain on images made
by a different model than the package's own fast simulator: abTEM frozen-phonon multislice
(Madsen & Susi, Open Res. Europe 1, 24 (2021)), with column thicknesses that vary across
the field, with and without vacuum in the field.

Structures (periodic boxes of ``BOX`` × ``BOX`` unit cells, built from
:func:`perovstem.atoms.fitted_library.slab_atoms`, the package's CsPbBr3 [001] slab):

* ``rough``: every unit cell of the box has its own thickness (cells), drawn at random
  from ``--tmin`` … ``--tmax``: a crystal with a terraced surface and *no vacuum* in the
  field (the field a user meets first: a thin film or the inside of a large crystal).  A
  cell of thickness ``t`` owns one Pb–Br column (``t`` Pb, ``t + 1`` Br), one Cs corner
  column (``t + 1`` Cs) and two Br edge columns (``t`` Br) — CsBr-terminated columns as in
  :func:`~perovstem.atoms.fitted_library.slab_atoms`.
* ``strip``: the same, with the last row of cells empty: a crystal strip with a vacuum
  gap in the field (about 6 Å between the outermost columns' Voronoi cells).

``--align top`` puts all columns' entrance surfaces at the same height (the exit surface is
terraced); ``bottom`` aligns the exit surfaces.

Imaging: 300 kV, 20 mrad convergence, no aberrations, annular detector 65–200 mrad, Lobato
potentials, a/2 slices, frozen phonons with the rms displacements of the SCS calibration
(``benchmarks/calibrate_scs_abtem.py``).  The whole periodic box is scanned at a step below
1/(2α/λ) (0.45 Å at 300 kV), so the image is band-limited and is Fourier-interpolated onto
the analysis pixel size exactly; the analysis image is a tiling of the box (periodic, so the
tiles join seamlessly).  Each configuration's image is the fraction of the incident probe
per scan position (already normalised to the incident beam); the analysis adds Poisson
noise at ``dose`` e⁻/Å² as a detector with gain 1 and offset 0 would record it, and a user
normalises it with :func:`perovstem.atoms.normalize_image`.

Steps::

    python benchmarks/check_counting_abtem.py --simulate --set tune --out /tmp/msc/sim
    python benchmarks/check_counting_abtem.py --analyse --sims /tmp/msc/sim

``--simulate`` runs abTEM on the CPU (a few minutes per structure and configuration set on
one core); ``--analyse`` (needs only perovstem) runs the counting paths and writes
``benchmarks/results/check_counting_abtem.json``.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
A = 5.87  # Å, cubic CsPbBr3
SIGMAS = {55: 0.20, 82: 0.14, 35: 0.20}  # Å per direction (calibration's host values)
SEMIANGLE, INNER, OUTER = 20.0, 65.0, 200.0
VOLTAGE_KV = 300.0
SAMPLING_A = 0.033  # potential sampling: 2/3 antialias limit > 200 mrad at 300 kV
SCAN_STEP_A = 0.45  # < 1/(2α/λ) = 0.4925 Å at 300 kV, 20 mrad
BOX = 3  # cells per box edge

# the sets: tune (looked at while developing) and fresh (evaluated once at the end)
SETS = {
    "tune": {"seed": 11, "tmin": 1, "tmax": 5, "align": "top", "configs": 3},
    "fresh": {"seed": 29, "tmin": 2, "tmax": 7, "align": "bottom", "configs": 3},
}


def cell_thickness(seed: int, tmin: int, tmax: int, kind: str) -> np.ndarray:
    """(BOX, BOX) thickness map in cells; −1 = empty cell (vacuum)."""
    rng = np.random.default_rng(seed)
    t = rng.integers(tmin, tmax + 1, size=(BOX, BOX))
    if kind == "strip":
        t[:, BOX - 1] = -1  # last row of cells (y) empty
    return t


def build(t_map: np.ndarray, align: str):
    """ase.Atoms of the periodic box and the truth table of its columns."""
    import pandas as pd
    from ase import Atoms

    from perovstem.atoms.fitted_library import slab_atoms

    tmax = int(t_map.max())
    full = slab_atoms(BOX, tmax)  # (BOX+1)² corners: drop x or y = BOX·a (periodic images)
    pos = full.positions.copy()
    num = full.numbers.copy()
    keep = (pos[:, 0] < BOX * A - 1e-6) & (pos[:, 1] < BOX * A - 1e-6)
    pos, num = pos[keep], num[keep]
    p = np.rint(pos[:, 0] / (0.5 * A)).astype(int)  # half-cell site indices
    q = np.rint(pos[:, 1] / (0.5 * A)).astype(int)
    t_site = t_map[p // 2, q // 2]
    # CsBr layers at z = m·a (m = 0 … t), PbBr2 layers at (m + ½)·a (m = 0 … t − 1)
    z2 = np.rint(pos[:, 2] / (0.5 * A)).astype(int)  # z in half cells
    keep = z2 <= 2 * t_site
    pos, num, t_site, p, q = pos[keep], num[keep], t_site[keep], p[keep], q[keep]
    if align == "bottom":
        pos[:, 2] += (tmax - t_site) * A
    pos[:, 2] += 1.0
    cell = (BOX * A, BOX * A, tmax * A + 2.0)
    at = Atoms(numbers=num, positions=pos, cell=cell, pbc=True)
    rows = []
    for pp in range(2 * BOX):
        for qq in range(2 * BOX):
            t = int(t_map[pp // 2, qq // 2])
            typ = {(0, 0): "Cs", (1, 1): "PbBr"}.get((pp % 2, qq % 2), "Br")
            n = {"Cs": t + 1, "PbBr": t, "Br": t}[typ] if t >= 0 else 0
            sel = (p == pp) & (q == qq)
            n_at = {"Cs": (num[sel] == 55).sum(), "PbBr": (num[sel] == 82).sum()}.get(
                typ, (num[sel] == 35).sum()
            )
            if t >= 0:
                assert n_at == n, (pp, qq, typ, n_at, n)
            rows.append({"x_A": pp * 0.5 * A, "y_A": qq * 0.5 * A, "type": typ, "n": n})
    return at, pd.DataFrame(rows)


def simulate(set_name: str, out: Path, kinds: tuple[str, ...]) -> None:
    import abtem

    abtem.config.set({"diagnostics.progress_bar": False, "device": "cpu", "fft": "numpy"})
    cfg = SETS[set_name]
    out.mkdir(parents=True, exist_ok=True)
    for kind in kinds:
        t_map = cell_thickness(cfg["seed"], cfg["tmin"], cfg["tmax"], kind)
        at, truth = build(t_map, cfg["align"])
        sig = np.array([SIGMAS[z] for z in at.numbers])
        cell = at.cell.lengths()
        gpts = int(np.ceil(cell[0] / SAMPLING_A / 16) * 16)
        ns = int(np.ceil(cell[0] / SCAN_STEP_A))
        imgs, secs = [], []
        for c in range(cfg["configs"]):
            t0 = time.perf_counter()
            fp = abtem.FrozenPhonons(at, num_configs=1, sigmas=sig, seed=cfg["seed"] * 100 + c)
            nsl = int(np.ceil(cell[2] / (0.5 * A)))
            pot = abtem.Potential(
                fp,
                gpts=gpts,
                slice_thickness=cell[2] / nsl,
                projection="infinite",
                parametrization="lobato",
            )
            probe = abtem.Probe(energy=VOLTAGE_KV * 1e3, semiangle_cutoff=SEMIANGLE)
            probe.grid.match(pot)
            scan = abtem.GridScan(start=(0, 0), end=tuple(cell[:2]), gpts=(ns, ns), endpoint=False)
            det = abtem.AnnularDetector(inner=INNER, outer=OUTER)
            m = probe.scan(pot, scan=scan, detectors=det).compute()
            imgs.append(np.asarray(m.array, np.float32).reshape(ns, ns))
            secs.append(time.perf_counter() - t0)
            print(f"{set_name}/{kind} config {c}: {secs[-1]:.0f} s", flush=True)
        np.savez_compressed(
            out / f"{set_name}_{kind}.npz",
            images=np.array(imgs),  # (config, x, y): abTEM's scan axes are (x, y)
            step_A=cell[0] / ns,
            box_A=cell[0],
            t_map=t_map,
            truth_x=truth["x_A"].to_numpy(),
            truth_y=truth["y_A"].to_numpy(),
            truth_type=truth["type"].to_numpy().astype(str),
            truth_n=truth["n"].to_numpy(),
            seconds=np.array(secs),
            info=json.dumps(
                {
                    "abtem": abtem.__version__,
                    "platform": platform.platform(),
                    "gpts": gpts,
                    "scan": ns,
                    **cfg,
                }
            ),
        )


# ---------------------------------------------------------------------------- analysis
TYPES = ("PbBr", "Br", "Cs")
# analysis conditions per set: pixel size (Å), doses (e⁻/Å²), noise seeds, tiles per edge
ANALYSIS = {
    "tune": {"dx": 0.25, "doses": (2e4,), "noise_seeds": (0, 1)},
    "fresh": {"dx": 0.30, "doses": (1e4, 5e4), "noise_seeds": (7,)},
}


def field_image(box_img: np.ndarray, box_A: float, dx_A: float, tiles: int):
    """Fourier-interpolate the periodic (x, y) box scan onto ~dx_A pixels, rows = y, tiled."""
    from scipy.signal import resample

    n = int(round(box_A / dx_A))
    img = resample(resample(np.asarray(box_img, float), n, axis=0), n, axis=1)
    return np.tile(img.T, (tiles, tiles)), box_A / n


def slab_bare_sim():
    """The abTEM ``slab_bare`` of tests/data (5 × 5 × 4 cells, CsBr on both surfaces)."""
    d = np.load(HERE.parent / "tests" / "data" / "multislice_pb_clusters.npz")
    img = d["slab_bare__mean"].astype(float)
    box = img.shape[0] * float(d["slab_bare__step_A"][0])
    rows = []
    for i in range(10):
        for j in range(10):
            typ = {(0, 0): "Cs", (1, 1): "PbBr"}.get((i % 2, j % 2), "Br")
            rows.append((i * 0.5 * A, j * 0.5 * A, typ, 5 if typ == "Cs" else 4))
    x, y, t, n = (np.array(v) for v in zip(*rows, strict=True))
    return {"mean": img, "box_A": box, "x": x, "y": y, "type": t, "n": n, "tiles": 2}


def load_sim(path: Path) -> dict:
    d = np.load(path)
    return {
        "mean": d["images"].astype(float).mean(0),
        "box_A": float(d["box_A"]),
        "x": d["truth_x"],
        "y": d["truth_y"],
        "type": d["truth_type"],
        "n": d["truth_n"],
        "tiles": 3,
        "configs": int(d["images"].shape[0]),
        "seconds": float(d["seconds"].sum()),
    }


def _match(df, sim, field_A: float, margin_A: float = 2.0):
    """Truth count and type of every fitted column (periodic match within 1 Å); columns
    within ``margin_A`` of the field border are left out."""
    box = sim["box_A"]

    def wrap(v):
        return (v + box / 2) % box - box / 2

    dxm = wrap(df["x_A"].to_numpy()[:, None] - sim["x"][None])
    dym = wrap(df["y_A"].to_numpy()[:, None] - sim["y"][None])
    d = np.hypot(dxm, dym)
    j = d.argmin(1)
    ok = d[np.arange(len(j)), j] < 1.0
    x, y = df["x_A"].to_numpy(), df["y_A"].to_numpy()
    inner = (x > margin_A) & (x < field_A - margin_A) & (y > margin_A) & (y < field_A - margin_A)
    keep = ok & inner
    return keep, sim["n"][j], sim["type"][j]


def _summary(scs: np.ndarray, typ: np.ndarray, n_true: np.ndarray, libs: dict) -> dict:
    """SCS ratio to scs_library per type, and count accuracy per library and type."""
    from perovstem.atoms import count_library
    from perovstem.simulate import scs_library

    out: dict = {"scs_ratio_vs_scs_library": {}}
    for t in TYPES:
        m = (typ == t) & (n_true > 0)
        ref = scs_library(t, 40)["scs_A2"].to_numpy()[n_true[m]]
        out["scs_ratio_vs_scs_library"][t] = round(float(np.mean(scs[m] / ref)), 3)
    # a Gaussian fit can end with a slightly negative volume on an empty site: count it as 0
    tab = __import__("pandas").DataFrame({"scs": np.clip(scs, 0, None), "type": typ})
    for name, lib in libs.items():
        c = count_library(tab, lib)["n_atoms"].to_numpy()
        err = c - n_true
        res = {}
        for t in (*TYPES, "all"):
            m = np.ones(len(err), bool) if t == "all" else typ == t
            res[t] = {
                "exact": round(float(np.mean(err[m] == 0)), 3),
                "within1": round(float(np.mean(np.abs(err[m]) <= 1)), 3),
                "bias": round(float(np.mean(err[m])), 2),
                "n": int(m.sum()),
            }
        out[f"counts[{name}]"] = res
    return out


def analyse_one(sim: dict, dx_A: float, dose: float, seed: int, methods: tuple[str, ...]):
    import warnings

    from perovstem._data import Image
    from perovstem.atoms import (
        cspbbr3_001_cell,
        find_columns,
        fit_columns,
        fitted_scs_library,
        normalize_image,
        voronoi_intensities,
    )
    from perovstem.simulate import scs_library

    img, dx = field_image(sim["mean"], sim["box_A"], dx_A, sim["tiles"])
    rng = np.random.default_rng(seed)
    counts = rng.poisson(np.clip(img, 0, None) * dose * dx * dx).astype(float)
    im = Image(counts, dx, dose_e_per_A2=dose, metadata={"gain": 1.0, "offset": 0.0})
    norm = normalize_image(im)
    cols = find_columns(im, cell=cspbbr3_001_cell())
    field_A = img.shape[0] * dx
    tab = {t: scs_library(t, 40) for t in TYPES}
    tab_v = {t: scs_library(t, 40, integration="voronoi") for t in TYPES}
    res: dict = {"pixel_size_A": round(dx, 4), "dose_e_per_A2": dose, "seed": seed}
    fitlib = None
    for method in methods:
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if method == "voronoi":
                # the sites of find_columns (lattice-refined): in a terraced field the free
                # fit moves weak columns towards strong neighbours (0.5-1.5 Å)
                fit = voronoi_intensities(norm, cols)
            else:
                bg = {"fit_const": "constant", "fit_bg0": 0.0}[method]
                fit = fit_columns(norm, cols, noise="poisson", background=bg)
        keep, n_true, t_true = _match(fit, sim, field_A)
        typ = fit["type"].to_numpy()
        libs = {"scs_library": tab}
        if method == "voronoi":
            libs["scs_library_voronoi"] = tab_v
        if method == "fit_const":
            if fitlib is None:
                kw = {"pixel_size_A": dx, "dose_e_per_A2": dose, "shape": img.shape}
                fitlib = {
                    "fitted_library": fitted_scs_library(20, **kw),
                    "fitted_library_novac": fitted_scs_library(20, vacuum=False, **kw),
                }
            libs.update(fitlib)
        r = _summary(fit["scs"].to_numpy()[keep], typ[keep], n_true[keep], libs)
        r["type_mismatch"] = int((typ[keep] != t_true[keep]).sum())
        r["n_columns"] = int(keep.sum())
        r["seconds"] = round(time.perf_counter() - t0, 1)
        res[method] = r
    return res


def analyse(sims: Path, sets: tuple[str, ...], methods: tuple[str, ...], out_json: Path) -> None:
    import os

    report: dict = {
        "machine": {"platform": platform.platform(), "loadavg_start": list(os.getloadavg())},
        "methods": list(methods),
        "results": {},
    }
    t_start = time.perf_counter()
    for set_name in sets:
        cond = ANALYSIS["tune" if set_name == "slab_bare" else set_name]
        kinds = ("slab_bare",) if set_name == "slab_bare" else ("rough", "strip")
        for kind in kinds:
            if kind != "slab_bare" and not (sims / f"{set_name}_{kind}.npz").exists():
                print(f"{set_name}/{kind}: no images in {sims}, skipped", flush=True)
                continue
            sim = (
                slab_bare_sim()
                if kind == "slab_bare"
                else load_sim(sims / f"{set_name}_{kind}.npz")
            )
            for dose in cond["doses"]:
                for seed in cond["noise_seeds"]:
                    key = f"{set_name}/{kind}/dose{dose:g}/seed{seed}"
                    r = analyse_one(sim, cond["dx"], dose, seed, methods)
                    report["results"][key] = r
                    print(key, json.dumps(r), flush=True)
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    report["seconds"] = round(time.perf_counter() - t_start, 1)
    out_json.parent.mkdir(parents=True, exist_ok=True)
    out_json.write_text(json.dumps(report, indent=1))


def export(sims: Path, path: Path) -> None:
    """Configuration-mean images and truth of the tune set, for tests/data (float32)."""
    out: dict = {}
    for kind in ("rough", "strip"):
        d = np.load(sims / f"tune_{kind}.npz")
        out[f"{kind}__mean"] = d["images"].mean(0).astype(np.float32)
        out[f"{kind}__box_A"] = d["box_A"]
        for k in ("x", "y", "type", "n"):
            out[f"{kind}__truth_{k}"] = d[f"truth_{k}"]
        out[f"{kind}__configs"] = d["images"].shape[0]
    np.savez_compressed(path, **out)
    print(f"wrote {path} ({path.stat().st_size} bytes)")


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--analyse", action="store_true")
    ap.add_argument("--export", type=Path, help="write the tune set's test fixture (npz)")
    ap.add_argument("--set", default="tune", choices=sorted(SETS))
    ap.add_argument("--kinds", default="rough,strip")
    ap.add_argument("--out", type=Path, default=Path("/tmp/msc/sim"))
    ap.add_argument("--sims", type=Path, default=Path("/tmp/msc/sim"))
    ap.add_argument("--sets", default="slab_bare,tune")
    ap.add_argument("--methods", default="fit_const,fit_bg0,voronoi")
    ap.add_argument("--json", type=Path, default=HERE / "results" / "check_counting_abtem.json")
    args = ap.parse_args(argv)
    if args.simulate:
        simulate(args.set, args.out, tuple(args.kinds.split(",")))
    if args.export:
        export(args.sims, args.export)
    if args.analyse:
        analyse(args.sims, tuple(args.sets.split(",")), tuple(args.methods.split(",")), args.json)


if __name__ == "__main__":
    sys.exit(main())
