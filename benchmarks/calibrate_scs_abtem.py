"""Calibrate perovstem's fast HAADF model against abTEM frozen-phonon multislice.

Writes the shipped table ``src/perovstem/simulate/data/scs_abtem.csv`` (raw abTEM numbers:
probe-integrated scattering cross-sections per column, Voronoi integration) and
``benchmarks/results/calibrate_scs_abtem.json`` (run conditions, timing, per-configuration
values and standard errors, diagnostics, and the check of the fast model against abTEM on the
same cells).

Needs the optional ``sim`` extra (``pip install 'perovstem[sim]'``, i.e. abtem >= 1.0); a GPU
with CuPy is used when ``--device gpu`` (default ``auto``).  It is a research script, not
package code; it is not run by the tests.

What is simulated (for each beam energy, 20 mrad convergence, no aberrations, annular
detectors 65–200 mrad (shipped) and 65–131 mrad (JSON only, for the notes' first table),
frozen phonons = independent Gaussian displacements with the rms per direction ``SIGMAS``):

* ``PbBr`` / ``CdBr``: periodic [001] slabs (``--lateral``² cells, ``--ncells`` thick) of
  cubic CsPbBr3 and of the hypothetical fully substituted CsCdBr3 (same a = 5.87 Å), exit wave
  after every cell.  The *whole* periodic supercell is scanned at a step below the Nyquist
  step of the HAADF signal (it is band-limited to 2α/λ in the probe position: a/26 at 300 kV,
  a/22 at 200 kV); each configuration's image is folded onto one cell (mean of the
  ``lateral``² columns of each type) and Fourier-interpolated (exact for a band-limited
  periodic signal) onto an ``NF`` × ``NF`` grid, on which the square Voronoi cells (side a/2)
  of the Pb–Br, Br, Br and Cs columns are summed.  Br is the mean of its two columns.
* ``Pb``: periodic fcc Pb (a = 4.95 Å) along [001]: all columns (2.475 Å apart) are
  equivalent, so the Voronoi SCS per column is the supercell total divided by the number of
  columns; the total is exact for any scan step below 1/(2α/λ) (a/11 at 300 kV, a/9 at 200 kV).
* ``atoms``: isolated Pb, Cs, Br, Cd atoms (single-atom SCS, integrated over a 12 Å box).
* diagnostics (300 kV): the notes' own run re-done (``shared/bench/abtem_bench.py``: 4×4
  cells, Δx = 0.03 Å, abTEM ``FrozenPhonons`` seed 1, one cell scanned at a/20, argmin
  Voronoi) with 4 and with many configurations, and static lattices for the box size.

Runs behind the shipped table and ``benchmarks/results/calibrate_scs_abtem.json`` (one
NVIDIA H200; the three records were merged into the JSON, then validated on the CPU)::

    python benchmarks/calibrate_scs_abtem.py --device gpu --outdir /tmp/cal --budget 330 \
        --hard-limit 420 --no-validate                               # table, 330 s
    python benchmarks/calibrate_scs_abtem.py --device gpu --voltages 300 --parts PbBr \
        --lateral 4 --min-configs 24 --budget 105 --no-diagnostics --no-validate \
        --outdir /tmp/lat4                                           # box size (also 5)
    python benchmarks/calibrate_scs_abtem.py --device gpu --notes-spread 12 \
        --outdir /tmp/spread                                         # notes' procedure x12
    python benchmarks/calibrate_scs_abtem.py --validate-only --old-csv OLD.csv  # no abTEM

The time budget is shared between the parts; every part runs at least ``--min-configs``
configurations (scanning fewer cells per configuration if the device is slow).

References: Madsen & Susi, Open Res. Europe 1, 24 (2021) (abTEM); E et al.,
Ultramicroscopy 133, 109 (2013) (probe-integrated cross-section); Loane, Xu & Silcox,
Acta Cryst. A 47, 267 (1991) (frozen phonons); notes/physics_simulation.md §3.3–§4.
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
OUTER_NARROW = 131.0  # the notes' first detector (65–131 mrad)
NF = 62  # Voronoi grid per cell edge (≡ 2 mod 4: square cells of 31² points, no ties)
ND_SCAN = {300.0: 26, 200.0: 22}  # scan points per 5.87 Å (Nyquist of 2α/λ + soft edge)
ND_SCAN_PB = {300.0: 11, 200.0: 9}  # scan points per 4.95 Å (total exact: step < λ/2α)
NCELLS = {300.0: 14, 200.0: 12}
NCELLS_PB = {300.0: 16, 200.0: 14}
PARTS = ("PbBr", "CdBr", "Pb", "atoms")
WEIGHTS = {"PbBr": 0.26, "CdBr": 0.13, "Pb": 0.10, "atoms": 0.01}  # per voltage

T_START = time.perf_counter()


def log(msg: str) -> None:
    print(f"[{time.perf_counter() - T_START:7.1f} s] {msg}", flush=True)


def wavelength_A(voltage_kV: float) -> float:
    v = voltage_kV * 1e3
    return 12.264259 / np.sqrt(v * (1.0 + 0.978476e-6 * v))  # relativistic


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
    return 0.97 * (2.0 / 3.0) * wavelength_A(voltage_kV) / (2.0 * outer_mrad * 1e-3)


def perovskite_cell(b_site: str = "Pb"):
    from ase import Atoms

    # atoms at z = a/4 and 3a/4: centred in the a/2-thick slices (as the notes' script)
    frac = np.array(
        [[0, 0, 0.25], [0.5, 0, 0.25], [0, 0.5, 0.25], [0, 0, 0.75], [0.5, 0.5, 0.75]], float
    )
    return Atoms(f"{b_site}Br3Cs", scaled_positions=frac, cell=[A_CUBIC] * 3, pbc=True)


def pb_cell():
    from ase import Atoms

    frac = np.array([[0, 0, 0.25], [0.5, 0.5, 0.25], [0.5, 0, 0.75], [0, 0.5, 0.75]], float)
    return Atoms("Pb4", scaled_positions=frac, cell=[A_PB] * 3, pbc=True)


# ---------------------------------------------------------------------------- integration
def fourier_resample(img: np.ndarray, m_out: int) -> np.ndarray:
    """Periodic band-limited interpolation of the last two axes onto ``m_out`` points."""
    from scipy.signal import resample

    out = resample(img, m_out, axis=-1)
    return resample(out, m_out, axis=-2)


def fold_cells(img: np.ndarray, k: int) -> np.ndarray:
    """(..., k·nd, k·nd) scan of k×k cells -> (..., nd, nd) mean over the cells."""
    *lead, mx, my = img.shape
    nd = mx // k
    return img.reshape(*lead, k, nd, k, nd).mean(axis=(-4, -2))


def square_voronoi_sums(cell_img: np.ndarray, cell_A: float) -> np.ndarray:
    """Voronoi sums (Å²) of the 4 sites (0,0), (a/2,0), (0,a/2), (a/2,a/2) of a cell image.

    ``cell_img`` (..., n, n) is sampled at x_j = j·a/n (periodic, n ≡ 2 mod 4 so that no
    sample lies on a cell border).  The Voronoi cells of this square site lattice are squares
    of side a/2.
    """
    n = cell_img.shape[-1]
    if n % 4 != 2:
        raise ValueError(f"grid {n} must be 2 mod 4")
    j = np.arange(n)
    near0 = (np.minimum(j, n - j) < n / 4).astype(float)  # |x| < a/4 (periodic)
    nearh = 1.0 - near0  # |x - a/2| < a/4
    out = []
    for wx, wy in ((near0, near0), (nearh, near0), (near0, nearh), (nearh, nearh)):
        out.append(np.einsum("...ij,i,j->...", cell_img, wx, wy))
    return np.stack(out, axis=-1) * (cell_A / n) ** 2


def argmin_voronoi_sums(
    cell_img: np.ndarray, cell_A: float, gx=None, gy=None, tol: float = 1e-9
) -> np.ndarray:
    """The notes' estimator (``abtem_bench.assign_to_columns``): nearest site by argmin, so
    scan points on a Voronoi border go to the first site in the order Pb–Br, Br, Br, Cs.

    ``tol`` > 0 makes that tie rule explicit; ``tol=0`` with the scan's own coordinates
    ``gx``, ``gy`` repeats the notes' floating-point tie breaking bit for bit.
    """
    n = cell_img.shape[-1]
    g = np.arange(n) * cell_A / n
    gx = g if gx is None else np.asarray(gx, float)
    gy = g if gy is None else np.asarray(gy, float)
    X, Y = np.meshgrid(gx, gy, indexing="ij")
    sites = [(0.0, 0.0), (cell_A / 2, 0.0), (0.0, cell_A / 2), (cell_A / 2, cell_A / 2)]
    d2 = np.full((len(sites), n, n), np.inf)
    for s, (sx, sy) in enumerate(sites):
        for ox in (-cell_A, 0.0, cell_A):
            for oy in (-cell_A, 0.0, cell_A):
                d2[s] = np.minimum(d2[s], (X - sx - ox) ** 2 + (Y - sy - oy) ** 2)
    lab = (d2 <= d2.min(axis=0) + tol).argmax(axis=0) if tol > 0 else d2.argmin(axis=0)
    w = np.stack([(lab == s).astype(float) for s in range(len(sites))])
    return np.einsum("...ij,sij->...s", cell_img, w) * (cell_A / n) ** 2


def shared_voronoi_sums(cell_img: np.ndarray, cell_A: float) -> np.ndarray:
    """Voronoi sums on the scan grid itself, border points shared (the old script)."""
    n = cell_img.shape[-1]
    g = np.arange(n) * cell_A / n
    X, Y = np.meshgrid(g, g, indexing="ij")
    sites = [(0.0, 0.0), (cell_A / 2, 0.0), (0.0, cell_A / 2), (cell_A / 2, cell_A / 2)]
    d2 = np.full((len(sites), n, n), np.inf)
    for s, (sx, sy) in enumerate(sites):
        for ox in (-cell_A, 0.0, cell_A):
            for oy in (-cell_A, 0.0, cell_A):
                d2[s] = np.minimum(d2[s], (X - sx - ox) ** 2 + (Y - sy - oy) ** 2)
    w = (d2 <= d2.min(axis=0) + 1e-9).astype(float)
    w /= w.sum(axis=0)
    return np.einsum("...ij,sij->...s", cell_img, w) * (cell_A / n) ** 2


# ---------------------------------------------------------------------------- abTEM runs
class Budget:
    """Shares the wall-clock budget between the parts (unused time flows forward)."""

    def __init__(self, total_s: float, weights: dict[str, float]):
        self.t0 = time.perf_counter()
        self.total = total_s
        self.left_weights = dict(weights)

    def left(self) -> float:
        return self.total - (time.perf_counter() - self.t0)

    def share(self, key: str) -> float:
        w = self.left_weights.pop(key, 0.0)
        tot = w + sum(self.left_weights.values())
        return max(self.left(), 0.0) * (w / tot if tot > 0 else 1.0)


def _to_numpy(meas) -> np.ndarray:
    if hasattr(meas, "to_cpu"):
        meas = meas.to_cpu()
    arr = meas.array
    if hasattr(arr, "get"):
        arr = arr.get()
    return np.asarray(arr, dtype=float)


def _multislice(cfg, gpts, n_slices, slice_A, voltage_kV, scan, detectors, device):
    import abtem

    pot = abtem.Potential(
        cfg,
        gpts=gpts,
        slice_thickness=(slice_A,) * n_slices,
        projection="infinite",
        exit_planes=2,
        parametrization="lobato",
        device=device,
    )
    probe = abtem.Probe(energy=voltage_kV * 1e3, semiangle_cutoff=SEMIANGLE, device=device)
    probe.grid.match(pot)
    meas = probe.scan(pot, scan=scan, detectors=detectors).compute()
    if not isinstance(meas, list):
        meas = [meas]
    exit_t = np.atleast_1d(np.asarray(pot.exit_thicknesses, dtype=float))
    arrs = [_to_numpy(m).reshape((-1,) + tuple(scan.gpts)) for m in meas]
    return arrs, exit_t


def run_periodic(
    kind: str,
    voltage_kV: float,
    *,
    lateral: int,
    n_cells: int,
    min_configs: int,
    max_configs: int,
    budget_s: float,
    device: str,
    seed: int,
    hard_left,
) -> dict:
    """Frozen-phonon SCS(N) of one periodic structure; see the module docstring."""
    import abtem

    if kind == "Pb":
        cell, cell_A, sig = pb_cell(), A_PB, {"Pb": SIGMA_PB_METAL}
        nd = ND_SCAN_PB[voltage_kV]
    else:
        cell, cell_A, sig = perovskite_cell("Cd" if kind == "CdBr" else "Pb"), A_CUBIC, SIGMAS
        nd = ND_SCAN[voltage_kV]
    slab = cell.repeat((lateral, lateral, n_cells))
    L = lateral * cell_A
    gpts = _good_gpts(int(np.ceil(L / _sampling_for(voltage_kV, OUTER))))
    sym = np.array(slab.get_chemical_symbols())
    sigma = np.array([sig[e] for e in sym])[:, None]
    rng = np.random.default_rng([seed, int(voltage_kV), PARTS.index(kind)])
    dets = [
        abtem.AnnularDetector(inner=INNER, outer=OUTER),
        abtem.AnnularDetector(inner=INNER, outer=OUTER_NARROW),
    ]
    t_part = time.perf_counter()
    per_cfg: list[dict] = []  # per configuration: k, values per detector (n_exit, 4)
    mean_img = [None, None]
    w_img = 0.0
    exit_t = None

    def est(k: int) -> float:
        """Predicted seconds of a k×k-cell configuration from the ones run so far."""
        hist = [(r["k"], r["seconds"]) for r in per_cfg]
        ones = [t for kk, t in hist[1:] if kk == 1] or [hist[0][1]]
        big = [(kk, t) for kk, t in hist if kk > 1]
        if not big:
            return ones[-1] * k * k
        kb, tb = big[-1]
        return ones[-1] + (tb - ones[-1]) * (k * k - 1) / (kb * kb - 1)

    while len(per_cfg) < max_configs:
        done = len(per_cfg)
        elapsed = time.perf_counter() - t_part
        remaining = min(budget_s - elapsed, hard_left() - 5.0)
        need = max(min_configs - done, 0)
        if done == 0:
            k = 1  # warm-up (JIT, FFT plans) and first timing; a valid configuration
        elif need > 0:
            k = lateral
            while k > 1 and need * est(k) > remaining:
                k -= 1
            if est(k) > hard_left() - 5.0:
                log(f"{kind} {voltage_kV:g} kV: hard deadline, stop after {done} configs")
                break
        else:
            k = lateral
            if est(k) > remaining:
                break
        cfg = slab.copy()
        cfg.positions = slab.positions + rng.normal(size=slab.positions.shape) * sigma
        # scan k×k cells, starting at a random cell (all cells are equivalent)
        i0, j0 = rng.integers(0, lateral, size=2)
        start = (i0 * cell_A, j0 * cell_A)
        if k < lateral:  # keep the scanned window inside the box (periodic images are fine)
            start = (min(start[0], (lateral - k) * cell_A), min(start[1], (lateral - k) * cell_A))
        else:
            start = (0.0, 0.0)
        scan = abtem.GridScan(
            start=start,
            end=(start[0] + k * cell_A, start[1] + k * cell_A),
            gpts=(k * nd, k * nd),
        )
        t0 = time.perf_counter()
        arrs, exit_t = _multislice(
            cfg, gpts, 2 * n_cells, cell_A / 2, voltage_kV, scan, dets, device
        )
        t_cfg = time.perf_counter() - t0
        rec: dict = {"k": int(k), "seconds": round(t_cfg, 3)}
        for d, arr in enumerate(arrs):
            folded = fold_cells(arr, k)  # (n_exit, nd, nd), a-periodic exactly if k = lateral
            if kind == "Pb":
                # supercell (or k×k window) total per column; 4 columns per fcc cell
                vals = folded.sum(axis=(-2, -1))[:, None] * (cell_A / nd) ** 2 / 4.0
            else:
                vals = square_voronoi_sums(fourier_resample(folded, NF), cell_A)
            rec[f"det{d}"] = vals
            mean_img[d] = folded * k * k if mean_img[d] is None else mean_img[d] + folded * k * k
        w_img += k * k
        per_cfg.append(rec)
        log(
            f"{kind} {voltage_kV:g} kV config {len(per_cfg)} k={k} {t_cfg:.2f} s "
            f"({t_cfg / (k * nd) ** 2 * 1e3:.3f} ms/position)"
        )
    n_exit = np.rint(exit_t / cell_A).astype(int)
    keep = n_exit > 0
    w = np.array([r["k"] ** 2 for r in per_cfg], float)
    out: dict = {
        "kind": kind,
        "voltage_kV": voltage_kV,
        "configs": len(per_cfg),
        "columns_per_type_sampled": int(w.sum()),
        "cells_scanned_per_config": [r["k"] for r in per_cfg],
        "lateral_cells": lateral,
        "n_cells": n_cells,
        "gpts": int(gpts),
        "sampling_A": L / gpts,
        "antialias_max_mrad": 1e3 * (2 / 3) * wavelength_A(voltage_kV) / (2 * L / gpts),
        "scan_step_A": cell_A / nd,
        "scan_nyquist_step_A": 1.0 / (2 * 2 * SEMIANGLE * 1e-3 / wavelength_A(voltage_kV)),
        "voronoi_grid_per_cell": NF if kind != "Pb" else None,
        "seconds": time.perf_counter() - t_part,
        "seconds_per_config": [r["seconds"] for r in per_cfg],
        "n": n_exit[keep].tolist(),
    }
    for d, det in enumerate(((INNER, OUTER), (INNER, OUTER_NARROW))):
        v = np.stack([r[f"det{d}"] for r in per_cfg])[:, keep]  # (cfg, n, sites)
        mean = np.einsum("c,c...->...", w, v) / w.sum()
        se = np.sqrt(np.einsum("c,c...->...", w**2, (v - mean) ** 2)) / w.sum()
        se *= np.sqrt(len(w) / max(len(w) - 1, 1))
        key = f"{det[0]:g}-{det[1]:g}mrad"
        if kind == "Pb":
            out[key] = {
                "Pb": {"mean": mean[:, 0].tolist(), "se": se[:, 0].tolist()},
                "per_config": v[..., 0].round(6).tolist(),
            }
            continue
        types = {
            kind: (mean[:, 0], se[:, 0], v[..., 0]),
            "Br": (
                0.5 * (mean[:, 1] + mean[:, 2]),
                np.sqrt(
                    np.einsum(
                        "c,c...->...",
                        w**2,
                        (0.5 * (v[..., 1] + v[..., 2]) - 0.5 * (mean[:, 1] + mean[:, 2])) ** 2,
                    )
                )
                / w.sum()
                * np.sqrt(len(w) / max(len(w) - 1, 1)),
                0.5 * (v[..., 1] + v[..., 2]),
            ),
            "Cs": (mean[:, 3], se[:, 3], v[..., 3]),
        }
        out[key] = {
            t: {"mean": m.tolist(), "se": s.tolist(), "per_config": pc.round(6).tolist()}
            for t, (m, s, pc) in types.items()
        }
        # the same mean image through the old (scan-grid, shared borders) and the notes'
        # (scan-grid, argmin) Voronoi estimators: effect of the integration alone
        img = mean_img[d][keep] / w_img
        for name, fn in (
            ("scan_grid_shared", shared_voronoi_sums),
            ("scan_grid_argmin", argmin_voronoi_sums),
        ):
            s = fn(img, cell_A)
            out[key][f"estimator_{name}"] = {
                kind: s[:, 0].tolist(),
                "Br": (0.5 * (s[:, 1] + s[:, 2])).tolist(),
                "Cs": s[:, 3].tolist(),
            }
        # band limit check: spectral power of the mean image beyond 2α/λ (should be ~0)
        f = np.abs(np.fft.fft2(img[-1]))
        kk = np.fft.fftfreq(img.shape[-1], d=cell_A / img.shape[-1])
        kr = np.hypot(*np.meshgrid(kk, kk, indexing="ij"))
        kmax = 2 * SEMIANGLE * 1e-3 / wavelength_A(voltage_kV)
        out[key]["spectrum_beyond_1.05x_band_rel"] = float(
            f[kr > 1.05 * kmax].max(initial=0.0) / f[0, 0]
        )
    return out


def run_atoms(voltage_kV: float, device: str) -> dict:
    import abtem
    from ase import Atoms

    box = 12.0
    gpts = _good_gpts(int(np.ceil(box / _sampling_for(voltage_kV, OUTER))))
    out: dict = {}
    for el in ("Pb", "Cs", "Br", "Cd"):
        atoms = Atoms(el, positions=[[box / 2, box / 2, 1.0]], cell=[box, box, 2.0], pbc=True)
        pot = abtem.Potential(
            atoms,
            gpts=gpts,
            slice_thickness=2.0,
            projection="infinite",
            parametrization="lobato",
            device=device,
        )
        probe = abtem.Probe(energy=voltage_kV * 1e3, semiangle_cutoff=SEMIANGLE, device=device)
        probe.grid.match(pot)
        scan = abtem.GridScan(start=(0, 0), end=(box, box), gpts=(60, 60))
        dets = [
            abtem.AnnularDetector(inner=INNER, outer=OUTER),
            abtem.AnnularDetector(inner=INNER, outer=OUTER_NARROW),
        ]
        ms = probe.scan(pot, scan=scan, detectors=dets).compute()
        for m, key in zip(
            ms, (f"{INNER:g}-{OUTER:g}mrad", f"{INNER:g}-{OUTER_NARROW:g}mrad"), strict=True
        ):
            out.setdefault(key, {})[el] = float(_to_numpy(m).sum() * (box / 60) ** 2)
    return out


def run_notes_repro(
    configs: int, device: str, seed: int = 1, m: int = 4, n: int = 11, sampling: float = 0.03
) -> dict:
    """The notes' 65–200 mrad run (shared/bench/abtem_bench.py slab --configs 4 --lateral 4
    --sampling 0.03 --inner 65 --outer 200), with ``configs`` configurations."""
    import abtem

    a = A_CUBIC
    slab = perovskite_cell("Pb").repeat((m, m, n))
    fp = abtem.FrozenPhonons(slab, num_configs=configs, sigmas=SIGMAS, seed=seed)
    pot = abtem.Potential(
        fp,
        sampling=sampling,
        slice_thickness=(a / 2,) * (2 * n),
        projection="infinite",
        exit_planes=2,
        device=device,
    )
    probe = abtem.Probe(energy=300e3, semiangle_cutoff=SEMIANGLE, device=device)
    probe.grid.match(pot)
    x0 = a * (m // 2)
    scan = abtem.GridScan(start=(x0, x0), end=(x0 + a, x0 + a), sampling=0.2935)
    det = abtem.AnnularDetector(inner=INNER, outer=OUTER)
    t0 = time.perf_counter()
    arr = _to_numpy(probe.scan(pot, scan=scan, detectors=det).compute())
    arr = arr.reshape((-1,) + tuple(scan.gpts))
    out = {
        "configs": configs,
        "seed": seed,
        "seconds": time.perf_counter() - t0,
        "gpts": list(map(int, pot.gpts)),
        "scan_gpts": list(map(int, scan.gpts)),
    }
    exit_t = np.atleast_1d(np.asarray(pot.exit_thicknesses, float))
    keep = np.rint(exit_t / a) > 0
    out["n"] = np.rint(exit_t[keep] / a).astype(int).tolist()
    xy = np.asarray(scan.get_positions())
    gx, gy = xy[:, 0, 0] - x0, xy[0, :, 1] - x0
    for name, fn in (
        ("argmin", lambda im, c: argmin_voronoi_sums(im, c, gx, gy, tol=0.0)),
        ("argmin_tol", argmin_voronoi_sums),
        ("shared", shared_voronoi_sums),
    ):
        s = fn(arr[keep], a)
        out[name] = {
            "PbBr": s[:, 0].tolist(),
            "Br": (0.5 * (s[:, 1] + s[:, 2])).tolist(),
            "Cs": s[:, 3].tolist(),
        }
    return out


def run_notes_spread(seeds: list[int], device: str, configs: int = 4) -> dict:
    """The notes' procedure (4x4 cells, 0.03 Å, FrozenPhonons, one cell at a/20, argmin
    Voronoi) repeated with several seeds, each configuration kept: the spread of a
    4-configuration estimate."""
    import abtem

    a, m, n = A_CUBIC, 4, 11
    slab = perovskite_cell("Pb").repeat((m, m, n))
    x0 = a * (m // 2)
    out: dict = {"seeds": list(seeds), "configs": configs, "per_seed": {}}
    t0 = time.perf_counter()
    for sd in seeds:
        fp = abtem.FrozenPhonons(
            slab, num_configs=configs, sigmas=SIGMAS, seed=sd, ensemble_mean=False
        )
        pot = abtem.Potential(
            fp,
            sampling=0.03,
            slice_thickness=(a / 2,) * (2 * n),
            projection="infinite",
            exit_planes=2,
            device=device,
        )
        probe = abtem.Probe(energy=300e3, semiangle_cutoff=SEMIANGLE, device=device)
        probe.grid.match(pot)
        scan = abtem.GridScan(start=(x0, x0), end=(x0 + a, x0 + a), sampling=0.2935)
        det = abtem.AnnularDetector(inner=INNER, outer=OUTER)
        arr = _to_numpy(probe.scan(pot, scan=scan, detectors=det).compute())
        arr = arr.reshape((configs, -1) + tuple(scan.gpts))
        exit_t = np.atleast_1d(np.asarray(pot.exit_thicknesses, float))
        keep = np.rint(exit_t / a) > 0
        xy = np.asarray(scan.get_positions())
        gx, gy = xy[:, 0, 0] - x0, xy[0, :, 1] - x0
        s = argmin_voronoi_sums(arr[:, keep], a, gx, gy, tol=0.0)  # (cfg, n, 4)
        out["per_seed"][str(sd)] = {
            "PbBr": s[..., 0].round(6).tolist(),
            "Br": (0.5 * (s[..., 1] + s[..., 2])).round(6).tolist(),
            "Cs": s[..., 3].round(6).tolist(),
        }
        log(f"notes spread seed {sd}")
    out["seconds"] = time.perf_counter() - t0
    return out


def run_static_box(lateral: int, device: str, n: int = 11) -> dict:
    """Static lattice (no phonons), 300 kV, 11 cells, one cell at a/22: box-size effect."""
    import abtem

    a, nd = A_CUBIC, 22
    slab = perovskite_cell("Pb").repeat((lateral, lateral, n))
    gpts = _good_gpts(int(np.ceil(lateral * a / _sampling_for(300.0, OUTER))))
    x0 = a * (lateral // 2)
    scan = abtem.GridScan(start=(x0, x0), end=(x0 + a, x0 + a), gpts=(nd, nd))
    det = abtem.AnnularDetector(inner=INNER, outer=OUTER)
    t0 = time.perf_counter()
    (arr,), exit_t = _multislice(slab, gpts, 2 * n, a / 2, 300.0, scan, [det], device)
    keep = np.rint(exit_t / a) > 0
    s = square_voronoi_sums(fourier_resample(arr[keep], NF), a)
    return {
        "lateral": lateral,
        "gpts": int(gpts),
        "seconds": time.perf_counter() - t0,
        "n": np.rint(exit_t[keep] / a).astype(int).tolist(),
        "PbBr": s[:, 0].tolist(),
        "Br": (0.5 * (s[:, 1] + s[:, 2])).tolist(),
        "Cs": s[:, 3].tolist(),
    }


def setup_device(requested: str) -> dict:
    import abtem

    info: dict = {"abtem_version": abtem.__version__, "requested": requested}
    dev = requested
    if requested in ("auto", "gpu"):
        try:
            import cupy as cp

            cp.zeros(4).sum()
            info["cupy"] = cp.__version__
            info["gpu"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
            dev = "gpu"
        except Exception as exc:  # noqa: BLE001 - report and fall back
            if requested == "gpu":
                raise
            info["gpu_error"] = repr(exc)[:300]
            dev = "cpu"
    cfg = {"diagnostics.progress_bar": False, "device": dev}
    if dev == "gpu":
        cfg["dask.chunk-size-gpu"] = "2048 MB"
    else:
        try:
            import pyfftw  # noqa: F401
        except ImportError:
            cfg["fft"] = "numpy"
    abtem.config.set(cfg)
    info["device"] = dev
    return info


def calibrate(args) -> dict:
    hard_t0 = time.perf_counter()

    def hard_left():
        return args.hard_limit - (time.perf_counter() - hard_t0)

    runs: dict = {"device": setup_device(args.device)}
    dev = runs["device"]["device"]
    log(f"device {runs['device']}")
    # warm-up (JIT, FFT plans) on a tiny case, not recorded; falls back to the CPU
    t0 = time.perf_counter()
    try:
        run_atoms(args.voltages[0], dev)
    except Exception as exc:  # noqa: BLE001
        if dev != "gpu" or args.device == "gpu":
            raise
        import traceback

        import abtem

        traceback.print_exc()
        runs["device"]["gpu_error"] = repr(exc)[:500]
        dev = runs["device"]["device"] = "cpu"
        abtem.config.set({"device": "cpu", "fft": "numpy"})
        log("GPU multislice failed: CPU fallback")
        run_atoms(args.voltages[0], dev)
    runs["warmup_seconds"] = time.perf_counter() - t0
    log(f"warm-up {runs['warmup_seconds']:.1f} s")
    weights = {}
    for kv in args.voltages:
        for p in args.parts:
            weights[f"{p}_{kv:g}"] = WEIGHTS[p] * (1.2 if kv == 300 else 1.0)
    if args.diagnostics:
        weights["diagnostics"] = 0.08
    budget = Budget(args.budget, weights)
    order = [(p, kv) for p in ("PbBr",) for kv in args.voltages if p in args.parts]
    order += [(p, kv) for p in ("CdBr", "Pb") for kv in args.voltages if p in args.parts]
    for kv in args.voltages:
        if "atoms" in args.parts:
            order.append(("atoms", kv))
    for part, kv in order:
        key = f"{part}_{kv:g}"
        share = budget.share(key)
        log(f"start {key}: share {share:.0f} s, budget left {budget.left():.0f} s")
        try:
            if part == "atoms":
                t0 = time.perf_counter()
                runs[key] = {
                    "voltage_kV": kv,
                    **run_atoms(kv, dev),
                    "seconds": time.perf_counter() - t0,
                }
            else:
                runs[key] = run_periodic(
                    part,
                    kv,
                    lateral=args.lateral + (1 if part == "Pb" else 0),
                    n_cells=(
                        (args.ncells_pb or NCELLS_PB[kv])
                        if part == "Pb"
                        else (args.ncells or NCELLS[kv])
                    ),
                    min_configs=args.min_configs,
                    max_configs=args.max_configs,
                    budget_s=share,
                    device=dev,
                    seed=args.seed,
                    hard_left=hard_left,
                )
        except Exception as exc:  # noqa: BLE001 - keep the other parts
            import traceback

            traceback.print_exc()
            runs[key] = {"error": repr(exc)[:500]}
        args.checkpoint(runs)
    if args.diagnostics:
        share = budget.share("diagnostics")
        log(f"diagnostics: share {share:.0f} s, hard left {hard_left():.0f} s")
        diag: dict = {}
        try:
            diag["notes_repro_4cfg_seed1"] = run_notes_repro(4, dev, seed=1)
            args.checkpoint({**runs, "diagnostics": diag})
            for lat in (3, 4):
                diag[f"static_lateral{lat}"] = run_static_box(lat, dev)
            t_per_cfg = diag["notes_repro_4cfg_seed1"]["seconds"] / 4
            nc = int(min(48, max(0, (min(share, hard_left() - 20) - 10) / max(t_per_cfg, 1e-3))))
            if nc >= 8:
                diag[f"notes_setup_{nc}cfg_seed2"] = run_notes_repro(nc, dev, seed=2)
        except Exception as exc:  # noqa: BLE001
            import traceback

            traceback.print_exc()
            diag["error"] = repr(exc)[:500]
        runs["diagnostics"] = diag
    runs["total_seconds"] = time.perf_counter() - hard_t0
    return runs


# ---------------------------------------------------------------------------- outputs
def table_rows(runs: dict) -> list[dict]:
    """CSV rows (65–200 mrad) from the run record."""
    rows: list[dict] = []
    det = f"{INNER:g}-{OUTER:g}mrad"
    for key, r in runs.items():
        if not isinstance(r, dict) or "error" in r or key.split("_")[0] not in PARTS:
            continue
        kv = float(r["voltage_kV"])
        base = {
            "voltage_kV": kv,
            "semiangle_mrad": SEMIANGLE,
            "inner_mrad": INNER,
            "outer_mrad": OUTER,
        }
        if key.startswith("atoms"):
            for el, v in r[det].items():
                rows.append(
                    {
                        **base,
                        "column_type": f"atom_{el}",
                        "n": 1,
                        "repeat_A": 0.0,
                        "scs_voronoi_A2": v,
                        "se_A2": 0.0,
                        "configs": 1,
                        "ndiv": 0,
                    }
                )
            continue
        kind = r["kind"]
        types = ("Pb",) if kind == "Pb" else ((kind,) if kind == "CdBr" else (kind, "Br", "Cs"))
        for t in types:
            for n, m, s in zip(r["n"], r[det][t]["mean"], r[det][t]["se"], strict=True):
                rows.append(
                    {
                        **base,
                        "column_type": t,
                        "n": int(n),
                        "repeat_A": A_PB if kind == "Pb" else A_CUBIC,
                        "scs_voronoi_A2": m,
                        "se_A2": s,
                        "configs": r["configs"],
                        "ndiv": 0 if kind == "Pb" else NF,
                    }
                )
    order = {"PbBr": 0, "Cs": 1, "Br": 2, "CdBr": 3, "Pb": 4}
    rows.sort(key=lambda d: (-d["voltage_kV"], order.get(d["column_type"], 9), d["n"]))
    return rows


def write_csv(rows: list[dict], runs: dict, path: Path) -> None:
    dev = runs.get("device", {})
    cfgs = sorted({r["configs"] for r in rows if r["configs"] > 1})
    header = [
        "# perovstem SCS calibration table: abTEM frozen-phonon multislice, probe-integrated",
        "# scattering cross-sections per column (Å^2 = detected fraction x Å^2), Voronoi cells.",
        f"# generated by benchmarks/calibrate_scs_abtem.py, abTEM {dev.get('abtem_version')},",
        f"# {time.strftime('%Y-%m-%d')}, device {dev.get('device')} ({dev.get('gpu', 'cpu')}),"
        f" {runs.get('total_seconds', 0):.0f} s; record: benchmarks/results/calibrate_scs_abtem.json",
        "# Conditions: 20 mrad semi-angle, no aberrations, HAADF 65-200 mrad, Lobato potentials,",
        "# infinite projection, one slice per atomic plane (a/2), periodic [001] slabs: 3x3",
        "# perovskite cells (17.6 A; sampling 0.0306 A at 300 kV, 0.0391 A at 200 kV) and 4x4",
        "# fcc Pb cells (19.8 A; 0.0317 / 0.0396 A); antialias limit >= 213 mrad.  Frozen",
        "# phonons: independent Gaussian displacements, rms per direction",
        f"# {SIGMAS} (host), metallic Pb {SIGMA_PB_METAL} A; `configs` per row ({cfgs}).",
        "# Perovskite: whole supercell scanned at a/26 = 0.226 A (300 kV) or a/22 = 0.267 A",
        "# (200 kV), finer than the Nyquist step of the band-limited HAADF signal (0.246 /",
        "# 0.314 A), folded onto one cell, Fourier-interpolated onto `ndiv` x `ndiv` points and",
        "# summed over the square Voronoi cells of the Pb-B, Br, Br, Cs columns (Br = mean of its",
        "# two columns).  fcc Pb [001]: supercell total (scan a/11 = 0.45 A, a/9 = 0.55 A; exact",
        "# below lambda/2alpha) / number of columns (= Voronoi value by symmetry; ndiv = 0).",
        "# atom_X: isolated atom, 12 A box.  PbBr/Cs/Br: cubic CsPbBr3 a = 5.87 A; CdBr: CsCdBr3",
        "# with the same a (species only); Pb: one atom per 4.95 A per column.  n = repeats (cells",
        "# or Pb atoms) per column.  se_A2 = standard error over configurations.",
        "# scs_voronoi_A2 includes probe-tail cross-talk; perovstem deconvolves it with its own",
        "# PSF (simulate/scs.py).",
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
        "se_A2",
        "configs",
        "ndiv",
    ]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w") as fh:
        fh.write("\n".join(header) + "\n")
        fh.write(",".join(cols) + "\n")
        for r in rows:
            vals = []
            for c in cols:
                v = r[c]
                if c in ("voltage_kV", "semiangle_mrad", "inner_mrad", "outer_mrad"):
                    vals.append(f"{v:g}")
                elif isinstance(v, float):
                    vals.append(f"{v:.6g}")
                else:
                    vals.append(str(v))
            fh.write(",".join(vals) + "\n")
    os.replace(tmp, path)


# Independent abTEM reference: notes/physics_simulation.md §3.3 (300 kV, 20 mrad, 65-200 mrad,
# 0.03 A sampling, 4x4 lateral cells, 4 frozen-phonon configurations, GridScan of one cell at
# a/20, argmin Voronoi), cells 1..11; raw values from shared/bench/abtem_bench_results.jsonl.
NOTES_300KV = {
    "PbBr": [
        0.01107,
        0.02394,
        0.04708,
        0.06403,
        0.07837,
        0.10163,
        0.12112,
        0.13741,
        0.15708,
        0.17606,
        0.19572,
    ],
    "Br": [
        0.00276,
        0.00541,
        0.00791,
        0.01121,
        0.01434,
        0.0177,
        0.02098,
        0.02444,
        0.02792,
        0.03144,
        0.03531,
    ],
    "Cs": [
        0.00468,
        0.01108,
        0.01686,
        0.02202,
        0.02818,
        0.03597,
        0.04269,
        0.04983,
        0.05591,
        0.06154,
        0.06889,
    ],
}
# notes §2.3 ratio ranges (300 kV, 20 mrad, 1.8-6.5 nm = 3-11 cells, Voronoi)
NOTES_RATIOS = {
    "65-200mrad": {"Cs/PbBr": (0.34, 0.36), "Br/PbBr": (0.17, 0.18)},
    "65-131mrad": {"Cs/PbBr": (0.33, 0.34), "Br/PbBr": (0.16, 0.17)},
}


def _slab_atoms(kind: str, lateral: int, n: int):
    from ase import Atoms

    if kind == "Pb":
        frac = [[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]]
        cell = Atoms("Pb4", scaled_positions=frac, cell=[A_PB] * 3)
        at = cell.repeat((lateral, lateral, n))
        at.set_array("label", np.full(len(at), 2))
        return at, A_PB / 2
    b = "Cd" if kind == "CdBr" else "Pb"
    frac = [[0, 0, 0], [0.5, 0, 0], [0, 0.5, 0], [0, 0, 0.5], [0.5, 0.5, 0.5]]
    cell = Atoms(f"{b}Br3Cs", scaled_positions=frac, cell=[A_CUBIC] * 3)
    return cell.repeat((lateral, lateral, n)), A_CUBIC


def fast_image_voronoi(kind: str, n: int, voltage_kV: float, n_div: int = NF) -> dict:
    """Render a slab with haadf_image at pixel a/n_div, Voronoi-integrate the image."""
    from scipy.spatial import cKDTree

    from perovstem.simulate import haadf_image

    lateral = 9 if kind == "Pb" else 7
    atoms, per = _slab_atoms(kind, lateral, n)
    cell = A_PB if kind == "Pb" else A_CUBIC
    centre = (lateral // 2) * cell
    dx = cell / n_div
    m = 2 * int(np.ceil((lateral * cell / 2 + 6) / dx)) + 1
    img, truth = haadf_image(
        atoms,
        pixel_size_A=dx,
        shape=(m, m),
        noise=False,
        voltage_kV=voltage_kV,
        center_A=(centre, centre),
    )
    yy, xx = np.mgrid[0:m, 0:m] * dx
    _, idx = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(
        np.column_stack([xx.ravel(), yy.ravel()])
    )
    vor = np.bincount(idx, weights=img.data.ravel(), minlength=len(truth)) / img.dose_e_per_A2
    c = 0.5 * (m - 1) * dx
    inner = (np.abs(truth["x_A"] - c) < 1.6 * per) & (np.abs(truth["y_A"] - c) < 1.6 * per)
    out = {}
    for t in set(truth["type"]):
        sel = inner & (truth["type"] == t)
        if sel.any():
            out["CdBr" if (t == "PbBr" and kind == "CdBr") else t] = float(vor[sel].mean())
    return out


def ratio_summary(tab) -> dict:
    """Cs/Pb–Br and Br/Pb–Br of the table over 3–11 cells (1.8–6.5 nm), per voltage."""
    out = {}
    for kv in sorted(tab["voltage_kV"].unique()):
        t = tab[tab["voltage_kV"] == kv]
        s = {
            c: t[t["column_type"] == c].set_index("n")["scs_voronoi_A2"]
            for c in ("PbBr", "Cs", "Br")
        }
        ns = [n for n in range(3, 12) if n in s["PbBr"].index]
        r = {k: [float(s[k][n] / s["PbBr"][n]) for n in ns] for k in ("Cs", "Br")}
        out[f"{kv:g}kV"] = {
            "n": ns,
            "Cs/PbBr": [round(v, 4) for v in r["Cs"]],
            "Br/PbBr": [round(v, 4) for v in r["Br"]],
            "Cs/PbBr_range": [round(min(r["Cs"]), 4), round(max(r["Cs"]), 4)],
            "Br/PbBr_range": [round(min(r["Br"]), 4), round(max(r["Br"]), 4)],
        }
    return out


def validate() -> dict:
    """Fast *image* vs abTEM on the same periodic cells, same Voronoi estimator on both.

    The slab is rendered by :func:`perovstem.simulate.haadf_image` (noise-free, pixel
    a/ndiv like the abTEM integration grid) and its Voronoi cells integrated; compared with
    (i) the abTEM table shipped with perovstem and (ii) the independent abTEM run of the notes.
    """
    from perovstem.simulate.scs import load_table

    load_table.cache_clear()
    tab = load_table()
    out: dict = {}
    worst = {"table": 0.0, "notes": 0.0}
    for kv in sorted(tab["voltage_kV"].unique()):
        t = tab[tab["voltage_kV"] == kv]
        res: dict = {}
        ns = sorted(int(v) for v in t[t["column_type"] == "PbBr"]["n"])
        fast: dict[str, dict[int, float]] = {}
        for kind in ("PbBr", "CdBr", "Pb"):
            if not (t["column_type"] == kind).any():
                continue
            sub_k = t[t["column_type"] == kind]
            kn = sorted(int(v) for v in sub_k["n"])
            nd = int(sub_k["ndiv"].iloc[0])
            if kind == "Pb" or nd <= 0:
                nd = 20  # the fcc check uses its own fine grid (all columns equivalent)
            for n in kn:
                for k2, v in fast_image_voronoi(kind, n, kv, n_div=nd).items():
                    if kind == "CdBr" and k2 != "CdBr":
                        continue
                    fast.setdefault(k2, {})[n] = v
        for ctype, vals in fast.items():
            sub = t[t["column_type"] == ctype].set_index("n")
            n_arr = sorted(vals)
            ref = np.array([sub.loc[n, "scs_voronoi_A2"] for n in n_arr])
            se = np.array([sub.loc[n, "se_A2"] for n in n_arr]) if "se_A2" in sub else None
            got = np.array([vals[n] for n in n_arr])
            rel = got / ref - 1.0
            worst["table"] = max(worst["table"], float(np.abs(rel).max()))
            entry = {
                "n": n_arr,
                "abtem_voronoi_A2": ref.round(6).tolist(),
                "fast_image_voronoi_A2": got.round(6).tolist(),
                "rel_diff": rel.round(4).tolist(),
                "max_abs_rel_diff": float(np.abs(rel).max()),
            }
            if se is not None:
                entry["abtem_rel_se"] = (se / ref).round(4).tolist()
            if kv == 300 and ctype in NOTES_300KV:
                nn = [n for n in n_arr if n <= len(NOTES_300KV[ctype])]
                notes = np.array([NOTES_300KV[ctype][n - 1] for n in nn])
                rn = np.array([vals[n] for n in nn]) / notes - 1.0
                entry["notes_independent_abtem_A2"] = notes.tolist()
                entry["rel_diff_vs_notes"] = rn.round(4).tolist()
                use = np.array(nn) >= 2
                entry["max_abs_rel_diff_vs_notes_n_ge_2"] = float(np.abs(rn[use]).max())
                worst["notes"] = max(worst["notes"], float(np.abs(rn[use]).max()))
            res[ctype] = entry
        for other in ("Cs", "Br"):
            if other in fast and "PbBr" in fast:
                r = [fast[other][n] / fast["PbBr"][n] for n in ns if 3 <= n <= 11]
                res[f"fast_image_{other}/PbBr_ratio_3_to_11_cells"] = [min(r), max(r)]
        out[f"{kv:g}kV"] = res
    out["max_abs_rel_diff_vs_table"] = worst["table"]
    out["max_abs_rel_diff_vs_notes_n_ge_2"] = worst["notes"]
    out["table_ratios_3_to_11_cells"] = ratio_summary(tab)
    return out


def _col_std(per_config: list, k: list) -> np.ndarray:
    """Relative std of ONE column's SCS, from configuration means over k² columns each."""
    v = np.asarray(per_config, float)  # (configs, n)
    w = np.asarray(k, float) ** 2
    m = np.einsum("c,cn->n", w, v) / w.sum()
    var = np.einsum("c,cn->n", w, (v - m) ** 2) / (len(w) - 1)  # var(v_c) = σ²/k_c²
    return np.sqrt(var) / m


