"""Tomography benchmark: perovstem SIRT (batched numba strip projector) vs ASTRA CPU SIRT.

Plain script (not collected by pytest).  Writes ``benchmarks/results/bench_tomo.json``.

Setup (the acceptance case of issue 8): analytic faceted nanocrystal phantom with two Pb
inclusions (``perovstem.simulate.nanocrystal_phantom``), 256³ voxels, 71 projections over
±70°, exact line integrals with 2×2 rays per pixel and Poisson noise (no inverse crime: the
data are not made with either projector), 100 SIRT iterations with non-negativity.

* ours: the whole 256³ volume, 2 numba threads; wall and CPU seconds.
* ASTRA (astra-toolbox, CPU, ``linear`` projector, ``MinConstraint = 0``) runs 2-D slice by
  slice on one thread (ASTRA has no CPU 3-D); it is timed on a subset of slices and
  extrapolated to 256 slices (1 core, and ideal 2 processes = half).
* error: relative L2 to the 256³ partial-volume truth on the ASTRA slices (both) and on the
  whole volume (ours); TV (Chambolle–Pock) error for the TV ≤ 0.6 × SIRT criterion.
* 512³: peak memory (RSS, separate process) and time per iteration of ours.
* align: wall and CPU seconds of ``perovstem.tomo.align`` with its defaults on shifted 48 px
  compact cubes (53 tilts over ±65°, 2 px random shifts, tilt axis 7°; the cubes of
  tests/tomo/test_align.py) and on ETSpy's FIB needle (256², 77 tilts, ``matching_iter=2``,
  as the test; skipped when ../shared/data/tomo, or ``$PEROVSTEM_SHARED_DATA``/tomo, is
  absent), with the axis and its σ.  No
  peer figure: ASTRA has no alignment, and ETSpy's/TomoPy's are not timed here.

The machine is shared by other jobs: the load average is recorded, and CPU seconds
(``time.process_time``) are reported next to wall seconds as the contention-robust figure.

Usage::

    python benchmarks/bench_tomo.py [--size 256] [--iters 100] [--astra-slices 4] [--no-512]
                                    [--no-align | --only-align]

``--astra-slices 0`` skips ASTRA (no ASTRA ratios in ``ratio``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests" / "tomo"))
from _cubes import clean_cube  # noqa: E402  (the alignment tests' cube)

OUT = HERE / "results" / "bench_tomo.json"


def _versions() -> dict:
    out = {}
    for pkg in ("perovstem", "numpy", "scipy", "numba", "astra-toolbox", "scikit-image"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = None
    return out


def _machine() -> dict:
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": sys.version.split()[0],
        "loadavg_start": list(os.getloadavg()),
    }


def _case(n: int, seed: int = 1):
    from perovstem.simulate.tilt import nanocrystal_phantom, tilt_series

    ph = nanocrystal_phantom(
        0.48 * n,
        orientation_deg=(25.0, 35.0, 15.0),
        inclusion_radius_A=(0.025 * n, 0.035 * n),
        rng=seed,
    )
    ang = np.linspace(-70.0, 70.0, 71)
    t0 = time.perf_counter()
    ts, tr = tilt_series(ph, ang, shape=(n, n), pixel_size_A=1.0, counts_per_A=8.0, rng=seed)
    t_sim = time.perf_counter() - t0
    t0 = time.perf_counter()
    truth = ph.voxelize((n, n, n), 1.0) * 8.0
    t_vox = time.perf_counter() - t0
    return ph, ts, tr, truth, t_sim, t_vox


def _rel(v, t) -> float:
    return float(np.linalg.norm(v - t) / np.linalg.norm(t))


def run_main(n: int, iters: int, n_astra: int) -> dict:
    import numba

    from perovstem.tomo import fbp, reconstruct, sirt

    numba.set_num_threads(min(2, os.cpu_count() or 1))
    ph, ts, tr, truth, t_sim, t_vox = _case(n)
    res: dict = {
        "setup": {
            "size": n,
            "n_angles": 71,
            "tilt_range_deg": 70,
            "iterations": iters,
            "noise": f"Poisson, counts_per_A=8 (peak ≈ {int(ts.data.max())} counts)",
            "phantom": "truncated cube {100}/{110}/{111}, 2 Pb inclusions, exact line integrals",
            "threads_ours": numba.get_num_threads(),
        },
        "simulate_tilt_series_s": t_sim,
        "voxelize_truth_s": t_vox,
    }
    # warm up numba (compile/cache load) on a tiny problem
    sirt(ts.data[:, :, :4], ts.angles_deg, n_iter=2)

    w0, c0 = time.perf_counter(), time.process_time()
    rec = sirt(ts, n_iter=iters, nonneg=True)
    w1, c1 = time.perf_counter(), time.process_time()
    ours = {
        "sirt_nonneg_wall_s": w1 - w0,
        "sirt_nonneg_cpu_s": c1 - c0,
        "s_per_slice_iteration_wall": (w1 - w0) / (n * iters),
        "rel_l2_volume": _rel(rec.volume, truth),
    }
    w0 = time.perf_counter()
    rec_u = sirt(ts, n_iter=iters, nonneg=False)
    ours["sirt_unconstrained_wall_s"] = time.perf_counter() - w0
    w0 = time.perf_counter()
    rec_f = fbp(ts, filter_name="shepp-logan")
    ours["fbp_wall_s"] = time.perf_counter() - w0
    w0 = time.perf_counter()
    rec_tv = reconstruct(ts, method="tv", n_iter=iters)
    ours["tv_wall_s"] = time.perf_counter() - w0
    ours["rel_l2_volume_tv"] = _rel(rec_tv.volume, truth)
    ours["rel_l2_volume_fbp"] = _rel(rec_f.volume, truth)
    ours["rel_l2_volume_unconstrained"] = _rel(rec_u.volume, truth)
    res["ours"] = ours

    sl = np.linspace(0.3 * n, 0.7 * n, n_astra).astype(int)
    res["slices"] = sl.tolist()
    peer: dict = {"available": False}
    res["ratio"] = {"error_tv_over_sirt_ours": ours["rel_l2_volume_tv"] / ours["rel_l2_volume"]}
    if n_astra <= 0:
        # nothing to time (the per-slice time divided by zero slices)
        peer["skipped"] = f"--astra-slices {n_astra}"
    else:
        try:
            import astra  # noqa: F401

            peer["available"] = True
        except Exception as exc:  # pragma: no cover
            peer["error"] = repr(exc)
    if peer["available"]:
        from perovstem.tomo.backends import astra_reconstruct

        w0, c0 = time.perf_counter(), time.process_time()
        ra = astra_reconstruct(ts, method="sirt", n_iter=iters, nonneg=True, slices=sl)
        w1, c1 = time.perf_counter(), time.process_time()
        per_slice_wall = (w1 - w0) / len(sl)
        per_slice_cpu = (c1 - c0) / len(sl)
        ru = astra_reconstruct(ts, method="sirt", n_iter=iters, nonneg=False, slices=sl)
        rf = astra_reconstruct(ts, method="fbp", slices=sl)
        peer.update(
            {
                "projector": "linear (CPU)",
                "s_per_slice_iteration_wall": per_slice_wall / iters,
                "s_per_slice_iteration_cpu": per_slice_cpu / iters,
                "extrapolated_volume_1core_wall_s": per_slice_wall * n,
                "extrapolated_volume_1core_cpu_s": per_slice_cpu * n,
                "extrapolated_volume_2proc_ideal_s": per_slice_cpu * n / 2,
                "rel_l2_slices_sirt_nonneg": _rel(ra.volume[:, :, sl], truth[:, :, sl]),
                "rel_l2_slices_sirt_unconstrained": _rel(ru.volume[:, :, sl], truth[:, :, sl]),
                "rel_l2_slices_fbp": _rel(rf.volume[:, :, sl], truth[:, :, sl]),
            }
        )
        ours["rel_l2_slices_sirt_nonneg"] = _rel(rec.volume[:, :, sl], truth[:, :, sl])
        ours["rel_l2_slices_sirt_unconstrained"] = _rel(rec_u.volume[:, :, sl], truth[:, :, sl])
        ours["rel_l2_slices_fbp"] = _rel(rec_f.volume[:, :, sl], truth[:, :, sl])
        ours["rel_l2_slices_tv"] = _rel(rec_tv.volume[:, :, sl], truth[:, :, sl])
        res["ratio"].update(
            {
                "time_astra_1core_cpu_over_ours_cpu": peer["extrapolated_volume_1core_cpu_s"]
                / ours["sirt_nonneg_cpu_s"],
                "time_astra_2proc_ideal_over_ours_wall": peer["extrapolated_volume_2proc_ideal_s"]
                / ours["sirt_nonneg_wall_s"],
                "error_ours_over_astra_sirt_nonneg": ours["rel_l2_slices_sirt_nonneg"]
                / peer["rel_l2_slices_sirt_nonneg"],
            }
        )
    res["peer_astra"] = peer
    return res


def run_512(iters: int) -> dict:
    """Run in a child process so that the peak RSS belongs to the 512³ case alone."""
    code = f"""
