"""The results zarr store as a unit of work: template, per-chunk region writes, completion
records, a writer lock and the run summary.

Engine-agnostic (used by the run layer :mod:`gsn_dask.run`, which both engines schedule):
every function takes the store path and does its own I/O, so any process that sees the
path can call it. Only a store written by a fit run (:func:`require_results_store`) is ever
resumed or replaced.

Layout on top of the results schema (``shared/DESIGN.md``)::

    RESULTS/                      zarr v3 group, attrs: schema, model, seed, sampler, ...
      median, p16, p84, map ...   (star[, label|draw]) chunked by ``chunk_size`` stars
      chunk_done                  (chunk,) int8, one zarr chunk per element: 1 = rows written
      gsn-dask.lock               present while a run writes the store (JSON: host, pid, time)

A "chunk" is the block of stars ``[i * chunk_size, min((i + 1) * chunk_size, n_star))``; it
is the unit of fitting, writing and resuming. A writer writes the chunk's rows first
(:func:`write_rows`, one region write aligned to the zarr chunks) and only then marks it
done (:func:`mark_chunk_done`), so a crash between the two re-fits the chunk on resume and
a chunk marked done always has its rows.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import os
import shutil
import socket
import sys
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from .cube import RESULTS_SCHEMA, empty_results, star_chunk_encoding
from .flags import Flag

log = logging.getLogger(__name__)

#: Name of the lock file inside the store.
LOCK_FILE = "gsn-dask.lock"
#: Per-chunk completion record variable.
DONE_VAR = "chunk_done"
#: A lock file that cannot be parsed is taken as a lock being written for this many seconds.
_LOCK_GRACE_S = 30.0
#: Longest status text written for a failed chunk.
_MAX_REASON = 200


class StoreLockedError(FileExistsError):
    """Another run holds the store's lock; the message names its host, pid and start time."""


class StoreMismatchError(ValueError):
    """An existing store does not belong to this run (``--resume`` with other settings)."""


# ----------------------------------------------------------------------------- helpers
@contextlib.contextmanager
def quiet_zarr() -> Iterator[None]:
    """Silence zarr's warning about the lock file (not a zarr node) and xarray's about
    loading object (string) arrays while we read or write the store."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*is not recognized as a component of a Zarr hierarchy.*")
        warnings.filterwarnings("ignore", message=".*dtype=object.*")
        warnings.filterwarnings("ignore", message=".*Consolidated metadata.*")
        yield


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second (for attrs and lock records)."""
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def store_exists(path: str | Path) -> bool:
    """True if ``path`` holds a zarr group (a directory with only a lock file does not count)."""
    return (Path(path) / "zarr.json").is_file()


def as_str_array(values: Any) -> np.ndarray:
    """Any string-like array (object, ``<U``, numpy StringDType) as a 1-D numpy ``<U`` array."""
    return np.array([str(v) for v in np.asarray(values).ravel()])


