"""estimate_noise_model on simulated CsPbBr3 nanocrystals: identified fraction, gain error
and offset/read-noise error over detector gain 2–8, offset 50–1000, read noise 0–5 and dose
10²–10⁵ e⁻/Å² (single image), and on 3 registered frames (frame differences).

Usage: python benchmarks/bench_noise_model.py tune|heldout|fresh
"""

from __future__ import annotations

import itertools
import sys
import warnings

import numpy as np

import perovstem.simulate as sim
from perovstem.atoms import estimate_noise_model

SEEDS = {"tune": [0, 1, 2], "heldout": [10, 11, 12], "fresh": [20, 21, 22]}
DOSES = [1e2, 1e3, 1e4, 1e5]
DETECTORS = [
    (2.0, 50.0, 0.0),
    (2.0, 1000.0, 5.0),
    (5.0, 300.0, 2.0),
    (8.0, 1000.0, 5.0),
    (8.0, 50.0, 1.0),
    (2.0, 50.0, 1.0),
]


def main() -> None:
    which = sys.argv[1]
    warnings.simplefilter("ignore")
    rows = []
    for seed, dose, det in itertools.product(SEEDS[which], DOSES, DETECTORS):
        gain, off, rn = det
        atoms = sim.nanocrystal(30.0 + 4.0 * (seed % 4), rng=seed)
        kw = dict(pixel_size_A=0.3, dose_e_per_A2=dose, gain=gain, offset=off, read_noise=rn)
        imgs = [sim.haadf_image(atoms, rng=seed + 100 + k, **kw)[0].data for k in range(3)]
        for mode, data in (("single", imgs[0]), ("frames", np.stack(imgs))):
            try:
                nm = estimate_noise_model(data)
            except Exception as exc:  # noqa: BLE001 — a benchmark row, not a crash
                rows.append((mode, dose, det, False, np.nan, np.nan, np.nan, np.nan, str(exc)))
                continue
            rows.append(
                (
                    mode,
                    dose,
                    det,
                    nm.identified,
                    nm.gain / gain - 1.0,
                    (nm.gain - gain) / nm.gain_err,
                    nm.offset - off,
                    nm.read_noise - rn,
                    "",
                )
            )
    for mode in ("single", "frames"):
        print(f"{which} / {mode}:")
        for dose in DOSES:
            r = [x for x in rows if x[0] == mode and x[1] == dose]
            idr = [x for x in r if x[3]]
            rel = np.array([x[4] for x in idr])
            z = np.array([x[5] for x in idr])
            print(
                f"  dose {dose:>7g}: identified {len(idr)}/{len(r)}; gain error among identified "
                f"median {np.median(rel) if rel.size else np.nan:+.3f}, max |.| "
                f"{np.max(np.abs(rel)) if rel.size else np.nan:.3f}, |z|>3: "
                f"{int(np.sum(np.abs(z) > 3))}; offset error max |.| "
                f"{np.max(np.abs([x[6] for x in idr])) if idr else np.nan:.2f} counts; read-noise "
                f"error max |.| {np.max(np.abs([x[7] for x in idr])) if idr else np.nan:.2f}"
            )


if __name__ == "__main__":
    main()
