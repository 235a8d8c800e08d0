"""``gsn-dask demo``: the whole chain on the embedded default (MILES), in one command.

Steps (each with progress output; everything lands in ``out_dir``):

1. **Training cube** — MILES v9.1 from the pinned ``sdss-mangadap`` wheel, degraded to the
   LAMOST LSF (R = 1800), resampled onto the LAMOST vacuum log-lambda grid and continuum
   normalised (:func:`gsn_dask.grid.libraries.build_miles_cube`). Cached in the user cache dir.
2. **Hold-out** — a fixed subset never seen in training: MILES stars with literature
   3500 <= Teff <= 8000 K whose MILES number (``mNNNN``) is divisible by :data:`HOLDOUT_EVERY`
   (~100 stars). The rest train the GSN.
3. **GSN** — :func:`gsn_dask.calibration.train_and_calibrate` with ``gsn-dask train``'s default
   recipe (:data:`gsn_dask.emulator_recipe.DEFAULT_RECIPE`: K-fold CV for the per-pixel emulator
   error, Teff and [Fe/H] training labels moved toward their out-of-fold fits, then the label
   systematics) on the training stars. Cached by the hash of its inputs
   and recipe, so a second demo reuses it.
4. **LAMOST-like observations** of the hold-out stars (:func:`make_observations`): the real
   prepared MILES spectrum (LAMOST resolution and grid) on the *full* LAMOST grid 3700-9100 A
   (ivar 0 outside MILES' coverage), multiplied by a smooth instrument-like response, Doppler
   shifted by a random heliocentric rv (uniform +-150 km/s, stored in ``rv_catalog``), with
   Gaussian noise at S/N 30 and 100 per pixel (sigma = continuum / S/N). Raw, not normalised:
   the fit applies the model's normalisation recipe as it would to survey data.
5. **Fit** with the Dask runner on a LocalCluster (dashboard address printed).
6. **Validate** against the literature labels (tables + figures), per S/N.
7. With ``--lamost DIR``: ingest real LAMOST LRS files (``--labels CSV`` for LASP labels),
   fit them with the same model and validate against the survey labels.
"""
from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ._version import __version__
from .cube import label_names, log_lambda_grid, make_spectra, open_spectra, write_spectra
from .emulator_recipe import DEFAULT_RECIPE, TrainRecipe

log = logging.getLogger(__name__)

#: hold-out rule: every MILES star with number % HOLDOUT_EVERY == 0 inside HOLDOUT_TEFF_K.
HOLDOUT_EVERY = 8
HOLDOUT_TEFF_K = (3500.0, 8000.0)
#: S/N per pixel of the simulated observations.
DEMO_SNR = (30.0, 100.0)
#: half-width of the uniform random heliocentric rv of the simulated observations, km/s.
DEMO_RV_KMS = 150.0
C_KMS = 299792.458

#: paper (Wang & Luo, vs APOGEE DR14, S/N_g > 30) precision, for the summary table.
PAPER_PRECISION = {"teff": 130.0, "logg": 0.15, "feh": 0.13, "alpha_fe": 0.10}


def _say(msg: str) -> None:
    print(f"[gsn-dask demo] {msg}", flush=True)


def miles_number(star: str) -> int:
    """The MILES number of a star id like ``MILES_m0123`` (-1 if none)."""
    digits = "".join(ch for ch in str(star).rsplit("m", 1)[-1] if ch.isdigit())
    return int(digits) if digits else -1


def holdout_mask(ds: xr.Dataset) -> np.ndarray:
    """Boolean (star,) mask of the demo hold-out stars (see module docstring)."""
    teff = np.asarray(ds["label_teff"].values, dtype=float)
    num = np.array([miles_number(s) for s in np.asarray(ds["star"].values)])
    return (num >= 0) & (num % HOLDOUT_EVERY == 0) & (teff >= HOLDOUT_TEFF_K[0]) & (teff <= HOLDOUT_TEFF_K[1])


def response_curve(wavelength: np.ndarray) -> np.ndarray:
    """A smooth, positive instrument-like response (dimensionless): rises from the blue,
    peaks near 6000 A, falls to the red, like an uncalibrated spectrograph throughput."""
    x = (np.asarray(wavelength, dtype=float) - 6000.0) / 3000.0
    return 0.35 + 0.65 * np.exp(-0.5 * (x / 0.55) ** 2) + 0.05 * x


