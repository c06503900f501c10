"""User data files → a float64 array ``N×d``.

Formats (docs/design.md §4): ``.npy`` (N×d numbers), ``.npz`` (array ``x``, else the only array),
``.csv`` (numbers separated by commas, optionally one header row of column names). A ``.npy`` / ``.npz``
array shaped ``N×n×D`` holds n particles of D coordinates per row; it is read as ``N×(n·D)``, particle
by particle (:func:`particle_shape` tells n and D).
Every problem raises :class:`~lightning_ehf.errors.DataError` with a one-line message naming the file.
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from lightning_ehf.errors import DataError

__all__ = ["SUFFIXES", "load_array", "check_array", "check_dim", "particle_shape"]

#: Supported file extensions (lower case).
SUFFIXES = (".npy", ".npz", ".csv")
_SHOW_ROWS = 5  # how many offending row indices an error message lists


def _one_line(text: object) -> str:
    return " ".join(str(text).split())


def _err(path: str | Path, message: str) -> DataError:
    return DataError(_one_line(f"data file {path}: {message}"))


# --------------------------------------------------------------------------------------------------
# readers


def _check_magic(path: Path, magic: bytes, kind: str) -> None:
    try:
        with path.open("rb") as fh:
            head = fh.read(len(magic))
    except OSError as err:
        raise _err(path, f"cannot read it ({err})") from None
    if head != magic:
        raise _err(path, f"is not a valid {kind} file (corrupted, or another format with a {kind} name)")


def _read_npy(path: Path) -> np.ndarray:
    _check_magic(path, b"\x93NUMPY", ".npy")
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as err:
        if "Object arrays" in str(err):
            raise _err(path, "holds Python objects (a pickled object array), not numbers") from None
        raise _err(path, f"cannot read it as .npy ({err})") from None
    except (OSError, EOFError) as err:
        raise _err(path, f"cannot read it as .npy ({err})") from None


def _read_npz(path: Path) -> np.ndarray:
    _check_magic(path, b"PK", ".npz")
    try:
        with np.load(path, allow_pickle=False) as npz:
            keys = list(npz.files)
            if "x" in keys:
                key = "x"
            elif len(keys) == 1:
                key = keys[0]
            elif not keys:
                raise _err(path, "the .npz archive holds no arrays")
            else:
                names = ", ".join(keys)
                raise _err(path, f"holds several arrays ({names}) and none is named 'x'; save the data as 'x'")
            return npz[key]
    except DataError:
        raise
    except ValueError as err:
        if "Object arrays" in str(err):
            raise _err(path, "holds Python objects (a pickled object array), not numbers") from None
        raise _err(path, f"cannot read it as .npz ({err})") from None
    except (OSError, EOFError, zipfile.BadZipFile, KeyError) as err:
        raise _err(path, f"cannot read it as .npz ({err})") from None


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _read_csv(path: Path) -> np.ndarray:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise _err(path, "is not UTF-8 text (is it really a .csv?)") from None
    except OSError as err:
        raise _err(path, f"cannot read it ({err})") from None
    if "\x00" in text:
        raise _err(path, "is binary, not comma-separated text")

    # (line number, fields) for every non-blank line; '#' starts a comment line
    rows = [
        (i, [f.strip() for f in line.split(",")])
        for i, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    # a first row in which no field is a number is a header (column names)
    if rows and not any(_is_float(f) for f in rows[0][1]):
        rows = rows[1:]
    if not rows:
        raise _err(path, "contains no data rows")

    width = len(rows[0][1])
    data = np.empty((len(rows), width), dtype=np.float64)
    for r, (lineno, fields) in enumerate(rows):
        if len(fields) != width:
            raise _err(path, f"line {lineno} has {len(fields)} columns, but the first data row has {width}")
        for c, field in enumerate(fields):
            try:
                data[r, c] = float(field)
            except ValueError:
                what = "an empty value" if not field else f"non-numeric value {field!r}"
                raise _err(path, f"{what} at line {lineno}, column {c + 1}") from None
    return data


# --------------------------------------------------------------------------------------------------
# checks


def check_array(x: np.ndarray, path: str | Path) -> np.ndarray:
    """Validate a loaded array: numeric, 2-D ``N×d`` with N, d ≥ 1, all finite. Returns it as float64."""
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise _err(path, f"holds values of type {x.dtype}, expected real numbers")
    if x.ndim == 3 and 0 not in x.shape[1:]:  # N×n×D particles, particle by particle
        x = x.reshape(x.shape[0], x.shape[1] * x.shape[2])
    if x.ndim != 2:
        raise _err(path, f"expected a 2-D array N×d (or N×n×D particles), got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise _err(path, f"is empty (0 rows, shape {tuple(x.shape)})")
    if x.shape[1] == 0:
        raise _err(path, f"has 0 columns (shape {tuple(x.shape)})")
    x = x.astype(np.float64, copy=False)
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        shown = ", ".join(str(i) for i in bad[:_SHOW_ROWS]) + (", …" if bad.size > _SHOW_ROWS else "")
        raise _err(path, f"{bad.size} of {x.shape[0]} rows contain NaN or Inf (rows {shown}, counted from 0)")
    return x


def check_dim(x: np.ndarray, expected_dim: int, path: str | Path, against: str = "expected") -> None:
    """Raise DataError if the data dimension ``x.shape[1]`` differs from ``expected_dim``.

    ``against`` says where the expectation comes from, e.g. ``"the checkpoint's model"``.
    """
    d = int(x.shape[1])
    if d != expected_dim:
        if against == "expected":
            raise DataError(f"data file {path} has d={d} but d={expected_dim} was expected")
        raise DataError(_one_line(f"data file {path} has d={d} but {against} has d={expected_dim}"))


def particle_shape(path: str | Path) -> tuple[int, int] | None:
    """``(n, D)`` when ``path`` is a ``.npy`` / ``.npz`` array shaped ``N×n×D`` (read without loading the
    data where the format allows), else None; also None for a file that cannot be read (loading it
    later reports why)."""
    path = Path(path).expanduser()
    try:
        if path.suffix.lower() == ".npy":
            shape = np.load(path, mmap_mode="r", allow_pickle=False).shape
        elif path.suffix.lower() == ".npz":
            shape = _read_npz(path).shape
        else:
            return None
    except (OSError, ValueError, EOFError, DataError, zipfile.BadZipFile):
        return None
    return (int(shape[1]), int(shape[2])) if len(shape) == 3 else None


def load_array(path: str | Path, expected_dim: int | None = None, against: str = "expected") -> np.ndarray:
    """Load a user data file as a float64 array ``N×d`` (``.npy``, ``.npz`` or ``.csv``).

    With ``expected_dim``, also check ``d`` (see :func:`check_dim`). Raises DataError naming the file.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"data file not found: {path}")
    if not path.is_file():
        raise _err(path, "is not a file")
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        shown = f"'{path.suffix}'" if path.suffix else "no extension"
        raise _err(path, f"unsupported file type ({shown}); use .npy, .npz or .csv")
    reader = {".npy": _read_npy, ".npz": _read_npz, ".csv": _read_csv}[suffix]
    x = check_array(reader(path), path)
    if expected_dim is not None:
        check_dim(x, expected_dim, path, against)
    return x
