"""Oracle of a *temporal* host reference for the on-crystal cluster counts (issue #7).

Question: the on-crystal counts of :func:`perovstem.insitu.detect_clusters` are limited by
the host under the cluster (``bench_onhost_ceiling.py``).  Earlier frames of the series saw
the same host cells before a cluster was born there: does the mean of the registered
earlier frames, cluster footprints masked, predict the host under a cluster well enough
to count on ``frame − reference`` (background subtraction by a temporal mean, Piccardi,
IEEE SMC 2004, 3099; the running-average reference of in-situ/liquid-cell TEM)?

For the series of ``bench_clusters.py`` (split mode, host reference carried as there), every
frame ``k`` gets references built from the frames ``j < k`` moved onto frame ``k``'s grid
with the TRUE drift (the simulator's plan; :func:`perovstem.insitu.analysis.shift_frame`),
scaled by the dose ratio, each pixel averaged over the frames where it lies outside every
cluster footprint (disc R + 4 Å of the KMC truth clusters of that frame, any size, or of
that frame's detections):

* ``mean``: noisy earlier frames, truth footprints (the oracle reference);
* ``mean_det``: noisy earlier frames, the detections' footprints (what a pipeline has);
* ``mean_nf``: the noise-free host renders of the earlier frames (no reference noise:
  only the host's change and the registration remain), truth footprints;
* ``last_nf``: per pixel the noise-free host of the LAST frame where it was free;
* ``host``: the noise-free host of frame ``k`` itself (the ceiling of
  ``bench_onhost_ceiling.py``).

The detector's own apertures and annuli (its centres, radii, nearest-segment partition)
are measured again on the cell average of ``frame − reference`` and converted to atoms.
A cluster whose aperture + annulus holds a pixel never free in an earlier frame (present
from frame 0, or covered ever since) falls back to the detector's count (``fallback``).
Reported per set:

* ``counts``: matched ≥ 10-atom truth objects on the crystal (disc + 3 Å in the field;
  ``vacuum_check``: those in the vacuum, where every reference is ≈ 0: a check of the
  oracle's registration, dose scaling and masks):
  share within 15 % of the truth count and median relative error, all objects (fallback
  to the current count) and the non-fallback ones alone, by the lag (frames since the
  aperture's pixels were last free, median over the aperture);
* ``dropped``: segments counted on the host-free map D and dropped for a count below
  ``min_atoms`` (the 280 K recall loss): their counts on ``frame − reference``, split by
  whether they lie on a missed ≥ 10-atom truth object or on no truth object;
* ``host_change_free``: at cluster-free crystal positions (no truth cluster within
  R + 10 Å), the noise-free host's residual in a 7 Å aperture minus its 3 Å annulus
  median (atoms): the frame's own host (what a spatial annulus leaves) vs its change
  over 1 and 3 frames (what a temporal reference leaves);
* ``host_change_under``: from the KMC atoms, the host's mass (Σ Z^1.7 of the host atoms;
  ``with_adatoms``: and of the Pb⁰ adatoms, which the host-alone render holds) lost in
  the disc R + 3 Å under each ≥ 10-atom truth cluster over 1, 3 and 6 frames, minus the
  loss of the 3 Å annulus scaled to the disc area, over the cluster's mass (82^1.7 per
  atom); and the host Pb atoms lost in the disc per cluster atom.

Run:  python benchmarks/bench_temporal_oracle.py [SET[,SET...]]  (default tune,tune280;
writes benchmarks/results/bench_temporal_oracle.json for the default sets; ~2 min per set on
2 busy cores).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "insitu"))

from _insitu_kmc import noise_free_parts  # noqa: E402

import bench_clusters as bc  # noqa: E402
from perovstem._data import Image  # noqa: E402
from perovstem.insitu import (  # noqa: E402
    clusters,
    detect_clusters,
    estimate_lattice,
    projected_objects,
    score_detections,
)
from perovstem.insitu.analysis import shift_frame  # noqa: E402
from perovstem.simulate.series import _image_kw, _plan  # noqa: E402

REFS = ("host", "mean", "mean_det", "mean_nf", "last_nf")
DRIFT = (0.8, -0.5)
JITTER = 0.3
Z17 = {"Cs": 55.0**1.7, "Pb": 82.0**1.7, "Br": 35.0**1.7, "Cd": 48.0**1.7}


def _discs(shape, xs, ys, rs, px):
    """Boolean map of the discs (x, y, r in Å) on a pixel grid of ``px`` Å."""
    m = np.zeros(shape, bool)
    for x, y, r in zip(xs, ys, rs, strict=True):
        h = int(np.ceil(r / px)) + 1
        r0, c0 = max(0, int(y / px) - h), max(0, int(x / px) - h)
        r1, c1 = min(shape[0], int(y / px) + h + 2), min(shape[1], int(x / px) + h + 2)
        yy, xx = np.mgrid[r0:r1, c0:c1]
        m[r0:r1, c0:c1] |= np.hypot(yy * px - y, xx * px - x) <= r
    return m


def _references(hist, k, shift_A, dose_k, host, px):
    """The references of frame ``k`` from the history of the earlier frames (own grids):
    dict name -> map (NaN where no earlier frame was free) and the last free frame index
    per pixel (-1: never)."""
    shape = host.shape
    acc = {n: [np.zeros(shape), np.zeros(shape)] for n in ("mean", "mean_det", "mean_nf")}
    last = np.full(shape, np.nan)
    last_j = np.full(shape, -1)
    for j, (fj, hj, mj, mdj) in enumerate(hist):
        sh = (shift_A[k] - shift_A[j])[::-1] / px  # image_k(r) = image_j(r - d_k + d_j)
        fjs, hjs = shift_frame(fj, sh) * dose_k, shift_frame(hj, sh) * dose_k
        free = np.clip(shift_frame(mj.astype(float), sh), 0, 1) < 0.01
        free_d = np.clip(shift_frame(mdj.astype(float), sh), 0, 1) < 0.01
        for name, img, w in (
            ("mean", fjs, free),
            ("mean_det", fjs, free_d),
            ("mean_nf", hjs, free),
        ):
            acc[name][0] += np.where(w, img, 0.0)
            acc[name][1] += w
        last = np.where(free, hjs, last)
        last_j = np.where(free, j, last_j)
    refs = {"host": host, "last_nf": last}
    for name, (s, w) in acc.items():
        refs[name] = np.where(w > 0, s / np.maximum(w, 1), np.nan)
    return refs, last_j


def _free_texture(host_k, host_lag, frame_cl, px, a_px, ang, dose):
    """Residual (atoms) of a 7 Å aperture minus its 3 Å annulus median at cluster-free
    crystal positions: of the frame's host and of its change from each earlier host."""
    lib = clusters._default_library()

    def ca(x):
        return clusters._cell_average(x[None], a_px, ang)[0]

    hk = ca(host_k)
    lvl = np.percentile(hk, 99.5)
    free = ~_discs(hk.shape, frame_cl["x_A"], frame_cl["y_A"],
                   bc._radius(frame_cl["n_atoms"]) + 10.0, px)  # fmt: skip
    maps = {"spatial_annulus": hk}
    maps.update({f"temporal_lag{lag}": ca(h) - hk for lag, h in host_lag.items()})
    rap, rr = 7.0, 3.0
    h = int((rap + rr) / px) + 1
    dy, dx = np.mgrid[-h : h + 1, -h : h + 1] * px
    dd = np.hypot(dy, dx)
    ap, ring = dd <= rap, (dd > rap) & (dd <= rap + rr)
    out = {n: [] for n in maps}
    step = int(6 / px)
    for i in range(h, hk.shape[0] - h, step):
        for j in range(h, hk.shape[1] - h, step):
            win = (slice(i - h, i + h + 1), slice(j - h, j + h + 1))
            if not (free[i, j] and (hk[win][ap | ring] > 0.25 * lvl).all()):
                continue
            for n, mp in maps.items():
                w = mp[win]
                v = float(w[ap].sum() - np.median(w[ring]) * ap.sum())
                out[n].append(float(np.sign(v) * clusters.atoms_from_scs(abs(v) / dose, lib)))
    return out