def make_observations(
    train: xr.Dataset,
    stars: Sequence[str],
    *,
    snrs: Sequence[float] = DEMO_SNR,
    rv_kms: float = DEMO_RV_KMS,
    seed: int = 2024,
    grid: np.ndarray | None = None,
) -> xr.Dataset:
    """LAMOST-like raw observations of training-cube stars (see module docstring, step 4).

    Star ids are ``<star>_sn<S/N>``; ``label_*`` are the literature labels, ``snr`` the S/N,
    ``rv_catalog`` the injected rv (km/s).
    """
    rng = np.random.default_rng(seed)
    grid = log_lambda_grid() if grid is None else np.asarray(grid)
    w_src = np.asarray(train["wavelength"].values)
    step = float(np.median(np.diff(np.log10(grid))))
    k0 = int(round((np.log10(w_src[0]) - np.log10(grid[0])) / step))
    if not np.allclose(grid[k0 : k0 + w_src.size], w_src, rtol=1e-9):
        raise ValueError("training cube grid is not a run of the LAMOST grid")
    sub = train.sel(star=list(stars))
    names = label_names(train)
    resp = response_curve(grid)
    out_star, out_flux, out_ivar, out_snr, out_rv, out_src = [], [], [], [], [], []
    out_labels: dict[str, list[float]] = {n: [] for n in names}
    flux_all = np.asarray(sub["flux"].values, dtype=np.float64)
    ivar_all = np.asarray(sub["ivar"].values, dtype=np.float64)
    for i, star in enumerate(np.asarray(sub["star"].values)):
        f_rest = np.full(grid.size, np.nan)
        good_rest = np.zeros(grid.size, dtype=bool)
        f_rest[k0 : k0 + w_src.size] = flux_all[i]
        good_rest[k0 : k0 + w_src.size] = ivar_all[i] > 0
        for snr in snrs:
            rv = float(rng.uniform(-rv_kms, rv_kms))
            # observed pixel j sees rest position j - delta (pixels)
            delta = np.log10(1.0 + rv / C_KMS) / step
            pos = np.arange(grid.size) - delta
            j = np.floor(pos).astype(int)
            phi = pos - j
            inside = (j >= 0) & (j + 1 < grid.size)
            jc = np.clip(j, 0, grid.size - 2)
            f_obs = (1 - phi) * f_rest[jc] + phi * f_rest[jc + 1]
            g_obs = inside & good_rest[jc] & good_rest[jc + 1] & np.isfinite(f_obs)
            sigma = resp / snr  # continuum ~ 1 x response
            flux = np.where(g_obs, f_obs * resp + rng.normal(0.0, 1.0, grid.size) * sigma, 0.0)
            ivar = np.where(g_obs, 1.0 / sigma**2, 0.0)
            out_star.append(f"{star}_sn{snr:g}")
            out_flux.append(flux)
            out_ivar.append(ivar)
            out_snr.append(snr)
            out_rv.append(rv)
            out_src.append(f"demo: {star} x response + rv + noise S/N {snr:g}")
            for n in names:
                out_labels[n].append(float(sub[f"label_{n}"].values[i]))
    return make_spectra(
        out_star,
        grid,
        np.array(out_flux),
        np.array(out_ivar),
        snr=np.array(out_snr),
        rv_catalog=np.array(out_rv),
        labels={n: np.array(v) for n, v in out_labels.items()},
        source=out_src,
        normalised=False,
        flux_unit="relative (demo response)",
        history=f"gsn-dask {__version__} demo: LAMOST-like observations of {len(stars)} MILES hold-out stars",
    )


# ----------------------------------------------------------------------------- caching
def _cache_root() -> Path:
    import platformdirs

    p = Path(platformdirs.user_cache_dir("gsn-dask"))
    p.mkdir(parents=True, exist_ok=True)
    return p


