#!/usr/bin/env python3
"""Benchmark: perovstem.atoms column finding + joint Gaussian fitting vs Atomap 0.4.2.

Both run on the *same* images in one process:

* ``square``  — Atomap's own generator (``atomap.testing_tools.MakeTestData``): 56 × 56 = 3136
  Gaussian columns, spacing 16 px, σ 3 px ± 10 %, heights 1 ± 20 %, ±1 px jitter, Gaussian
  noise σ = 0.05 (SNR 20) — the scene of ``shared/bench/atomap_bench.py``.
* ``cspbbr3`` — CsPbBr3 [001]-like scene from the same script (a = 28 px, Pb–Br + Cs targets,
  weak Br distractors at a/2).
* the two real StatSTEM images (Example3 CsPbBr3, 415 columns; Example2 Pb, 219 columns) from
  their stored starting coordinates (ours only; StatSTEM/Octave times from the notes).
* scaling: our fitter on square scenes of 784 … 50176 columns.

Accuracy is the RMS position error against the known truth, compared with the Cramér–Rao
lower bound of the Gaussian model at the true parameters and the known noise σ.

Run:  python benchmarks/bench_atoms.py [--quick] [--skip-atomap]
Writes benchmarks/results/bench_atoms.json.  Needs the ``bench`` extra (atomap) for the peer.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
import warnings
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

warnings.filterwarnings("ignore")

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("PEROVSTEM_SHARED_DATA", ROOT.parent / "shared" / "data"))


# ----------------------------------------------------------------------------- scenes
def square_scene(n_side, seed=0, spacing=16.0, sigma=3.0, noise=0.05):
    """Atomap's square scene (same recipe as shared/bench/atomap_bench.py), numpy renderer."""
    rng = np.random.default_rng(seed)
    margin = spacing
    size = int(round(2 * margin + (n_side - 1) * spacing))
    gx, gy = np.meshgrid(np.arange(n_side), np.arange(n_side))
    x = margin + gx.ravel() * spacing + rng.uniform(-1, 1, gx.size)
    y = margin + gy.ravel() * spacing + rng.uniform(-1, 1, gx.size)
    sx = sigma * rng.uniform(0.9, 1.1, x.size)
    sy = sigma * rng.uniform(0.9, 1.1, x.size)
    h = rng.uniform(0.8, 1.2, x.size)
    s = np.sqrt(sx * sy)
    img = np.zeros((size, size))
    r = int(np.ceil(6 * sigma))
    for xk, yk, sk, hk in zip(x, y, s, h, strict=True):
        i0, i1 = max(0, int(yk) - r), min(size, int(yk) + r + 1)
        j0, j1 = max(0, int(xk) - r), min(size, int(xk) + r + 1)
        yy, xx = np.mgrid[i0:i1, j0:j1]
        img[i0:i1, j0:j1] += hk * np.exp(-((xx - xk) ** 2 + (yy - yk) ** 2) / (2 * sk * sk))
    img += rng.normal(0.0, noise, img.shape)
    return img, dict(x=x, y=y, sigma=s, height=h, nn=spacing, noise=noise)


def atomap_scene(kind, seed=0):
    """The exact image of shared/bench/atomap_bench.py (Atomap's MakeTestData)."""
    sys.path.insert(0, str(SHARED.parent / "bench"))
    import atomap_bench as ab  # noqa: E402  (the peer script, used for its scene builders)

    if kind == "square":
        td, truth, size, nn = ab.make_square_scene(56, 16.0, 3.0, 0.05, 1.0, 0.2, seed)
    else:
        td, truth, size, nn = ab.make_cspbbr3_scene(36, 28.0, 3.0, 0.05, 1.0, 0.2, seed)
    signal = td.signal
    truth = dict(truth)
    truth["nn"] = nn
    truth["noise"] = 0.05
    return signal, np.asarray(signal.data, dtype=float), truth


# ----------------------------------------------------------------------------- metrics
def match(xy, truth, tol):
    t_xy = np.column_stack([truth["x"], truth["y"]])
    d, idx = cKDTree(t_xy).query(xy, distance_upper_bound=tol)
    ok = np.isfinite(d)
    order = np.argsort(d[ok])
    f_idx = np.nonzero(ok)[0][order]
    t_idx = idx[ok][order]
    _, first = np.unique(t_idx, return_index=True)
    return f_idx[first], t_idx[first]