import json, os, resource, time, numpy as np, numba
numba.set_num_threads(min(2, os.cpu_count() or 1))
from perovstem.simulate.tilt import nanocrystal_phantom, tilt_series
from perovstem.tomo import sirt
ph = nanocrystal_phantom(245.0, orientation_deg=(25, 35, 15), rng=1)
ang = np.linspace(-70, 70, 71)
ts, _ = tilt_series(ph, ang, shape=(512, 512), pixel_size_A=1.0, counts_per_A=8.0,
                    supersample=1, rng=1)
sirt(ts.data[:, :, :4], ang, n_iter=2)
w0, c0 = time.perf_counter(), time.process_time()
rec = sirt(ts, n_iter={iters})
w, c = time.perf_counter() - w0, time.process_time() - c0
print(json.dumps({{"iterations": {iters}, "wall_s": w, "cpu_s": c,
  "wall_s_per_iteration": w / {iters}, "extrapolated_100_iterations_wall_s": 100 * w / {iters},
  "peak_rss_GB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
  "volume_GB": rec.volume.nbytes / 1e9}}))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run_align(seeds: tuple[int, ...] = (200, 201, 202, 203)) -> dict:
    """Time ``align`` (defaults) on the test cubes and on the ETSpy needle."""
    import warnings

    from perovstem.tomo.align import align

    cases = [
        (f"cube48_seed{s}", lambda s=s: clean_cube(s, axis=7.0, shift=2.0), {}, 7.0) for s in seeds
    ]
    shared = os.environ.get("PEROVSTEM_SHARED_DATA") or HERE.parent.parent / "shared" / "data"
    needle = Path(shared) / "tomo" / "etspy_needle"
    if (needle / "HAADF.mrc").is_file():
        from perovstem.io import load

        def _needle():
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return load(needle / "HAADF.mrc")

        cases.append(("etspy_needle_256", _needle, {"matching_iter": 2}, -2.79))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        align(
            clean_cube(1, axis=7.0, shift=2.0), tilt_axis=0.0, matching_iter=1
        )  # numba compilation (cached)
    out = {"load_start": list(os.getloadavg()), "cases": {}}
    for name, make, kw, ref in cases:
        ts = make()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            w0, c0 = time.perf_counter(), time.process_time()
            al = align(ts, **kw)
            w, c = time.perf_counter() - w0, time.process_time() - c0
        out["cases"][name] = {
            "shape": list(ts.shape),
            "wall_s": w,
            "cpu_s": c,
            "tilt_axis_deg": al.tilt_axis_deg,
            "tilt_axis_err_deg": al.tilt_axis_err_deg,
            "reference_axis_deg": ref,  # true axis (cubes) or ETSpy's stored one (needle)
            "loadavg": os.getloadavg()[0],
        }
        print(name, json.dumps(out["cases"][name]), flush=True)
    out["load_end"] = list(os.getloadavg())
    out["date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--iters", type=int, default=100)
    p.add_argument(
        "--astra-slices", type=int, default=4, help="slices timed with ASTRA (0: skip ASTRA)"
    )
    p.add_argument("--iters-512", type=int, default=10)
    p.add_argument("--no-512", action="store_true")
    p.add_argument(
        "--only-512", action="store_true", help="re-run only the 512³ case, keep the rest"
    )
    p.add_argument("--no-align", action="store_true", help="skip the alignment timing")
    p.add_argument(
        "--only-align", action="store_true", help="re-run only the alignment timing, keep the rest"
    )
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    if a.only_align:
        res = json.loads(a.out.read_text()) if a.out.exists() else {}
        res["align"] = run_align()
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps(res, indent=2))
        return
    if a.only_512 and a.out.exists():
        res = json.loads(a.out.read_text())
        res["size_512"] = run_512(a.iters_512)
        res["size_512"]["loadavg"] = list(os.getloadavg())
        res["size_512"]["date"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        a.out.write_text(json.dumps(res, indent=2))
        print(json.dumps(res["size_512"], indent=2))
        return
    res = {"machine": _machine(), "versions": _versions()}
    res["main"] = run_main(a.size, a.iters, a.astra_slices)
    if not a.no_512:
        res["size_512"] = run_512(a.iters_512)
    if not a.no_align:
        res["align"] = run_align()
    res["machine"]["loadavg_end"] = list(os.getloadavg())
    res["machine"]["peak_rss_GB_main"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
