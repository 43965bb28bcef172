"""A library made for another probe or detector than the image's is said, not silent.

Old code: `atoms count --library simulate` on an image of a 131 mrad outer angle (column
cross-sections × 0.83–0.86 in abTEM) read every column of a crystal one atom thin with no
warning; the probe and detector angles of a file were not read at all.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

import perovstem as ps
from perovstem.cli.main import main


@pytest.fixture(scope="module")
def stepped_fit(tmp_path_factory):
    """A 60 Å cube with three terraces (0, 1, 2 cells off its top), fitted normalised."""
    from perovstem.simulate import haadf_image, nanocrystal

    d = tmp_path_factory.mktemp("stepped")
    at = nanocrystal(60.0, rng=np.random.default_rng(2))
    x, z = at.positions[:, 0], at.positions[:, 2]
    third = (x.max() - x.min()) / 3
    steps = (x > x.min() + third).astype(int) + (x > x.min() + 2 * third)
    at = at[z < z.max() + 0.1 - steps * 5.87]
    img, truth = haadf_image(at, pixel_size_A=0.25, dose_e_per_A2=2e4, rng=np.random.default_rng(3))
    ps.io.save_image(img, d / "img.npz")
    assert main(["atoms", "fit", str(d / "img.npz"), "-o", str(d / "fit.parquet"),
                 "--normalize", "--cell", "cspbbr3"]) == 0  # fmt: skip
    return d, pd.read_parquet(d / "fit.parquet"), truth


def _count(d, fit, factor, capsys, *extra):
    """Count the fit with its cross-sections × ``factor`` (another detector's image)."""
    t = fit.copy()
    t["scs"] *= factor
    t["scs_err"] *= factor
    t.attrs = dict(fit.attrs)
    src, out = d / f"s{factor}.parquet", d / f"c{factor}.parquet"
    t.to_parquet(src)
    capsys.readouterr()
    args = ["atoms", "count", str(src), "-o", str(out), "--library", "simulate"]
    assert main([*args, "--termination", "CsBr", "--overwrite", *extra]) == 0
    return pd.read_parquet(out), " ".join(capsys.readouterr().out.split())


def _mean_error(counts, truth):
    dist, i = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(counts[["x_A", "y_A"]].to_numpy())
    ok = dist < 0.8
    return float(np.mean(counts["n_atoms"].to_numpy()[ok] - truth["n_atoms"].to_numpy()[i[ok]]))


def test_simulated_image_matches_the_library_and_counts_right(stepped_fit, capsys):
    d, fit, truth = stepped_fit
    assert fit.attrs["semiangle_mrad"] == 20.0 and fit.attrs["detector_mrad"] == [65.0, 200.0]
    counts, out = _count(d, fit, 1.0, capsys)
    assert abs(_mean_error(counts, truth)) < 0.1
    assert "library's absolute scale" not in out
    assert counts.attrs["counting"]["library_angles"]["matches"] is True


def test_another_detector_is_warned_about_where_counts_go_wrong(stepped_fit, capsys):
    d, fit, truth = stepped_fit
    # the cross-sections of a 65-131 mrad detector (abTEM: x 0.83-0.86): every column
    # one atom thin; the counting itself does not notice
    counts, out = _count(d, fit, 0.834, capsys)
    assert _mean_error(counts, truth) < -0.7
    assert "library's absolute scale" not in out  # nothing says the detector differs
    counts, out = _count(d, fit, 0.834, capsys, "--detector-mrad", "65,131")
    assert "65–131 mrad detector (library 65–200)" in out and "whole number of atoms" in out
    assert counts.attrs["counting"]["library_angles"]["matches"] is False
    # recorded by atoms fit from the file: warned without the option
    fit2 = fit.copy()
    fit2.attrs = {**fit.attrs, "semiangle_mrad": 30.0}
    _, out = _count(d, fit2, 1.0, capsys)
    assert "a 30 mrad probe (library 20)" in out


def test_angle_options_need_the_simulated_library(tmp_path, capsys):
    t = pd.DataFrame({"x_A": [0.0, 4.0], "y_A": [0.0, 0.0], "scs": [1.0, 2.0]})
    t.to_parquet(tmp_path / "t.parquet")
    base = ["atoms", "count", str(tmp_path / "t.parquet"), "-o", str(tmp_path / "c.parquet")]
    assert main([*base, "--detector-mrad", "65,131"]) == 2
    assert "--library simulate or fitted" in capsys.readouterr().err
    assert main([*base, "--library", "simulate", "--detector-mrad", "131,65"]) == 2
    assert "0 <= INNER < OUTER" in capsys.readouterr().err
    assert not (tmp_path / "c.parquet").exists()