def analyse(record: dict, old_csv: Path | None = None) -> dict:
    """Why the earlier tables differ: reproduction of the notes' run, sampling statistics
    of 3-4 configurations x one column, box size, Voronoi estimator, detector."""
    runs = record.get("abtem_runs", {})
    main = runs.get("PbBr_300")
    if not main or "error" in main:
        return {}
    det = f"{INNER:g}-{OUTER:g}mrad"
    out: dict = {}
    new = {t: np.array(main[det][t]["mean"]) for t in ("PbBr", "Cs", "Br")}
    se = {t: np.array(main[det][t]["se"]) for t in ("PbBr", "Cs", "Br")}
    ks = main["cells_scanned_per_config"]
    sig = {t: _col_std(main[det][t]["per_config"], ks) for t in ("PbBr", "Cs", "Br")}
    # Br is the mean of two columns per cell: one "column" of the Br type = 2 Br columns
    out["single_column_rel_std_300kV"] = {t: v.round(3).tolist() for t, v in sig.items()}
    diag = runs.get("diagnostics", {})
    nr = diag.get("notes_repro_4cfg_seed1")
    if nr:
        out["notes_run_reproduced_max_abs_rel_diff"] = {
            t: float(np.max(np.abs(np.array(nr["argmin"][t]) / np.array(NOTES_300KV[t]) - 1)))
            for t in NOTES_300KV
        }
    n11 = min(11, len(new["PbBr"]))
    nn = np.arange(1, n11 + 1)
    # spread of the notes' single-cell procedure (4 configurations), measured by repeating
    # it with 12 seeds: the corner/edge Voronoi cells of one scanned cell are assembled
    # from quarters/halves of 4/2 different columns, so one configuration is far noisier
    # than one column's own thermal scatter (single_column_rel_std_300kV)
    spread = record.get("notes_spread")
    sd4 = {}
    if spread:
        res = {}
        for t in new:
            ps = np.array([v[t] for v in spread["per_seed"].values()])  # (seeds, cfg, n)
            rel = ps.mean(axis=1) / new[t][None, : ps.shape[-1]] - 1
            sd4[t] = rel.std(axis=0, ddof=1)
            res[t] = {
                "rel_std_of_4cfg_estimate": sd4[t].round(3).tolist(),
                "min_rel_diff_vs_new": rel.min(axis=0).round(3).tolist(),
                "max_rel_diff_vs_new": rel.max(axis=0).round(3).tolist(),
                "mean_all_configs_rel_diff_vs_new": (
                    ps.reshape(-1, ps.shape[-1]).mean(axis=0) / new[t][: ps.shape[-1]] - 1
                )
                .round(4)
                .tolist(),
            }
        out["notes_procedure_12_seeds_x_4cfg_300kV"] = res
    cmp: dict = {}
    for t in NOTES_300KV:
        ref = np.array(NOTES_300KV[t][:n11])
        rel = ref / new[t][:n11] - 1
        cmp[t] = {"n": nn.tolist(), "rel_diff": rel.round(4).tolist()}
        if t in sd4:
            cmp[t]["z_vs_4cfg_spread"] = (rel / sd4[t][:n11]).round(2).tolist()
    out["notes_4cfg_vs_new_300kV"] = cmp
    big = [k for k in diag if k.startswith("notes_setup_")]
    if big:
        b = diag[big[0]]
        out[f"{big[0]}_vs_new_300kV"] = {
            t: (np.array(b["argmin"][t]) / new[t][:n11] - 1).round(4).tolist() for t in new
        }
        pb = np.array(b["argmin"]["PbBr"])[2:]
        out[f"{big[0]}_ratios_3_to_11"] = {
            "Cs/PbBr": (np.array(b["argmin"]["Cs"])[2:] / pb).round(4).tolist(),
            "Br/PbBr": (np.array(b["argmin"]["Br"])[2:] / pb).round(4).tolist(),
        }
    est = main[det].get("estimator_scan_grid_argmin")
    if est:
        out["estimator_effect_300kV"] = {
            name: {
                t: (np.array(main[det][f"estimator_{name}"][t]) / new[t] - 1).round(4).tolist()
                for t in new
            }
            for name in ("scan_grid_shared", "scan_grid_argmin")
        }
    if old_csv is not None and old_csv.exists():
        import pandas as pd

        old = pd.read_csv(old_csv, comment="#")
        res: dict = {}
        for kv in (300.0, 200.0):
            r = runs.get(f"PbBr_{kv:g}")
            if not r or "error" in r:
                continue
            res[f"{kv:g}kV"] = {}
            for t in ("PbBr", "Cs", "Br"):
                o = old[(old.voltage_kV == kv) & (old.column_type == t)].sort_values("n")
                m = np.array(r[det][t]["mean"])
                nn_o = o["n"].to_numpy()
                nn_o = nn_o[nn_o <= len(m)]
                ov = o.set_index("n").loc[nn_o, "scs_voronoi_A2"].to_numpy()
                c = int(o["configs"].iloc[0])
                rel = ov / m[nn_o - 1] - 1
                res[f"{kv:g}kV"][t] = {
                    "n": nn_o.tolist(),
                    "old_configs_x_columns": c,
                    "rel_diff": rel.round(4).tolist(),
                }
                if kv == 300.0 and t in sd4:  # same single-cell procedure, 4 configurations
                    k = min(len(nn_o), len(sd4[t]))
                    res[f"{kv:g}kV"][t]["z_vs_4cfg_spread_n_le_11"] = (
                        (rel[:k] / sd4[t][:k]).round(2).tolist()
                    )
        out["old_table_vs_new"] = res
    box = record.get("box_size_check", {})
    if box:
        res = {}
        for key, b in box.items():
            if key.startswith("_"):
                continue
            res[key] = {}
            for t in new:
                m2, s2 = np.array(b[det][t]["mean"]), np.array(b[det][t]["se"])
                res[key][t] = {
                    "rel_diff_vs_3x3": (m2 / new[t] - 1).round(4).tolist(),
                    "z": ((m2 - new[t]) / np.hypot(s2, se[t])).round(2).tolist(),
                }
        out["box_size_vs_3x3_300kV"] = res
    ratios = {}
    for kv in (300.0, 200.0):
        r = runs.get(f"PbBr_{kv:g}")
        if not r or "error" in r:
            continue
        for d in (det, f"{INNER:g}-{OUTER_NARROW:g}mrad"):
            pb = np.array(r[d]["PbBr"]["mean"])[2:11]
            ratios[f"{kv:g}kV_{d}"] = {
                "Cs/PbBr": (np.array(r[d]["Cs"]["mean"])[2:11] / pb).round(4).tolist(),
                "Br/PbBr": (np.array(r[d]["Br"]["mean"])[2:11] / pb).round(4).tolist(),
            }
    out["ratios_3_to_11_cells"] = ratios
    out["notes_ratio_ranges_300kV"] = NOTES_RATIOS
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--voltages", type=float, nargs="+", default=[300.0, 200.0])
    p.add_argument("--device", choices=["auto", "gpu", "cpu"], default="auto")
    p.add_argument("--min-configs", type=int, default=20)
    p.add_argument("--max-configs", type=int, default=64)
    p.add_argument("--lateral", type=int, default=3, help="lateral repeats of the cell")
    p.add_argument("--budget", type=float, default=360.0, help="seconds for all parts")
    p.add_argument("--hard-limit", type=float, default=480.0, help="stop everything (s)")
    p.add_argument("--seed", type=int, default=1, help="frozen-phonon seed")
    p.add_argument("--ncells", type=int, default=None, help="override perovskite cells")
    p.add_argument("--ncells-pb", type=int, default=None, help="override fcc Pb cells")
    p.add_argument("--parts", nargs="+", default=list(PARTS), choices=list(PARTS))
    p.add_argument("--no-diagnostics", dest="diagnostics", action="store_false")
    p.add_argument(
        "--notes-spread",
        type=int,
        default=0,
        metavar="NSEEDS",
        help="only repeat the notes' 4-configuration procedure with seeds 1..NSEEDS",
    )
    p.add_argument("--validate-only", action="store_true")
    p.add_argument(
        "--old-csv", type=Path, default=None, help="earlier table to compare with (analysis)"
    )
    p.add_argument("--no-validate", dest="validate", action="store_false")
    p.add_argument(
        "--outdir",
        type=Path,
        default=None,
        help="write scs_abtem.csv and the JSON here instead of the shipped paths",
    )
    args = p.parse_args(argv)
    csv_path = args.outdir / "scs_abtem.csv" if args.outdir else CSV
    json_path = args.outdir / "calibrate_scs_abtem.json" if args.outdir else JSON
    record: dict = {
        "machine": {
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "python": sys.version.split()[0],
            "loadavg_start": list(os.getloadavg()),
        },
    }

    def checkpoint(runs: dict) -> None:
        record["abtem_runs"] = runs
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(record, indent=1))
        rows = table_rows(runs)
        if rows:
            write_csv(rows, runs, csv_path)

    args.checkpoint = checkpoint
    if args.notes_spread:
        info = setup_device(args.device)
        record["notes_spread"] = run_notes_spread(
            list(range(1, args.notes_spread + 1)), info["device"]
        )
        record["notes_spread"]["device"] = info
        json_path.parent.mkdir(parents=True, exist_ok=True)
        json_path.write_text(json.dumps(record, indent=1))
        return 0
    if not args.validate_only:
        record["settings"] = {
            k: (str(v) if isinstance(v, Path) else v)
            for k, v in vars(args).items()
            if k != "checkpoint"
        }
        runs = calibrate(args)
        record["machine"]["loadavg_end"] = list(os.getloadavg())
        checkpoint(runs)
    elif json_path.exists():
        old = json.loads(json_path.read_text())
        keep = ("abtem_runs", "settings", "device_runs", "box_size_check", "notes_spread")
        record.update({k: v for k, v in old.items() if k in keep})
        record["machine_abtem_run"] = old.get("machine_abtem_run", old.get("machine"))
    if args.old_csv is not None:
        record["analysis"] = analyse(record, args.old_csv)
    if args.validate:
        json_path.write_text(json.dumps(record, indent=1))
        record["validation"] = validate()
        json_path.write_text(json.dumps(record, indent=1))
        print(json.dumps(record["validation"], indent=1)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
