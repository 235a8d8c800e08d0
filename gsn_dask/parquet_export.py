"""Parquet views of the cubes, for clusters (Spark, warehouses) that prefer Parquet to zarr.

Spectra (``gsn-dask export-parquet CUBE --out DIR``): a directory of ``part-NNNNN.parquet``
files, one per zarr chunk of the cube (one row group each), one row per star:

==============  ==================  =================================================
column          Arrow type          meaning
==============  ==================  =================================================
``index``       int64               0-based position of the star in the cube
``star``        string              star id
``source``      string              file / library entry of the row
``ra``, ``dec`` float64             degrees (NaN unknown)
``snr``         float32             median S/N per pixel
``rv_catalog``  float32             km/s
``label_<n>``   float32             reference / training labels
``flux``        list<float32>       flux on the cube grid (n_wavelength values)
``ivar``        list<float32>       inverse variance of flux, 0 = bad pixel
==============  ==================  =================================================

The wavelength grid (vacuum Angstrom, float64, exact) and the cube attrs are in the Parquet
key-value metadata under the key ``gsn_dask`` (JSON, see :func:`parquet_metadata`), in every
part file. A ``_SUCCESS`` file marks a complete export (Spark ignores ``_`` files).

Results (:func:`write_results_parquet`): one row per star with ``star``, ``index``, ``status``,
``flag``, the per-star numbers and ``<stat>_<label>`` columns (``median_teff``, ``p16_teff``...);
the results attrs are in the ``gsn_dask`` key-value metadata.
"""
from __future__ import annotations

import json
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .cube import (
    RESULT_LABEL_VARS,
    RESULT_STAR_VARS,
    CubeSchemaError,
    OutputPathError,
    check_output_path,
    label_names,
    make_spectra,
    open_results,
    open_spectra,
)

PARQUET_SPECTRA_SCHEMA = "gsn-dask/spectra-parquet/1"
PARQUET_RESULTS_SCHEMA = "gsn-dask/results-parquet/1"
META_KEY = b"gsn_dask"
SUCCESS_FILE = "_SUCCESS"

_STAR_COLUMNS: dict[str, str] = {"ra": "float64", "dec": "float64", "snr": "float32", "rv_catalog": "float32"}


# ----------------------------------------------------------------------------- helpers
def is_parquet_export(path: str | Path) -> bool:
    """True for a directory holding nothing but a gsn-dask Parquet export: ``_SUCCESS`` and
    ``part-NNNNN.parquet`` files (and hidden temporary parts)."""
    path = Path(path)
    if not (path / SUCCESS_FILE).is_file():
        return False
    part = re.compile(r"\.?part-\d+\.parquet(\.\d+\.tmp)?")
    return all(p.name == SUCCESS_FILE or (p.is_file() and part.fullmatch(p.name)) for p in path.iterdir())


def check_parquet_out(out: str | Path, *, overwrite: bool, inputs: Sequence[str | Path] = ()) -> Path:
    """The resolved output directory of a Parquet export, checked before anything is written:
    not under a plain file, not one of ``inputs`` (nor inside one), and if it exists, replaced
    only with ``overwrite`` and only if it is a Parquet export itself (never other data)."""
    out = Path(out).expanduser().resolve()
    check_output_path(out)
    for inp in inputs:
        inp = Path(inp).expanduser().resolve()
        if out == inp or inp in out.parents:
            raise OutputPathError(f"the output {out} must not be the input {inp} (or inside it)")
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (use overwrite=True / --overwrite)")
        if not is_parquet_export(out):
            raise OutputPathError(f"{out} exists and is not a Parquet export of gsn-dask: it is never replaced; "
                                  "choose another output directory")
    return out


def _jsonable(obj: Any) -> Any:
    """Attrs values as JSON (numpy scalars/arrays -> Python)."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [_jsonable(v) for v in obj.tolist()]
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, (str, int, float, bool)) or obj is None:
        return obj
    return str(obj)


def _str_array(values: Any) -> np.ndarray:
    return np.array([str(v) for v in np.asarray(values).ravel()], dtype=object)


def star_chunks(ds: xr.Dataset) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` star ranges of the stored zarr chunks of a cube opened lazily
    (one range for an in-memory cube)."""
    n = int(ds.sizes["star"])
    chunks = ds["flux"].chunks
    if chunks is None:
        enc = ds["flux"].encoding.get("chunks")
        sizes = [int(enc[0])] if enc else [max(n, 1)]
        size = sizes[0]
        return [(a, min(a + size, n)) for a in range(0, n, size)]
    bounds, a = [], 0
    for c in chunks[0]:
        bounds.append((a, a + int(c)))
        a += int(c)
    return bounds


