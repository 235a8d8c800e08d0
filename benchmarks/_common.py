"""Helpers shared by the runner benchmarks (``benchmarks/pipeline.py``, ``benchmarks/spark.py``):
the model and the spectra cube they fit, the bare fitting loop they compare against, and the
Dask LocalCluster start. Imported as ``_common`` (the scripts run as ``python benchmarks/X.py``,
which puts ``benchmarks/`` first on ``sys.path``)."""
from __future__ import annotations

import importlib.util
import logging
import time
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def default_model_dir() -> Path | None:
    """The model a benchmark fits when no ``--model DIR`` is given: the MILES GSN shipped in the
    package (``gsn_dask/data/model``, found without importing gsn_dask) if this installation has
    it, else None (the scripts then use a toy GSN)."""
    spec = importlib.util.find_spec("gsn_dask")
    if spec is None or not spec.submodule_search_locations:
        return None
    return saved_model(Path(next(iter(spec.submodule_search_locations))) / "data" / "model")


def saved_model(*dirs: Path) -> Path | None:
    """The first of ``dirs`` that holds a saved GSN model (``model.json``), or None."""
    for d in dirs:
        if (d / "model.json").exists():
            return d
    return None


def save_toy_model(workdir: Path, tiny: bool) -> tuple[Path, str]:
    """Save the toy GSN of ``gsn_dask.fit.testing`` under ``workdir/model``: the tests' tiny one
    (3 x 32 hidden, 669 px) or the full-size one (3 x 256 hidden, LAMOST 3750-8900 A).
    Returns (model dir, description)."""
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.fit.testing import toy_model

    if tiny:
        model = toy_model(hidden=(32, 32, 32), wavelength=log_lambda_grid(4800.0, 5600.0), n_train=800, seed=0)
        what = "tiny toy GSN 3x32 hidden, 4800-5600 A (669 px)"
    else:
        model, what = toy_model(seed=0), "toy GSN 3x256 hidden, LAMOST 3750-8900 A"
    d = workdir / "model"
    model.save(d)
    return d, what


def build_cube(model_dir: Path, path: Path, n_star: int, chunk_size: int, seed: int = 1) -> None:
    """A normalised spectra cube of ``n_star`` spectra drawn from the model (labels uniform in the
    middle 80% of its bounds, S/N 20-80, rv ~ N(0, 30) km/s), ``chunk_size`` stars per zarr chunk."""
    from gsn_dask.cube import make_spectra, write_spectra
    from gsn_dask.emulator import load_model
    from gsn_dask.fit.testing import noisy_spectrum

    model = load_model(model_dir)
    rng = np.random.default_rng(seed)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    truth = lo + (hi - lo) * (0.1 + 0.8 * rng.random((n_star, model.n_label)))
    snr = rng.uniform(20.0, 80.0, n_star)
    flux = np.empty((n_star, model.n_pix), np.float32)
    ivar = np.empty_like(flux)
    for i in range(n_star):
        flux[i], ivar[i] = noisy_spectrum(model, truth[i], snr=float(snr[i]), rv=float(rng.normal(0, 30)), rng=rng)
    ds = make_spectra([f"bench-{i:05d}" for i in range(n_star)], model.wavelength, flux, ivar, snr=snr,
                      labels={n: truth[:, j] for j, n in enumerate(model.label_names)}, normalised=True)
    write_spectra(ds, path, chunk_size=chunk_size)


def fit_chunks(cube: Path, model, config, seed: int, n_star: int, chunk_size: int,
               t0: float | None = None) -> tuple[list, float | None]:
    """The bare fitting loop, in this process: read each chunk of ``cube``, ``fit_block`` it (no
    store, no engine). Returns the per-chunk results and, given ``t0`` (``time.perf_counter()``),
    the seconds from ``t0`` to the first chunk fitted."""
    from gsn_dask.fit.block import fit_block
    from gsn_dask.cube import read_block
    from gsn_dask.results_store import chunk_bounds

    rows, first = [], None
    for a, b in chunk_bounds(n_star, chunk_size):
        rows.append(fit_block(read_block(cube, a, b), model, config=config, run_seed=seed))
        if first is None and t0 is not None:
            first = time.perf_counter() - t0
    return rows, first


def start_local_cluster(n_workers: int, *, wait: bool = False):
    """A Dask LocalCluster of ``n_workers`` processes (1 thread each, quiet logs, dashboard on a
    free port) and its Client; ``wait``: also wait for the workers. Returns (cluster, client)."""
    from distributed import Client, LocalCluster

    cluster = LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True, dashboard_address=":0",
                           silence_logs=logging.ERROR)
    client = Client(cluster)
    if wait:
        client.wait_for_workers(n_workers)
    return cluster, client