def _train_key(train: xr.Dataset, settings: dict[str, Any]) -> str:
    h = hashlib.sha256()
    h.update(json.dumps(settings, sort_keys=True).encode())
    h.update(np.asarray(train["wavelength"].values, dtype=np.float64).tobytes())
    h.update("\n".join(map(str, np.asarray(train["star"].values))).encode())
    for n in label_names(train):
        h.update(np.asarray(train[f"label_{n}"].values, dtype=np.float32).tobytes())
    h.update(np.asarray(train["flux"].values, dtype=np.float32).tobytes())
    return h.hexdigest()[:16]


def miles_training_cube(*, progress: bool = True, n_workers: int | None = None) -> Path:
    """The MILES training cube, built once into the user cache dir (``platformdirs``), then
    reused; the MILES wheel is fetched (verified) on first use. ``n_workers=0``: in-process."""
    from .grid.libraries import build_miles_cube

    cached = _cache_root() / f"miles_train_{__version__}.zarr"
    if cached.exists():
        try:
            open_spectra(cached)
            _say(f"MILES training cube: reusing {cached}")
            return cached
        except (OSError, ValueError, KeyError) as exc:  # a damaged cached cube: rebuild it
            _say(f"MILES training cube: the cached one is damaged ({exc}); rebuilding")
            shutil.rmtree(cached, ignore_errors=True)
    _say("MILES training cube: fetching MILES (sdss-mangadap 4.5.0 wheel, sha256 pinned) and preparing it")
    tmp = cached.with_suffix(".tmp.zarr")
    shutil.rmtree(tmp, ignore_errors=True)
    res = build_miles_cube(tmp, overwrite=True, progress=progress, n_workers=n_workers)
    tmp.rename(cached)
    _say(f"  {res.n_written} stars prepared ({len(res.skipped)} skipped) in {res.elapsed_s:.0f} s")
    return cached


@dataclass
class DemoSettings:
    """Demo knobs (defaults are the documented demo)."""

    #: the training recipe: ``gsn-dask train``'s defaults (its ``seed`` is replaced by :attr:`seed`)
    recipe: TrainRecipe = DEFAULT_RECIPE
    seed: int = 0  # seed of the training, the simulated observations and the fit
    threads: int | None = None  # torch CPU threads of the training (None: torch's; a network depends on it)
    n_workers: int | None = None
    progress: bool = True
    max_holdout: int | None = None  # fit only the first N hold-out stars (a quicker run)
    fit_overrides: dict[str, Any] = field(default_factory=dict)

    def train_recipe(self) -> TrainRecipe:
        """The recipe the demo trains with."""
        return self.recipe.replace(seed=self.seed)


