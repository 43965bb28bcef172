"""Images with a NaN/inf border (registered or drift-corrected exports pad shifted frames).

Before: ``load`` refused any non-finite pixel ("image contains N NaN/inf value(s)"), so
``perovstem atoms fit`` stopped on such an export and offered no crop option.  Now a 2-D
image whose non-finite pixels fill whole border rows/columns is cropped to its finite part
with a warning and a note in the metadata, and positions stay in the file's frame
(``origin_A``); NaN inside the image is refused as before, now saying what to do.
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.spatial import cKDTree

from perovstem.errors import DataError
from perovstem.io import load

PX = 0.3


def _crystal(seed, rot_deg):
    from scipy.spatial.transform import Rotation

    import perovstem.simulate as sim

    at = sim.nanocrystal(40.0, rng=seed)
    at.positions = Rotation.from_euler("z", rot_deg, degrees=True).apply(
        at.positions - at.positions.mean(axis=0)
    )
    img, _ = sim.haadf_image(at, pixel_size_A=PX, dose_e_per_A2=2e4, rng=seed + 5)
    return img.data.astype(float)


@pytest.mark.parametrize(
    ("top", "bottom", "left", "right"), [(7, 0, 0, 5), (0, 3, 11, 0), (2, 2, 2, 2)]
)
def test_nan_border_is_cropped_with_a_note(tmp_path, top, bottom, left, right):
    rng = np.random.default_rng(top + 10 * left)
    a = rng.poisson(50.0, size=(60, 70)).astype(float)
    b = a.copy()
    ny, nx = a.shape
    b[:top] = np.nan
    b[ny - bottom :] = np.inf  # bottom = 0: no row
    b[:, :left] = np.nan
    b[:, nx - right :] = np.nan
    path = tmp_path / "nan_border.npz"
    np.savez(path, obs=b, dx_angstrom=PX)
    with pytest.warns(UserWarning, match="cropped to its finite part"):
        img = load(path)
    assert img.data.shape == (ny - top - bottom, nx - left - right)
    np.testing.assert_array_equal(img.data, a[top : ny - bottom, left : nx - right])
    assert img.origin_A == pytest.approx((left * PX, top * PX))
    note = img.metadata["cropped_nonfinite_border"]
    assert note["rows"] == [top, ny - bottom] and note["cols"] == [left, nx - right]
    assert note["n_nonfinite"] == int((~np.isfinite(b)).sum())


def test_nan_inside_is_still_refused(tmp_path):
    a = np.ones((40, 40))
    a[:3] = np.nan  # a border ...
    a[20, 20] = np.nan  # ... and a hole: not a registration border
    path = tmp_path / "hole.npz"
    np.savez(path, obs=a, dx_angstrom=PX)
    with pytest.raises(DataError, match=r"121 NaN/inf value\(s\).*crop the image"):
        load(path)
    stack = np.ones((3, 30, 30))  # a series: its frames are not cropped
    stack[:, :2] = np.nan
    np.savez(path, obs=stack, dx_angstrom=PX)
    # (and the frames holding them are named)
    with pytest.raises(
        DataError, match=r"180 NaN/inf value\(s\) in 3 of 3 frames \(frame\(s\) 0, 1, 2;"
    ):
        load(path)


def test_atoms_fit_on_a_nan_bordered_export(tmp_path):
    # the same crystal with and without a NaN border (9 rows on top, 6 columns on the left):
    # the columns are found at the same positions in the file's frame
    from perovstem.atoms import cspbbr3_001_cell, find_columns
    from perovstem.cli.main import main
    from perovstem.io import read_table

    for seed, rot in ((0, 10.0), (1, -25.0)):
        a = _crystal(seed, rot)
        b = a.copy()
        b[:9] = np.nan
        b[:, :6] = np.nan
        np.savez(tmp_path / "full.npz", obs=a, dx_angstrom=PX)
        np.savez(tmp_path / "nan.npz", obs=b, dx_angstrom=PX)
        full = find_columns(load(tmp_path / "full.npz"), cell=cspbbr3_001_cell())
        with pytest.warns(UserWarning, match="cropped"):
            crop = find_columns(load(tmp_path / "nan.npz"), cell=cspbbr3_001_cell())
        d, j = cKDTree(crop[["x_A", "y_A"]].to_numpy()).query(full[["x_A", "y_A"]].to_numpy())
        inside = (full["x_A"] > 6 * PX + 3.0) & (full["y_A"] > 9 * PX + 3.0)
        assert d[inside.to_numpy()].max() < 0.05
        assert (crop["type"].to_numpy()[j[inside.to_numpy()]] == full["type"][inside]).all()
        out = tmp_path / f"cols{seed}.parquet"
        args = ["atoms", "fit", str(tmp_path / "nan.npz"), "-o", str(out), "--scs", "voronoi"]
        assert main([*args, "--cell", "cspbbr3", "--overwrite"]) == 0
        t = read_table(out)
        assert t["x_A"].min() > 6 * PX and t["y_A"].min() > 9 * PX  # in the file's frame
