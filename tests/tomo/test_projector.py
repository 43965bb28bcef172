"""Projector: adjointness, normalisation, agreement with exact line integrals, bad input."""

from __future__ import annotations

import numpy as np
import pytest

from perovstem.errors import DataError, ParameterError
from perovstem.tomo import Projector, check_angles


@pytest.mark.parametrize(
    "shape,angles",
    [
        ((16, 20, 7), np.linspace(-60, 60, 13)),
        ((9, 12, 3), np.array([-89.0, -30.0, 0.0, 45.0, 90.0])),
    ],
)
def test_backward_is_adjoint_of_forward(shape, angles):
    rng = np.random.default_rng(0)
    op = Projector(angles, shape, n_det=shape[1] + 3, offset_px=0.7)
    x = rng.random(shape).astype(np.float32)
    y = rng.random(op.projection_shape).astype(np.float32)
    lhs = float(np.vdot(op.forward(x).astype(np.float64), y))
    rhs = float(np.vdot(x.astype(np.float64), op.backward(y)))
    assert lhs == pytest.approx(rhs, rel=1e-5)


def test_each_voxel_spreads_unit_weight_per_angle():
    op = Projector(np.linspace(-70, 70, 8), (10, 10, 2), n_det=30)
    cs = op.col_sums()
    np.testing.assert_allclose(cs, 8.0, rtol=1e-5)  # detector wider than the volume


def test_forward_matches_exact_line_integrals():
    """Voxelised phantom projected by the strip model ≈ analytic projections (< 3 %)."""
    from perovstem.simulate.tilt import nanocrystal_phantom, tilt_series

    ph = nanocrystal_phantom(40.0, rng=3)
    ang = np.array([-60.0, -15.0, 0.0, 37.0, 70.0])
    ts, tr = tilt_series(
        ph, ang, shape=(40, 40), pixel_size_A=1.5, counts_per_A=1.0, noise=False, truth_volume=True
    )
    op = Projector(ang, tr["volume"].shape)
    p = op.forward(tr["volume"]) * 1.5
    err = np.linalg.norm(p - ts.data) / np.linalg.norm(ts.data)
    assert err < 0.03


def test_bad_input():
    with pytest.raises(ParameterError, match="duplicate"):
        check_angles([0, 10, 10])
    with pytest.raises(ParameterError, match="4 angles but there are 3"):
        check_angles([0, 1, 2, 3], 3)
    with pytest.raises(ParameterError, match="finite"):
        check_angles([0, np.nan])
    op = Projector([0.0, 30.0], (8, 8, 2))
    with pytest.raises(DataError, match="shape"):
        op.forward(np.zeros((8, 8, 3)))
    with pytest.raises(DataError, match="shape"):
        op.backward(np.zeros((3, 8, 2)))
    with pytest.raises(ParameterError, match="n_det"):
        Projector([0.0], (8, 8, 2), n_det=2)


def test_sparse_matrix_equals_operator():
    rng = np.random.default_rng(1)
    op = Projector(np.linspace(-60, 60, 9), (10, 12, 5), n_det=14, offset_px=-0.4)
    x = rng.random(op.volume_shape).astype(np.float32)
    m = op.as_matrix()
    p = (m @ x.reshape(10 * 12, 5)).reshape(op.projection_shape)
    np.testing.assert_allclose(p, op.forward(x), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize(
    ("shape", "n_det", "offset"),
    [((10, 12, 3), 14, -0.4), ((6, 16, 2), 16, 2.5), ((12, 9, 1), 9, np.linspace(-1, 1, 9))],
)
def test_transpose_csr_parts_is_the_system_matrix_transposed(shape, n_det, offset):
    """The GPU backend assembles Mᵀ from these parts; built with numpy they must be
    exactly ``as_matrix().T`` in canonical CSR form (sorted, no zeros, no duplicates)."""
    import scipy.sparse as sp

    op = Projector(np.linspace(-70, 65, 9), shape, n_det=n_det, offset_px=offset)
    data, indices, indptr = op.transpose_csr_parts()
    nz, ny, _ = shape
    mt = sp.csr_matrix((data, indices, indptr), shape=(nz * ny, op.n_angles * n_det))
    assert mt.has_canonical_format
    assert np.all(data != 0) and indices.max() < op.n_angles * n_det and indices.min() >= 0
    ref = op.as_matrix().T.tocsr().astype(np.float32)
    assert (mt != ref).nnz == 0
    vol = np.random.default_rng(1).random(shape).astype(np.float32)
    back = (mt @ op.forward(vol).reshape(-1, shape[2])).reshape(shape)
    np.testing.assert_allclose(back, op.backward(op.forward(vol)), rtol=2e-5, atol=1e-5)


def test_cupy_backend_or_clear_error():
    from perovstem.errors import OptionalDependencyError
    from perovstem.tomo import reconstruct

    data = np.random.default_rng(0).random((5, 8, 4)).astype(np.float32)
    ang = np.linspace(-40, 40, 5)
    try:
        import cupy  # noqa: F401
    except Exception:
        with pytest.raises(OptionalDependencyError, match="cupy"):
            reconstruct(data, angles_deg=ang, backend="cupy", n_iter=3)
    else:  # pragma: no cover - GPU machines only
        gpu = reconstruct(data, angles_deg=ang, backend="cupy", n_iter=20).volume
        cpu = reconstruct(data, angles_deg=ang, n_iter=20).volume
        np.testing.assert_allclose(gpu, cpu, rtol=1e-3, atol=1e-4)
        # a slab thinner than wide (nz != ny) with a detector offset
        kw = {"angles_deg": ang, "n_iter": 20, "thickness_px": 5, "offset_px": 0.6}
        gpu = reconstruct(data, backend="cupy", **kw)
        cpu = reconstruct(data, **kw)
        assert gpu.volume.shape == cpu.volume.shape == (5, 8, 4)
        np.testing.assert_allclose(gpu.volume, cpu.volume, rtol=1e-3, atol=1e-4)
        np.testing.assert_allclose(gpu.residuals, cpu.residuals, rtol=1e-4)
    with pytest.raises(ParameterError, match="cupy"):
        reconstruct(data, angles_deg=ang, backend="cupy", method="tv")


@pytest.mark.parametrize("backend", ["cupy", "astra"])
@pytest.mark.parametrize("option", [{"mask": np.ones((8, 8, 4), bool)}, {"noise_sigma": 0.1}])
def test_gpu_and_astra_backends_refuse_options_they_do_not_implement(backend, option):
    """A mask or a discrepancy stop given to a backend that does not implement it must not
    be dropped silently (the volume would not be the one asked for)."""
    from perovstem.tomo import reconstruct

    data = np.random.default_rng(0).random((5, 8, 4)).astype(np.float32)
    with pytest.raises(
        ParameterError, match=f"{backend} backend does not support {next(iter(option))}"
    ):
        reconstruct(data, angles_deg=np.linspace(-40, 40, 5), backend=backend, **option)