def chunk_bounds(n_star: int, chunk_size: int) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` of the consecutive star chunks covering ``n_star`` stars."""
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return [(a, min(a + chunk_size, n_star)) for a in range(0, n_star, chunk_size)]


# ------------------------------------------------------------------------------- lock
def read_lock(path: str | Path) -> dict[str, Any] | None:
    """The lock record of a store (``host``, ``pid``, ``time``, ``token``, ``argv``), ``{}`` if the
    lock file exists but is not readable JSON yet, None if the store is not locked."""
    lock = Path(path) / LOCK_FILE
    try:
        text = lock.read_text()
    except FileNotFoundError:
        return None
    try:
        rec = json.loads(text)
        return rec if isinstance(rec, dict) else {}
    except json.JSONDecodeError:
        return {}


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _lock_is_stale(lock: Path, rec: dict[str, Any]) -> bool:
    """A lock is stale if its process ran on this host and is gone, or if it was never
    completed (unparsable) and is older than a grace period."""
    if not rec:
        try:
            age = _dt.datetime.now().timestamp() - lock.stat().st_mtime
        except FileNotFoundError:
            return True
        return age > _LOCK_GRACE_S
    if rec.get("host") == socket.gethostname() and isinstance(rec.get("pid"), int):
        return not _pid_alive(int(rec["pid"]))
    return False


def _describe_lock(rec: dict[str, Any]) -> str:
    if not rec:
        return "a lock that is being written"
    return f"pid {rec.get('pid')} on {rec.get('host')} since {rec.get('time')}"


def acquire_lock(path: str | Path, *, force: bool = False, note: str = "") -> str:
    """Create ``PATH/gsn-dask.lock`` atomically (O_CREAT | O_EXCL) and return its token.

    The store directory is created if needed. If the lock exists: a stale lock (its pid ran
    on this host and is dead) is taken over with a warning; ``force=True`` takes over any
    lock (``--force-unlock``); otherwise :class:`StoreLockedError` names the holder.
    """
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock = path / LOCK_FILE
    token = uuid.uuid4().hex
    rec = {
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "time": utc_now(),
        "token": token,
        "argv": " ".join(sys.argv)[:500],
        "note": note,
    }
    for _attempt in range(3):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            held = read_lock(path)
            if held is None:  # released meanwhile: try again
                continue
            if force or _lock_is_stale(lock, held):
                why = "--force-unlock" if force else "its process is gone"
                log.warning("taking over the lock of %s held by %s (%s)", path, _describe_lock(held), why)
                warnings.warn(
                    f"taking over the lock of {path} held by {_describe_lock(held)} ({why})", stacklevel=2
                )
                # move the old lock aside (atomic): only one taker succeeds
                aside = lock.with_name(f"{LOCK_FILE}.stale-{token}")
                try:
                    os.rename(lock, aside)
                except FileNotFoundError:
                    continue
                with contextlib.suppress(FileNotFoundError):
                    aside.unlink()
                continue
            raise StoreLockedError(
                f"{path} is being written by another gsn-dask run ({_describe_lock(held)}). "
                "Wait for it to finish, or if that run is dead use --force-unlock "
                f"(lock file: {lock})."
            ) from None
        with os.fdopen(fd, "w") as fh:
            json.dump(rec, fh)
            fh.flush()
            os.fsync(fh.fileno())
        return token
    raise StoreLockedError(f"could not acquire the lock of {path} (contended); try again")


def release_lock(path: str | Path, token: str) -> bool:
    """Remove the store's lock if it is still ours (same token); returns True if removed.
    A store directory left holding nothing but the lock is removed too."""
    path = Path(path)
    held = read_lock(path)
    if held is None or held.get("token") != token:
        if held is not None:
            log.warning("lock of %s is now held by %s; leaving it", path, _describe_lock(held))
        return False
    with contextlib.suppress(FileNotFoundError):
        (path / LOCK_FILE).unlink()
    with contextlib.suppress(OSError):
        path.rmdir()  # only succeeds if empty (a run that failed before writing anything)
    return True


@contextlib.contextmanager
def store_lock(path: str | Path, *, force: bool = False, note: str = "") -> Iterator[str]:
    """``with store_lock(out) as token:`` hold the store's lock for the block."""
    token = acquire_lock(path, force=force, note=note)
    try:
        yield token
    finally:
        release_lock(path, token)


# --------------------------------------------------------------------------- template
def results_template(
    stars: Sequence[str],
    labels: Sequence[str],
    *,
    chunk_size: int,
    n_draws: int = 0,
    attrs: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """The empty results dataset written before any fitting: :func:`cube.empty_results` rows
    (``flag = NOT_FITTED``, ``status = "not fitted"``) plus the ``chunk_done`` record."""
    ds = empty_results(stars, labels, n_draws=n_draws, attrs=attrs)
    n_chunk = len(chunk_bounds(ds.sizes["star"], chunk_size))
    ds[DONE_VAR] = (
        "chunk",
        np.zeros(n_chunk, np.int8),
        {"long_name": "1 = the rows of stars [i*chunk_size, (i+1)*chunk_size) are written"},
    )
    ds.attrs["chunk_size"] = int(chunk_size)
    ds.attrs["n_chunks"] = int(n_chunk)
    return ds


def create_store(
    path: str | Path,
    stars: Sequence[str],
    labels: Sequence[str],
    *,
    chunk_size: int,
    n_draws: int = 0,
    attrs: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the results template to ``path`` (zarr v3) with zarr chunks of ``chunk_size``
    stars. The caller should hold the lock. An existing store is refused unless
    ``overwrite`` (then its contents are removed, the lock kept)."""
    path = Path(path)
    if store_exists(path):
        if not overwrite:
            raise FileExistsError(f"{path} exists (use --resume to continue it or --overwrite to replace it)")
        require_results_store(path)  # never clear a spectra cube or other data
        clear_store(path)
    ds = results_template(stars, labels, chunk_size=chunk_size, n_draws=n_draws, attrs=attrs)
    enc = star_chunk_encoding(ds, max(1, min(chunk_size, ds.sizes["star"])))
    enc[DONE_VAR] = {"chunks": (1,)}
    if "samples" in ds:
        # do not materialise (n_star, n_draws, n_label) NaNs: unwritten chunks read as NaN
        import dask.array as da

        c = enc["samples"]["chunks"]
        ds["samples"] = ds["samples"].copy(data=da.full(ds["samples"].shape, np.nan, dtype=np.float32, chunks=c))
    path.mkdir(parents=True, exist_ok=True)
    with quiet_zarr():
        ds.to_zarr(path, mode="a", zarr_format=3, consolidated=False, encoding=enc, compute=False)
    return path


def require_results_store(path: str | Path) -> None:
    """Raise :class:`StoreMismatchError` unless ``path`` holds a results store written by a
    gsn-dask run (results schema and a ``chunk_done`` record): nothing else is ever replaced."""
    path = Path(path)
    try:
        schema = store_attrs(path).get("schema")
    except (OSError, ValueError):
        schema = None
    if schema != RESULTS_SCHEMA or not (path / DONE_VAR).is_dir():
        raise StoreMismatchError(
            f"{path} is not a results store written by gsn-dask fit (schema {schema!r}): it is never "
            "overwritten or resumed; choose another --out"
        )


def clear_store(path: str | Path) -> None:
    """Remove everything in the store directory except its lock file."""
    path = Path(path)
    for child in path.iterdir():
        if child.name == LOCK_FILE:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


_VAR_ORDER = ("median", "p16", "p84", "map", "rv", "rv_err", "chi2_reduced", "acceptance", "tau_max",
              "n_eff_min", "flag", "status", "samples", DONE_VAR)


def open_store(path: str | Path) -> xr.Dataset:
    """Open a results store lazily (the lock file and zarr's note about it are ignored),
    variables in schema order."""
    with quiet_zarr():
        ds = xr.open_zarr(path, consolidated=False)
    names = [v for v in _VAR_ORDER if v in ds.data_vars]
    names += [v for v in ds.data_vars if v not in names]
    return ds[names]


def store_attrs(path: str | Path) -> dict[str, Any]:
    """The store's group attributes (cheap: reads only zarr.json)."""
    meta = json.loads((Path(path) / "zarr.json").read_text())
    return dict(meta.get("attributes", {}))


def update_attrs(path: str | Path, attrs: Mapping[str, Any]) -> None:
    """Merge ``attrs`` into the store's group attributes (call from one process only)."""
    import zarr

    with quiet_zarr():
        g = zarr.open_group(str(path), mode="r+")
        g.attrs.update(dict(attrs))


# ----------------------------------------------------------------------- region writes
def _star_vars(path: Path) -> dict[str, tuple[tuple[str, ...], np.dtype]]:
    """Names, dims and dtypes of the store's variables along ``star`` (from zarr metadata)."""
    import zarr

    with quiet_zarr():
        g = zarr.open_group(str(path), mode="r")
        out: dict[str, tuple[tuple[str, ...], np.dtype]] = {}
        for name, arr in g.arrays():
            dims = tuple(arr.metadata.dimension_names or ())
            if "star" in dims:
                out[name] = (dims, arr.dtype)
    return out


def write_rows(path: str | Path, rows: xr.Dataset, start: int) -> None:
    """Write result ``rows`` (the stars ``[start, start + rows.sizes['star'])``) into the store
    by region. The region must be whole zarr chunks (``start`` a multiple of the store's
    ``chunk_size``; the rows a full chunk or the tail), so concurrent writers of different
    chunks never touch the same zarr chunk. Variables not along ``star`` are dropped,
    dtypes follow the store, and the ``star`` ids must equal the stored ones."""
    path = Path(path)
    attrs = store_attrs(path)
    chunk_size = int(attrs["chunk_size"])
    n = int(rows.sizes["star"])
    stop = start + n
    if start % chunk_size:
        raise ValueError(f"region start {start} is not a multiple of the store's chunk size {chunk_size}")
    layout = _star_vars(path)
    import zarr

    with quiet_zarr():
        star_arr = zarr.open_array(str(path / "star"), mode="r")
        n_star = int(star_arr.shape[0])
        if n == 0 or stop > n_star or not (stop % chunk_size == 0 or stop == n_star):
            raise ValueError(
                f"region [{start}, {stop}) is not aligned to the store's chunks of {chunk_size} stars (n_star={n_star})"
            )
        want = as_str_array(star_arr[start:stop])
    got = as_str_array(rows["star"].values)
    if got.shape != want.shape or not np.array_equal(got, want):
        raise ValueError(f"rows for region [{start}, {stop}) do not have the store's star ids in order")
    out = xr.Dataset(coords={"star": ("star", np.asarray(got, dtype=object))})
    for name, (dims, dtype) in layout.items():
        if name == "star":
            continue
        if name in rows:
            var = rows[name]
            if tuple(var.dims) != dims:
                var = var.transpose(*dims)
            values = np.asarray(var.values)
            if dtype.kind in ("O", "T", "U"):
                values = np.array([str(v) for v in values.ravel()], dtype=object).reshape(values.shape)
            else:
                values = values.astype(dtype, copy=False)
            out[name] = (dims, values)
    # drop coords without the star dim (label, draw) and everything not along star
    out = out.drop_vars([v for v in out.variables if "star" not in out[v].dims])
    out.attrs = {}
    with quiet_zarr():
        out.to_zarr(path, region={"star": slice(start, stop)}, mode="r+", zarr_format=3, consolidated=False)


def mark_chunk_done(path: str | Path, index: int, value: int = 1) -> None:
    """Record that chunk ``index`` has its rows written (call after :func:`write_rows`)."""
    import zarr

    with quiet_zarr():
        arr = zarr.open_array(str(Path(path) / DONE_VAR), mode="r+")
        arr[int(index)] = np.int8(value)


def done_chunks(path: str | Path) -> np.ndarray:
    """Boolean mask over chunks: True where the chunk's rows are written."""
    import zarr

    with quiet_zarr():
        arr = zarr.open_array(str(Path(path) / DONE_VAR), mode="r")
        return np.asarray(arr[:]) > 0


def write_chunk(path: str | Path, index: int, rows: xr.Dataset) -> None:
    """Write chunk ``index``'s rows, then mark it done (in that order)."""
    chunk_size = int(store_attrs(path)["chunk_size"])
    write_rows(path, rows, index * chunk_size)
    mark_chunk_done(path, index)


def failed_rows(
    stars: Sequence[str], labels: Sequence[str], reason: str, *, n_draws: int = 0
) -> xr.Dataset:
    """Rows for stars whose whole chunk failed (``flag = NOT_FITTED``, ``status`` = reason)."""
    reason = " ".join(str(reason).split())[:_MAX_REASON]
    ds = empty_results(stars, labels, n_draws=n_draws, status=reason)
    ds["flag"][:] = int(Flag.NOT_FITTED)
    return ds


# -------------------------------------------------------------------------- resuming
def check_resumable(path: str | Path, expect: Mapping[str, Any], stars: Sequence[str] | np.ndarray) -> None:
    """Raise :class:`StoreMismatchError` unless the store at ``path`` was made by the same run:
    each ``expect`` key must equal the stored attribute (e.g. ``model_sha256``, ``seed``,
    ``sampler``, ``fit_config``) and the star ids must be the same, in order."""
    path = Path(path)
    require_results_store(path)
    attrs = store_attrs(path)
    diffs = []
    for key, want in expect.items():
        have = attrs.get(key)
        if have != want:
            diffs.append(_describe_diff(key, have, want))
    with quiet_zarr():
        ds = xr.open_zarr(path, consolidated=False, chunks=None)
        have_stars = as_str_array(ds["star"].values)
    want_stars = as_str_array(stars)
    if have_stars.shape != want_stars.shape or not np.array_equal(have_stars, want_stars):
        diffs.append(f"star ids differ (store {have_stars.size} stars, cube {want_stars.size})")
    if diffs:
        raise StoreMismatchError(
            f"cannot resume {path}: it was written by a different run ({'; '.join(diffs)}). "
            "Use the original settings, or --overwrite to start again."
        )


def _describe_diff(key: str, have: Any, want: Any) -> str:
    """``key: store has X, this run Y``; for JSON settings (``fit_config``, ...) only the
    settings that differ, each named."""
    try:
        a, b = json.loads(have), json.loads(want)
    except (TypeError, ValueError):
        a = b = None
    if isinstance(a, dict) and isinstance(b, dict):
        names = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
        parts = [f"{k} = {_short(a.get(k))} in the store, {_short(b.get(k))} in this run" for k in names]
        return f"{key} differs: {'; '.join(parts)}"
    return f"{key}: store has {_short(have)}, this run {_short(want)}"


def _short(v: Any) -> str:
    s = repr(v)
    return s if len(s) <= 80 else s[:77] + "..."


# --------------------------------------------------------------------------- summary
def summarize(ds_or_path: xr.Dataset | str | Path) -> dict[str, Any]:
    """Counts of a results store: ``n_star``; ``ok`` (fitted, flag 0); ``flagged`` (fitted,
    some warning flag); ``failed`` (not fitted, with a reason); ``pending`` (never written:
    status "not fitted"); ``reasons`` {status: count} of failed stars; ``flags`` {bit name: count}
    over fitted stars; ``chunks_done`` / ``n_chunks``."""
    ds = open_store(ds_or_path) if isinstance(ds_or_path, (str, Path)) else ds_or_path
    flag = np.asarray(ds["flag"].values).astype(np.int64)
    status = as_str_array(ds["status"].values)
    not_fitted = (flag & int(Flag.NOT_FITTED)) != 0
    pending = not_fitted & (status == "not fitted")
    failed = not_fitted & ~pending
    fitted = ~not_fitted
    reasons: dict[str, int] = {}
    for s in status[failed]:
        reasons[s] = reasons.get(s, 0) + 1
    flags = {f.name: int(np.sum(fitted & ((flag & int(f)) != 0))) for f in Flag if f != Flag.NOT_FITTED}
    out: dict[str, Any] = {
        "n_star": int(flag.size),
        "ok": int(np.sum(fitted & (flag == 0))),
        "flagged": int(np.sum(fitted & (flag != 0))),
        "failed": int(np.sum(failed)),
        "pending": int(np.sum(pending)),
        "reasons": dict(sorted(reasons.items(), key=lambda kv: -kv[1])),
        "flags": {k: v for k, v in flags.items() if v},
    }
    if DONE_VAR in ds:
        done = np.asarray(ds[DONE_VAR].values) > 0
        out["n_chunks"] = int(done.size)
        out["chunks_done"] = int(done.sum())
    return out


def format_summary(summary: Mapping[str, Any], run: Mapping[str, Any] | None = None) -> str:
    """A plain-text table of :func:`summarize` (and optional run info: chunks, wall time)."""
    n = max(int(summary["n_star"]), 1)
    lines = ["", f"{'stars':<28}{summary['n_star']:>8}"]
    for key, what in (
        ("ok", "ok (fitted, flag 0)"),
        ("flagged", "flagged (fitted, flag != 0)"),
        ("failed", "failed (not fitted)"),
        ("pending", "pending (not yet fitted)"),
    ):
        if key == "pending" and not summary.get("pending"):
            continue
        v = int(summary[key])
        lines.append(f"{what:<28}{v:>8}  {100.0 * v / n:5.1f}%")
    for name, v in summary.get("flags", {}).items():
        lines.append(f"  {'flag ' + name:<26}{v:>8}")
    for reason, v in list(summary.get("reasons", {}).items())[:10]:
        lines.append(f"  {reason[:60]:<26}{v:>8}" if len(reason) <= 26 else f"  {v:>6}  {reason[:70]}")
    if "n_chunks" in summary:
        lines.append(f"{'chunks done':<28}{summary['chunks_done']:>8} / {summary['n_chunks']}")
    if run:
        if "chunks_fitted" in run:
            lines.append(
                f"{'chunks this run':<28}{run['chunks_fitted']:>8}  "
                f"(skipped {run.get('chunks_skipped', 0)}, failed {run.get('chunks_failed', 0)})"
            )
        if run.get("time_to_first_s") is not None:
            lines.append(f"{'first chunk written after':<28}{run['time_to_first_s']:>8.1f} s")
        if "wall_s" in run:
            lines.append(f"{'wall time':<28}{run['wall_s']:>8.1f} s")
    return "\n".join(lines)


__all__ = [
    "DONE_VAR",
    "LOCK_FILE",
    "StoreLockedError",
    "StoreMismatchError",
    "acquire_lock",
    "as_str_array",
    "check_resumable",
    "chunk_bounds",
    "clear_store",
    "create_store",
    "done_chunks",
    "failed_rows",
    "format_summary",
    "mark_chunk_done",
    "open_store",
    "quiet_zarr",
    "read_lock",
    "release_lock",
    "require_results_store",
    "results_template",
    "store_attrs",
    "store_exists",
    "store_lock",
    "summarize",
    "update_attrs",
    "utc_now",
    "write_chunk",
    "write_rows",
]