def _host_under(tr, frame_k, lags=(1, 3, 6)):
    """Per ≥ 10-atom truth cluster of frame ``frame_k`` over the crystal: the host mass lost
    under it (disc R + 3 Å minus the annulus loss scaled to the disc) over each lag, per
    cluster mass, and the host Pb atoms lost in the disc per cluster atom."""
    cl = tr.clusters
    ck = cl[(cl["frame"] == frame_k) & (cl["n_atoms"] >= 10)]
    snaps = {}
    for j in {frame_k, *(frame_k - lag for lag in lags if frame_k - lag >= 0)}:
        at = tr.atoms(j)
        lab = np.asarray(at.arrays["label"])
        keep = lab <= 1  # host and Pb0 adatoms (what the host-alone render holds)
        sym = np.array(at.get_chemical_symbols())[keep]
        z = np.array([Z17[s] for s in sym])
        snaps[j] = (at.positions[keep, :2], z, sym == "Pb", lab[keep] == 0)
    rows = []
    for _, t in ck.iterrows():
        r = float(bc._radius(t["n_atoms"])) + 3.0

        def mass(j, t=t, r=r):
            p, z, pb, host = snaps[j]
            d = np.hypot(p[:, 0] - t["x_A"], p[:, 1] - t["y_A"])
            ring = (d > r) & (d <= r + 3.0)
            area = r**2 / ((r + 3.0) ** 2 - r**2)
            local_h = z[(d <= r) & host].sum() - z[ring & host].sum() * area
            local_a = z[d <= r].sum() - z[ring].sum() * area
            return local_h, local_a, int(np.sum(pb & host & (d <= r)))

        wk, ak, pbk = mass(frame_k)
        if pbk < 5:  # not over the crystal
            continue
        row = {"n": int(t["n_atoms"])}
        for lag in lags:
            if frame_k - lag >= 0:
                wj, aj, pbj = mass(frame_k - lag)
                row[f"local_mass_lost_lag{lag}"] = (wj - wk) / (t["n_atoms"] * Z17["Pb"])
                row[f"local_mass_lost_with_adatoms_lag{lag}"] = (aj - ak) / (
                    t["n_atoms"] * Z17["Pb"]
                )
                row[f"host_pb_lost_lag{lag}"] = (pbj - pbk) / t["n_atoms"]
        rows.append(row)
    return rows


