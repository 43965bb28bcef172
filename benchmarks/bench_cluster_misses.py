"""Why ``bench_clusters`` misses >= 10-atom clusters: each miss broken down (issue #7).

For the series of ``bench_clusters.py`` (default the 280 K sets ``tune280`` and ``big280``;
split mode, host reference carried as there), every missed truth object (the bench's
scoring and miss causes) is described by

* ``role`` of the nearest detection: ``on_neighbour`` (matched to another >= 10-atom
  object), ``on_small`` (within reach of a < 10-atom truth object), ``extra`` (a further
  detection on an object of several clusters), ``unmatched``, ``none``; with the
  neighbour's distance and the ratio of the detection's count to the neighbour's truth
  (``nb_ratio``) and to neighbour + this object (``nb_sum_ratio``: a detection that took
  this object's atoms reads ~1 there);
* ``fate`` in the detector: ``absorbed`` (its pixels are significant but belong to a
  watershed segment whose marker is farther than the match distance: a neighbour's or a
  plateau segment), ``own_segment`` (a marker within the match distance), or
  ``not_significant`` (no pixel of its disc in the hysteresis mask); for ``absorbed`` the
  largest blob response (``_markers.blob_response``) within 3 Å of the object
  (``blob_response``; markers need ``_markers.BLOB_THRESHOLD``);
* ``dropped_by`` for an own segment: the one test whose removal brings a new detection
  within reach — ``on_d_below`` (the count on the host-free map D with the previous
  annulus below ``min_atoms``, ``_onhost.on_d_below``), ``min_atoms`` (the final count),
  ``host_patch_4c`` / ``plateau_patch_4d`` (the fringe-contrast vetoes), ``textured_peak``
  (step 4d's peak test) — else ``significance`` (the peak / integrated excess tests, the
  rest);
* brightness against shot noise (the ``bench_count_floor`` recipe, noise-free renders of
  host and clusters): ``snr_ap`` = Σ_ap c / sqrt(Σ_ap (h + c)) for the aperture R + 3 Å
  with the host known exactly (c, h the cluster and host counts), ``snr_d`` = ``snr_ap``
  × (1 − κ_h)/sqrt(1 + κ_h²) (the noise of a count on D, κ_h the frame's empty-site ratio;
  the detector counts on-crystal clusters on D), ``snr_opt`` the optimal-weights bound
  (Naylor 1998) over R + 8 Å, ``host_to_cluster`` the host's counts in the aperture per
  cluster count, ``edge_A`` the centre's signed distance to the crystal edge (< 0 on it).

The same brightness figures are given for every >= 10-atom object on the crystal plateau
below 20 atoms (hit or not): recall by ``snr_d`` bin, the detection curve the
``on_host_small`` misses sit on.

Run:  python benchmarks/bench_cluster_misses.py [SET[,SET...]]  (default tune280,big280;
writes benchmarks/results/bench_cluster_misses.json for the default; ~3 min idle).
"""

from __future__ import annotations

import json
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "insitu"))

import bench_clusters as bc  # noqa: E402
from _kmc_series import kmc_series  # noqa: E402
from perovstem._data import Image  # noqa: E402
from perovstem.insitu import _markers as mk  # noqa: E402
from perovstem.insitu import clusters as cl  # noqa: E402
from perovstem.insitu import detect_clusters, score_detections  # noqa: E402
from perovstem.insitu._host import HostReference  # noqa: E402
from perovstem.insitu.evaluation import _reach  # noqa: E402

R = bc._radius


@contextmanager
def _capture():
    """The detector's hysteresis mask, watershed markers/regions and blob response of the
    next ``detect_clusters`` call (skimage functions it imports at call time)."""
    import skimage.filters as skf
    import skimage.segmentation as sks

    cap: dict = {}
    hyst, ws, bm = skf.apply_hysteresis_threshold, sks.watershed, mk.blob_markers

    def h(z, lo, hi):
        cap["mask"] = hyst(z, lo, hi)
        return cap["mask"]

    def w(flood, markers, mask=None):
        cap["markers"], cap["regions"] = markers.copy(), ws(flood, markers, mask=mask)
        return cap["regions"]

    def b(response, *a, **k):
        cap["blob"] = response
        return bm(response, *a, **k)

    skf.apply_hysteresis_threshold, sks.watershed, mk.blob_markers = h, w, b
    try:
        yield cap
    finally:
        skf.apply_hysteresis_threshold, sks.watershed, mk.blob_markers = hyst, ws, bm


