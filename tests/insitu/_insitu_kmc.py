"""Helpers shared by the in-situ tests (not collected: no test_ prefix): the KMC + rendering
recipe, degrading frames, fcc clusters and a bare context for the `insitu.clusters` step."""

from __future__ import annotations


def kmc_imaged(
    edge_A,
    *,
    rate,
    seed,
    temperature_K=300.0,
    n_frames=12,
    crystal_seed=None,
    params=None,
    **imaging,
):
    """KMC trajectory of a builder cube and its rendered series: ``(trajectory, series, truth)``.

    ``imaging`` goes to :func:`perovstem.simulate.insitu_series` (pixel size, drift, jitter,
    probe, ``rng``); the crystal is built with ``crystal_seed`` (default ``seed``); ``params``
    are the KMC's :class:`~perovstem.simulate.KineticParameters` (default when None).
    """
    from perovstem.simulate import degradation_kmc, insitu_series, nanocrystal

    at = nanocrystal(edge_A=edge_A, rng=seed if crystal_seed is None else crystal_seed)
    tr = degradation_kmc(
        at,
        n_frames=n_frames,
        frame_time_s=1.0,
        dose_rate_e_per_A2_s=rate,
        temperature_K=temperature_K,
        rng=seed,
        **({} if params is None else {"params": params}),
    )
    s, truth = insitu_series(tr, **imaging)
    return tr, s, truth


def degrading_frames(edge_A, *, rate, temperature_K, seed, n_frames=12):
    """A degrading crystal's KMC series imaged at 0.5 Å/px with drift (0.8, −0.5) Å/s and
    0.3 Å jitter (``rng=seed``), ready for :func:`perovstem.insitu.detect_clusters`:
    ``(images, truths, detect_kw, field_A, truth)`` — per frame an ``Image`` with its dose
    and that frame's truth clusters (``n_atoms`` renamed ``n_Pb0``, as per-atom truth), the
    gain, offset and frame-0 lattice as detection keywords, the field width (Å) and the
    whole truth."""
    import numpy as np

    from perovstem._data import Image
    from perovstem.insitu import estimate_lattice

    _, s, truth = kmc_imaged(
        edge_A,
        rate=rate,
        temperature_K=temperature_K,
        seed=seed,
        n_frames=n_frames,
        pixel_size_A=0.5,
        drift_A_per_s=(0.8, -0.5),
        jitter_A=0.3,
        rng=seed,
    )
    data = np.asarray(s.data, float)
    la, ang, _ = estimate_lattice(data[0], 0.5)
    kw = {
        "gain": s.metadata.get("gain", 1.0),
        "offset": s.metadata.get("offset", 0.0),
        "lattice_A": la,
        "lattice_angle_deg": ang,
    }
    dose = np.asarray(s.dose_e_per_A2, float)
    tcl = truth["clusters"]
    images = [Image(data[k], 0.5, dose_e_per_A2=float(dose[k])) for k in range(len(data))]
    truths = [tcl[tcl["frame"] == k].rename(columns={"n_atoms": "n_Pb0"}) for k in range(len(data))]
    return images, truths, kw, (data.shape[1] - 1) * 0.5, truth


def fcc_cluster(n, rng, aspect=1.0, angle=0.0):
    """Atom positions (Å) of the ``n`` fcc Pb sites nearest the centre in the metric of an
    ellipsoid of in-plane aspect ratio ``aspect`` (long axis at ``angle`` rad from x),
    centred at 0 (a compact cluster for ``aspect=1``)."""
    import numpy as np

    g = np.arange(-9, 10)
    base = np.array([[0, 0, 0], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    cells = np.stack(np.meshgrid(g, g, g, indexing="ij"), -1).reshape(-1, 3)
    pts = (cells[:, None] + base[None]).reshape(-1, 3) * 4.95  # fcc Pb, Å
    ax = np.array([np.cos(angle), np.sin(angle), 0.0])
    par = pts @ ax
    perp = np.linalg.norm(pts - par[:, None] * ax, axis=1)
    d = np.hypot(par / aspect ** (2 / 3), perp * aspect ** (1 / 3)) + rng.random(len(pts)) * 1e-6
    cl = pts[np.argsort(d)[:n]]
    return cl - cl.mean(0)


def noise_free_parts(tr, series, *, pixel_size_A, seed, drift_A_per_s=(0.8, -0.5), jitter_A=0.3):
    """Renderer of the noise-free host alone and clusters alone of a :func:`kmc_imaged`
    series: ``render(k) -> (host, clusters)`` (the truth rendered with and without the
    cluster atoms on the series' own plan, drift and jitter; same simulator).  Raises when
    the re-derived plan differs from the series'."""
    import numpy as np

    from perovstem.simulate.haadf import haadf_image
    from perovstem.simulate.series import _image_kw, _plan

    plan = _plan(
        tr, pixel_size_A=pixel_size_A, shape=None, drift_A_per_s=drift_A_per_s,
        jitter_A=jitter_A, scan_drift=False, center_A=None, margin_A=10.0, rng=seed,
        image_kw=_image_kw(
            {"voltage_kV": 300.0, "gain": 1.0, "offset": 0.0, "noise": True, "background": 0.0}
        ),
    )  # fmt: skip
    if plan.shape != series.data.shape[1:]:
        raise RuntimeError(f"seed {seed}: the re-rendering plan differs from the series")
    dose = np.asarray(series.dose_e_per_A2, float)
    kw = dict(plan.image_kw, noise=False)

    def render(k):
        atoms = tr.atoms(k)
        atoms.positions[:, :2] += plan.shift_A[k]
        lab = np.asarray(atoms.arrays["label"])
        out = []
        for sel in (np.ones(len(atoms), bool), lab != 2):
            img, _ = haadf_image(
                atoms[sel], pixel_size_A=pixel_size_A, shape=plan.shape,
                dose_e_per_A2=float(dose[k]), center_A=plan.center_A,
                drift_A=plan.scan_drift_A, rng=0, **kw,
            )  # fmt: skip
            out.append(np.asarray(img.data, float))
        return out[1], out[0] - out[1]

    return render


class ClusterStepContext:
    """A bare pipeline context for the ``insitu.clusters`` step (frames mapped serially;
    figures and metrics dropped, report texts kept in ``texts``)."""

    step_id = "clusters"

    def __init__(self) -> None:
        self.params = {"threshold_sigma": 6.0, "min_atoms": 5.0, "max_diameter_A": 16.0}
        self.params |= {"max_step_A": 8.0}
        self.texts: list[str] = []

    def map(self, f, items, shared=None, description=""):
        return [f(k, shared) for k in items]

    def metric(self, *args, **kwargs):
        pass

    def figure(self, *args, **kwargs):
        pass

    def text(self, text, **kwargs):
        self.texts.append(text)
