"""``gsn-dask diagnose``: stacked residual spectra of fitted survey stars (where data and model disagree)."""
from __future__ import annotations

import argparse

DESCRIPTION = """\
Compare every fitted star (status ok) with its best-fit model (MAP labels, posterior rv, the
likelihood's continuum correction) and stack the residuals (data - model) / model by spectral
class (Teff / log g from the fit), in the observed frame (instrument: arm join near 5700-6000 A,
sky lines, telluric bands, flux calibration) and in the rest frame (stellar: line strengths,
line-spread function). Writes OUT/residuals_observed.png, OUT/residuals_rest.png,
OUT/residuals_stacked.nc (class x wavelength) and OUT/residual_windows.csv (rms in % per window)."""


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("diagnose", help="stacked residual spectra of fitted stars (figures + table)",
                              description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", metavar="RESULTS", help="results cube (zarr) from gsn-dask fit")
    p.add_argument("--cube", required=True, metavar="CUBE", help="the spectra cube that was fitted")
    p.add_argument("--model", default=None, metavar="MODEL_DIR", help="the model used by the fit (default: the shipped model)")
    p.add_argument("-o", "--out", required=True, metavar="DIR", help="output folder")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..api import load_model
    from ..cube import open_results, open_spectra
    from ..diagnose import diagnose

    model = load_model(args.model)
    results = open_results(args.results)
    if results.attrs.get("model_sha256") and results.attrs["model_sha256"] != getattr(model, "sha256", ""):
        raise ValueError(f"{args.results} was fitted with model {results.attrs.get('model_id')} "
                         f"(sha256 {results.attrs['model_sha256'][:12]}...), not with {model.model_id}; give its --model")
    table = diagnose(open_spectra(args.cube), results.load(), model, args.out)
    cols = [c for c in table.columns if c.startswith("observed:") or c in ("class", "n_star")]
    print(table[cols].to_string(index=False, float_format=lambda v: f"{v:.2f}"))
    print(f"wrote {args.out}/residuals_observed.png, residuals_rest.png, residuals_stacked.nc, residual_windows.csv")
    return 0