def _list_array(mat: np.ndarray):
    """(n, m) float32 matrix -> Arrow list<float32> array."""
    import pyarrow as pa

    mat = np.ascontiguousarray(mat, dtype=np.float32)
    n, m = mat.shape
    if n * m >= 2**31:
        raise ValueError(f"{n} x {m} values do not fit one Arrow list array; write fewer rows per file")
    offsets = pa.array(np.arange(0, (n + 1) * m, m, dtype=np.int32), type=pa.int32())
    return pa.ListArray.from_arrays(offsets, pa.array(mat.ravel(), type=pa.float32()))


# ----------------------------------------------------------------------------- spectra
def spectra_table(block: xr.Dataset, start: int, meta: Mapping[str, Any]):
    """One cube block (in memory) as an Arrow table with the export schema and metadata."""
    import pyarrow as pa

    n = int(block.sizes["star"])
    cols: dict[str, Any] = {
        "index": pa.array(np.arange(start, start + n, dtype=np.int64)),
        "star": pa.array(_str_array(block["star"].values).tolist(), type=pa.string()),
        "source": pa.array(_str_array(block["source"].values).tolist(), type=pa.string()),
    }
    for name, dtype in _STAR_COLUMNS.items():
        cols[name] = pa.array(np.asarray(block[name].values, dtype=dtype))
    for lab in label_names(block):
        cols[f"label_{lab}"] = pa.array(np.asarray(block[f"label_{lab}"].values, dtype=np.float32))
    cols["flux"] = _list_array(np.asarray(block["flux"].values))
    cols["ivar"] = _list_array(np.asarray(block["ivar"].values))
    table = pa.table(cols)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})


def export_parquet(
    cube_path: str | Path,
    out_dir: str | Path,
    *,
    rows_per_file: int | None = None,
    overwrite: bool = False,
    progress: bool = False,
) -> Path:
    """Export a spectra cube (zarr) to a Parquet directory, chunk by chunk (never the whole
    cube in memory). ``rows_per_file`` defaults to the cube's zarr chunk size. Returns ``out_dir``."""
    import pyarrow.parquet as pq

    ds = open_spectra(cube_path)
    out = check_parquet_out(out_dir, overwrite=overwrite, inputs=[cube_path])
    if out.exists():
        shutil.rmtree(out)  # a Parquet export (checked above)
    out.mkdir(parents=True)
    bounds = star_chunks(ds)
    if rows_per_file:
        n = int(ds.sizes["star"])
        bounds = [(a, min(a + int(rows_per_file), n)) for a in range(0, n, int(rows_per_file))]
    meta = {
        "schema": PARQUET_SPECTRA_SCHEMA,
        "n_star": int(ds.sizes["star"]),
        "labels": label_names(ds),
        "chunk_size": int(bounds[0][1] - bounds[0][0]) if bounds else 0,
        "wavelength": [float(w) for w in np.asarray(ds["wavelength"].values, dtype=np.float64)],
        "wavelength_attrs": _jsonable(dict(ds["wavelength"].attrs)),
        "attrs": _jsonable(dict(ds.attrs)),
        "source_cube": str(Path(cube_path).resolve()),
    }
    it: Any = enumerate(bounds)
    if progress:
        from tqdm.auto import tqdm

        it = tqdm(it, total=len(bounds), desc="export-parquet", unit="chunk")
    for i, (a, b) in it:
        block = ds.isel(star=slice(a, b)).load()
        pq.write_table(spectra_table(block, a, meta), out / f"part-{i:05d}.parquet", compression="zstd")
    (out / SUCCESS_FILE).write_text(f"{len(bounds)} files, {meta['n_star']} stars\n")
    return out


