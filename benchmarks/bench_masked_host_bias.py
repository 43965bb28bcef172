"""Bias of the masked host fit (:func:`perovstem.insitu._jointhost.masked_host`) at
cluster-free crystal positions and under the KMC truth clusters (session 18, ucount8).

For the series of a ``bench_clusters.py`` set, frames 4, 8 and 11: the noise-free host
alone (all atoms but the clusters', same simulator) is fitted with a disc masked out
(radius R + 2 Å, the other truth clusters masked too; the column profile a fixed
Gaussian core 0.40 Å + 11 % in 1.5 Å, near the bench's per-series fits), the model
subtracted in the window, the residual cell-averaged and measured in an aperture of
R + 3 Å minus the median of the next 3 Å, converted to atoms at the frame's dose.

* ``free``: up to 4 random crystal positions per frame farther than R + 12 Å from every
  truth cluster, R of a 20-atom cluster (the method's own bias and scatter);
* ``cl``: the truth clusters of >= 10 atoms on the crystal (their own centre and R).

The host under a cluster is made of it (the KMC takes host Pb into the cluster), so the
difference between the two medians is the part of the host under a cluster that its
neighbours' interpolation over-estimates.

Run:  python benchmarks/bench_masked_host_bias.py SET  (tune, tune280, holdout, ...)
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests" / "insitu"))

import bench_clusters as bc  # noqa: E402
from _kmc_series import kmc_series  # noqa: E402
from perovstem.insitu import _jointhost as jh  # noqa: E402
from perovstem.insitu import clusters, projected_objects  # noqa: E402

MARGIN_A = 2.0
PROFILE = jh.Profile(0.40, 0.11, 1.5)


def run(setname: str) -> dict:
    rng = np.random.default_rng(1)
    res: dict = {"free": [], "cl": []}
    lib = clusters._default_library()
    for seed, c in bc.SETS[setname]:
        px = c["px"]
        tr, s, truth, render, data, la, ang, a_px = kmc_series(seed, c)
        g = s.metadata.get("gain", 1.0)
        dose = np.asarray(s.dose_e_per_A2, float)
        for k in (4, 8, 11):
            host, _ = render(k)
            onh = bc._host_mask(data[k], px, la, ang)
            tk = projected_objects(truth["clusters"][truth["clusters"]["frame"] == k])
            txy = np.column_stack([tk["y_A"] / px, tk["x_A"] / px])
            tn = tk["n_atoms"].to_numpy()
            rt = clusters._fcc_radius_A(tn) / px
            cand = []
            for _ in range(400):
                y, x = rng.uniform(30, data.shape[1] - 30, 2)
                far = len(txy) == 0 or np.min(np.hypot(txy[:, 0] - y, txy[:, 1] - x) - rt) > 12 / px
                if onh.mask[int(y), int(x)] and far:
                    cand.append(("free", y, x, 20.0))
                if len(cand) >= 4:
                    break
            for (y, x), n in zip(txy, tn, strict=True):
                inner = 30 < y < data.shape[1] - 30 and 30 < x < data.shape[2] - 30
                if n >= 10 and onh.mask[int(y), int(x)] and inner:
                    cand.append(("cl", y, x, float(n)))
            for kind, y, x, n in cand:
                r = clusters._fcc_radius_A(np.array([n]))[0] / px
                half = int(np.ceil(r + (3 + 3 + la + 6) / px))
                oth = [
                    (yy, xx, rr + MARGIN_A / px)
                    for (yy, xx), rr in zip(txy, rt, strict=True)
                    if (abs(yy - y) > 1 or abs(xx - x) > 1)
                    and max(abs(yy - y), abs(xx - x)) < half + 20
                ]
                (i0, j0), mods = jh.masked_host(
                    host / g, y, x, half_px=half, mask_px=r + MARGIN_A / px,
                    others=np.array([o[:2] for o in oth]).reshape(-1, 2),
                    others_r=np.array([o[2] for o in oth]), a_px=a_px, angle_deg=ang, px=px,
                    profile=PROFILE, smooth=0.01, crystal=onh.mask,
                )  # fmt: skip
                m = mods[0]
                h, w = m.shape
                full = np.zeros(host.shape)
                full[i0 : i0 + h, j0 : j0 + w] = host[i0 : i0 + h, j0 : j0 + w] / g - m
                resid = clusters._cell_average(full[None], a_px, ang)[0][i0 : i0 + h, j0 : j0 + w]
                yy, xx = np.mgrid[0:h, 0:w]
                dd = np.hypot(yy - (y - i0), xx - (x - j0))
                ap = dd <= r + 3 / px
                ring = (dd > r + 3 / px) & (dd <= r + 6 / px)
                v = resid[ap].sum() - np.median(resid[ring]) * ap.sum()
                natoms = np.sign(v) * clusters.atoms_from_scs(abs(v) / dose[k], lib)
                res[kind].append((float(natoms), n))
    out = {}
    for kind, v in res.items():
        v = np.array(v).reshape(-1, 2)
        if len(v):
            out[kind] = {
                "n": len(v),
                "atoms_q10_50_90": [
                    round(float(q), 1) for q in np.percentile(v[:, 0], [10, 50, 90])
                ],
                "per_atom_median": round(float(np.median(v[:, 0] / v[:, 1])), 2),
            }
    return out


if __name__ == "__main__":
    name = sys.argv[1] if len(sys.argv) > 1 else "tune"
    if name not in bc.SETS:
        sys.exit(f"usage: bench_masked_host_bias.py SET; unknown set {name!r}")
    print(name, run(name))
