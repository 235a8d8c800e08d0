"""``gsn-dask diagnose``: stacked residual spectra of fitted survey stars (where data and model disagree)."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Compare every fitted star (status ok) with its best-fit model (MAP labels, posterior rv, the
likelihood's continuum correction) and stack the residuals (data - model) / model by spectral
class (Teff / log g from the fit), in the observed frame (instrument: arm join near 5700-6000 A,
sky lines, telluric bands, flux calibration) and in the rest frame (stellar: line strengths,
line-spread function). Writes OUT/residuals_observed.png, OUT/residuals_rest.png,
OUT/residuals_stacked.nc (class x wavelength) and OUT/residual_windows.csv (rms in % per window).

With --write-model DIR it also measures the survey error: per pixel, the model error the survey
spectra show beyond their noise and the emulator error (sky and telluric residuals, the arm join,
flux calibration, stars unlike the training library), from the residuals alone (no reference
labels), and writes a copy of the model whose per-pixel error includes it (model.json records
how: "survey_error"), plus OUT/survey_error.png. Fit the survey with that model: it down-weights
the pixels where the survey disagrees with the library. A quick look (--sampler map) is enough
to measure it. On LAMOST DR1 against LASP (S/N_g > 30) it moves the [Fe/H] offset from -0.11 to
-0.07 / -0.08 dex for models of two training seeds; the Teff and log g scatters change by less
than the two models differ (benchmarks/results/lamost_labels.json)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("diagnose", help="stacked residual spectra of fitted stars (figures + table)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", metavar="RESULTS", help="results cube (zarr) from gsn-dask fit")
    p.add_argument("--cube", required=True, metavar="CUBE", help="the spectra cube that was fitted")
    p.add_argument("--model", default=None, metavar="MODEL_DIR", help="the model used by the fit (default: the shipped model)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--write-model", default=None, metavar="DIR",
                   help="also write the model adapted to this survey's error (see above) to DIR")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import load_model
    from ..cube import open_results, open_spectra
    from ..diagnose import best_fit, diagnose

    model = load_model(args.model)
    results = open_results(args.results)
    if results.attrs.get("model_sha256") and results.attrs["model_sha256"] != getattr(model, "sha256", ""):
        raise ValueError(f"{args.results} was fitted with model {results.attrs.get('model_id')} "
                         f"(sha256 {results.attrs['model_sha256'][:12]}...), not with {model.model_id}; give its --model")
    cube = open_spectra(args.cube)
    results = results.load()
    fits = best_fit(cube, results, model)  # once, for the stacks and the survey error
    table = diagnose(cube, results, model, args.out, fits=fits)
    if args.write_model:
        _write_model(args, fits, results, model)
    cols = [c for c in table.columns if c.startswith("observed:") or c in ("class", "n_star")]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"wrote {args.out}/residuals_observed.png, residuals_rest.png, residuals_stacked.nc, residual_windows.csv")
    return 0


def _write_model(args: argparse.Namespace, fits, results, model) -> None:  # noqa: ANN001 - xarray/GSN
    """Measure the survey error from the best fits and write the adapted model (``--write-model``)."""
    from pathlib import Path

    from .._version import __version__
    from ..survey_error import adapt_model, measure, plot_survey_error

    sigma, rec = measure(fits, model, results)
    adapted = adapt_model(model, sigma, {"cube": str(args.cube), "results": str(args.results),
                                         "package_version": __version__, **rec})
    adapted.save(args.write_model)
    plot_survey_error(model.wavelength, model.emulator_error, sigma, Path(args.out) / "survey_error.png")
    rec = adapted.meta["survey_error"]
    print(f"survey error from {rec['n_stars']} stars: raised on {100 * rec['fraction_of_pixels_raised']:.0f}% of pixels, "
          f"median {100 * rec['median']:.2f}%, 90th percentile {100 * rec['p90']:.2f}%; "
          f"wrote model {adapted.model_id} to {args.write_model} and {args.out}/survey_error.png")