def accuracy(xy, truth, tol):
    f, t = match(np.asarray(xy, float), truth, tol)
    e = np.hypot(xy[f, 0] - truth["x"][t], xy[f, 1] - truth["y"][t])
    return (
        dict(
            n_true=len(truth["x"]),
            n_found=len(xy),
            recall=round(len(t) / len(truth["x"]), 5),
            precision=round(len(t) / max(len(xy), 1), 5),
            rms_px=float(np.sqrt(np.mean(e**2))),
            median_px=float(np.median(e)),
        ),
        f,
        t,
    )


def crlb_gaussian_noise(truth, shape, noise, cut=4.0):
    """Per-axis CRLB (px) of the Gaussian column model at the true parameters, white noise σ."""
    from perovstem.atoms.fit import fisher_covariance

    x = np.ascontiguousarray(truth["x"], float)
    y = np.ascontiguousarray(truth["y"], float)
    rho = np.ascontiguousarray(truth["sigma"], float)
    eta = np.ascontiguousarray(truth.get("height", truth.get("amp", 1.0) / (2 * np.pi * rho**2)))
    w = np.full(shape, 1.0 / noise**2)
    cov = fisher_covariance(shape, w, x, y, eta, rho, cut, True)
    return float(np.sqrt(np.mean((cov[:, 0, 0] + cov[:, 1, 1]) / 2)))


# ----------------------------------------------------------------------------- runners
def run_atomap(signal, image, truth, separation):
    import atomap.api as am
    from atomap.atom_finding_refining import get_atom_positions

    t0 = time.perf_counter()
    peaks = get_atom_positions(signal, separation=separation)
    sub = am.Sublattice(peaks, image=image)
    sub.find_nearest_neighbors()
    sub.refine_atom_positions_using_center_of_mass(show_progressbar=False)
    t_pre = time.perf_counter() - t0
    t1 = time.perf_counter()
    sub.refine_atom_positions_using_2d_gaussian(percent_to_nn=0.4, show_progressbar=False)
    t_g = time.perf_counter() - t1
    xy = np.column_stack([sub.x_position, sub.y_position])
    acc, _, _ = accuracy(xy, truth, truth["nn"] / 3)
    n = len(peaks)
    return dict(
        n_columns=n,
        seconds_total=round(t_pre + t_g, 3),
        seconds_gaussian=round(t_g, 3),
        columns_per_s_total=round(n / (t_pre + t_g), 1),
        columns_per_s_gaussian=round(n / t_g, 1),
        **acc,
    )


def run_ours(image, truth, *, cell=None, separation=None, width="column", threads_ab=False):
    from perovstem import Image
    from perovstem.atoms import find_columns, find_peaks, fit_columns

    img = Image(image, 1.0)
    t0 = time.perf_counter()
    if cell is None:
        start = find_peaks(img, separation_A=separation)
    else:
        start = find_columns(img, cell=cell)
    t_find = time.perf_counter() - t0
    t1 = time.perf_counter()
    df = fit_columns(img, start, width=width)
    t_fit = time.perf_counter() - t1
    ab = {}
    if threads_ab:
        # the same fit with 1 and with 2 numba threads (best of 3 each, after the timed run
        # above): the results must be bit-identical, only the time differs
        fits = {}
        for label, par in (("one_thread", False), ("numba_threads", True)):
            best = np.inf
            for _ in range(3):
                t2 = time.perf_counter()
                fits[label] = fit_columns(img, start, width=width, parallel=par)
                best = min(best, time.perf_counter() - t2)
            ab[f"seconds_fit_{label}_best_of_3"] = round(best, 4)
            ab[f"columns_per_s_fit_{label}"] = round(len(df) / best, 1)
            ab[f"load_average_1min_{label}"] = os.getloadavg()[0]
        ab["identical_results_1_vs_n_threads"] = bool(
            np.array_equal(fits["one_thread"].x_A, fits["numba_threads"].x_A)
            and np.array_equal(fits["one_thread"].eta, fits["numba_threads"].eta)
            and np.array_equal(fits["one_thread"].x_A, df.x_A)
        )
    n_fitted = len(df)
    if cell is not None:  # targets are Pb-Br and Cs; the Br columns are fitted but not scored
        df = df[df["type"] != "Br"].reset_index(drop=True)
    xy = df[["x_A", "y_A"]].to_numpy()
    acc, f, _ = accuracy(xy, truth, truth["nn"] / 3)
    n = n_fitted
    return dict(
        n_columns=n,
        seconds_total=round(t_find + t_fit, 3),
        seconds_fit=round(t_fit, 3),
        columns_per_s_total=round(n / (t_find + t_fit), 1),
        columns_per_s_fit=round(n / t_fit, 1),
        n_sweeps=int(df.attrs["n_iter"]),
        numba_threads_used=bool(df.attrs.get("parallel", False)),
        load_average_1min=os.getloadavg()[0],
        converged=bool(df.attrs["converged"]),
        reported_pos_err_px=float(np.sqrt(np.mean((df.x_err_A**2 + df.y_err_A**2)[f] / 2))),
        **acc,
        **ab,
    )


