"""Label columns whose values look numeric in some rows are read, not refused as text in
a column of numbers (the facet table of `tomo facets`: family "100", "110", "other")."""

import pandas as pd
import pytest

from perovstem.errors import DataError
from perovstem.io import read_table, save_table


def test_facet_family_labels_are_read(tmp_path):
    t = pd.DataFrame({"family": ["100", "110", "111", "other"], "fraction": [0.5, 0.3, 0.1, 0.1]})
    save_table(t, tmp_path / "facets.csv")
    back = read_table(tmp_path / "facets.csv")
    assert list(back["family"].astype(str)) == ["100", "110", "111", "other"]
    assert back["fraction"].sum() == pytest.approx(1.0)


@pytest.mark.parametrize("name", ["scs", "family_fraction"])
def test_text_in_a_number_column_is_still_refused(tmp_path, name):
    t = pd.DataFrame({name: ["1.0", "2.0", "abc"], "x_A": [1.0, 2.0, 3.0]})
    t.to_csv(tmp_path / "t.csv", index=False)
    with pytest.raises(DataError, match=f"column '{name}' holds text"):
        read_table(tmp_path / "t.csv")
