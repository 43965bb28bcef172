"""find_peaks false peaks / recall on simulated CsPbBr3 nanocrystals over detector gain,
offset, read noise and dose: the vacuum-MAD threshold against the signal-dependent threshold
of a measured noise model (perovstem.atoms.estimate_noise_model).

Usage: python benchmarks/bench_noise_peaks.py tune|heldout|fresh [variants...]
"""

from __future__ import annotations

import itertools
import sys
import time
import warnings

import numpy as np
from scipy.spatial import cKDTree

import perovstem.simulate as sim

# the same seeds, doses and detectors as the gain benchmark
from bench_noise_model import DETECTORS, DOSES, SEEDS
from perovstem.atoms import find_peaks


def score(pk, truth, tol=1.0):
    xy = pk[["x_A", "y_A"]].to_numpy()
    main = truth[truth.type == "PbBr"][["x_A", "y_A"]].to_numpy()
    allc = truth[["x_A", "y_A"]].to_numpy()
    if len(xy) == 0:
        return 0.0, 0
    d, _ = cKDTree(xy).query(main)
    d2, _ = cKDTree(allc).query(xy)
    return float(np.mean(d < tol)), int(np.sum(d2 >= tol))


def main():
    which = sys.argv[1]
    variants = sys.argv[2:] or ["mad", "auto"]
    warnings.simplefilter("ignore")
    rows = []
    for seed, dose, det in itertools.product(SEEDS[which], DOSES, DETECTORS):
        gain, off, rn = det
        edge = 30.0 + 4.0 * (seed % 4)
        atoms = sim.nanocrystal(edge, rng=seed)
        img, truth = sim.haadf_image(
            atoms,
            pixel_size_A=0.3,
            dose_e_per_A2=dose,
            gain=gain,
            offset=off,
            read_noise=rn,
            rng=seed + 100,
        )
        for v in variants:
            t = time.perf_counter()
            # variants: "mad" (default path), "auto", "auto@4" (auto with min_snr 4)
            kw = {} if v == "mad" else {"noise_model": v.split("@")[0]}
            if "@" in v:
                kw["min_snr"] = float(v.split("@")[1])
            pk = find_peaks(img, separation_A=0.6 * 5.87, **kw)
            rec, fp = score(pk, truth)
            rows.append((v, seed, dose, det, rec, fp, time.perf_counter() - t))
    for v in variants:
        r = [x for x in rows if x[0] == v]
        print(
            f"{v}: mean recall {np.mean([x[4] for x in r]):.3f}  false peaks total "
            f"{sum(x[5] for x in r)} (images with any: {sum(x[5] > 0 for x in r)}/{len(r)})"
            f"  mean time {np.mean([x[6] for x in r]):.3f}s"
        )
        for det in DETECTORS:
            rd = [x for x in r if x[3] == det]
            cells = " ".join(
                f"{np.mean([x[4] for x in rd if x[2] == d]):.2f}/"
                f"{sum(x[5] for x in rd if x[2] == d)}"
                for d in DOSES
            )
            print(f"   gain/offset/read {det}: recall/false per dose {cells}")


if __name__ == "__main__":
    main()
