"""Ceiling of the on-crystal cluster counts of :func:`perovstem.insitu.detect_clusters`.

For the series of ``bench_clusters.py`` (same sets, split mode, host reference carried as
there), each frame's KMC truth is rendered again without noise twice: all atoms, and all
but the cluster atoms (the same simulator; the difference is the clusters' own image,
channelling included).  For every matched >= 10-atom truth object on the crystal whose
disc + 3 Å lies in the field, the apertures and annuli the detector used (its own
centres, radii and nearest-segment partition) are measured again on the cell average of

* ``host_removed``: the noisy frame minus the noise-free host (shot noise only), and
* ``cluster_alone``: the noise-free clusters alone (aperture, neighbours, library),

and converted to atoms like the detector's counts.  Reported per set and size bin: the
share within 15 % of the truth count and the median relative error, for the detector's
count (``current``) and for the two ceilings.

Session 17 (issue #7, the joint-fit oracle): at every aperture on the crystal mask the
frame is also fitted by :mod:`perovstem.insitu._jointhost` (host columns with their own
amplitudes + the cluster + a constant, the column profile fitted once per series on
crystal windows of its first frame away from its detections, the detector's centre and
radius): ``joint_ball`` (a smooth ball), ``joint_fccl`` (the cube-on-cube fcc column
template, columns weighted by the Pb-column SCS, registry scanned; ``fccl_cl`` /
``fccl_host`` the same fit with the frame's registry and weights applied to the
noise-free clusters alone / host alone: the cluster model's own error and the host's
leak, signed, per truth atom).  ``BENCH_JOINT_ALL=1`` adds the thickness-weighted
template (``joint_fcc``), ``BENCH_JOINT_R=1`` one with its radius scanned (0.8/1/1.2,
``joint_fccr``), ``BENCH_JOINT_ITER=1`` one with the radius from its own count
(``joint_fcci``), ``BENCH_JOINT_NOBALL=1`` drops the ball; diagnostics:
``BENCH_JOINT_NOOTHERS=1`` (no balls for neighbouring detections),
``BENCH_JOINT_TRUTH=1`` (the template at the nearest truth cluster's centre and size).  An aperture whose centre is off
the crystal mask is not fitted and keeps the detector's count.

Session 18 (ucount8, the masked host fit): ``masked`` — at every aperture on the crystal
mask the host columns are fitted with the clusters' footprints masked out (disc of the
detector's radius + ``BENCH_MASK_MARGIN`` Å, default 2; a membrane prior per sublattice,
``BENCH_MASK_SMOOTH``, default 0.01, tied only within the crystal side of a facet unless
``BENCH_MASK_NOCRYSTAL=1``; :func:`perovstem.insitu._jointhost.masked_host`), the model
subtracted in the window, and the detector's aperture and annulus measured on the cell
average of the residual; ``mask_cl`` / ``mask_host`` the same fit applied to the
noise-free clusters alone / host alone (``mask_host`` reported as quantiles of its signed
atoms per truth atom).  ``BENCH_JOINT_SKIP=1`` runs it without the joint fits;
``BENCH_OUT=path`` writes the summaries and the per-object rows (results of the session:
``results/bench_onhost_ceiling_masked.json``).

Run:  python benchmarks/bench_onhost_ceiling.py [SET[,SET...]]  (default tune,tune280;
writes benchmarks/results/bench_onhost_ceiling.json for the default sets; ~4 min per
series with the joint fits on 2 busy cores).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "insitu"))

import bench_clusters as bc  # noqa: E402
from _kmc_series import kmc_series  # noqa: E402
from perovstem._data import Image  # noqa: E402
from perovstem.insitu import _jointhost as jh  # noqa: E402
from perovstem.insitu import (  # noqa: E402
    clusters,
    detect_clusters,
    projected_objects,
    score_detections,
)

BINS = ((10, 20), (20, 40), (40, 80), (80, 10**9))


def _column_scs():
    from perovstem.simulate.scs import scs_library

    lib = scs_library("Pb", 40)
    return lib["n_atoms"].to_numpy(float), lib["scs_A2"].to_numpy(float)


COLUMN_SCS = _column_scs()
# fcc templates: columns weighted by the Pb-column SCS of their length ("joint", the
# model adopted) or by the ball's thickness ("fcct"; BENCH_JOINT_ALL=1)
VARIANTS = [("fccl", COLUMN_SCS, (1.0,))]
if os.environ.get("BENCH_JOINT_ALL"):
    VARIANTS.append(("fcc", None, (1.0,)))
if os.environ.get("BENCH_JOINT_ITER"):
    VARIANTS.append(("fcci", COLUMN_SCS, (1.0,)))
if os.environ.get("BENCH_JOINT_R"):
    VARIANTS.append(("fccr", COLUMN_SCS, (0.8, 1.0, 1.2)))


def _joint(
    raw,
    cx,
    cy,
    tot,
    which,
    kw,
    a_px,
    ang,
    profile,
    reference=None,
    template="ball",
    offsets=None,
    column_scs=None,
    radius_scales=(1.0,),
    iterate=0,
):
    """Joint host-column + cluster fit (:mod:`perovstem.insitu._jointhost`) at every
    aperture: the cluster's total in the map's units (counts), NaN where not fitted;
    ``iterate`` refits with the template's radius from the fit's own count."""
    px, g, dose, lib = kw["px"], kw["g"], kw["dose"], kw["library"]
    out = np.full(len(tot), np.nan)
    if dose is None or lib is None:
        return out
    n0 = clusters.atoms_from_scs(np.clip(tot, 0, None) / (g * dose), lib)
    r_px = clusters._fcc_radius_A(n0) / px
    idx = np.flatnonzero(which)
    for i in idx:
        half = int(np.ceil(r_px[i] + (kw["aperture_A"] + 6.0) / px))
        oth = [
            j
            for j in idx
            if j != i and max(abs(cx[j] - cx[i]), abs(cy[j] - cy[i])) < half + r_px[j]
        ]
        if os.environ.get("BENCH_JOINT_NOOTHERS"):  # diagnostic: no balls for neighbours
            oth = []
        ci, cj, ri = cy[i], cx[i], r_px[i]
        tr = getattr(_joint, "truth", None)
        if os.environ.get("BENCH_JOINT_TRUTH") and tr is not None and len(tr):
            # diagnostic: the nearest truth cluster's centre and radius (within 3 Å)
            d = np.hypot(tr[:, 0] - cy[i], tr[:, 1] - cx[i])
            if d.min() * px <= 3.0:
                k = int(np.argmin(d))
                ci, cj = tr[k, 0], tr[k, 1]
                ri = float(clusters._fcc_radius_A(np.array([tr[k, 2]]))[0]) / px
        f = jh.fit_window(
            raw / g, ci, cj, half_px=half, radius_px=ri,
            others=np.array([[cy[j], cx[j]] for j in oth]).reshape(-1, 2),
            others_r=r_px[oth], a_px=a_px, angle_deg=ang, px=px, profile=profile,
            reference=None if reference is None else reference / g, template=template,
            offsets=None if offsets is None else offsets.get(i), column_scs=column_scs,
            radius_scales=radius_scales,
        )  # fmt: skip
        for _ in range(iterate):
            n_f = clusters.atoms_from_scs(max(f["cluster"], 0.0) / dose, lib)
            r_f = max(float(clusters._fcc_radius_A(np.array([n_f]))[0]) / px, 1.0)
            f = jh.fit_window(
                raw / g, cy[i], cx[i], half_px=half, radius_px=r_f,
                others=np.array([[cy[j], cx[j]] for j in oth]).reshape(-1, 2),
                others_r=r_px[oth], a_px=a_px, angle_deg=ang, px=px, profile=profile,
                template=template, column_scs=column_scs,
            )  # fmt: skip
        out[i] = f["cluster"] * g
        if template == "fcc" and offsets is None:
            _joint.offsets[i] = f["offsets"]
    return out


# session 18 (ucount8): the masked host fit + aperture.  Margin of the mask around the
# detection's radius (and around each other detection's), Å; smoothness of the column prior
MASK_MARGIN_A = float(os.environ.get("BENCH_MASK_MARGIN", 2.0))
MASK_SMOOTH = float(os.environ.get("BENCH_MASK_SMOOTH", 0.01))


def _masked(raw, parts, orig, args, fit, kw, a_px, ang, profile, crystal=None):
    """Masked host fit + aperture at every aperture in ``fit``: the host columns fitted
    with the clusters' footprints masked out (:func:`perovstem.insitu._jointhost.masked_host`),
    their model subtracted from the frame in the window (zero outside), and the detector's
    own aperture and annulus measured on the cell average of that residual.  Returns one
    array of aperture counts for the frame and one for each image of ``parts`` (the same
    fit, sites, weights and mask, applied to a part of the frame); NaN where not fitted."""
    regions, box, cx, cy, tot, npx, which = args
    px, g, dose, lib = kw["px"], kw["g"], kw["dose"], kw["library"]
    outs = [np.full(len(tot), np.nan) for _ in range(1 + len(parts))]
    if dose is None or lib is None:
        return outs
    n0 = clusters.atoms_from_scs(np.clip(tot, 0, None) / (g * dose), lib)
    r_px = clusters._fcc_radius_A(n0) / px
    _masked.r_A = r_px * px
    marg = MASK_MARGIN_A / px
    idx = np.flatnonzero(which)
    kw0 = dict(kw, alt=None, e_alt=None, crystal=None)
    kw0.pop("ring_own", None)
    kw0.pop("prev_out", None)
    for i in np.flatnonzero(fit):
        # the window holds the aperture, its ring, a cell for the cell average and 6 Å
        half = int(np.ceil(r_px[i] + (kw["aperture_A"] + 3.0 + a_px * px + 6.0) / px))
        oth = [
            j
            for j in idx
            if j != i and max(abs(cx[j] - cx[i]), abs(cy[j] - cy[i])) < half + r_px[j] + marg
        ]
        models = None
        for grow in (1.0, 1.5):  # a window crowded by clusters: once larger, else none
            try:
                (i0, j0), models = jh.masked_host(
                    raw / g, cy[i], cx[i], half_px=int(grow * half), mask_px=r_px[i] + marg,
                    others=np.array([[cy[j], cx[j]] for j in oth]).reshape(-1, 2),
                    others_r=r_px[oth] + marg, a_px=a_px, angle_deg=ang, px=px,
                    profile=profile, smooth=MASK_SMOOTH, parts=tuple(p / g for p in parts),
                    crystal=crystal,
                )  # fmt: skip
                break
            except ValueError:
                continue
        if models is None:  # not fitted: the detector's count stays (counted apart)
            _masked.n_unfitted = getattr(_masked, "n_unfitted", 0) + 1
            continue
        one = np.zeros(len(tot), bool)
        one[i] = True
        for k, (img, mod) in enumerate(zip([raw, *parts], models, strict=True)):
            res = np.zeros(raw.shape)
            h, w = mod.shape
            res[i0 : i0 + h, j0 : j0 + w] = img[i0 : i0 + h, j0 : j0 + w] - g * mod
            mm = clusters._cell_average(res[None], a_px, ang)[0]
            outs[k][i] = orig(mm, regions, box, cx, cy, tot, npx, one, raw, **kw0)[0][i]
    return outs


def series_profile(frame, dets, on_host, *, px, a_px, ang, gain, offset, n_win=4):
    """Column profile of a series fitted on ``n_win`` crystal windows of its first frame
    away from its detections (:func:`perovstem.insitu._jointhost.fit_profile`)."""
    half = int(round(6.0 / px))
    mm, nn = frame.shape
    dxy = dets[["y_px", "x_px"]].to_numpy() if len(dets) else np.zeros((0, 2))
    cand = []
    for y in range(half + 5, mm - half - 5, 2 * half):
        for x in range(half + 5, nn - half - 5, 2 * half):
            if not on_host(x * px, y * px) or not on_host((x - half) * px, (y - half) * px):
                continue
            if not on_host((x + half) * px, (y + half) * px):
                continue
            if len(dxy) and np.min(np.hypot(dxy[:, 0] - y, dxy[:, 1] - x)) < 2.5 * half:
                continue
            cand.append((y, x))
    rng = np.random.default_rng(0)
    cand = np.array(cand, float)
    if len(cand) > n_win:
        cand = cand[rng.choice(len(cand), n_win, replace=False)]
    return jh.fit_profile((frame - offset) / gain, cand, half_px=half, a_px=a_px,
                          angle_deg=ang, px=px)  # fmt: skip


def run_set(cases):
    """Per matched on-crystal object: truth n, detector n, and the two ceilings' n."""
    state: dict = {}
    orig = clusters._aperture_counts

    def wrap(e, regions, box, cx, cy, tot, npx, which, raw, **kw):
        out = orig(e, regions, box, cx, cy, tot, npx, which, raw, **kw)
        if state.get("skip"):
            return out
        kw0 = dict(kw, alt=None, e_alt=None, crystal=None)
        kw0.pop("ring_own", None)
        kw0.pop("prev_out", None)
        a_px, ang = state["a_px"], state["ang"]
        res = {}
        for name, img in (("host_removed", raw - state["host"]), ("cluster_alone", state["cl"])):
            mm = clusters._cell_average(img[None], a_px, ang)[0]
            res[name] = orig(mm, regions, box, cx, cy, tot, npx, which, raw, **kw0)[0]
        # the joint fits only where the bench scores (on the crystal)
        oh = state["on_host"]
        fit = which & np.array(
            [oh(x * kw["px"], y * kw["px"]) for x, y in zip(cx, cy, strict=True)]
        )
        m_fr, m_host, m_cl = _masked(
            raw, (state["host"], state["cl"]), orig, (regions, box, cx, cy, tot, npx, which),
            fit, kw, a_px, ang, state["profile"],
            crystal=None if os.environ.get("BENCH_MASK_NOCRYSTAL") else oh.mask,
        )  # fmt: skip
        res.update(masked=m_fr, mask_host=m_host, mask_cl=m_cl)
        res["r_A"] = np.where(fit, _masked.r_A, np.nan)
        if os.environ.get("BENCH_JOINT_SKIP"):  # the masked fit only
            pass
        elif not os.environ.get("BENCH_JOINT_NOBALL"):
            res["joint_ball"] = _joint(raw, cx, cy, tot, fit, kw, a_px, ang, state["profile"])
        for tag, cs, rs in [] if os.environ.get("BENCH_JOINT_SKIP") else VARIANTS:
            _joint.offsets = {}
            res[f"joint_{tag}"] = _joint(raw, cx, cy, tot, fit, kw, a_px, ang, state["profile"],
                                         template="fcc", column_scs=cs, radius_scales=rs,
                                         iterate=2 if tag == "fcci" else 0)  # fmt: skip
            if tag == "fcci":  # the radius is the fit's own: no decomposition
                continue
            offs = dict(_joint.offsets)
            for name, part in ((f"{tag}_cl", state["cl"]), (f"{tag}_host", state["host"])):
                res[name] = _joint(part, cx, cy, tot, fit, kw, a_px, ang, state["profile"],
                                   raw, template="fcc", offsets=offs, column_scs=cs)  # fmt: skip
        for i in np.flatnonzero(which):
            state["caps"].append((float(cx[i]), float(cy[i]), {k: v[i] for k, v in res.items()}))
        return out

    rows = []
    lib = clusters._default_library()
    clusters._aperture_counts = wrap
    try:
        for seed, c in cases:
            px = c["px"]
            tr, s, truth, render, data, la, ang, a_px = kmc_series(seed, c)
            kw = {"gain": s.metadata.get("gain", 1.0), "offset": s.metadata.get("offset", 0.0),
                  "lattice_A": la, "lattice_angle_deg": ang}  # fmt: skip
            field = (data.shape[1] - 1) * px
            img0 = Image(data[0], px, dose_e_per_A2=float(np.asarray(s.dose_e_per_A2)[0]))
            state["skip"] = True
            state["profile"] = series_profile(
                data[0], detect_clusters(img0, split=True, **kw), bc._host_mask(data[0], px, la, ang),
                px=px, a_px=a_px, ang=ang, gain=kw["gain"], offset=kw["offset"],
            )  # fmt: skip
            state["skip"] = False
            print(seed, state["profile"], flush=True)
            refs, prev = [], False
            for k in range(len(data)):
                host, cl = render(k)
                on_host = bc._host_mask(data[k], px, la, ang)
                state.update(host=host, cl=cl, a_px=a_px, ang=ang, caps=[], on_host=on_host)
                dose = float(np.asarray(s.dose_e_per_A2)[k])
                tk = projected_objects(truth["clusters"][truth["clusters"]["frame"] == k])
                _joint.truth = np.column_stack(
                    [tk["y_A"] / px, tk["x_A"] / px, tk["n_atoms"]]
                ).astype(float)
                img = Image(data[k], px, dose_e_per_A2=dose)
                det = detect_clusters(img, split=True, **kw)
                if det.attrs["host_model"] == "no_reference" and prev:
                    state["caps"] = []
                    ref = float(np.median(refs))
                    det = detect_clusters(img, split=True, host_reference=ref, **kw)
                elif det.attrs["host_model"] == "lattice":
                    refs.append(det.attrs["host_empty_site_ratio"])
                prev = det.attrs["host_model"] == "lattice"
                tc = projected_objects(truth["clusters"][truth["clusters"]["frame"] == k])
                sc = score_detections(det, tc)
                caps = state["caps"]
                cxy = np.array([c_[:2] for c_ in caps]).reshape(-1, 2)
                for (i, j), nd in zip(sc["pairs"], sc["n_atoms"], strict=True):
                    x, y, n = sc["objects"].loc[i, ["x_A", "y_A", "n_atoms"]]
                    if min(x, y, field - x, field - y) - bc._radius(n) <= 3.0:
                        continue
                    if not on_host(x, y) or not len(cxy):
                        continue
                    sums = dict.fromkeys(caps[0][2], 0.0)
                    ok = True
                    for jj in [j, *sc["extra"].get(i, [])]:
                        dx, dy = det["x_px"].iloc[jj], det["y_px"].iloc[jj]
                        dd = np.hypot(cxy[:, 0] - dx, cxy[:, 1] - dy)
                        if dd.min() > 0.6:  # a part of a split segment: not one aperture
                            ok = False
                            break
                        for name in sums:
                            sums[name] += caps[int(np.argmin(dd))][2][name]
                    if not ok:
                        continue
                    row = {"n": float(n), "current": float(nd)}
                    for name, v in sums.items():
                        if name == "r_A":  # the aperture's cluster radius, Å
                            row[name] = float(v)
                            continue
                        if not np.isfinite(v):  # a detection centre off the crystal mask:
                            # not fitted, the detector's count stays
                            row[name] = np.nan if name.endswith("_host") else float(nd)
                            continue
                        # the host alone's share signed, in atoms of the cluster's scale
                        sg = np.sign(v) if name.endswith("_host") else 1.0
                        row[name] = float(
                            sg * clusters.atoms_from_scs(max(sg * v, 0.0) / dose, lib)
                        )
                    rows.append(row)
    finally:
        clusters._aperture_counts = orig
    return rows


