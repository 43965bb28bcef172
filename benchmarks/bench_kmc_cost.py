"""CPU cost of KMC runs against ``kmc.estimated_events`` / ``kmc.estimated_cpu_s``
(plain script, not collected by pytest; session 18, helper udose2).

Each run: build the crystal, take the low event estimate, time ``degradation_kmc`` (CPU
time, ``time.process_time``, numba compiled beforehand) and record the steps it took.
Results are one JSON object per run on stdout; ``benchmarks/results/bench_kmc_cost.json``
holds the session-18 runs (``set``: ``fit`` = the runs the constants of
``kmc.estimated_cpu_s`` were read from, ``held_out`` = runs looked at afterwards).

Usage::

    python benchmarks/bench_kmc_cost.py '[[50, 400, 100, 30, 5.0]]' --seed 1
    # [[edge_A, temperature_K, dose_rate_e_per_A2_s, n_frames, frame_time_s], ...]
"""

from __future__ import annotations

import argparse
import json
import time

from perovstem.simulate import degradation_kmc, kmc, nanocrystal


def run(grid: list[list[float]], seed: int) -> None:
    degradation_kmc(  # compile the kernels first
        nanocrystal(edge_A=15.0, rng=0),
        n_frames=2,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=100.0,
        temperature_K=300.0,
        rng=0,
    )
    built: dict[float, tuple] = {}
    for edge, temp, phi, n_frames, frame_time in grid:
        if edge not in built:
            atoms = nanocrystal(edge_A=float(edge), rng=0)
            built[edge] = (atoms, kmc.crystal_counts(atoms))
        atoms, counts = built[edge]
        kw = dict(
            n_frames=int(n_frames),
            frame_time_s=float(frame_time),
            dose_rate_e_per_A2_s=float(phi),
            temperature_K=float(temp),
        )
        est = kmc.estimated_events(counts, **kw)
        lo, hi = kmc.estimated_cpu_s(counts, est, n_frames=int(n_frames))
        w0, c0 = time.perf_counter(), time.process_time()
        tr = degradation_kmc(atoms, rng=seed, **kw)
        cpu, wall = time.process_time() - c0, time.perf_counter() - w0
        row = dict(
            edge=edge,
            T=temp,
            phi=phi,
            nf=n_frames,
            ft=frame_time,
            seed=seed,
            cpu=cpu,
            wall=wall,
            steps_sum=int(tr.frame_table["n_steps"].sum()),
            est=est,
            cpu_low=lo,
            cpu_high=hi,
            **counts,
        )
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("grid", help="JSON list of [edge_A, T_K, dose_rate, n_frames, frame_time_s]")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    run(json.loads(a.grid), a.seed)