def fit_settings(pairs: list[str]) -> dict:
    """FitConfig settings from ``KEY=VALUE`` strings (VALUE as JSON, else a plain string)."""
    out = {}
    for kv in pairs:
        k, v = kv.split("=", 1)
        try:
            out[k] = json.loads(v)
        except json.JSONDecodeError:
            out[k] = v
    return out


def save_tagged(path: Path, tag: str, result: dict) -> None:
    """Store ``result`` under ``tag`` in the JSON file ``path``, keeping its other tags."""
    allr = json.loads(path.read_text()) if path.exists() else {}
    allr[tag] = result
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(allr, indent=1))


def run_seeds(save: Path, script: str, seeds: list[int], key: str, one, show) -> None:  # noqa: ANN001
    """The per-seed loop of a prototype measurement: ``one(seed)`` -> a record with ``model_id``,
    ``wall_s`` and ``rows``, shown by ``show(title, rows)`` and merged into ``save``'s ``per_seed``
    under ``key.format(seed=...)`` (other seeds kept), with the command line."""
    import sys

    saved = json.loads(save.read_text()) if save.exists() else {}
    per_seed = saved.get("per_seed", {})
    for seed in seeds:
        r = one(seed)
        per_seed[key.format(seed=seed)] = r
        show(f"seed {seed} ({key.format(seed=seed)}, model {r['model_id']}, {r['wall_s']} s)", r["rows"])
    save.write_text(json.dumps({**saved, "command": f"python benchmarks/{script} " + " ".join(sys.argv[1:]),
                                "per_seed": per_seed}, indent=1) + "\n")
    print(f"saved {save}")


def add_fit_run_args(ap, save: Path) -> None:  # noqa: ANN001 - argparse.ArgumentParser
    """The options of a tagged fit-comparison benchmark: --tag, --set, --sampler, --seed, --save."""
    ap.add_argument("--tag", required=True, help="name of this run in the results file")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="FitConfig setting (JSON value)")
    ap.add_argument("--sampler", default="emcee")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save", type=Path, default=save)


def add_seed_run_args(ap, save: Path, sampler: str, work_help: str) -> None:  # noqa: ANN001 - argparse.ArgumentParser
    """The options of a per-training-seed prototype (:func:`run_seeds`): --seeds, --threads, --sampler,
    --work, --save."""
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="training seeds (default 0, the demo's)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per training (default 1)")
    ap.add_argument("--sampler", default=sampler, help=f"fit sampler (default {sampler})")
    ap.add_argument("--work", type=Path, required=True, help=work_help)
    ap.add_argument("--save", type=Path, default=save, help=f"JSON to merge the seeds into (default {save.name})")


def demo_holdout_observations(full=None, names=("teff", "logg", "feh")):  # noqa: ANN001 - a Dataset
    """The demo's MILES hold-out observed LAMOST-like (S/N 30 and 100, observation seed 2024: as the demo
    with seed 0 and ``miles_holdout.py`` make them) and their literature labels (n_obs, len(names)).
    ``full``: the MILES training cube, if already loaded. Returns (observations, labels)."""
    import gsn_dask as gd
    from gsn_dask import demo

    if full is None:
        full = gd.open_spectra(demo.miles_training_cube(progress=False)).load()
    hold = demo.holdout_mask(full)
    obs = demo.make_observations(full, [str(s) for s in np.asarray(full["star"].values)[hold]], seed=2024)
    return obs, np.stack([np.asarray(obs[f"label_{n}"].values, float) for n in names], axis=1)


def mad_std(x: np.ndarray) -> float:
    """1.4826 x the median absolute deviation from the median (NaNs ignored)."""
    return float(1.4826 * np.nanmedian(np.abs(x - np.nanmedian(x))))


def label_stats(ours: np.ndarray, ref: np.ndarray, p16: np.ndarray, p84: np.ndarray) -> dict[str, float]:
    """Against reference labels: n, median bias, 1.4826 MAD, reference inside [p16, p84], robust std
    of z = (ours - ref) / half-width and the median half-width (finite pairs only)."""
    ours, ref, p16, p84 = (np.asarray(a, np.float64) for a in (ours, ref, p16, p84))
    ok = np.isfinite(ours) & np.isfinite(ref)
    d = ours[ok] - ref[ok]
    half = 0.5 * (p84[ok] - p16[ok])
    inside = (ref[ok] >= p16[ok]) & (ref[ok] <= p84[ok])
    z = d / np.where(half > 0, half, np.nan)
    return {"n": int(ok.sum()), "bias": float(np.median(d)), "mad_std": mad_std(d), "in68": float(inside.mean()),
            "z_rstd": mad_std(z), "half_width_median": float(np.median(half))}
