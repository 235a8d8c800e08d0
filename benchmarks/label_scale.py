"""A label-scale correction from the cross-validation (issue 15, a prototype measurement).

The out-of-fold fits of a training read its labels with a slope below one in [Fe/H] (Theil-Sen 0.95
on the demo's seed 0): metal-poor stars come out too metal-rich (+0.13 dex below [Fe/H] = -1.5 on the
demo's hold-out). This asks whether undoing that line helps: each label named by ``--labels`` has its
reported median, p16 and p84 mapped by x -> (x - a) / b, with a + b * label the Theil-Sen line of the
same training's out-of-fold fits against their labels (post-processing, no retraining).

Per seed it needs a ``class_error.py --work`` folder (``seedN/cv.npz``, ``seedN/final``: the demo's
split trained with the default recipe) and, for LAMOST, the README path's emcee results of the
full-MILES model of the same seed (``systematics_target.py --work``: ``seedN/VARIANT/path/results.zarr``),
mapped with the demo split's line of that seed (a proxy: the full training's cross-validation is not
saved). The hold-out is fitted once per seed with the final model (the demo's observations, emcee, as
``miles_holdout.py``) and its fits are kept in ``seedN/holdout_fit.npz``:

    python benchmarks/label_scale.py --seeds 0 1 2 --cv-work W_ce --lamost-work W_st --variant base \\
        --lamost-cube lamost.zarr

Prints and saves, per seed and set, bias / 1.4826 MAD / in68 / robust std of z for the raw and the
mapped labels, and the mean paired difference with its standard error (``label_scale.json``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from scipy.stats import theilslopes

from _common import demo_holdout_observations, label_stats

OUT = Path(__file__).with_name("results") / "label_scale.json"
NAMES = ("teff", "logg", "feh")


def cv_lines(cv_npz: Path) -> dict[str, tuple[float, float]]:
    """(intercept a, slope b) of fit = a + b * label per label, Theil-Sen on the out-of-fold fits."""
    cv = np.load(cv_npz)
    fit, lab = cv["fit"], cv["labels"][cv["fit_idx"]]
    ok = np.isfinite(fit).all(axis=1) & np.isfinite(lab).all(axis=1)
    out = {}
    for j, name in enumerate(NAMES):
        b, a, _, _ = theilslopes(fit[ok, j], lab[ok, j])
        out[name] = (float(a), float(b))
    return out


def holdout_fits(work: Path) -> tuple[np.ndarray, ...]:
    """(median, p16, p84, truth) of the demo's hold-out observations fitted by ``work/final`` (cached)."""
    cache = work / "holdout_fit.npz"
    if not cache.exists():
        import gsn_dask as gd

        obs, truth = demo_holdout_observations(names=NAMES)
        res = gd.fit(obs, gd.load_model(work / "final"), sampler="emcee", seed=0)
        np.savez(cache, **{v: np.asarray(res[v].values, float) for v in ("median", "p16", "p84")}, truth=truth)
    f = np.load(cache)
    return f["median"], f["p16"], f["p84"], f["truth"]


def lamost_fits(results: Path, cube: Path) -> dict[str, tuple[np.ndarray, ...]]:
    """Per set (snrg>30, all): (median, p16, p84, LASP) of the README path's results, as readme_path.py selects."""
    import gsn_dask as gd

    res = gd.open_results(results).load()
    lasp, sets = lamost_sets(gd.open_spectra(cube))
    arr = [np.asarray(res[v].values, float)[:, :3] for v in ("median", "p16", "p84")]
    return {name: (*(a[sel] for a in arr), lasp[sel]) for name, sel in sets.items()}


def lamost_sets(cube) -> tuple[np.ndarray, dict[str, np.ndarray]]:  # noqa: ANN001 - a spectra Dataset
    """(LASP labels (n, 3), {"snrg>30": mask, "all": mask}) of the stars with LASP labels, as readme_path.py selects."""
    lasp = np.stack([np.asarray(cube[f"label_{n}"].values, float) for n in NAMES], axis=1)
    ok = np.isfinite(lasp[:, 0])
    return lasp, {"snrg>30": ok & (np.asarray(cube["snr"].values, float) > 30), "all": ok}