def _model(train: xr.Dataset, settings: DemoSettings) -> Path:
    """Train the GSN and calibrate its label systematics on the training stars, as ``gsn-dask
    train`` does (:func:`gsn_dask.calibration.train_and_calibrate`), or reuse a cached model with
    the same inputs and recipe. Returns the cached model directory."""
    from .emulator import ModelFileError, load_model

    recipe = settings.train_recipe()
    key = _train_key(train, {"recipe": recipe.to_json(), "version": __version__})
    cached = _cache_root() / "models" / key
    if (cached / "model.json").exists():
        try:
            load_model(cached)
            _say(f"GSN: reusing cached model {cached} (same training stars and recipe)")
            return cached
        except (ModelFileError, OSError) as exc:  # a damaged cached model: train again
            _say(f"GSN: the cached model is damaged ({exc}); training again")
            shutil.rmtree(cached, ignore_errors=True)
    from .calibration import train_and_calibrate
    from .emulator_data import diagnostics_figure

    _say(f"GSN: training on {train.sizes['star']} MILES stars ({recipe.folds}-fold CV for the emulator error), "
         "then the label systematics")
    t0 = time.perf_counter()
    model, report = train_and_calibrate(train, recipe, threads=settings.threads, progress=settings.progress)
    tmp = cached.with_name(cached.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save(tmp)
    try:
        diagnostics_figure(report, tmp / "diagnostics.png")
    except Exception as exc:  # noqa: BLE001 - a figure must not stop the demo
        log.warning("diagnostics figure failed: %s", exc)
    shutil.rmtree(cached, ignore_errors=True)
    tmp.rename(cached)
    _say(f"  trained and calibrated in {time.perf_counter() - t0:.0f} s")
    return cached


def _summary_rows(stats: Any, labels: Sequence[str], title: str) -> list[str]:
    rows = []
    for lab in labels:
        sel = stats[(stats["label"] == lab)]
        for _, r in sel.iterrows():
            rows.append(
                f"| {title} | {lab} | {r['snr_bin']} | {int(r['n'])} | {r['bias']:+.3g} | {r['mad_std']:.3g} | "
                f"{r['std']:.3g} | {r['outlier_frac']:.2f} | {r['frac_in_68']:.2f} | {PAPER_PRECISION.get(lab, float('nan')):g} |"
            )
    return rows


def source_star(observation: str) -> str:
    """The training-cube star an observation of :func:`make_observations` was made from
    (``<star>_sn<S/N>`` -> ``<star>``): its two observations are one star for the bootstrap."""
    return str(observation).rsplit("_sn", 1)[0]


def _errors_line(calibration: Any, title: str) -> str:
    """One line: each label's bootstrap standard errors (all S/N) of the MAD and the in-68% fraction."""
    parts = [f"{r['label']} MAD ± {r['mad_std_se']:.2g}, in 68% ± {r['frac_in_68_se']:.2f}"
             for _, r in calibration.iterrows()]
    n = int(calibration["n_objects"].max()) if len(calibration) else 0
    return f"{title}, all S/N, bootstrap standard errors over its {n} objects: " + "; ".join(parts)


def _print_table(lines: list[str]) -> None:
    header = "| set | label | S/N bin | N | bias | 1.4826 MAD | std | outliers | in 68% | paper |"
    sep = "|---|---|---|---|---|---|---|---|---|---|"
    print("\n".join([header, sep, *lines]), flush=True)


def _holdout_split(cube_path: Path, settings: DemoSettings) -> tuple[xr.Dataset, xr.Dataset, list[str]]:
    """Steps 1-2: (the whole MILES cube, its training stars, the hold-out star ids)."""
    full = open_spectra(cube_path).load()
    hold = holdout_mask(full)
    hold_stars = [str(s) for s in np.asarray(full["star"].values)[hold]]
    if settings.max_holdout is not None:
        hold_stars = hold_stars[: settings.max_holdout]
    train = full.isel(star=np.flatnonzero(~hold))
    _say(f"hold-out: {len(hold_stars)} stars (MILES number % {HOLDOUT_EVERY} == 0, "
         f"{HOLDOUT_TEFF_K[0]:.0f}-{HOLDOUT_TEFF_K[1]:.0f} K); training on {train.sizes['star']}")
    return full, train, hold_stars


def _fit_holdout(full: xr.Dataset, hold_stars: list[str], model_dir: Path, out: Path, config: Any,
                 settings: DemoSettings) -> Any:
    """Steps 4-6: LAMOST-like observations of the hold-out stars, fitted on Dask and validated
    against the literature labels (each star's observations one bootstrap object). Returns the report."""
    from .pipeline import run_fit
    from .validate import validate

    obs = make_observations(full, hold_stars, seed=settings.seed + 2024)
    obs_path = out / "miles_holdout_obs.zarr"
    shutil.rmtree(obs_path, ignore_errors=True)
    write_spectra(obs, obs_path, chunk_size=32)
    _say(f"observations: {obs.sizes['star']} spectra (S/N {', '.join(f'{s:g}' for s in DEMO_SNR)}) -> {obs_path}")
    _say("fitting with the Dask runner (LocalCluster)")
    results = run_fit(obs_path, model_dir, out / "miles_holdout_results.zarr", config=config, seed=settings.seed,
                      overwrite=True, n_workers=settings.n_workers, progress=settings.progress, chunk_size=32)
    obs_ds = open_spectra(obs_path)
    return validate(results, obs_ds, cube=obs_ds, snr_bins=(50.0,),
                    groups=[source_star(x) for x in np.asarray(results["star"].values)])


def _fit_lamost(lamost: str | Path, labels_csv: str | Path | None, model_dir: Path, out: Path, config: Any,
                settings: DemoSettings) -> Any | None:
    """Step 7: ingest, fit and (with reference labels) validate real LAMOST spectra; the report or None."""
    from .io.ingest import ingest
    from .pipeline import run_fit
    from .validate import validate

    lam_cube = out / "lamost.zarr"
    shutil.rmtree(lam_cube, ignore_errors=True)
    _say(f"ingesting LAMOST spectra from {lamost}")
    ing = ingest([lamost], lam_cube, labels=labels_csv, recursive=True, progress=settings.progress, n_workers=0)
    _say(f"  {ing.summary() if hasattr(ing, 'summary') else ing}")
    lres = run_fit(lam_cube, model_dir, out / "lamost_results.zarr", config=config, seed=settings.seed, overwrite=True,
                   n_workers=settings.n_workers, progress=settings.progress)
    lam_ds = open_spectra(lam_cube)
    if not any(np.isfinite(lam_ds[f"label_{n}"].values).any() for n in label_names(lam_ds)):
        _say("no reference labels for the LAMOST spectra (--labels CSV): fitted, not validated")
        return None
    return validate(lres, lam_ds, cube=lam_ds, snr_bins=(30.0,))


def _write_summary(out: Path, lines: list[str], notes: list[str], elapsed: float) -> None:
    """Print the summary table and write it to ``out/SUMMARY.md``."""
    print()
    _print_table(lines)
    print("\n".join(notes), flush=True)
    _say(f"done in {elapsed / 60:.1f} min; report in {out / 'report_miles' / 'report.md'}")
    (out / "SUMMARY.md").write_text(
        "# gsn-dask demo summary\n\n"
        f"gsn-dask {__version__}; {elapsed / 60:.1f} min. Scatter is 1.4826 x MAD of (ours - reference); "
        "'paper' is Wang & Luo's precision vs APOGEE DR14 (S/N_g > 30).\n\n"
        "| set | label | S/N bin | N | bias | 1.4826 MAD | std | outliers | in 68% | paper |\n"
        "|---|---|---|---|---|---|---|---|---|---|\n" + "\n".join(lines) + "\n\n"
        + "".join(f"- {n}\n" for n in notes)
    )


def run_demo(
    out_dir: str | Path = "gsn-dask-demo",
    *,
    lamost: str | Path | None = None,
    labels_csv: str | Path | None = None,
    settings: DemoSettings | None = None,
    train_cube: str | Path | None = None,
) -> dict[str, Any]:
    """Run the demo (the module docstring's seven steps); returns a dict with the paths and the
    validation tables."""
    from .fit.config import FitConfig
    from .validate import write_report

    settings = settings or DemoSettings()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    cube_path = Path(train_cube) if train_cube else miles_training_cube(progress=settings.progress,
                                                                        n_workers=settings.n_workers)
    full, train, hold_stars = _holdout_split(cube_path, settings)
    model_dir = out / "model"  # 3. the GSN
    shutil.rmtree(model_dir, ignore_errors=True)
    shutil.copytree(_model(train, settings), model_dir)
    summary: dict[str, Any] = {"out_dir": str(out), "holdout_stars": hold_stars, "model": str(model_dir)}
    config = FitConfig().replace(**settings.fit_overrides) if settings.fit_overrides else FitConfig()
    rep = _fit_holdout(full, hold_stars, model_dir, out, config, settings)
    files = write_report(rep, out / "report_miles")
    summary.update(miles_stats=rep.stats, miles_calibration=rep.calibration)
    lines = _summary_rows(rep.stats, rep.labels, "MILES hold-out")
    notes = [_errors_line(rep.calibration, "MILES hold-out")]
    lrep = None if lamost is None else _fit_lamost(lamost, labels_csv, model_dir, out, config, settings)
    if lrep is not None:
        files += write_report(lrep, out / "report_lamost")
        summary.update(lamost_stats=lrep.stats, lamost_calibration=lrep.calibration)
        lines += _summary_rows(lrep.stats, lrep.labels, "LAMOST vs LASP")
        notes.append(_errors_line(lrep.calibration, "LAMOST vs LASP"))
    elapsed = time.perf_counter() - t_start
    _write_summary(out, lines, notes, elapsed)
    summary["elapsed_s"] = elapsed
    summary["files"] = [str(f) for f in files]
    return summary