def _none_patch(df, keep, *a, **k):
    return np.zeros(len(df), bool)


TOGGLES = {
    "on_d_below": ({"on_d_below": lambda v, *a, **k: np.zeros(len(v), bool)}, {}),
    "min_atoms": ({}, {"min_atoms": 0.0}),
    "host_patch_4c": ({"_host_patch": _none_patch}, {}),
    "plateau_patch_4d": ({"_plateau_patch": _none_patch}, {}),
    "textured_peak": ({"_textured_peak": lambda *a, **k: np.full(a[8], np.inf)}, {}),
}


def _detect(img, kw, patch=None, extra=None):
    saved = {n: getattr(cl, n) for n in (patch or {})}
    try:
        for n, f in (patch or {}).items():
            setattr(cl, n, f)
        return detect_clusters(img, split=True, **kw, **(extra or {}))
    finally:
        for n, f in saved.items():
            setattr(cl, n, f)


def _fate(cap, x, y, n, px):
    """Segment fate of the object at (x, y) Å of ``n`` atoms (see the module notes)."""
    mask, regions, markers = cap["mask"], cap["regions"], cap["markers"]
    rr, cc = np.nonzero(mask)
    pad = int(3 * max(1.0, 2.0 / px)) + 2  # detect_clusters' box (default smooth_A)
    r0, c0 = max(0, rr.min() - pad), max(0, cc.min() - pad)
    yy, xx = np.mgrid[r0 : r0 + regions.shape[0], c0 : c0 + regions.shape[1]] * px
    dist = np.hypot(xx - x, yy - y)
    labs = regions[dist < R(n) + 1.0]
    labs = labs[labs > 0]
    if not len(labs):
        return {"fate": "not_significant"}
    lab = int(np.bincount(labs).argmax())
    mpos = np.argwhere(markers == lab)[0]
    md = float(np.hypot(mpos[1] * px + c0 * px - x, mpos[0] * px + r0 * px - y))
    out = {"fate": "own_segment" if md < max(5.0, R(n) + 2.0) else "absorbed",
           "marker_distance_A": md, "segment_area_A2": float((regions == lab).sum() * px * px)}  # fmt: skip
    if out["fate"] == "absorbed" and "blob" in cap:
        out["blob_response"] = float(cap["blob"][dist < 3.0].max())
    return out


