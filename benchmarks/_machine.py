"""Machine description shared by the benchmark scripts."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """CPU model and its AVX-512 / AVX2 support: the seeded KMC realisations (and with
    them these figures) differ between CPU kinds (session 18: AMD Zen 5 vs the earlier
    machine, same code and seeds)."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    name = next(
        (ln.split(":", 1)[1].strip() for ln in info.splitlines() if ln.startswith("model name")), ""
    )
    flags = next(
        (ln.split(":", 1)[1].split() for ln in info.splitlines() if ln.startswith("flags")), []
    )
    simd = "avx512f" if "avx512f" in flags else ("avx2" if "avx2" in flags else "")
    return f"{name} ({simd})" if simd else name