def per_axis(d):
    d = dict(d)
    d["rms_per_axis_px"] = d["rms_px"] / np.sqrt(2)
    return d


def real_images():
    """The two StatSTEM images, loaded as a user would (``perovstem.io.load_statstem``).

    The default path (no ``estimator``) picks StatSTEM's model and estimator for StatSTEM
    inputs; ``estimator="joint"`` is our joint least squares (for comparison).
    """
    from perovstem.atoms import fit_columns
    from perovstem.io import load_statstem

    out = {}
    for name in ("Example3_CsPbBr3", "Example2_Pb"):
        p = SHARED / "statstem" / "npz" / f"{name}.npz"
        if not p.is_file():
            continue
        ex = load_statstem(p)
        ref = ex.reference
        res = {}
        for label, kw in (("default", {}), ("joint", {"estimator": "joint"})):
            fit_columns(ex.image, ex.coordinates, **kw)  # warm (numba dispatch, caches)
            t0 = time.perf_counter()
            df = fit_columns(ex.image, ex.coordinates, **kw)
            dt = time.perf_counter() - t0
            dpos = np.hypot(df.x_A - ref.x_A, df.y_A - ref.y_A)
            drho = np.abs(df.rho_A / ref.rho_A - 1)
            dscs = np.abs(df.scs / ref.scs - 1)
            res[label] = dict(
                estimator=df.attrs["estimator"],
                truncation=df.attrs["truncation"],
                seconds=round(dt, 3),
                load_average_1min=os.getloadavg()[0],
                n_columns=len(df),
                n_iter=int(df.attrs["n_iter"]),
                median_dpos_A=float(np.median(dpos)),
                rho_rel_diff_max=float(np.max(drho)),
                median_abs_dscs=float(np.median(dscs)),
                median_abs_dscs_by_type={
                    str(t): float(np.median(dscs[(df.type == t).to_numpy()]))
                    for t in np.unique(df.type)
                },
                rho_A_by_type=df.attrs["rho_A_by_type"],
                background=df.attrs["background"]["coefficients"][0],
                background_statstem=ex.background,
                sse=df.attrs["sse"],
            )
        out[name] = res
    out["statstem_octave_seconds_from_notes"] = {
        "Example3_CsPbBr3": "82-145",
        "Example2_Pb": "342",
    }
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small scenes only")
    ap.add_argument("--skip-atomap", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "bench_atoms.json"))
    args = ap.parse_args(argv)

    import numba
    import scipy

    import perovstem

    res = dict(
        machine=dict(
            platform=platform.platform(),
            python=platform.python_version(),
            cpu_count=os.cpu_count(),
            load_average_start=list(os.getloadavg()),
            numba_threads=numba.config.NUMBA_NUM_THREADS,
        ),
        versions=dict(
            perovstem=perovstem.__version__,
            numpy=np.__version__,
            scipy=scipy.__version__,
            numba=numba.__version__,
        ),
    )
    have_atomap = False
    if not args.skip_atomap:
        try:
            from importlib.metadata import version

            import atomap  # noqa: F401

            res["versions"]["atomap"] = version("atomap")
            have_atomap = True
        except Exception as exc:  # pragma: no cover
            res["atomap_unavailable"] = repr(exc)

    # warm-up (numba compilation is cached on disk; not part of the timings)
    from perovstem import Image
    from perovstem.atoms import find_peaks, fit_columns

    # (a scene big enough for every code path of the sweeps — active sets from the 3rd sweep —
    # with and without numba threads, so that no timed fit loads a compiled specialisation)
    wimg, _ = square_scene(20)
    wstart = find_peaks(Image(wimg, 1.0), separation_A=9.6)
    for par in (False, True):
        fit_columns(Image(wimg, 1.0), wstart, width="column", parallel=par, joint=False)
        fit_columns(Image(wimg, 1.0), wstart, width="column", parallel=par)

    # 1. square scene, same image for both
    if have_atomap:
        signal, image, truth = atomap_scene("square")
        truth["height"] = truth["amp"] / (2 * np.pi * truth["sigma"] ** 2)
    else:
        image, truth = square_scene(20 if args.quick else 56)
        signal = None
    bound = crlb_gaussian_noise(truth, image.shape, truth["noise"])
    ours = per_axis(run_ours(image, truth, separation=0.6 * truth["nn"], threads_ab=True))
    sq = dict(
        n_true=len(truth["x"]),
        image_px=list(image.shape),
        crlb_per_axis_px=bound,
        ours=ours,
        ours_rms_over_crlb=ours["rms_per_axis_px"] / bound,
    )
    if have_atomap:
        peer = per_axis(run_atomap(signal, image, truth, 0.6 * truth["nn"]))
        sq.update(
            atomap=peer,
            atomap_rms_over_crlb=peer["rms_per_axis_px"] / bound,
            speedup_total=ours["columns_per_s_total"] / peer["columns_per_s_total"],
            speedup_fit=ours["columns_per_s_fit"] / peer["columns_per_s_gaussian"],
            speedup_fit_numba_threads=ours["columns_per_s_fit_numba_threads"]
            / peer["columns_per_s_gaussian"],
            speedup_fit_one_thread=ours["columns_per_s_fit_one_thread"]
            / peer["columns_per_s_gaussian"],
        )
    res["square_snr20"] = sq
    print(json.dumps({"square_snr20": sq}, indent=1), flush=True)

    # 2. CsPbBr3-like scene (Pb-Br + Cs targets, Br distractors)
    if have_atomap and not args.quick:
        from perovstem.atoms import cspbbr3_001_cell

        signal, image, truth = atomap_scene("cspbbr3")
        cell = cspbbr3_001_cell(28.0)  # a in px (pixel size 1)
        ours = per_axis(run_ours(image, truth, cell=cell, width="column", threads_ab=True))
        peer = per_axis(run_atomap(signal, image, truth, 0.5 * truth["nn"]))
        res["cspbbr3_like"] = dict(
            n_targets=len(truth["x"]),
            image_px=list(image.shape),
            ours=ours,
            atomap=peer,
            note="ours finds and fits the Br columns too (n_columns includes them, jointly "
            "fitted); recall/precision/rms are over the Pb-Br + Cs targets (ours labels Br); "
            "speedups are per fitted column",
            speedup_total=ours["columns_per_s_total"] / peer["columns_per_s_total"],
            speedup_fit=ours["columns_per_s_fit"] / peer["columns_per_s_gaussian"],
            speedup_fit_numba_threads=ours["columns_per_s_fit_numba_threads"]
            / peer["columns_per_s_gaussian"],
            speedup_fit_one_thread=ours["columns_per_s_fit_one_thread"]
            / peer["columns_per_s_gaussian"],
        )
        print(json.dumps({"cspbbr3_like": res["cspbbr3_like"]}, indent=1), flush=True)

    # 3. real images
    res["statstem_real"] = real_images()
    print(json.dumps({"statstem_real": res["statstem_real"]}, indent=1), flush=True)

    # 4. scaling of our fitter (Gaussian noise, widths per column)
    scal = []
    for n_side in [14, 28] if args.quick else [28, 56, 112, 224]:
        image, truth = square_scene(n_side, seed=3)
        r = run_ours(image, truth, separation=0.6 * 16.0)
        scal.append(
            dict(
                n_columns=r["n_columns"],
                image_px=list(image.shape),
                seconds_fit=r["seconds_fit"],
                columns_per_s_fit=r["columns_per_s_fit"],
                n_sweeps=r["n_sweeps"],
                numba_threads_used=r["numba_threads_used"],
                load_average_1min=r["load_average_1min"],
                rms_px=r["rms_px"],
            )
        )
        print(json.dumps(scal[-1]), flush=True)
    res["scaling_ours"] = scal
    res["machine"]["load_average_end"] = list(os.getloadavg())
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(res, indent=1, default=float))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