def series_rows(name, seed, c):
    px = c["px"]
    tr, s, truth, render, data, la, ang, _ = kmc_series(seed, c)
    kw = {"gain": s.metadata.get("gain", 1.0), "offset": s.metadata.get("offset", 0.0),
          "lattice_A": la, "lattice_angle_deg": ang}  # fmt: skip
    g = kw["gain"]
    field = (data.shape[1] - 1) * px
    carried = HostReference(pixel_size_A=px)
    yy, xx = np.mgrid[0 : data.shape[1], 0 : data.shape[2]] * px
    misses, objects = [], []
    for k in range(len(data)):
        dose = float(np.asarray(s.dose_e_per_A2)[k])
        img = Image(data[k], px, dose_e_per_A2=dose)
        raw, scale = data[k] - kw["offset"], g * dose
        det = detect_clusters(img, split=True, **kw)
        ref = carried.reference(det, raw, scale=scale)
        kw2 = dict(kw)
        if ref is not None:
            kw2["host_reference"] = ref
            det = detect_clusters(img, split=True, **kw2)
        det = carried.update(det, raw, scale=scale)
        kappa = float(det.attrs.get("host_empty_site_ratio", np.nan))
        d_scale = np.sqrt(1.0 + kappa**2) / (1.0 - kappa) if np.isfinite(kappa) else np.nan
        tc = bc.truth_objects(truth["clusters"][truth["clusters"]["frame"] == k])
        sc = score_detections(det, tc)
        big, pairs = sc["objects"], sc["pairs"]
        if not len(big):
            continue
        host = bc._host_mask(data[k], px, la, ang)
        h, cc = render(k)
        o2d, d2o = dict(pairs), {j: i for i, j in pairs}
        extra_of = {j for js in sc["extra"].values() for j in js}
        dxy = det[["x_A", "y_A"]].to_numpy(float).reshape(-1, 2)
        rdet = R(det["n_atoms"].to_numpy(float))
        okr = _reach(big, det)[1] if len(det) else np.zeros((len(big), 0), bool)
        ok_small = (_reach(tc[tc["n_atoms"] < 10], det)[1].any(axis=0)
                    if len(det) and (tc["n_atoms"] < 10).any() else np.zeros(len(det), bool))  # fmt: skip
        frame_miss = []
        for i in range(len(big)):
            x, y, n = (float(v) for v in big.loc[i, ["x_A", "y_A", "n_atoms"]])
            r = float(R(n))
            reach = max(5.0, r + 2.0)
            dist = np.hypot(xx - x, yy - y)
            ap, wide = dist < r + 3.0, dist < r + 8.0
            sig = float(cc[ap].sum())
            snr_ap = sig / np.sqrt(g * max(float((h + cc)[ap].sum()), 1e-9))
            row = {"set": name, "seed": seed, "frame": k, "x_A": x, "y_A": y, "n": n,
                   "n_clusters": int(big.loc[i, "n_clusters"]), "on_host": host(x, y),
                   "edge_A": host.edge_A(x, y), "hit": i in o2d, "snr_ap": snr_ap,
                   "snr_d": snr_ap / d_scale,
                   "snr_opt": float(np.sqrt(np.sum(cc[wide] ** 2 / np.maximum(g * (h + cc)[wide], 1e-9)))),
                   "host_to_cluster": float(h[ap].sum()) / max(sig, 1e-9)}  # fmt: skip
            objects.append(row)
            if i in o2d:
                continue
            dd = np.hypot(dxy[:, 0] - x, dxy[:, 1] - y)
            if min(x, y, field - x, field - y) - r <= 3.0:
                cause = "edge"
            elif len(dd) and np.any(dd < rdet + 1.0):
                cause = "touching"
            elif len(dd) and np.any(dd < 2 * reach):
                cause = "offset"
            else:
                cause = ("on_host" if host(x, y) else "vacuum_undetected") + (
                    "_small" if n < 20 else ""
                )
            m = dict(row, cause=cause, role="none")
            if len(dd):
                j = int(np.argmin(dd))
                m.update(det_distance_A=float(dd[j]), det_n=float(det["n_atoms"].iloc[j]))
                if j in d2o:
                    xo, yo, no = (float(v) for v in big.loc[d2o[j], ["x_A", "y_A", "n_atoms"]])
                    m.update(role="on_neighbour", nb_n=no, nb_distance_A=float(np.hypot(xo - x, yo - y)),
                             det_to_nb_A=float(np.hypot(xo - dxy[j, 0], yo - dxy[j, 1])),
                             nb_ratio=m["det_n"] / no, nb_sum_ratio=m["det_n"] / (no + n),
                             in_reach_of_this=bool(okr[i, j]))  # fmt: skip
                elif j in extra_of:
                    m["role"] = "extra"
                elif ok_small[j]:
                    m["role"] = "on_small"
                else:
                    m["role"] = "unmatched"
            frame_miss.append((i, m))
        if not frame_miss:
            continue
        with _capture() as cap:
            det2 = detect_clusters(img, split=True, **kw2)
        if len(det2) != len(det):  # the capture run must be the scored one
            raise RuntimeError(f"seed {seed} frame {k}: capture run differs")
        toggled = {t: _detect(img, kw2, p, e) for t, (p, e) in TOGGLES.items()}
        for i, m in frame_miss:
            m.update(_fate(cap, m["x_A"], m["y_A"], m["n"], px))
            m["dropped_by"] = None
            if m["fate"] == "own_segment":
                one = big.iloc[[i]].reset_index(drop=True)
                for t, dp in toggled.items():
                    if not len(dp):
                        continue
                    new = [j for j in np.flatnonzero(_reach(one, dp)[1][0])
                           if not len(det) or np.hypot(dxy[:, 0] - dp["x_A"].iloc[j],
                                                       dxy[:, 1] - dp["y_A"].iloc[j]).min() > 1.0]  # fmt: skip
                    if new:
                        m["dropped_by"] = t
                        m["n_without_test"] = float(dp["n_atoms"].iloc[new[0]])
                        break
                else:
                    m["dropped_by"] = "significance"
            misses.append(m)
    return misses, objects