def _part_files(path: str | Path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no Parquet export at {path}")
    files = sorted(p for p in path.rglob("*.parquet") if not p.name.startswith(("_", ".")))
    if not files:
        raise FileNotFoundError(f"{path} holds no .parquet files")
    return files


def parquet_metadata(path: str | Path) -> dict[str, Any]:
    """The ``gsn_dask`` key-value metadata of a Parquet export (spectra or results), with
    ``wavelength`` as a float64 numpy array for spectra exports."""
    import pyarrow.parquet as pq

    first = _part_files(path)[0]
    kv = pq.read_schema(first).metadata or {}
    if META_KEY not in kv:
        raise CubeSchemaError(f"{first} has no '{META_KEY.decode()}' key-value metadata: not a gsn-dask Parquet export")
    meta = json.loads(kv[META_KEY])
    if "wavelength" in meta:
        meta["wavelength"] = np.asarray(meta["wavelength"], dtype=np.float64)
    return meta


def frame_to_spectra(pdf: pd.DataFrame, meta: Mapping[str, Any]) -> xr.Dataset:
    """Rows of a spectra Parquet export (pandas, any order) as an in-memory spectra cube,
    sorted by ``index``. ``meta`` is :func:`parquet_metadata`."""
    if meta.get("schema") != PARQUET_SPECTRA_SCHEMA:
        raise CubeSchemaError(f"not a gsn-dask spectra Parquet export (schema {meta.get('schema')!r})")
    pdf = pdf.sort_values("index", kind="stable")
    wave = np.asarray(meta["wavelength"], dtype=np.float64)
    n = len(pdf)

    def stack(col: str) -> np.ndarray:
        if n == 0:
            return np.zeros((0, wave.size), np.float32)
        rows = [np.asarray(v, dtype=np.float32) for v in pdf[col].to_numpy()]
        bad = [i for i, r in enumerate(rows) if r.shape != (wave.size,)]
        for i in bad:  # malformed row: all pixels bad, so the fit flags it instead of crashing
            rows[i] = np.zeros(wave.size, np.float32)
        return np.stack(rows)

    flux, ivar = stack("flux"), stack("ivar")
    labels = {lab: pdf[f"label_{lab}"].to_numpy(dtype=np.float32) for lab in meta.get("labels", [])}
    attrs = dict(meta.get("attrs", {}))
    ds = make_spectra(
        pdf["star"].astype(str).tolist(),
        wave,
        flux,
        ivar,
        ra=pdf["ra"].to_numpy(np.float64),
        dec=pdf["dec"].to_numpy(np.float64),
        snr=pdf["snr"].to_numpy(np.float32),
        rv_catalog=pdf["rv_catalog"].to_numpy(np.float32),
        labels=labels,
        source=pdf["source"].astype(str).tolist(),
        normalised=bool(attrs.get("normalised", False)),
        attrs=attrs,
    )
    if meta.get("wavelength_attrs"):
        ds["wavelength"].attrs.update(meta["wavelength_attrs"])
    return ds


def read_parquet_cube(path: str | Path, *, rows: tuple[int, int] | None = None) -> xr.Dataset:
    """Read a spectra Parquet export back into an in-memory cube (all rows, or the
    ``index`` range ``rows = (start, stop)``)."""
    import pyarrow.dataset as pads

    meta = parquet_metadata(path)
    dataset = pads.dataset([str(p) for p in _part_files(path)], format="parquet")
    filt = None
    if rows is not None:
        f = pads.field("index")
        filt = (f >= int(rows[0])) & (f < int(rows[1]))
    pdf = dataset.to_table(filter=filt).to_pandas()
    return frame_to_spectra(pdf, meta)


def iter_parquet_blocks(path: str | Path) -> Iterator[xr.Dataset]:
    """Each part file of a spectra export as an in-memory cube block, in file order."""
    import pyarrow.parquet as pq

    meta = parquet_metadata(path)
    for p in _part_files(path):
        yield frame_to_spectra(pq.read_table(p).to_pandas(), meta)


# ----------------------------------------------------------------------------- results
def results_frame(res: xr.Dataset, *, start: int = 0) -> pd.DataFrame:
    """A results dataset (in memory) as one pandas row per star: ``index`` (start-based),
    ``star``, ``status``, ``flag``, per-star numbers, ``<stat>_<label>`` and, when the results
    hold samples, ``samples_<label>`` (list of float32 draws)."""
    labels = [str(v) for v in np.asarray(res["label"].values)]
    n = int(res.sizes["star"])
    cols: dict[str, Any] = {
        "index": np.arange(start, start + n, dtype=np.int64),
        "star": _str_array(res["star"].values),
        "status": _str_array(res["status"].values),
    }
    for name, (dtype, _fill, _attrs) in RESULT_STAR_VARS.items():
        cols[name] = np.asarray(res[name].values, dtype=dtype)
    for stat in RESULT_LABEL_VARS:
        vals = np.asarray(res[stat].values, dtype=np.float32)
        for j, lab in enumerate(labels):
            cols[f"{stat}_{lab}"] = vals[:, j]
    if "samples" in res:
        s = np.asarray(res["samples"].values, dtype=np.float32)
        for j, lab in enumerate(labels):
            cols[f"samples_{lab}"] = list(s[:, :, j])
    return pd.DataFrame(cols)


def results_table(res: xr.Dataset, *, start: int = 0):
    """:func:`results_frame` as an Arrow table with the results attrs as metadata."""
    import pyarrow as pa

    pdf = results_frame(res, start=start)
    fields = []
    for name in pdf.columns:
        if name.startswith("samples_"):
            fields.append(pa.field(name, pa.list_(pa.float32())))
        elif name in ("star", "status"):
            fields.append(pa.field(name, pa.string()))
    schema_over = {f.name: f for f in fields}
    arrays, names = [], []
    for name in pdf.columns:
        if name in schema_over:
            arrays.append(pa.array(pdf[name].tolist(), type=schema_over[name].type))
        else:
            arrays.append(pa.array(pdf[name].to_numpy()))
        names.append(name)
    meta = {"schema": PARQUET_RESULTS_SCHEMA, "labels": [str(v) for v in np.asarray(res["label"].values)],
            "attrs": _jsonable(dict(res.attrs))}
    table = pa.Table.from_arrays(arrays, names=names)
    return table.replace_schema_metadata({META_KEY: json.dumps(meta).encode()})


def write_results_parquet(
    results: str | Path | xr.Dataset,
    out: str | Path,
    *,
    overwrite: bool = False,
    rows_per_file: int | None = None,
) -> Path:
    """Write a results cube (path or dataset) as a Parquet directory (``part-NNNNN.parquet``
    per chunk of ``rows_per_file`` stars, default the store's chunking). Returns ``out``."""
    import pyarrow.parquet as pq

    res = open_results(results) if not isinstance(results, xr.Dataset) else results
    out = check_parquet_out(out, overwrite=overwrite, inputs=[] if isinstance(results, xr.Dataset) else [results])
    if out.exists():
        shutil.rmtree(out)  # a Parquet export (checked above)
    out.mkdir(parents=True)
    n = int(res.sizes["star"])
    if rows_per_file:
        bounds = [(a, min(a + int(rows_per_file), n)) for a in range(0, n, int(rows_per_file))]
    else:
        chunks = res["flag"].chunks
        bounds, a = [], 0
        for c in (chunks[0] if chunks else (n,)):
            bounds.append((a, a + int(c)))
            a += int(c)
    for i, (a, b) in enumerate(bounds):
        block = res.isel(star=slice(a, b)).load()
        pq.write_table(results_table(block, start=a), out / f"part-{i:05d}.parquet", compression="zstd")
    (out / SUCCESS_FILE).write_text(f"{len(bounds)} files, {n} stars\n")
    return out


def read_results_parquet(path: str | Path) -> pd.DataFrame:
    """A results Parquet directory (from :func:`write_results_parquet` or the Spark runner)
    as one pandas frame sorted by ``index``."""
    import pyarrow.dataset as pads

    dataset = pads.dataset([str(p) for p in _part_files(path)], format="parquet")
    return dataset.to_table().to_pandas().sort_values("index", kind="stable").reset_index(drop=True)


__all__ = [
    "META_KEY",
    "PARQUET_RESULTS_SCHEMA",
    "PARQUET_SPECTRA_SCHEMA",
    "check_parquet_out",
    "export_parquet",
    "frame_to_spectra",
    "is_parquet_export",
    "iter_parquet_blocks",
    "parquet_metadata",
    "read_parquet_cube",
    "read_results_parquet",
    "results_frame",
    "results_table",
    "spectra_table",
    "star_chunks",
    "write_results_parquet",
]
