"""Merge identification of :func:`perovstem.insitu.track_clusters` on KMC truth and images.

Criteria (stated, same as ``tests/insitu/test_tracking.py``):

* identifiable merge: a truth coalescence product (chains within one frame collapsed to the
  ancestors present in the previous frame) with >= 2 ancestors of >= 10 atoms, each within
  r_product + r_parent + 8 Å of the product (equal-volume radii); on images, the product
  and those parents must also be detected (matched to a truth cluster within r + 3 Å,
  one-to-one per frame);
* found: the product's track starts at that frame with ``origin == "merge"``;
* precision: detected merges whose product detection is a truth coalescence product of
  that frame (any parent sizes).

Truth benchmark: truth clusters >= 5 atoms as detections, 0.5 Å position and 10 % count
noise, ``n_atoms_err`` = 10 % (also without it).  Series: 5 nm cube, 24 frames, 1 s per
frame, 1.5e3 / 3e3 / 6e3 e/Å²/s, 280 / 300 K.  Images: ``insitu_series`` (0.5 Å pixels, no
drift) and ``detect_clusters`` per frame.  Run: ``python benchmarks/bench_merges.py``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

from perovstem.insitu import (
    detect_clusters,
    match_clusters,
    merge_matches,
    merge_scores,
    track_clusters,
)
from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

TUNE = [(3e3, 300.0, 3), (3e3, 300.0, 6), (6e3, 300.0, 4), (3e3, 280.0, 25), (1.5e3, 300.0, 7),
        (6e3, 280.0, 8), (1.5e3, 280.0, 9), (3e3, 280.0, 10), (6e3, 300.0, 11),
        (3e3, 300.0, 12), (1.5e3, 300.0, 13), (6e3, 280.0, 14)]  # fmt: skip
HOLDOUT = [(1.5e3, 280.0, 101), (3e3, 280.0, 102), (6e3, 280.0, 103), (1.5e3, 300.0, 104),
           (3e3, 300.0, 105), (6e3, 300.0, 106), (3e3, 280.0, 107), (6e3, 280.0, 108),
           (3e3, 300.0, 109), (6e3, 300.0, 110), (1.5e3, 280.0, 111), (1.5e3, 300.0, 112)]  # fmt: skip
IMAGES = [(3e3, 300.0, 3), (3e3, 300.0, 6), (6e3, 300.0, 4), (3e3, 280.0, 25), (6e3, 280.0, 8),
          (3e3, 280.0, 10)]  # fmt: skip


def _kmc(phi, temp, seed, edge_A=50.0):
    return degradation_kmc(
        nanocrystal(edge_A=edge_A, rng=seed),
        n_frames=24,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=phi,
        temperature_K=temp,
        rng=seed,
    )


def truth_detections(tc, seed, err=True):
    """Truth clusters >= 5 atoms with 0.5 Å position and 10 % count noise."""
    rng = np.random.default_rng(seed)
    det = tc[tc.n_atoms >= 5].reset_index(drop=True).copy()
    det["x_A"] += rng.normal(0, 0.5, len(det))
    det["y_A"] += rng.normal(0, 0.5, len(det))
    det["n_atoms"] = det["n_atoms"] * (1 + rng.normal(0, 0.1, len(det)))
    if err:
        det["n_atoms_err"] = 0.1 * det["n_atoms"]
    return det


def score(det, tc, events, images=False, **kw):
    tracks, lin = track_clusters(det, **kw)
    return merge_matches(tracks, lin, tc, events, require_detected=images)


def _summ(matches):
    s = merge_scores(pd.concat(matches, ignore_index=True))
    return {k: round(v, 3) if isinstance(v, float) else v for k, v in s.items()}


def main() -> None:
    res = {"load_before": os.getloadavg()}
    variants = {
        "mass": {"method": "mass"},
        "global": {},
        "global_min_merge_frames2": {"min_merge_frames": 2},
    }
    for name, cfg in (("truth_tune", TUNE), ("truth_holdout", HOLDOUT)):
        series = [(s, _kmc(*c)) for c in cfg for s in [c[2]]]
        for err in (True, False):
            for vn, kw in variants.items():
                t0 = time.perf_counter()
                ms = [score(truth_detections(tr.clusters, seed, err), tr.clusters, tr.events, **kw)
                      for seed, tr in series]  # fmt: skip
                key = f"{name}_{vn}" + ("" if err else "_no_err_column")
                res[key] = _summ(ms) | {"seconds": round(time.perf_counter() - t0, 2)}
                print(key, res[key], flush=True)
    dets = []
    for phi, temp, seed in IMAGES:
        tr = _kmc(phi, temp, seed)
        ser, truth = insitu_series(
            tr, pixel_size_A=0.5, drift_A_per_s=(0.0, 0.0), jitter_A=0.0, rng=seed
        )
        g, o = ser.metadata.get("gain"), ser.metadata.get("offset")
        det = pd.concat(
            [detect_clusters(ser.frame(k), gain=g, offset=o, frame=k) for k in range(ser.n_frames)],
            ignore_index=True,
        )
        dets.append((match_clusters(det, truth["clusters"]), truth["clusters"], truth["events"]))
    for vn, kw in variants.items():
        res[f"images_{vn}"] = _summ([score(d, tc, e, images=True, **kw) for d, tc, e in dets])
        print(f"images_{vn}", res[f"images_{vn}"], flush=True)
    res["load_after"] = os.getloadavg()
    res["series"] = {"tune": TUNE, "holdout": HOLDOUT, "images": IMAGES}
    out = Path(__file__).parent / "results" / "bench_merges.json"
    out.write_text(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
