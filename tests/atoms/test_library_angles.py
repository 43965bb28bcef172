"""Libraries for the image's detector; another probe or detector is said, not silent.

Old code: the probe and detector angles of a file were not read, and `atoms count --library
simulate` counted every image with the 65–200 mrad library: an image of a 65–131 mrad
detector (the outer angle of a 0.05 Å multislice at 300 kV; column cross-sections × 0.83–0.86
in abTEM) read every column one atom thin, with no warning.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.spatial import cKDTree

import perovstem as ps
from perovstem.cli.main import main


@pytest.fixture(scope="module")
def stepped(tmp_path_factory):
    """A 60 Å cube with three terraces (0, 1, 2 cells off its top), imaged on the 65–200
    and the 65–131 mrad detector (same noise seed) and fitted normalised."""
    from perovstem.simulate import haadf_image, nanocrystal

    d = tmp_path_factory.mktemp("stepped")
    at = nanocrystal(60.0, rng=np.random.default_rng(2))
    x, z = at.positions[:, 0], at.positions[:, 2]
    third = (x.max() - x.min()) / 3
    steps = (x > x.min() + third).astype(int) + (x > x.min() + 2 * third)
    at = at[z < z.max() + 0.1 - steps * 5.87]
    fits = {}
    for det in ((65.0, 200.0), (65.0, 131.0)):
        img, truth = haadf_image(
            at, dose_e_per_A2=2e4, detector_mrad=det, rng=np.random.default_rng(3)
        )
        name = f"img{det[1]:g}"
        ps.io.save_image(img, d / f"{name}.npz")
        fit = d / f"{name}_fit.parquet"
        args = ["atoms", "fit", str(d / f"{name}.npz"), "-o", str(fit), "--normalize"]
        assert main([*args, "--cell", "cspbbr3"]) == 0
        fits[det[1]] = pd.read_parquet(fit)
    return d, fits, truth


def _count(d, fit, capsys, *extra, attrs=None):
    t = fit.copy()
    t.attrs = dict(fit.attrs) if attrs is None else attrs
    src, out = d / "table.parquet", d / "counts.parquet"
    t.to_parquet(src)
    capsys.readouterr()
    args = ["atoms", "count", str(src), "-o", str(out), "--library", "simulate"]
    assert main([*args, "--termination", "CsBr", "--overwrite", *extra]) == 0
    return pd.read_parquet(out), " ".join(capsys.readouterr().out.split())


def _mean_error(counts, truth):
    dist, i = cKDTree(truth[["x_A", "y_A"]].to_numpy()).query(counts[["x_A", "y_A"]].to_numpy())
    ok = dist < 0.8
    return float(np.mean(counts["n_atoms"].to_numpy()[ok] - truth["n_atoms"].to_numpy()[i[ok]]))


def test_each_detector_is_counted_with_its_own_library(stepped, capsys):
    d, fits, truth = stepped
    assert fits[200].attrs["detector_mrad"] == [65.0, 200.0]
    assert fits[131].attrs["detector_mrad"] == [65.0, 131.0]  # recorded by atoms fit
    counts, out = _count(d, fits[200], capsys)
    assert abs(_mean_error(counts, truth)) < 0.1 and "WARNING the image" not in out
    assert "detector is not recorded" not in out
    assert counts.attrs["counting"]["library_angles"]["matches"] is True
    counts, out = _count(d, fits[131], capsys)
    assert abs(_mean_error(counts, truth)) < 0.1
    assert "kV (the image's), 65–131 mrad (the image's)" in out
    assert counts.attrs["counting"]["library_angles"]["library"]["detector_mrad"] == [65, 131]


def test_unrecorded_detector_reads_whole_atoms_off_unless_given(stepped, capsys):
    d, fits, truth = stepped
    bare = {k: v for k, v in fits[131].attrs.items() if k != "detector_mrad"}
    counts, out = _count(d, fits[131], capsys, attrs=bare)  # a file that does not say
    assert _mean_error(counts, truth) < -0.7  # every column about one atom thin, unwarned
    assert "WARNING the image" not in out and "65–200 mrad (assumed)" in out
    assert "detector is not recorded" in out and "--detector-mrad" in out
    counts, _ = _count(d, fits[131], capsys, "--detector-mrad", "65,131", attrs=bare)
    assert abs(_mean_error(counts, truth)) < 0.1


def test_uncalibrated_probe_or_detector_is_warned_about(stepped, capsys):
    d, fits, _ = stepped
    counts, out = _count(d, fits[200], capsys, "--detector-mrad", "50,180")
    assert "a 50–180 mrad detector (libraries 65–200 or 65–131)" in out
    assert "whole number of atoms" in out
    assert counts.attrs["counting"]["library_angles"]["matches"] is False
    _, out = _count(d, fits[200], capsys, attrs={**fits[200].attrs, "semiangle_mrad": 30.0})
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


def test_the_65_131_table_is_the_same_runs_on_the_narrower_detector():
    from perovstem.simulate import scs_table

    n = np.arange(1, 15)
    for t, lo, hi in (("PbBr", 0.83, 0.84), ("Cs", 0.84, 0.85), ("Br", 0.85, 0.865)):
        r = scs_table(t, n, detector_mrad=(65, 131)) / scs_table(t, n)
        assert lo < r.min() and r.max() < hi, (t, r)
    r200 = scs_table("PbBr", n, voltage_kV=200, detector_mrad=(65, 131))
    assert np.all(r200 / scs_table("PbBr", n, voltage_kV=200) < 0.83)
    with pytest.raises(ps.PerovstemError, match=r"calibrated detectors.*\[65\.0, 131\.0\]"):
        scs_table("PbBr", n, detector_mrad=(50, 180))


def test_simulators_on_the_command_line_take_a_calibrated_detector(tmp_path, capsys):
    img = tmp_path / "i.npz"
    base = ["simulate", "image", "-o", str(img), "--edge-A", "20", "--seed", "1"]
    assert main([*base, "--detector-mrad", "65,131"]) == 0
    assert list(ps.load(img).metadata["detector_mrad"]) == [65.0, 131.0]
    for cmd in (base, ["simulate", "series", "-o", str(tmp_path / "s.npz"), "--frames", "3"]):
        capsys.readouterr()
        assert main([*cmd, "--detector-mrad", "50,180", "--overwrite"]) == 2
        assert "calibrated detectors [[65.0, 200.0], [65.0, 131.0]]" in capsys.readouterr().err
    assert not (tmp_path / "s.npz").exists()


def test_a_library_table_per_column_type(stepped, capsys):
    # the way to count another detector's image: its own library per type (here the
    # 65-131 mrad one written as a user's file); old code took one table for every type
    from perovstem.simulate import scs_library

    d, fits, truth = stepped
    lib = pd.concat(
        [
            scs_library(t, 30, detector_mrad=(65, 131), termination="CsBr").assign(type=t)
            for t in ("PbBr", "Cs", "Br")
        ]
    )
    lib.to_csv(d / "lib.csv", index=False)
    bare = {k: v for k, v in fits[131].attrs.items() if k != "detector_mrad"}
    t = fits[131].copy()
    t.attrs = bare
    t.to_parquet(d / "bare.parquet")
    out = d / "c_lib.parquet"
    args = ["atoms", "count", str(d / "bare.parquet"), "-o", str(out), "--overwrite"]
    assert main([*args, "--library", str(d / "lib.csv"), "--method", "hybrid"]) == 0
    assert abs(_mean_error(pd.read_parquet(out), truth)) < 0.1
    lib[lib["type"] != "Br"].to_csv(d / "lib2.csv", index=False)
    capsys.readouterr()
    assert main([*args, "--library", str(d / "lib2.csv"), "--method", "hybrid"]) == 2
    assert "types ['Cs', 'PbBr'], not of ['Br']" in capsys.readouterr().err


def test_python_api_simulated_library_follows_the_table(stepped):
    # count_hybrid(table, "simulate") took 300 kV and 65-200 mrad whatever the table said
    from perovstem.atoms import count_hybrid

    d, fits, truth = stepped
    good = count_hybrid(fits[131], "simulate", termination="CsBr")
    assert abs(_mean_error(good, truth)) < 0.1
    bare = fits[131].copy()
    bare.attrs = {k: v for k, v in fits[131].attrs.items() if k != "detector_mrad"}
    assert _mean_error(count_hybrid(bare, "simulate", termination="CsBr"), truth) < -0.7