def _q(v):
    v = np.asarray(v, float)
    v = v[np.isfinite(v)]
    return [round(float(q), 2) for q in np.percentile(v, [0, 25, 50, 75, 100])] if len(v) else None


def summarise(mi: pd.DataFrame, ob: pd.DataFrame) -> dict:
    out = {"misses": int(len(mi)), "by_cause": mi["cause"].value_counts().to_dict()}
    tab = {}
    for cause, g in mi.groupby("cause"):
        tab[cause] = {
            "n": int(len(g)),
            "role": g["role"].value_counts().to_dict(),
            "fate": g["fate"].value_counts().to_dict(),
            "dropped_by": g["dropped_by"].dropna().value_counts().to_dict(),
            "snr_ap_quantiles": _q(g["snr_ap"]),
            "snr_ap_below_6": int((g["snr_ap"] < 6).sum()),
            "snr_d_quantiles": _q(g["snr_d"]),
            "snr_d_below_6": int((g["snr_d"] < 6).sum()),
            "snr_opt_quantiles": _q(g["snr_opt"]),
            "edge_A_quantiles": _q(g["edge_A"]),
        }
        nb = g[g["role"] == "on_neighbour"]
        if len(nb):
            tab[cause]["on_neighbour"] = {
                "nb_distance_A_quantiles": _q(nb["nb_distance_A"]),
                "det_to_nb_A_quantiles": _q(nb["det_to_nb_A"]),
                "det_count_nearer_nb_plus_this": int(
                    (abs(nb["nb_sum_ratio"] - 1) < abs(nb["nb_ratio"] - 1)).sum()),
                "detection_in_reach_of_this": int(nb["in_reach_of_this"].sum()),
            }  # fmt: skip
        ab = g[g["fate"] == "absorbed"]
        if len(ab) and "blob_response" in ab:
            tab[cause]["absorbed_blob_response_quantiles"] = _q(ab["blob_response"])
    out["causes"] = tab
    inside = ob["on_host"] & (ob["n"] < 20)
    sm = ob[inside & np.isfinite(ob["snr_d"])]
    bins = [0, 4, 5, 6, 7, 8, 10, np.inf]
    cut = pd.cut(sm["snr_d"], bins)
    out["on_host_10_19_recall_by_snr_d"] = {
        str(b): {"objects": int(len(v)), "recall": round(float(v["hit"].mean()), 3)}
        for b, v in sm.groupby(cut, observed=True)
    }
    out["on_host_10_19"] = {"objects": int(len(sm)), "recall": round(float(sm["hit"].mean()), 3),
                            "snr_d_hits": _q(sm[sm["hit"]]["snr_d"]),
                            "snr_d_misses": _q(sm[~sm["hit"]]["snr_d"])}  # fmt: skip
    return out


def main():
    sets = sys.argv[1].split(",") if len(sys.argv) > 1 else ["tune280", "big280"]
    t0 = time.time()
    mi, ob = [], []
    for name in sets:
        for seed, c in bc.SETS[name]:
            a, b = series_rows(name, seed, c)
            mi += a
            ob += b
            print(name, seed, "misses", len(a), flush=True)
    mi, ob = pd.DataFrame(mi), pd.DataFrame(ob)
    res = {"benchmark": "why bench_clusters misses >= 10-atom clusters (split mode)",
           "sets": sets, "summary": summarise(mi, ob), "wall_s": round(time.time() - t0, 1),
           "misses": json.loads(mi.to_json(orient="records"))}  # fmt: skip
    print(json.dumps(res["summary"], indent=1))
    if len(sys.argv) <= 1:
        (HERE / "results" / "bench_cluster_misses.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