def mapped(med: np.ndarray, lo: np.ndarray, hi: np.ndarray, lines: dict, labels: list[str]) -> tuple[np.ndarray, ...]:
    """Median, p16, p84 with each of ``labels`` mapped by x -> (x - a) / b (b > 0 keeps the order)."""
    out = [a.copy() for a in (med, lo, hi)]
    for name in labels:
        j = NAMES.index(name)
        a, b = lines[name]
        for arr in out:
            arr[:, j] = (arr[:, j] - a) / b
    return tuple(out)


def stats(med: np.ndarray, lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> dict:
    return {n: label_stats(med[:, j], truth[:, j], lo[:, j], hi[:, j]) for j, n in enumerate(NAMES)}


def one_seed(seed: int, a: argparse.Namespace) -> dict:
    w = a.cv_work / f"seed{seed}"
    lines = cv_lines(w / "cv.npz")
    sets = {"hold-out": holdout_fits(w)}
    if a.lamost_work is not None:
        lam = lamost_fits(a.lamost_work / f"seed{seed}" / a.variant / "path" / "results.zarr", a.lamost_cube)
        sets.update({f"LAMOST {k}": v for k, v in lam.items()})
    rows = {}
    for s, (med, lo, hi, truth) in sets.items():
        rows[s] = {"raw": stats(med, lo, hi, truth), "mapped": stats(*mapped(med, lo, hi, lines, a.labels), truth)}
    return {"seed": seed, "lines": lines, "labels": a.labels, "rows": rows}


def paired(per_seed: dict) -> dict:
    """Mean (mapped - raw) over seeds and its standard error, per set, label and statistic."""
    out: dict = {}
    first = next(iter(per_seed.values()))["rows"]
    for s in first:
        for n in NAMES:
            for stat in ("bias", "mad_std", "in68", "z_rstd"):
                d = np.array([r["rows"][s]["mapped"][n][stat] - r["rows"][s]["raw"][n][stat] for r in per_seed.values()])
                se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None
                out.setdefault(s, {}).setdefault(n, {})[stat] = {"mean": float(d.mean()), "se": se, "per_seed": d.tolist()}
    return out


def add_inputs(ap: argparse.ArgumentParser, save: Path, variant_help: str) -> None:
    """The post-processing prototypes' inputs: --seeds, --cv-work, --lamost-work, --variant, --lamost-cube, --save."""
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cv-work", type=Path, required=True, help="class_error.py --work folder (seedN/cv.npz, seedN/final)")
    ap.add_argument("--lamost-work", type=Path, default=None,
                    help="systematics_target.py --work folder (or readme_path_seeds.py's, with --variant '')")
    ap.add_argument("--variant", default="base", help=variant_help)
    ap.add_argument("--lamost-cube", type=Path, default=None, help="the ingested LAMOST cube with LASP labels")
    ap.add_argument("--save", type=Path, default=save)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_inputs(ap, OUT, "its variant whose README-path results to map (default base)")
    ap.add_argument("--labels", nargs="+", default=["feh"], choices=NAMES, help="labels to map (default feh)")
    a = ap.parse_args(argv)
    per_seed = {seed: one_seed(seed, a) for seed in a.seeds}
    for seed, r in per_seed.items():
        print(f"seed {seed}: lines " + ", ".join(f"{n} a={x:+.3g} b={b:.3f}" for n, (x, b) in r["lines"].items()))
        for s, v in r["rows"].items():
            for kind in ("raw", "mapped"):
                print(f"  {s:16s} {kind:6s} " + "  ".join(
                    f"{n} {q['bias']:+.3g}/{q['mad_std']:.3g} ({100 * q['in68']:.0f}%)" for n, q in v[kind].items()))
    out = {"command": " ".join(sys.argv), "per_seed": per_seed, "paired": paired(per_seed) if len(per_seed) > 1 else None}
    a.save.write_text(json.dumps(out, indent=1))
    for s, labs in (out["paired"] or {}).items():
        print(f"mapped - raw {s:16s} " + "  ".join(
            f"{n} MAD {v['mad_std']['mean']:+.3g}±{v['mad_std']['se']:.2g} bias {v['bias']['mean']:+.3g} "
            f"in68 {100 * v['in68']['mean']:+.1f}±{100 * v['in68']['se']:.1f}" for n, v in labs.items() if n in a.labels))
    print(f"saved {a.save}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
