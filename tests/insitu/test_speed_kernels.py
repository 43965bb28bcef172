"""The cache-blocked / fused kernels of the per-frame path equal their reference forms bit
for bit (issue #7 speed: the 1000-frame benchmark), on shapes that cross their strip and
tile boundaries."""

from __future__ import annotations

import numpy as np
import pytest
from _reference_kernels import reference_opening
from scipy import ndimage


@pytest.mark.parametrize(
    "shape, side",
    [((150, 203), 41), ((97, 130), 161), ((70, 257), 3), ((300, 65), 9)],
)
def test_lattice_opening_blocked_equals_ndimage(shape, side):
    """Frames wider than one column strip (64 lanes) and taller than one row tile (32),
    elements shorter and longer than the frame, a plateau with clusters on it."""
    from perovstem.insitu.clusters import _lattice_opening

    rng = np.random.default_rng(sum(shape) + side)
    m = rng.gamma(2.0, 1.0, shape) + np.where(rng.random(shape) < 0.03, 30.0, 0.0)
    m[shape[0] // 4 : shape[0] // 2, shape[1] // 3 :] += 5.0  # a plateau (crystal)
    for ns in (0.0, 0.3):
        np.testing.assert_array_equal(_lattice_opening(m, side, ns), reference_opening(m, side, ns))


def _reference_cell_average(stack, a_px, angle_deg):
    """``clusters._cell_average`` as written before the compiled pad / crop (numpy chain)."""
    from scipy import fft as sfft

    from perovstem.insitu.lattice import _cell_filter32, _cell_padding

    (py, _), (px, _) = pads = _cell_padding(stack.shape[-2:], a_px)
    mm, nn = stack.shape[-2:]
    lead = ((0, 0),) * (stack.ndim - 2)
    x = np.asarray(stack, float)
    mean = x.mean(axis=(-2, -1), keepdims=True)
    st = np.pad((x - mean).astype(np.float32), (*lead, *pads), mode="reflect")
    pm = st.mean(axis=(-2, -1), keepdims=True, dtype=np.float64)
    st -= pm.astype(np.float32)
    filt = _cell_filter32(st.shape[-2:], float(a_px), float(angle_deg), 0.0)
    spec = sfft.rfft2(st, workers=2)
    spec *= filt
    out = sfft.irfft2(spec, s=st.shape[-2:], workers=2)[..., py : py + mm, px : px + nn]
    return out.astype(float) + (mean + pm)


@pytest.mark.parametrize(
    "shape, a_px, angle",
    [
        ((600, 530), 29.35, 3.0),  # fast-FFT padding: pads differ per side
        ((2, 300, 257), 14.7, 0.0),  # a stack (the batched mask / masked image)
        ((3, 61, 90), 19.6, -7.0),  # small patches: exact 2-cell padding
        ((40, 33), 19.6, 11.0),  # pads beyond the side (numpy fallback)
    ],
)
def test_cell_average_compiled_pad_equals_numpy_chain(shape, a_px, angle):
    from perovstem.insitu.clusters import _cell_average

    rng = np.random.default_rng(len(shape) + int(a_px))
    x = rng.gamma(2.0, 40.0, shape) + 300.0
    np.testing.assert_array_equal(
        _cell_average(x, a_px, angle), _reference_cell_average(x, a_px, angle)
    )
    # a non-contiguous view (e.g. a window of a frame) gives the same as its copy
    v = x[..., ::2, :] if x.shape[-2] > 80 else x.T.copy().T
    np.testing.assert_array_equal(
        _cell_average(v, a_px, angle), _reference_cell_average(v, a_px, angle)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_expand_labels_equals_skimage(seed):
    """The nearest-segment partition of the aperture photometry (``_aperture_counts``):
    equal to scikit-image's ``expand_labels`` on random segments, equidistant pixels
    (single-pixel labels on a grid) and distances on the pixel lattice included."""
    from skimage.segmentation import expand_labels as sk_expand

    from perovstem.insitu._cluster_kernels import expand_labels

    rng = np.random.default_rng(seed)
    shape = (173, 241)
    blobs = ndimage.gaussian_filter(rng.random(shape), 3) > 0.52 + 0.01 * seed
    lab = ndimage.label(blobs)[0].astype(np.int32)
    grid = np.zeros(shape, np.int32)  # ties everywhere between single-pixel labels
    grid[5::14, 7::14] = np.arange(1, grid[5::14, 7::14].size + 1).reshape(grid[5::14, 7::14].shape)
    for labels in (lab, grid):
        for d in (0.0, 1.0, 5.0, 7.0, np.sqrt(50.0), 12.3, 500.0):
            np.testing.assert_array_equal(expand_labels(labels, d), sk_expand(labels, distance=d))
    assert not expand_labels(np.zeros(shape, np.int32), 3.0).any()


@pytest.mark.parametrize("dtype", [np.complex64, np.complex128])
def test_checker_half_compiled_equals_numpy_chain(dtype):
    """The checkerboard-half spectrum (split-half drift errors) from the compiled alias
    kernel equals the numpy chain it replaced, bit for bit (values; the sign of an exact
    zero aside)."""
    from perovstem.insitu.register import _alias_index, _checker_half

    rng = np.random.default_rng(4)
    for shape in ((64, 90), (128, 128), (30, 46)):
        spec = (rng.normal(size=(shape[0], shape[1] // 2 + 1)) * 1e3).astype(dtype)
        spec += 1j * rng.normal(size=spec.shape).astype(dtype) * 1e3
        spec[3, :5] = 0.0  # exact zeros
        g = spec[_alias_index(shape)][:, ::-1]
        want = np.conj(g)
        want += spec
        want *= np.float32(0.5) if dtype == np.complex64 else 0.5
        got = _checker_half(spec, shape)
        assert got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)
    assert _checker_half(spec[:-1], (29, 46)) is None  # odd side: no alias form


def test_outline_lowpass_cached_equals_formula():
    from perovstem.insitu.register import _freqs, _k2, _outline_lowpass

    shape = (96, 130)
    for period in (14.8, 9.87, 14.8):
        ky, kx = _freqs(shape)
        a = 2.0 * np.pi**2 * (0.7 * period) ** 2
        want = np.outer(np.exp(-a * ky**2), np.exp(-a * kx**2)).astype(np.float32) * _k2(shape)
        np.testing.assert_array_equal(_outline_lowpass(shape, period), want)


def test_demod_blocks_equals_sequential_sums():
    """Block means of the demodulated image (host-lattice test): the compiled kernel sums
    each block row by row, left to right, as a plain loop does (incomplete last blocks
    included)."""
    from perovstem.insitu._cluster_kernels import _demod_blocks

    rng = np.random.default_rng(7)
    img = rng.gamma(2.0, 30.0, (37, 50))
    b = 4
    mb, nb = -(-37 // b), -(-50 // b)
    cy = np.exp(-2j * np.pi * 0.13 * np.arange(37))
    cx = np.exp(-2j * np.pi * 0.31 * np.arange(50))
    want = np.zeros((mb, nb), complex)
    for y in range(37):
        for x in range(50):
            want[y // b, x // b] += img[y, x] * (cy[y] * cx[x])
    want *= 1.0 / (b * b)
    np.testing.assert_array_equal(_demod_blocks(img, cy, cx, b, mb, nb), want)


def test_empty_site_mask_equals_vectorised_formula():
    from perovstem.insitu._cluster_kernels import _empty_site_mask

    rng = np.random.default_rng(8)
    mm, nn, b, a_px, r = 45, 61, 3, 9.7, 2.1
    ph1 = rng.uniform(-np.pi, np.pi, (-(-mm // b), -(-nn // b)))
    ph2 = rng.uniform(-np.pi, np.pi, ph1.shape)
    t = np.radians(4.0)
    e1x, e1y, e2x, e2y = np.cos(t), np.sin(t), -np.sin(t), np.cos(t)
    y, x = np.mgrid[0:mm, 0:nn].astype(float)
    p1, p2 = ph1 / (2 * np.pi), ph2 / (2 * np.pi)
    by, bx = np.mgrid[0:mm, 0:nn] // b
    u = (e1x * x + e1y * y) / a_px + p1[by, bx]
    v = (e2x * x + e2y * y) / a_px + p2[by, bx]
    fu, fv = u - np.floor(u), v - np.floor(v)
    du = np.abs(np.where(fu >= 0.5, fu - 0.5, fu) - 0.25)
    dv = np.abs(np.where(fv >= 0.5, fv - 0.5, fv) - 0.25)
    want = (np.hypot(du, dv) * a_px < r).astype(float)
    got = _empty_site_mask(ph1, ph2, b, e1x, e1y, e2x, e2y, a_px, r, mm, nn)
    np.testing.assert_array_equal(got, want)


@pytest.mark.parametrize(
    "shape, ap, angle, smooth",
    [
        ((1152, 1104), 29.35, 0.0085, 0.0),  # a detector window of a 1024² frame
        ((300, 257), 14.7, 0.0, 0.0),  # axis-aligned: the k_y parts vanish in k₁
        ((61, 90), 19.6, -37.0, 0.0),
        ((96, 131), 7.3, 90.0, 2.5),  # smoothed, rotated by a quarter turn
    ],
)
def test_cell_filter32_equals_sinc_maps_to_float32_rounding(shape, ap, angle, smooth):
    """The compiled single-precision cell filter (1-D sines and cosines, sin(a + b) by
    the sum formula) equals the float64 ``np.sinc`` maps of ``_cell_filter`` rounded to
    float32, to one unit in the last place (1e-15 absolute at the sincs' zeros)."""
    from perovstem.insitu.lattice import _cell_filter, _cell_filter32

    want = _cell_filter.__wrapped__(shape, ap, angle, smooth)
    got = _cell_filter32.__wrapped__(shape, ap, angle, smooth)
    assert got.dtype == np.float32 and got.shape == (shape[0], shape[1] // 2 + 1)
    w32 = want.astype(np.float32)
    tol = np.spacing(np.abs(w32)).astype(float) + 1e-15
    assert np.all(np.abs(got.astype(float) - w32.astype(float)) <= tol)
    assert np.abs(got - want).max() < 1e-7
    # most entries are the same float32
    assert np.mean(got == w32) > 0.9


@pytest.mark.parametrize(
    "shape, rows, dtype",
    [
        ((1, 1152, 1152), (59, 1083), np.float32),  # a 1024² frame's padded map
        ((2, 270, 225), (30, 240), np.float32),  # a stack, 5-smooth sides
        ((2, 331, 397), (0, 331), np.float32),  # prime sides (Bluestein transforms)
        ((97, 130), (5, 90), np.float64),  # 2-D, double precision
        ((3, 64, 63), (10, 11), np.float64),  # odd last side, one row
    ],
)
def test_irfft2_rows_equals_irfft2(shape, rows, dtype):
    """The two 1-D inverse passes on the kept rows, with irfft2's 1/(M N) factor applied
    after them (or returned for the fused crop), equal irfft2 bit for bit."""
    from scipy import fft as sfft

    from perovstem.insitu._cluster_kernels import crop_restore, irfft2_rows

    rng = np.random.default_rng(shape[-1])
    x = rng.standard_normal(shape).astype(dtype)
    spec = sfft.rfft2(x)
    want = sfft.irfft2(spec, s=shape[-2:])[..., rows[0] : rows[1], :]
    got = irfft2_rows(spec.copy(), shape[-2:], *rows, overwrite=True)
    assert got.dtype == want.dtype
    np.testing.assert_array_equal(got, want)
    # unscaled rows and the factor, fused with crop_restore's crop and level
    raw, fct = irfft2_rows(spec, shape[-2:], *rows, scale=False)
    lead = x.shape[:-2]
    level = rng.uniform(10.0, 20.0, (*lead, 1, 1))
    nr, nc = rows[1] - rows[0], shape[-1] - 3
    np.testing.assert_array_equal(
        crop_restore(raw, 0, 2, nr, nc, level, scale=fct),
        want[..., :, 2 : 2 + nc].astype(float) + level,
    )


def test_unit_cell_average_equals_irfft2_formula():
    """unit_cell_average (the crystal segmentation's map) keeps its values bit for bit
    with the inverse of the kept rows only."""
    from scipy import fft as sfft

    from perovstem.insitu.lattice import _cell_filter, _cell_padding, unit_cell_average

    rng = np.random.default_rng(3)
    a = rng.gamma(2.0, 40.0, (300, 257))
    a_px, ang, sm = 14.7, 3.0, 7.0
    (py, _), (px, _) = pads = _cell_padding(a.shape, a_px)
    b = np.pad(a, pads, mode="reflect")
    filt = _cell_filter(b.shape, a_px, ang, sm)
    mean = b.mean()
    want = sfft.irfft2(sfft.rfft2(b - mean) * filt, s=b.shape, workers=2) + mean
    want = want[py : py + a.shape[0], px : px + a.shape[1]]
    np.testing.assert_array_equal(unit_cell_average(a, a_px, angle_deg=ang, smooth_px=sm), want)
