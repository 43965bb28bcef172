"""Structure leaking into the single-image gain: estimate_noise_model over gain 1/5/20,
dose 10²–10⁷ e⁻/Å² (offset 100, read noise 2) on simulated cubes at 0.1–0.5 Å/px, a 120 Å
cube, 4-frame KMC series (one frame, frames pooled, frame differences) and — tune only —
multislice images (0.44 Å/px, tiled 3×3); and drifting 6-frame KMC series (0.3/0.5 Å/px,
drift 0.8 Å/s, jitter 0.3 Å, 10²–10⁵ e⁻/Å² per frame) with frames="aligned".

Prints per case the relative gain error and whether it was identified, then counts:
identified, |error| > 10 %, > 20 %, largest.

Usage: python benchmarks/bench_noise_structure.py tune|heldout|fresh [grid|drift]
"""

from __future__ import annotations

import sys
import warnings
import zlib
from pathlib import Path

import numpy as np

import perovstem.simulate as sim
from perovstem.atoms import estimate_noise_model

SEEDS = {"tune": [0, 1], "heldout": [10, 11], "fresh": [20, 21]}
GAINS = [1.0, 5.0, 20.0]
DOSES = [1e2, 1e3, 1e4, 1e5, 1e6, 1e7]
TESTS = Path(__file__).parents[1] / "tests"


def _crystal(edge, seed, px, crop=512):
    """Expected electrons per pixel at 1 e⁻/Å² (central ≤ crop² px)."""
    img, _ = sim.haadf_image(
        sim.nanocrystal(edge, rng=seed), pixel_size_A=px, dose_e_per_A2=1.0, noise=False
    )
    a = np.asarray(img.data, float)
    r0, c0 = max((a.shape[0] - crop) // 2, 0), max((a.shape[1] - crop) // 2, 0)
    return a[r0 : r0 + crop, c0 : c0 + crop]


def _kmc(seed, px, n_frames=4, **kw):
    sys.path.insert(0, str(TESTS / "insitu"))
    from _insitu_kmc import kmc_imaged

    return kmc_imaged(34.0, seed=seed, n_frames=n_frames, pixel_size_A=px, **kw)[1]


def cases(which):
    out = []
    for seed in SEEDS[which]:
        edge = 30.0 + 4.0 * (seed % 4)
        for px in (0.1, 0.2, 0.3, 0.5):
            out.append((f"cube{edge:.0f}_s{seed}_px{px}", _crystal(edge, seed, px)))
        out.append((f"cube120_s{seed}_px0.3", _crystal(120.0, seed, 0.3)))
        for px in (0.3, 0.5):
            s = _kmc(seed, px, rate=200.0, noise=False, jitter_A=0.0, rng=seed)
            dose = np.asarray(s.dose_e_per_A2, float)[:, None, None]
            out.append((f"kmc_s{seed}_px{px}", np.asarray(s.data, float) / dose))
    if which == "tune":
        z = np.load(TESTS / "data" / "multislice_pb_clusters.npz")
        for nm in ["vac_epi_50", "slab_top_50", "slab_bare", "vac_rot_100"]:
            step = float(z[nm + "__step_A"][0])
            m = np.clip(np.tile(z[nm + "__mean"].astype(float), (3, 3)), 0, None) * step**2
            out.append((f"ms_{nm}", m))
    return out


def _row(rows, key, data, g, **kw):
    try:
        nm = estimate_noise_model(data, **kw)
        rows.setdefault(key, []).append((nm.gain / g - 1.0, nm.identified))
        return f"{nm.gain / g - 1.0:+.3f}{'*' if nm.identified else ' '}"
    except Exception as exc:  # noqa: BLE001 — a benchmark row, not a crash
        rows.setdefault(key, []).append((np.nan, False))
        return f"error ({str(exc)[:30]})"


def grid(which):
    rows: dict = {}
    for name, clean in cases(which):
        for gi, g in enumerate(GAINS):
            for di, d in enumerate(DOSES):
                rng = np.random.default_rng(1000 * gi + 10 * di + zlib.crc32(name.encode()) % 7)
                lam = clean * d
                data = g * rng.poisson(lam) + 100.0 + rng.normal(0.0, 2.0, lam.shape)
                line = [_row(rows, "one image", data if data.ndim == 2 else data[0], g)]
                if data.ndim == 3:
                    line.append(_row(rows, "frames pooled", data, g, frames="pooled"))
                    line.append(_row(rows, "frame differences", data, g))
                print(f"{name:20s} gain {g:<3g} dose {d:.0e}  " + "  ".join(line), flush=True)
    return rows


def drift(which):
    rows: dict = {}
    for seed in SEEDS[which]:
        for px in (0.3, 0.5):
            for rate in (1e2, 1e3, 1e4, 1e5):
                for g in GAINS:
                    s = _kmc(seed, px, n_frames=6, rate=rate, drift_A_per_s=(0.8, -0.5),
                             jitter_A=0.3, gain=g, offset=100.0, read_noise=2.0, rng=seed + 7)  # fmt: skip
                    d = np.asarray(s.data, float)
                    line = [
                        _row(rows, "drift: one frame", d[0], g),
                        _row(rows, "drift: frames pooled", d, g, frames="pooled"),
                        _row(rows, "drift: aligned differences", d, g, frames="aligned"),
                    ]
                    print(
                        f"s{seed} {px} Å/px {rate:.0e} e/Å²/frame gain {g:<3g} " + "  ".join(line)
                    )
    return rows


def main() -> None:
    which = sys.argv[1]
    what = sys.argv[2] if len(sys.argv) > 2 else "grid"
    warnings.simplefilter("ignore")
    rows = grid(which) if what == "grid" else drift(which)
    for key, v in rows.items():
        v = np.array(v, float)
        e = np.abs(v[v[:, 1] == 1, 0])
        print(
            f"{which} {key}: {len(v)} cases, {e.size} identified, |error| > 10 %: "
            f"{np.sum(e > 0.1)}, > 20 %: {np.sum(e > 0.2)}, largest "
            f"{(f'{e.max():.1%}' if e.size else '-')}"
        )


if __name__ == "__main__":
    main()
