"""The ingest's cube writer: keeps accepted spectra in input order, resolves duplicate star
ids (highest g-band S/N wins) and writes whole zarr chunks of the spectra cube."""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..cube import CubeSchemaError, make_spectra, write_spectra
from .label_table import LabelTable
from .lamost import LamostSpectrum, TargetGrid

#: vacuum A where LAMOST LRS's blue and red arms are joined (recorded in the cube for the fit)
LAMOST_ARM_SPLIT_AA = 5900.0


# ------------------------------------------------------------------------ writer
@dataclass(slots=True)
class _Kept:
    """The spectrum kept for a star id: its g-band S/N, file, and where it is (buffer index or store row)."""

    snr: float
    source: str
    where: str  # "buf" or "store"
    index: int  # buffer index or store row


class CubeWriter:
    """Buffers accepted spectra in order and writes whole zarr chunks (append after the first)."""

    def __init__(
        self,
        out: Path,
        grid: TargetGrid,
        *,
        chunk_size: int,
        label_names: list[str],
        labels: LabelTable | None,
        existing: xr.Dataset | None,
        overwrite: bool,
        flush_rows: int,
        attrs: dict[str, Any],
    ):
        self.out = out
        self.grid = grid
        self.chunk_size = chunk_size
        self.label_names = label_names
        self.labels = labels
        self.overwrite = overwrite
        self.attrs = attrs
        self.flush_rows = max(chunk_size, (flush_rows // chunk_size) * chunk_size)
        self.buffer: list[LamostSpectrum] = []
        self.buffer_labels: list[np.ndarray | None] = []
        self.n_written = 0
        self.store_exists = existing is not None
        self.existing_vars: list[str] | None = list(existing.data_vars) if existing is not None else None
        self.row_offset = int(existing.sizes["star"]) if existing is not None else 0
        self.kept: dict[str, _Kept] = {}
        self.in_cube: dict[str, str] = {}
        if existing is not None:
            stars = [str(s) for s in np.asarray(existing["star"].values)]
            sources = [str(s) for s in np.asarray(existing["source"].values)]
            self.in_cube = dict(zip(stars, sources))
        self.replace: dict[int, tuple[LamostSpectrum, np.ndarray | None]] = {}
        self.n_labelled = 0
        self.n_label_mismatch = 0
        self.n_resampled = 0

    # -- accept / reject
    def add(self, spec: LamostSpectrum, rejects: list[tuple[str, str, str]]) -> None:
        if spec.star in self.in_cube:
            rejects.append((spec.path, "duplicate", f"duplicate of {self.in_cube[spec.star]} already in {self.out}"))
            return
        snr = spec.snr_g if math.isfinite(spec.snr_g) else -math.inf
        old = self.kept.get(spec.star)
        if old is not None:
            if snr <= old.snr:
                rejects.append((spec.path, "duplicate", f"duplicate of {old.source} (star {spec.star}, snr {spec.snr_g} <= {old.snr})"))
                return
            rejects.append((old.source, "duplicate", f"duplicate of {spec.path} (star {spec.star}, higher snr {spec.snr_g})"))
            lab = self._labels(spec)
            if old.where == "buf":
                self._unlabel(self.buffer[old.index], self.buffer_labels[old.index])
                self.buffer[old.index] = spec
                self.buffer_labels[old.index] = lab
            else:
                if old.index in self.replace:
                    self._unlabel(*self.replace[old.index])
                self.replace[old.index] = (spec, lab)
            self.kept[spec.star] = _Kept(snr, spec.path, old.where, old.index)
            return
        self.kept[spec.star] = _Kept(snr, spec.path, "buf", len(self.buffer))
        self.buffer.append(spec)
        self.buffer_labels.append(self._labels(spec))
        if len(self.buffer) >= self.flush_rows:
            self.flush()

    def _labels(self, spec: LamostSpectrum) -> np.ndarray | None:
        if not spec.exact:
            self.n_resampled += 1
        if self.labels is None:
            return None
        vals, status = self.labels.match(spec)
        if status == "strict":
            self.n_labelled += 1
        elif status == "mismatch":
            self.n_label_mismatch += 1
        return vals

    def _unlabel(self, spec: LamostSpectrum, lab: np.ndarray | None) -> None:
        """Undo the counters of a spectrum that is replaced by a better duplicate."""
        if not spec.exact:
            self.n_resampled -= 1
        if self.labels is None:
            return
        _, status = self.labels.match(spec)
        if status == "strict":
            self.n_labelled -= 1
        elif status == "mismatch":
            self.n_label_mismatch -= 1

    # -- datasets
    def _dataset(self, specs: Sequence[LamostSpectrum], labs: Sequence[np.ndarray | None]) -> xr.Dataset:
        n = len(specs)
        labels: dict[str, np.ndarray] = {}
        if self.label_names:
            arr = np.full((n, len(self.label_names)), np.nan, dtype=np.float32)
            if self.labels is not None:
                col = {name: j for j, name in enumerate(self.labels.labels)}
                for i, lab in enumerate(labs):
                    if lab is not None:
                        for k, name in enumerate(self.label_names):
                            if name in col:
                                arr[i, k] = lab[col[name]]
            labels = {name: arr[:, k] for k, name in enumerate(self.label_names)}
        ds = make_spectra(
            [s.star for s in specs],
            self.grid.wavelength,
            np.stack([s.flux for s in specs]),
            np.stack([s.ivar for s in specs]),
            ra=np.array([s.ra for s in specs]),
            dec=np.array([s.dec for s in specs]),
            snr=np.array([s.snr_g for s in specs]),
            rv_catalog=np.array([s.rv_catalog for s in specs]),
            labels=labels,
            source=[s.source for s in specs],
            normalised=False,
            flux_unit="relative (LAMOST flux calibration)",
            resolution="R~1800 (LAMOST LRS)",
            attrs={"arm_split_aa": LAMOST_ARM_SPLIT_AA,
                   "arm_split_note": "vacuum A where the LAMOST blue and red arms are joined (dichroic ~5700-5900 A); "
                                     "the fit's default arm_split_aa='auto' uses one continuum polynomial per arm",
                   **self.attrs},
        )
        ds["snr"].attrs["long_name"] = "S/N per pixel in the g band (header SN_G or SNRG)"
        ds["rv_catalog"].attrs["long_name"] = "LAMOST pipeline radial velocity, Z * c (header Z)"
        ds["snr_g"] = ("star", np.array([s.snr_g for s in specs], np.float32), {"long_name": "S/N g band (SN_G/SNRG)"})
        ds["snr_r"] = ("star", np.array([s.snr_r for s in specs], np.float32), {"long_name": "S/N r band (SN_R/SNRR)"})
        ds["obsid"] = ("star", np.array([s.obsid for s in specs], np.int64), {"long_name": "LAMOST OBSID, -1 = none in header"})
        if self.existing_vars is not None:
            ds = _align_vars(ds, self.existing_vars)
        return ds

    def flush(self) -> None:
        if not self.buffer:
            return
        import dask

        ds = self._dataset(self.buffer, self.buffer_labels)
        # the rows are in this process's memory: write them here, never through a distributed
        # Client that may be the default scheduler (it would ship the arrays to the workers)
        with dask.config.set(scheduler="threads"):
            if self.store_exists:
                write_spectra(ds, self.out, chunk_size=self.chunk_size, append=True)
            else:
                write_spectra(ds, self.out, chunk_size=self.chunk_size, overwrite=self.overwrite)
                self.store_exists = True
                self.existing_vars = list(ds.data_vars)
        for spec in self.buffer:
            k = self.kept[spec.star]
            k.where, k.index = "store", self.row_offset + self.n_written + k.index
        self.n_written += len(self.buffer)
        self.buffer, self.buffer_labels = [], []

    def close(self) -> None:
        self.flush()
        if self.replace:
            _overwrite_rows(self.out, self.replace, self._dataset)
            self.replace = {}


def _align_vars(ds: xr.Dataset, names: Sequence[str]) -> xr.Dataset:
    """Give ``ds`` exactly the data variables ``names`` of an existing cube (append): missing
    ones are filled (NaN, -1 or ""), extra ones dropped. New label variables are an error."""
    extra = [v for v in ds.data_vars if v not in names]
    new_labels = [v for v in extra if str(v).startswith("label_")]
    if new_labels:
        raise CubeSchemaError(f"cannot append: the cube has no {new_labels} variables (labels cannot be added on append)")
    ds = ds.drop_vars(extra)
    n = ds.sizes["star"]
    for v in names:
        if v not in ds:
            if v == "obsid":
                ds[v] = ("star", np.full(n, -1, np.int64))
            elif v in ("source",):
                ds[v] = ("star", np.array([""] * n, dtype=object))
            else:
                ds[v] = ("star", np.full(n, np.nan, np.float32))
    return ds


def _overwrite_rows(out: Path, replace: dict[int, tuple[LamostSpectrum, np.ndarray | None]], build) -> None:
    """Replace already-written rows (a later duplicate with a higher snr) in place with zarr."""
    import zarr

    rows = sorted(replace)
    ds = build([replace[r][0] for r in rows], [replace[r][1] for r in rows])
    group = zarr.open_group(str(out), mode="r+")
    for name, var in ds.variables.items():
        if "star" not in var.dims or name == "star" or name not in group:
            continue
        arr = group[name]
        values = np.asarray(var.values)
        for i, r in enumerate(rows):
            arr[r] = values[i]