def summary(rows):
    out = {}
    n = np.array([r["n"] for r in rows])
    for name in (
        "current",
        "host_removed",
        "cluster_alone",
        "joint_ball",
        "joint_fcc",
        "fcc_cl",
        "joint_fccl",
        "fccl_cl",
        "joint_fccr",
        "fccr_cl",
        "joint_fcci",
        "masked",
        "mask_cl",
        "mask_host",
    ):
        if name not in rows[0]:
            continue
        if name.endswith("_host"):  # the host alone's leak, signed, per truth atom
            v = np.array([r[name] for r in rows]) / np.maximum(n, 1)
            v = v[(n >= 10) & np.isfinite(v)]
            out[name] = {"n": int(v.size), "q10_25_50_75_90": [
                round(float(q), 3) for q in np.percentile(v, [10, 25, 50, 75, 90])
            ]} if v.size else {"n": 0}  # fmt: skip
            continue
        e = np.array([r[name] for r in rows]) / np.maximum(n, 1) - 1
        part = {"all": (n >= 10)}
        part.update({f"{lo}-{hi if hi < 10**9 else ''}": (n >= lo) & (n < hi) for lo, hi in BINS})
        out[name] = {
            k: {"n": int(m.sum()), "within_15pct": round(float(np.mean(np.abs(e[m]) < 0.15)), 3),
                "median_err": round(float(np.median(e[m])), 3)}
            for k, m in part.items() if m.any()
        }  # fmt: skip
    return out


def main():
    sets = sys.argv[1].split(",") if len(sys.argv) > 1 else ["tune", "tune280"]
    unknown = [s for s in sets if s not in bc.SETS]
    if unknown:
        sys.exit(f"usage: bench_onhost_ceiling.py [SET[,SET...]]; unknown set(s) {unknown}")
    res, rows = {}, {}
    for name in sets:
        _masked.n_unfitted = 0
        rows[name] = run_set(bc.SETS[name])
        res[name] = summary(rows[name])
        res[name]["masked_unfitted_apertures"] = _masked.n_unfitted
        print(name, json.dumps(res[name]), flush=True)
    if os.environ.get("BENCH_OUT"):  # summaries and the per-object rows
        Path(os.environ["BENCH_OUT"]).write_text(json.dumps({"summary": res, "rows": rows}))
    if len(sys.argv) <= 1:
        (HERE / "results" / "bench_onhost_ceiling.json").write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
