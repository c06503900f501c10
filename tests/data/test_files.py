"""User data files: .npy / .npz / .csv → float64 N×d, and one-line DataErrors naming the file."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lightning_ehf.data.files import check_dim, load_array, particle_shape
from lightning_ehf.errors import DataError, UserError

X = np.arange(12, dtype=np.float32).reshape(6, 2) / 7.0


def data_error(path: Path, **kwargs) -> str:
    """load_array must raise a one-line DataError that names the file; return the message."""
    with pytest.raises(DataError) as info:
        load_array(path, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg, msg
    assert path.name in msg, msg
    assert isinstance(info.value, UserError)
    return msg


# ---------------------------------------------------------------------------------------------------
# happy paths


def test_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", X)
    x = load_array(tmp_path / "x.npy")
    assert x.dtype == np.float64 and x.shape == (6, 2)
    np.testing.assert_allclose(x, X.astype(np.float64))


def test_npy_int_is_cast(tmp_path: Path) -> None:
    np.save(tmp_path / "i.npy", np.arange(6).reshape(3, 2))
    assert load_array(str(tmp_path / "i.npy")).dtype == np.float64


def test_npz_key_x_wins(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=X, y=np.zeros((2, 2)))
    np.testing.assert_allclose(load_array(tmp_path / "d.npz"), X)


def test_npz_only_array(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", samples=X)
    np.testing.assert_allclose(load_array(tmp_path / "d.npz"), X)


def test_csv_with_and_without_header(tmp_path: Path) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_text("1,2\n3.5, -4e-1\n\n5,6\n")
    np.testing.assert_allclose(load_array(plain), [[1, 2], [3.5, -0.4], [5, 6]])
    header = tmp_path / "header.csv"
    header.write_text("q0,q1\n1,2\n3,4\n")
    np.testing.assert_allclose(load_array(header), [[1, 2], [3, 4]])


def test_csv_single_column_is_n_by_1(tmp_path: Path) -> None:
    f = tmp_path / "one.csv"
    f.write_text("x\n1\n2\n3\n")
    assert load_array(f).shape == (3, 1)


def test_csv_matches_npy(tmp_path: Path) -> None:
    np.savetxt(tmp_path / "s.csv", X, delimiter=",", header="a,b", comments="")
    np.testing.assert_allclose(load_array(tmp_path / "s.csv"), X, rtol=1e-7)


def test_expected_dim_ok(tmp_path: Path) -> None:
    np.save(tmp_path / "x.npy", X)
    assert load_array(tmp_path / "x.npy", expected_dim=2).shape[1] == 2


# ---------------------------------------------------------------------------------------------------
# errors


def test_missing_file(tmp_path: Path) -> None:
    assert "not found" in data_error(tmp_path / "nope.npy")


def test_directory(tmp_path: Path) -> None:
    (tmp_path / "dir.npy").mkdir()
    data_error(tmp_path / "dir.npy")


def test_unknown_extension(tmp_path: Path) -> None:
    f = tmp_path / "x.txt"
    f.write_text("1,2\n")
    msg = data_error(f)
    assert ".txt" in msg and ".npy" in msg


@pytest.mark.parametrize("name", ["bad.npy", "bad.npz"])
def test_corrupted_binary(tmp_path: Path, name: str) -> None:
    f = tmp_path / name
    f.write_bytes(b"this is not a numpy file at all")
    assert "not a valid" in data_error(f)


def test_truncated_npy(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", np.zeros((100, 3)))
    raw = (tmp_path / "t.npy").read_bytes()
    (tmp_path / "t.npy").write_bytes(raw[: len(raw) // 2])
    data_error(tmp_path / "t.npy")


def test_pickled_objects(tmp_path: Path) -> None:
    np.save(tmp_path / "o.npy", np.array([[1, "a"]], dtype=object), allow_pickle=True)
    assert "object" in data_error(tmp_path / "o.npy")


def test_string_dtype(tmp_path: Path) -> None:
    np.save(tmp_path / "s.npy", np.array([["a", "b"]]))
    data_error(tmp_path / "s.npy")


def test_npz_several_arrays_no_x(tmp_path: Path) -> None:
    np.savez(tmp_path / "m.npz", a=X, b=X)
    msg = data_error(tmp_path / "m.npz")
    assert "a, b" in msg and "'x'" in msg


def test_npz_empty_archive(tmp_path: Path) -> None:
    np.savez(tmp_path / "e.npz")
    data_error(tmp_path / "e.npz")


def test_csv_non_numeric_cell(tmp_path: Path) -> None:
    f = tmp_path / "bad.csv"
    f.write_text("a,b\n1,2\n3,oops\n")
    msg = data_error(f)
    assert "'oops'" in msg and "line 3" in msg and "column 2" in msg


def test_csv_mixed_first_row_is_not_a_header(tmp_path: Path) -> None:
    f = tmp_path / "mixed.csv"
    f.write_text("1,abc\n3,4\n")
    assert "line 1" in data_error(f)


def test_csv_ragged(tmp_path: Path) -> None:
    f = tmp_path / "ragged.csv"
    f.write_text("1,2\n3,4,5\n")
    assert "line 2" in data_error(f)


def test_csv_empty_cell(tmp_path: Path) -> None:
    f = tmp_path / "hole.csv"
    f.write_text("1,2\n3,\n")
    assert "empty" in data_error(f)


@pytest.mark.parametrize("text", ["", "a,b\n", "\n\n"])
def test_csv_no_rows(tmp_path: Path, text: str) -> None:
    f = tmp_path / "empty.csv"
    f.write_text(text)
    data_error(f)


def test_csv_binary(tmp_path: Path) -> None:
    f = tmp_path / "bin.csv"
    f.write_bytes(bytes(range(256)))
    data_error(f)


def test_one_dimensional(tmp_path: Path) -> None:
    np.save(tmp_path / "v.npy", np.zeros(7))
    assert "expected a 2-D array N×d (or N×n×D particles), got shape (7,)" in data_error(tmp_path / "v.npy")


def test_three_dimensional_is_particles_particle_by_particle(tmp_path: Path) -> None:
    x = np.arange(24.0).reshape(2, 3, 4)  # 2 rows of 3 particles in 4-D
    np.save(tmp_path / "t.npy", x)
    np.savez(tmp_path / "t.npz", x=x)
    for name in ("t.npy", "t.npz"):
        rows = load_array(tmp_path / name)
        assert rows.shape == (2, 12) and rows[1, 4:8].tolist() == x[1, 1].tolist()
        assert particle_shape(tmp_path / name) == (3, 4)
    np.save(tmp_path / "flat.npy", x.reshape(2, 12))
    assert particle_shape(tmp_path / "flat.npy") is None


def test_four_dimensional(tmp_path: Path) -> None:
    np.save(tmp_path / "t.npy", np.zeros((2, 3, 4, 1)))
    assert "(2, 3, 4, 1)" in data_error(tmp_path / "t.npy")


def test_zero_rows(tmp_path: Path) -> None:
    np.save(tmp_path / "z.npy", np.zeros((0, 3)))
    assert "0 rows" in data_error(tmp_path / "z.npy")


def test_nan_and_inf_rows(tmp_path: Path) -> None:
    x = np.zeros((20, 2))
    x[[3, 5, 6, 9, 11, 17], 0] = np.nan
    x[4, 1] = np.inf
    np.save(tmp_path / "n.npy", x)
    msg = data_error(tmp_path / "n.npy")
    assert "7 of 20 rows" in msg and "3, 4, 5, 6, 9" in msg


def test_nan_in_csv(tmp_path: Path) -> None:
    f = tmp_path / "n.csv"
    f.write_text("1,2\nnan,3\n")
    assert "1 of 2 rows" in data_error(f)


def test_expected_dim_mismatch(tmp_path: Path) -> None:
    np.save(tmp_path / "five.npy", np.zeros((4, 5)))
    msg = data_error(tmp_path / "five.npy", expected_dim=2)
    assert "data file" in msg and "has d=5 but" in msg and "d=2" in msg


def test_check_dim_names_source(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="has d=5 but the checkpoint's model has d=2"):
        check_dim(np.zeros((1, 5)), 2, tmp_path / "f.npy", against="the checkpoint's model")
