"""Check the Pb-cluster SCS library of :mod:`perovstem.insitu.clusters` against abTEM multislice.

The cluster atom counts of :func:`perovstem.insitu.detect_clusters` come from
:func:`perovstem.insitu.cluster_scs_library`: compact fcc Pb clusters viewed along [001],
each projected column taking the abTEM-calibrated Pb-column SCS(N).  That is an incoherent
sum of column cross-sections; it ignores cross-talk between neighbouring columns, the
host lattice under or above a cluster, and clusters that are not epitaxial (a randomly
oriented cluster does not channel).  This script measures the SCS of such clusters in
frozen-phonon multislice images (abTEM; Madsen & Susi, Open Res. Europe 1, 24 (2021)), so
that the counting model is tested on images made by a different model than the one it was
built from.

Three steps:

``--build``   (needs perovstem) writes the structures to ``--structures`` (npz):
              isolated compact clusters, epitaxial ([001] along the beam) and randomly
              oriented, and clusters on the entrance and exit surfaces of a periodic
              CsPbBr3 slab, plus the bare slab;
``--simulate`` (needs abtem; a GPU with CuPy when present) scans each structure's whole
              periodic box with a 300 kV, 20 mrad probe onto a 65–200 mrad annular
              detector, one frozen-phonon configuration at a time until ``--budget`` s, and
              writes the per-configuration images (fraction of the incident probe) to
              ``--outdir``/clusters_abtem.npz.  The scan step is below 1/(2α/λ), so the sum
              over the scan grid × step² is the exact box integral of the band-limited
              HAADF signal, i.e. the SCS in Å².  Slab and slab + cluster share the
              displacements of the slab atoms (same seed, cluster atoms appended), so the
              difference is the cluster's excess with the host's phonon noise cancelled.
``--analyse`` (needs perovstem) compares the excess SCS with the library and writes
              ``benchmarks/results/check_clusters_abtem.json``: SCS ratio multislice /
              library, and the atom count that the library gives for the multislice SCS.

Runs behind ``benchmarks/results/check_clusters_abtem.json`` (main set) and
``check_clusters_abtem_registry.json`` (50- and 20-atom clusters on the slab at other
lateral registries), one NVIDIA H200 each, abTEM 1.0.11 + CuPy 14.2 (abTEM, ase and dask
carried as wheels), 5–8 configurations per structure: 347 s and 265 s wall, about 680 s of
device time with the two machine starts.  Their mean images are the test data of
``tests/insitu/test_clusters_multislice.py`` (``--export``).

Usage::

    python benchmarks/check_clusters_abtem.py --build --structures S.npz
    python benchmarks/check_clusters_abtem.py --simulate --structures S.npz --outdir OUT
    python benchmarks/check_clusters_abtem.py --analyse --structures S.npz --images OUT/clusters_abtem.npz
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
A_HOST = 5.87  # Å, cubic CsPbBr3
A_PB = 4.95  # Å, fcc Pb
SIGMAS = {"Cs": 0.20, "Pb": 0.14, "Br": 0.20}  # Å per direction, host ions (calibration)
SIGMA_PB_METAL = 0.16  # Å, fcc Pb
SEMIANGLE, INNER, OUTER = 20.0, 65.0, 200.0
VOLTAGE_KV = 300.0
SAMPLING_A = 0.03  # potential sampling: antialias limit > 200 mrad at 300 kV
SCAN_STEP_A = 0.45  # < 1/(2α/λ) = 0.4925 Å at 300 kV, 20 mrad
SLICE_A = 2.0
VACUUM_BOX_A = 28.0
SLAB_CELLS = (5, 5, 4)  # lateral × lateral × thickness, unit cells


def _compact_fcc(n: int, *, rotation: np.ndarray | None = None, centre_frac=(0.25, 0.25, 0.25)):
    """The ``n`` fcc Pb sites nearest a centre (as the cluster library builds them)."""
    r = int(np.ceil((n / 4) ** (1 / 3))) + 3
    g = np.arange(-r, r + 1)
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cells = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    pts = (cells[:, None, :] + base[None, :, :]).reshape(-1, 3) * A_PB
    c = np.asarray(centre_frac) * A_PB
    pts = pts[np.argsort(np.linalg.norm(pts - c, axis=1), kind="stable")[:n]] - c
    if rotation is not None:
        pts = pts @ rotation.T
    return pts


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array(
        [
            [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
            [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
            [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
        ]
    )


def _slab():
    """Periodic CsPbBr3 slab, CsBr-terminated on both surfaces (cells along z + one CsBr
    layer), [001] along the beam (z)."""
    nx, ny, nz = SLAB_CELLS
    pos, num = [], []
    for i in range(nx):
        for j in range(ny):
            for k in range(nz + 1):
                o = np.array([i, j, k], float) * A_HOST
                # CsBr layer (z = k a): Cs at corner, Br at face centre (½,½,0)
                pos += [o, o + [0.5 * A_HOST, 0.5 * A_HOST, 0]]
                num += [55, 35]
                if k < nz:
                    # PbBr2 layer (z = (k+½) a): Pb at (½,½,½), Br at (½,0,½) and (0,½,½)
                    pos += [
                        o + [0.5 * A_HOST, 0.5 * A_HOST, 0.5 * A_HOST],
                        o + [0.5 * A_HOST, 0, 0.5 * A_HOST],
                        o + [0, 0.5 * A_HOST, 0.5 * A_HOST],
                    ]
                    num += [82, 35, 35]
    pos = np.array(pos)
    sig = np.array([SIGMAS[{55: "Cs", 35: "Br", 82: "Pb"}[z]] for z in num])
    return pos, np.array(num), sig, (nx * A_HOST, ny * A_HOST)


# lateral offsets (fractions of the host cell) of the registry set: where a cluster's columns
# fall on the host lattice changes how much of its image lies on the host's empty sites
REGISTRY_OFFSETS = ((0.0, 0.0), (0.25, 0.0), (0.5, 0.0), (0.5, 0.5), (0.125, 0.375))


def build(path: Path, *, registry: bool = False) -> None:
    rng = np.random.default_rng(20261126)
    structs: dict[str, np.ndarray] = {}
    names = []

    def add(name, pos, num, sig, cell, n_cluster, kind, group):
        names.append(name)
        structs[f"{name}__pos"] = np.asarray(pos, float)
        structs[f"{name}__num"] = np.asarray(num, np.int64)
        structs[f"{name}__sig"] = np.asarray(sig, float)
        structs[f"{name}__cell"] = np.asarray(cell, float)
        structs[f"{name}__meta"] = np.array([n_cluster, {"epi": 0, "rot": 1}[kind], group])

    # isolated clusters in vacuum (z extent = cluster + 4 Å margins)
    vacuum_sets = () if registry else (("epi", (13, 25, 50, 100, 150)), ("rot", (25, 50, 100)))
    for kind, sizes in vacuum_sets:
        for n in sizes:
            rot = _random_rotation(rng) if kind == "rot" else None
            p = _compact_fcc(n, rotation=rot)
            zmin, zmax = p[:, 2].min(), p[:, 2].max()
            L = VACUUM_BOX_A
            p = p + [L / 2, L / 2, 4.0 - zmin]
            cell = (L, L, zmax - zmin + 8.0)
            add(f"vac_{kind}_{n}", p, np.full(n, 82), np.full(n, SIGMA_PB_METAL), cell, n, kind, 0)
    # clusters on a periodic slab: entrance (top, z < 0 side) and exit surface
    sp, sn, ss, (lx, ly) = _slab()
    ztop, zbot = sp[:, 2].min(), sp[:, 2].max()
    gap = 3.0
    if registry:
        # offset (0, 0) is the main set's position
        slab_set = [
            (n, "top", o) for n in (50, 20) for o in REGISTRY_OFFSETS[1 : 5 if n == 50 else 3]
        ]
    else:
        slab_set = [(20, "top", (0.0, 0.0)), (50, "top", (0.0, 0.0)), (100, "top", (0.0, 0.0))]
        slab_set += [(50, "bottom", (0.0, 0.0)), (100, "bottom", (0.0, 0.0))]
    for n, side, (ox, oy) in slab_set:
        p = _compact_fcc(n)
        # epitaxial (cube-on-cube), centred near a Br column of the CsBr layer + offset
        p = p + [lx / 2 + (0.25 + ox) * A_HOST, ly / 2 + (0.25 + oy) * A_HOST, 0]
        if side == "top":
            p[:, 2] += ztop - gap - p[:, 2].max()
        else:
            p[:, 2] += zbot + gap - p[:, 2].min()
        add(
            f"slab_{side}_{n}" + (f"_x{ox:g}_y{oy:g}" if registry else ""),
            np.r_[sp, p],
            np.r_[sn, np.full(n, 82)],
            np.r_[ss, np.full(n, SIGMA_PB_METAL)],
            (lx, ly),
            n,
            "epi",
            1,
        )
    add("slab_bare", sp, sn, ss, (lx, ly), 0, "epi", 1)
    # shift every structure to z >= 4 Å and set a common slab-cell height
    zlo = min(structs[f"{nm}__pos"][:, 2].min() for nm in names if nm.startswith("slab"))
    zhi = max(structs[f"{nm}__pos"][:, 2].max() for nm in names if nm.startswith("slab"))
    for nm in names:
        if nm.startswith("slab"):
            structs[f"{nm}__pos"][:, 2] += 4.0 - zlo
            structs[f"{nm}__cell"] = np.array([lx, ly, zhi - zlo + 8.0])
    np.savez(path, names=np.array(names), **structs)
    print(f"wrote {len(names)} structures to {path}")


def _atoms(s, name):
    from ase import Atoms

    return Atoms(
        numbers=s[f"{name}__num"], positions=s[f"{name}__pos"], cell=s[f"{name}__cell"], pbc=True
    )


def simulate(
    path: Path,
    outdir: Path,
    budget_s: float,
    max_configs: int,
    device: str,
    *,
    sampling_A: float = SAMPLING_A,
    scan_step_A: float = SCAN_STEP_A,
    only: tuple[str, ...] = (),
) -> None:
    import abtem

    t_start = time.perf_counter()
    info: dict = {"abtem": abtem.__version__, "device": device}
    if device in ("auto", "gpu"):
        try:
            import cupy as cp

            cp.zeros(4).sum()
            info["gpu"] = cp.cuda.runtime.getDeviceProperties(0)["name"].decode()
            info["cupy"] = cp.__version__
            device = "gpu"
        except Exception as exc:  # noqa: BLE001 - fall back, say so
            info["gpu_error"] = repr(exc)[:300]
            device = "cpu"
    cfg = {"diagnostics.progress_bar": False, "device": device}
    cfg.update({"dask.chunk-size-gpu": "2048 MB"} if device == "gpu" else {"fft": "numpy"})
    abtem.config.set(cfg)
    info["device"] = device
    s = np.load(path)
    # the bare slab first: every slab + cluster image is paired with its configuration
    names = sorted((str(n) for n in s["names"]), key=lambda n: n != "slab_bare")
    names = [n for n in names if not only or n in only]
    out: dict[str, np.ndarray] = {}
    secs: dict[str, list] = {n: [] for n in names}
    # round-robin over configurations so that every structure gets the same number
    for c in range(max_configs):
        for name in names:
            if time.perf_counter() - t_start > budget_s:
                break
            at = _atoms(s, name)
            t0 = time.perf_counter()
            fp = abtem.FrozenPhonons(at, num_configs=1, sigmas=s[f"{name}__sig"], seed=1000 + c)
            cell = at.cell.lengths()
            gpts = tuple(int(np.ceil(L / sampling_A / 32) * 32) for L in cell[:2])
            nsl = int(np.ceil(cell[2] / SLICE_A))
            pot = abtem.Potential(
                fp,
                gpts=gpts,
                slice_thickness=cell[2] / nsl,
                projection="infinite",
                parametrization="lobato",
                device=device,
            )
            probe = abtem.Probe(energy=VOLTAGE_KV * 1e3, semiangle_cutoff=SEMIANGLE, device=device)
            probe.grid.match(pot)
            ns = tuple(int(np.ceil(L / scan_step_A)) for L in cell[:2])
            scan = abtem.GridScan(start=(0, 0), end=tuple(cell[:2]), gpts=ns, endpoint=False)
            det = abtem.AnnularDetector(inner=INNER, outer=OUTER)
            meas = probe.scan(pot, scan=scan, detectors=det).compute()
            if hasattr(meas, "to_cpu"):
                meas = meas.to_cpu()
            arr = meas.array
            arr = np.asarray(arr.get() if hasattr(arr, "get") else arr, np.float32)
            arr = arr.reshape(ns)
            key = f"{name}__img"
            out[key] = arr[None] if key not in out else np.concatenate([out[key], arr[None]])
            out[f"{name}__step"] = np.array([cell[0] / ns[0], cell[1] / ns[1]])
            secs[name].append(time.perf_counter() - t0)
            print(
                f"{name} config {c}: {secs[name][-1]:.2f} s, SCS "
                f"{arr.sum() * cell[0] * cell[1] / arr.size:.4f} A2",
                flush=True,
            )
        else:
            _save(outdir, out, info, secs, t_start)  # every full round, in case of a kill
            continue
        break
    _save(outdir, out, info, secs, t_start)


def _save(outdir: Path, out: dict, info: dict, secs: dict, t_start: float) -> None:
    info["seconds_per_config"] = {n: [round(x, 3) for x in v] for n, v in secs.items()}
    info["total_seconds"] = time.perf_counter() - t_start
    info["platform"] = platform.platform()
    outdir.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(outdir / "clusters_abtem.npz", **out)
    (outdir / "clusters_abtem_run.json").write_text(json.dumps(info, indent=1))
    print(f"saved after {info['total_seconds']:.0f} s", flush=True)


def analyse(
    path: Path, images: Path, run_json: Path | None, out_json: Path, export: Path | None = None
) -> None:
    from perovstem.insitu import atoms_from_scs, cluster_scs_library

    lib = cluster_scs_library(400, voltage_kV=VOLTAGE_KV)
    s = np.load(path)
    im = np.load(images)
    names = [str(n) for n in s["names"]]

    def scs(name):
        a = im[f"{name}__img"].astype(float)
        dx, dy = im[f"{name}__step"]
        return a.sum(axis=(1, 2)) * dx * dy  # per configuration, Å²

    rows = []
    bare = scs("slab_bare") if "slab_bare__img" in im else None
    for name in names:
        if f"{name}__img" not in im or name == "slab_bare":
            continue
        n, kind, group = (int(v) for v in s[f"{name}__meta"])
        per = scs(name)
        if group == 1:
            k = min(len(per), len(bare))
            per = per[:k] - bare[:k]  # paired: same slab displacements
        mean = float(per.mean())
        se = float(per.std(ddof=1) / np.sqrt(len(per))) if len(per) > 1 else float("nan")
        lib_scs = float(np.interp(n, lib["n_atoms"], lib["scs_A2"]))
        n_est = float(atoms_from_scs(np.array([mean]), lib)[0])
        rows.append(
            {
                "structure": name,
                "n_atoms": n,
                "orientation": ["epitaxial [001]", "random"][kind],
                "setting": ["vacuum", "on CsPbBr3 slab"][group],
                "configs": len(per),
                "scs_multislice_A2": round(mean, 5),
                "scs_multislice_se_A2": round(se, 5),
                "scs_library_A2": round(lib_scs, 5),
                "ratio_multislice_over_library": round(mean / lib_scs, 4),
                "n_from_library": round(n_est, 2),
                "count_error_rel": round(n_est / n - 1, 4),
            }
        )
    res = {
        "what": "Pb-cluster SCS: abTEM frozen-phonon multislice vs perovstem's cluster library",
        "settings": {
            "voltage_kV": VOLTAGE_KV,
            "semiangle_mrad": SEMIANGLE,
            "detector_mrad": [INNER, OUTER],
            "potential_sampling_A": SAMPLING_A,
            "scan_step_A": SCAN_STEP_A,
            "slice_A": SLICE_A,
            "sigmas_A": {**SIGMAS, "Pb_metal": SIGMA_PB_METAL},
            "slab_cells": SLAB_CELLS,
        },
        "device_run": json.loads(run_json.read_text()) if run_json and run_json.exists() else None,
        "analysis_machine": {"platform": platform.platform(), "python": sys.version.split()[0]},
        "rows": rows,
    }
    if rows:
        err = np.array([r["count_error_rel"] for r in rows])
        res["summary"] = {
            "within_15pct": int(np.sum(np.abs(err) <= 0.15)),
            "n": len(rows),
            "median_count_error_rel": float(np.median(err)),
            "max_abs_count_error_rel": float(np.max(np.abs(err))),
        }
    out_json.write_text(json.dumps(res, indent=1))
    if export is not None:
        # mean image per structure (fraction of the incident probe per scan position) and
        # the per-configuration box SCS: the test data of tests/insitu/test_clusters_multislice
        # slab structures: the excess over the bare slab of the same run (paired
        # configurations; the slab's slicing follows the run's cell height)
        data = dict(np.load(export)) if export.exists() else {"names": np.array([], str)}
        have = [str(n) for n in data["names"]]
        a0 = im["slab_bare__img"].astype(float) if "slab_bare__img" in im else None
        for n in names:
            if f"{n}__img" not in im or (n == "slab_bare" and n in have):
                continue
            a = im[f"{n}__img"].astype(float)
            dx, dy = im[f"{n}__step"]
            if int(s[f"{n}__meta"][2]) == 1 and n != "slab_bare":
                k = min(len(a), len(a0))
                a = a[:k] - a0[:k]
            data[f"{n}__mean"] = a.mean(0).astype(np.float32)
            data[f"{n}__scs_A2"] = a.sum(axis=(1, 2)) * dx * dy
            data[f"{n}__step_A"] = np.array([dx, dy])
            data[f"{n}__meta"] = s[f"{n}__meta"]
            have += [] if n in have else [n]
        data["names"] = np.array(have)
        np.savez_compressed(export, **data)
        print(f"wrote {export}")
    for r in rows:
        print(r)
    print(res.get("summary"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--build", action="store_true")
    ap.add_argument("--registry", action="store_true", help="build the registry set")
    ap.add_argument("--simulate", action="store_true")
    ap.add_argument("--analyse", action="store_true")
    ap.add_argument("--structures", type=Path, default=Path("clusters_structs.npz"))
    ap.add_argument("--outdir", type=Path, default=Path("."))
    ap.add_argument("--images", type=Path, default=None)
    ap.add_argument("--budget", type=float, default=330.0, help="simulation time budget, s")
    ap.add_argument("--max-configs", type=int, default=12)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--sampling", type=float, default=SAMPLING_A, help="potential, Å (smoke test)")
    ap.add_argument("--only", nargs="*", default=(), help="structure names (smoke test)")
    ap.add_argument("--scan-step", type=float, default=SCAN_STEP_A, help="Å (smoke test)")
    ap.add_argument("--export", type=Path, default=None, help="test-data npz (mean images)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "check_clusters_abtem.json")
    a = ap.parse_args(argv)
    if a.build:
        build(a.structures, registry=a.registry)
    if a.simulate:
        simulate(
            a.structures,
            a.outdir,
            a.budget,
            a.max_configs,
            a.device,
            sampling_A=a.sampling,
            scan_step_A=a.scan_step,
            only=tuple(a.only),
        )
    if a.analyse:
        images = a.images or a.outdir / "clusters_abtem.npz"
        analyse(a.structures, images, images.parent / "clusters_abtem_run.json", a.out, a.export)


if __name__ == "__main__":
    main()