def run_set(cases):
    """Rows of the counts, dropped segments, free-host texture and host-under parts."""
    state: dict = {}
    orig = clusters._aperture_counts

    def wrap(e, regions, box, cx, cy, tot, npx, which, raw, **kw):
        out = orig(e, regions, box, cx, cy, tot, npx, which, raw, **kw)
        kw0 = dict(kw, alt=None, e_alt=None, crystal=None)
        kw0.pop("ring_own", None)
        kw0.pop("prev_out", None)
        res = {}
        for name, ref in state["refs"].items():
            bad = ~np.isfinite(ref)
            img = np.where(bad, 0.0, raw - np.where(bad, 0.0, ref))
            mm = clusters._cell_average(img[None], state["a_px"], state["ang"])[0]
            res[name] = orig(mm, regions, box, cx, cy, tot, npx, which, raw, **kw0)[0]
        # the aperture + annulus radius of _aperture_counts
        lib0, g, dose, px = kw["library"], kw["g"], kw["dose"], kw["px"]
        r_cl = clusters._fcc_radius_A(
            clusters.atoms_from_scs(np.clip(tot, 0, None) / (g * dose), lib0)
        )
        reach = (r_cl + kw["aperture_A"] + 3.0) / px
        alt = kw.get("alt")
        yy, xx = np.ogrid[: raw.shape[0], : raw.shape[1]]
        for i in np.flatnonzero(which):
            near = np.hypot(yy - cy[i], xx - cx[i]) <= reach[i]
            ap = np.hypot(yy - cy[i], xx - cx[i]) <= reach[i] - 3.0 / px
            lj = state["last_j"][ap]
            state["caps"].append({
                "x": float(cx[i]), "y": float(cy[i]), "alt": bool(alt is not None and alt[i]),
                "counts": {n: v[i] for n, v in res.items()},
                "fallback": bool((state["last_j"][near] < 0).any()),
                "fallback_det": bool((~np.isfinite(state["refs"]["mean_det"][near])).any()),
                "lag": int(state["k"] - np.median(lj)) if (lj >= 0).all() else -1,
            })  # fmt: skip
        return out

    rows: dict[str, list] = {"counts": [], "dropped": [], "host_under": []}
    free_tex: dict[str, list] = {}
    lib = clusters._default_library()
    clusters._aperture_counts = wrap
    try:
        for seed, c in cases:
            px = c["px"]
            tr, s, truth = bc.kmc_imaged(
                c["edge"], rate=c["rate"], temperature_K=c["temp"], seed=seed, n_frames=12,
                pixel_size_A=px, drift_A_per_s=DRIFT, jitter_A=JITTER, rng=seed,
            )  # fmt: skip
            render = noise_free_parts(tr, s, pixel_size_A=px, seed=seed)
            plan = _plan(
                tr, pixel_size_A=px, shape=None, drift_A_per_s=DRIFT, jitter_A=JITTER,
                scan_drift=False, center_A=None, margin_A=10.0, rng=seed,
                image_kw=_image_kw(
                    {"voltage_kV": 300.0, "gain": 1.0, "offset": 0.0, "noise": True}
                ),
            )  # fmt: skip
            data = np.asarray(s.data, float)
            off, g = s.metadata.get("offset", 0.0), s.metadata.get("gain", 1.0)
            doses = np.asarray(s.dose_e_per_A2, float)
            la, ang, _ = estimate_lattice(data[0], px)
            kw = {"gain": g, "offset": off, "lattice_A": la, "lattice_angle_deg": ang}
            field = (data.shape[1] - 1) * px
            tcl = truth["clusters"]
            hist: list = []
            hosts: dict[int, np.ndarray] = {}
            kappas, prev = [], False
            for k in range(len(data)):
                host, _ = render(k)
                hosts[k] = host
                dk = float(doses[k])
                refs, last_j = _references(hist, k, plan.shift_A, dk, host, px)
                state.update(refs=refs, last_j=last_j, a_px=la / px, ang=ang, caps=[], k=k)
                img = Image(data[k], px, dose_e_per_A2=dk)
                det = detect_clusters(img, split=True, **kw)
                if det.attrs["host_model"] == "no_reference" and prev:
                    state["caps"] = []
                    ref = float(np.median(kappas))
                    det = detect_clusters(img, split=True, host_reference=ref, **kw)
                elif det.attrs["host_model"] == "lattice":
                    kappas.append(det.attrs["host_empty_site_ratio"])
                prev = det.attrs["host_model"] == "lattice"
                tk = tcl[tcl["frame"] == k]
                tc = projected_objects(tk)
                sc = score_detections(det, tc)
                caps = state["caps"]
                cxy = np.array([[cp["x"], cp["y"]] for cp in caps]).reshape(-1, 2)
                on_host = bc._host_mask(data[k], px, la, ang)
                # matched on-crystal objects: counts on frame - reference
                for (i, j), nd in zip(sc["pairs"], sc["n_atoms"], strict=True):
                    x, y, n = sc["objects"].loc[i, ["x_A", "y_A", "n_atoms"]]
                    if min(x, y, field - x, field - y) - bc._radius(n) <= 3.0:
                        continue
                    if not len(cxy):
                        continue
                    sums = dict.fromkeys(REFS, 0.0)
                    fb, fb_det, lag = False, False, 0
                    ok = True
                    for jj in [j, *sc["extra"].get(i, [])]:
                        dd = np.hypot(
                            cxy[:, 0] - det["x_px"].iloc[jj], cxy[:, 1] - det["y_px"].iloc[jj]
                        )
                        if dd.min() > 0.6:  # a part of a split segment: not one aperture
                            ok = False
                            break
                        cp = caps[int(np.argmin(dd))]
                        for name in sums:
                            sums[name] += cp["counts"][name]
                        fb |= cp["fallback"]
                        fb_det |= cp["fallback_det"]
                        lag = max(lag, cp["lag"])
                    if not ok:
                        continue
                    row = {"seed": seed, "frame": k, "n": float(n), "current": float(nd),
                           "fallback": fb, "fallback_det": fb_det, "lag": lag,
                           "on_crystal": on_host(x, y)}  # fmt: skip
                    for name, v in sums.items():
                        row[name] = float(clusters.atoms_from_scs(max(v, 0.0) / dk, lib))
                    rows["counts"].append(row)
                # segments counted on D and not reported (the count below min_atoms)
                dxy = det[["x_px", "y_px"]].to_numpy(float).reshape(-1, 2)
                matched = {i for i, _ in sc["pairs"]}
                for cp in caps:
                    if not cp["alt"]:
                        continue
                    if len(dxy) and np.hypot(dxy[:, 0] - cp["x"], dxy[:, 1] - cp["y"]).min() < 0.6:
                        continue
                    dd = np.hypot(tc["x_A"] - cp["x"] * px, tc["y_A"] - cp["y"] * px).to_numpy()
                    hit = dd < np.maximum(5.0, bc._radius(tc["n_atoms"].to_numpy(float)) + 2.0)
                    nt = tc["n_atoms"].to_numpy(float)
                    missed = any(i not in matched and nt[i] >= 10 for i in np.flatnonzero(hit))
                    row = {"seed": seed, "frame": k, "truth": "missed_object" if missed else
                           ("small_object" if hit.any() else "none"),
                           "fallback": cp["fallback"]}  # fmt: skip
                    for name in REFS:
                        row[name] = float(
                            clusters.atoms_from_scs(max(cp["counts"][name], 0.0) / dk, lib)
                        )
                    rows["dropped"].append(row)
                if k in (4, 7, 10):
                    lagged = {
                        lag: shift_frame(hosts[k - lag], (plan.shift_A[k] - plan.shift_A[k - lag])[::-1] / px)
                        * dk / doses[k - lag]
                        for lag in (1, 3)
                    }  # fmt: skip
                    for name, v in _free_texture(host, lagged, tk, px, la / px, ang, dk).items():
                        free_tex.setdefault(name, []).extend(v)
                    rows["host_under"] += _host_under(tr, k)
                hist.append((
                    (data[k] - off) / dk, host / dk,
                    _discs(host.shape, tk["x_A"], tk["y_A"], bc._radius(tk["n_atoms"]) + 4.0, px),
                    _discs(host.shape, det["x_A"], det["y_A"], bc._radius(det["n_atoms"].clip(1)) + 4.0, px),
                ))  # fmt: skip
            print("seed", seed, len(rows["counts"]), len(rows["dropped"]), flush=True)
    finally:
        clusters._aperture_counts = orig
    return rows, free_tex


