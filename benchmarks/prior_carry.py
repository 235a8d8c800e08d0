"""The Kiel prior's shift carried to [Fe/H] (issue 15, a prototype measurement).

The Kiel prior moves a star's reported Teff and log g (split normals times the prior,
:func:`gsn_dask.label_prior.apply`) and leaves [Fe/H], although the fit's errors in [Fe/H] are
correlated with its errors in Teff and log g. Under a joint Gaussian error model the prior's shift
(dTeff, dlogg) moves [Fe/H] by b_T * dTeff + b_g * dlogg, with (b_T, b_g) the regression of the
[Fe/H] residuals on the Teff and log g residuals. This estimates (b_T, b_g) from the training's own
cross-validation (out-of-fold fit - label; stars with any residual beyond 4 x 1.4826 MAD left out) and
applies the shift to the reported [Fe/H] (median, p16 and p84 alike), as post-processing: each set is
fitted twice with the same chains, with the model's prior and with ``label_prior="none"``.

Per seed it needs a ``class_error.py --work`` folder (``seedN/cv.npz``, ``seedN/final``: the demo's
split) and, for LAMOST, the README path's survey-error model of the full-MILES training of the same seed
(``systematics_target.py --work``: ``seedN/VARIANT/path/lamost_model``), carried with the demo split's
regression of that seed (a proxy: the full training's cross-validation is not saved):

    python benchmarks/prior_carry.py --seeds 0 1 2 --cv-work W_ce --lamost-work W_st --lamost-cube lamost.zarr

Prints and saves bias / 1.4826 MAD / in68 per label for the default and the carried [Fe/H], per seed
and set, and the mean paired difference with its standard error (``prior_carry.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _common import demo_holdout_observations
from label_scale import NAMES, add_inputs, lamost_sets, paired, stats

OUT = Path(__file__).with_name("results") / "prior_carry.json"


def carry_coefficients(cv_npz: Path, clip: float = 4.0) -> tuple[float, float]:
    """(b_T in dex/K, b_g in dex/dex): least squares of the CV's [Fe/H] residual on its Teff and log g residuals."""
    cv = np.load(cv_npz)
    r = cv["fit"] - cv["labels"][cv["fit_idx"]]
    r = r[np.isfinite(r).all(axis=1)]
    med = np.median(r, axis=0)
    mad = 1.4826 * np.median(np.abs(r - med), axis=0)
    r = r[(np.abs(r - med) <= clip * mad).all(axis=1)] - med
    b, *_ = np.linalg.lstsq(r[:, :2], r[:, 2], rcond=None)
    return float(b[0]), float(b[1])


def fits_with_and_without(obs, model, cache: Path) -> dict[str, np.ndarray]:  # noqa: ANN001 - Dataset, GSN
    """median/p16/p84 with the model's prior and ``median_none`` without it (same seed, same chains; cached)."""
    if not cache.exists():
        import gsn_dask as gd

        on = gd.fit(obs, model, sampler="emcee", seed=0)
        off = gd.fit(obs, model, sampler="emcee", seed=0, config=gd.FitConfig().replace(label_prior="none"))
        np.savez(cache, **{v: np.asarray(on[v].values, float)[:, :3] for v in ("median", "p16", "p84")},
                 median_none=np.asarray(off["median"].values, float)[:, :3])
    return dict(np.load(cache))


def carried(f: dict[str, np.ndarray], b: tuple[float, float]) -> tuple[np.ndarray, ...]:
    """(median, p16, p84) with [Fe/H] moved by b_T dTeff + b_g dlogg (the prior's shift of the medians)."""
    shift = b[0] * (f["median"][:, 0] - f["median_none"][:, 0]) + b[1] * (f["median"][:, 1] - f["median_none"][:, 1])
    out = [f[v].copy() for v in ("median", "p16", "p84")]
    for arr in out:
        arr[:, 2] += shift
    return tuple(out)


def one_seed(seed: int, a: argparse.Namespace) -> dict:
    import gsn_dask as gd

    w = a.cv_work / f"seed{seed}"
    b = carry_coefficients(w / "cv.npz")
    obs, truth = demo_holdout_observations(names=NAMES)
    sets = {"hold-out": (fits_with_and_without(obs, gd.load_model(w / "final"), w / "prior_carry_holdout.npz"), truth)}
    if a.lamost_work is not None:
        lw = a.lamost_work / f"seed{seed}" / a.variant / "path"
        cube = gd.open_spectra(a.lamost_cube).load()
        f = fits_with_and_without(cube, gd.load_model(lw / "lamost_model"), lw / "prior_carry_lamost.npz")
        lasp, selections = lamost_sets(cube)
        for name, sel in selections.items():
            sets[f"LAMOST {name}"] = ({k: v[sel] for k, v in f.items()}, lasp[sel])
    rows = {s: {"raw": stats(f["median"], f["p16"], f["p84"], t), "mapped": stats(*carried(f, b), t)}
            for s, (f, t) in sets.items()}
    return {"seed": seed, "b_teff_dex_per_K": b[0], "b_logg": b[1], "rows": rows}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inputs(ap, OUT, "its variant whose survey-error model to use (default base)")
    a = ap.parse_args(argv)
    per_seed = {seed: one_seed(seed, a) for seed in a.seeds}
    for seed, r in per_seed.items():
        print(f"seed {seed}: b_T {1000 * r['b_teff_dex_per_K']:+.3f} dex per 1000 K, b_g {r['b_logg']:+.3f}")
        for s, v in r["rows"].items():
            for kind, title in (("raw", "default"), ("mapped", "carried")):
                print(f"  {s:16s} {title:8s} " + "  ".join(
                    f"{n} {q['bias']:+.3g}/{q['mad_std']:.3g} ({100 * q['in68']:.0f}%)" for n, q in v[kind].items()))
    out = {"command": " ".join(sys.argv), "per_seed": per_seed, "paired": paired(per_seed) if len(per_seed) > 1 else None}
    a.save.write_text(json.dumps(out, indent=1))
    for s, labs in (out["paired"] or {}).items():
        v = labs["feh"]
        print(f"carried - default {s:16s} feh MAD {v['mad_std']['mean']:+.3g}±{v['mad_std']['se']:.2g} "
              f"bias {v['bias']['mean']:+.3g}±{v['bias']['se']:.2g} in68 {100 * v['in68']['mean']:+.1f}±{100 * v['in68']['se']:.1f}")
    print(f"saved {a.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