def _share(e):
    e = np.asarray(e, float)
    if not len(e):
        return None
    return {"n": int(len(e)), "within_15pct": round(float(np.mean(np.abs(e) < 0.15)), 3),
            "median_err": round(float(np.median(e)), 3)}  # fmt: skip


def _counts_summary(cr):
    n = np.array([r["n"] for r in cr])
    fb = np.array([r["fallback"] for r in cr], bool)
    fb_det = np.array([r["fallback_det"] for r in cr], bool)
    lag = np.array([r["lag"] for r in cr])
    cur = np.array([r["current"] for r in cr]) / n - 1
    counts = {"n": int(len(cr)), "fallback_share": round(float(fb.mean()), 3),
              "fallback_share_det": round(float(fb_det.mean()), 3),
              "lag_hist": {str(int(v)): int(np.sum(lag[~fb] == v)) for v in np.unique(lag[~fb])}}  # fmt: skip
    for name in ("current", *REFS):
        e = np.array([r[name] for r in cr]) / n - 1
        f = {"mean_det": fb_det, "host": ~fb & fb, "current": ~fb & fb}.get(name, fb)
        counts[name] = {
            "all_fallback_current": _share(np.where(f, cur, e)),
            "non_fallback": _share(e[~f]),
            "lag_1_3": _share(e[~f & (lag >= 1) & (lag <= 3)]),
            "lag_ge_4": _share(e[~f & (lag >= 4)]),
        }
    return counts


def summary(rows, free_tex):
    counts = _counts_summary([r for r in rows["counts"] if r["on_crystal"]])
    # the same references in the vacuum (host ≈ 0 there): a check of the oracle itself
    counts["vacuum_check"] = _counts_summary([r for r in rows["counts"] if not r["on_crystal"]])
    dropped = {}
    for kind in ("missed_object", "small_object", "none"):
        sel = [r for r in rows["dropped"] if r["truth"] == kind]
        dropped[kind] = {"n": len(sel), "fallback": int(sum(r["fallback"] for r in sel))}
        for name in REFS:
            v = np.array([r[name] for r in sel if not r["fallback"]])
            if len(v):
                dropped[kind][name] = {"median_atoms": round(float(np.median(v)), 1),
                                       "at_least_5_atoms": int(np.sum(v >= 5.0))}  # fmt: skip
    tex = {name: {"n": len(v), "median_abs_atoms": round(float(np.median(np.abs(v))), 2),
                  "p90_abs_atoms": round(float(np.percentile(np.abs(v), 90)), 2)}
           for name, v in free_tex.items() if len(v)}  # fmt: skip
    hu = {}
    for key in sorted({k for r in rows["host_under"] for k in r if k != "n"}):
        v = np.array([r[key] for r in rows["host_under"] if key in r])
        hu[key] = {"n": int(len(v)), "median": round(float(np.median(v)), 3),
                   "quartiles": [round(float(q), 3) for q in np.percentile(v, [25, 75])]}  # fmt: skip
    return {"counts": counts, "dropped": dropped, "host_change_free": tex, "host_change_under": hu}


def main():
    sets = sys.argv[1].split(",") if len(sys.argv) > 1 else ["tune", "tune280"]
    unknown = [s for s in sets if s not in bc.SETS]
    if unknown:
        sys.exit(f"usage: bench_temporal_oracle.py [SET[,SET...]]; unknown set(s) {unknown}")
    res = {}
    for name in sets:
        res[name] = summary(*run_set(bc.SETS[name]))
        print(name, json.dumps(res[name]), flush=True)
    if len(sys.argv) <= 1:
        (HERE / "results" / "bench_temporal_oracle.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
