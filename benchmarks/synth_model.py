"""The four-label GSN of the synthetic grid (issue 18): train, cross-validate, fit MILES and LAMOST.

Side by side in one run, on the same stars with the same sampler:

1. the synthetic training cube from the spectra shipped in the package plus any finished in
   ``--store`` (:func:`gsn_dask.grid.synth.cube.merge`), and a GSN trained on it with the
   default recipe (``gsn-dask train``'s, labels teff, logg, feh, alpha_fe), its label
   systematics calibrated like every model; its emulator cross-validation;
2. fits of the MILES stars (the MILES training cube, literature labels) with the synthetic model;
3. fits of the LAMOST stars with LASP labels with the synthetic model and with the shipped MILES
   model (``--miles-model``), bias / 1.4826 MAD / in-68% per label and S/N set;
4. the scale question of issue 15 (:func:`scale_transfer`): with the synthetic model as a common
   ruler, how much of the MILES model's offset against LASP is a MILES-literature vs LASP scale
   difference and how much is the MILES model's own;
5. the [alpha/Fe] pattern: median [alpha/Fe] of stars with [Fe/H] < -1 and of stars with
   |[Fe/H]| < 0.2 (by the reference [Fe/H]), and the [alpha/Fe]-[Fe/H] plane as a figure.

    gsn-dask grid miles --out miles.zarr
    gsn-dask ingest ../shared/data/lamost --recursive --labels ../shared/data/lamost/dr1_labels_lasp.csv --out lamost.zarr
    python benchmarks/synth_model.py --miles-cube miles.zarr --lamost-cube lamost.zarr --work synth_model

Saves ``benchmarks/results/synth_model.json`` and ``synth_model_alpha.png`` beside it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Iterable
from pathlib import Path

import numpy as np

import gsn_dask as gd
from gsn_dask.api import DEFAULT_MODEL_DIR

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import label_stats  # noqa: E402  (the same statistics as the issue-15 measurement)

OUT = Path(__file__).resolve().parent / "results" / "synth_model.json"


def build_cube(store: Path | None, out: Path) -> tuple[Path, int]:
    """The training cube of every synthetic spectrum available (shipped + ``store``)."""
    from gsn_dask.grid.synth.cube import merge, read_shipped, store_records, write_cube

    shipped = read_shipped()
    config = shipped["config"]
    recs = store_records(store, config) if store is not None else []  # same settings only
    records = merge(shipped, recs)
    write_cube(records, out, config=config, overwrite=True)
    return out, len(records["key"])


def fit_against(cube_path: Path, model, sampler: str, seed: int) -> dict:
    """Fit the stars of ``cube_path`` with reference labels; stats per label and set, and the fits."""
    cube = gd.open_spectra(cube_path)
    has = np.isfinite(np.asarray(cube["label_teff"].values, float))
    sub = cube.isel(star=np.flatnonzero(has)).load()
    c0 = time.process_time()
    res = gd.fit(sub, model, sampler=sampler, seed=seed)
    cpu = (time.process_time() - c0) / sub.sizes["star"]
    snr = np.asarray(sub["snr"].values, float) if "snr" in sub else np.full(sub.sizes["star"], np.inf)
    teff = np.asarray(sub["label_teff"].values, float)
    grid = (teff >= 4000) & (teff <= 7000)  # the synthetic grid's Teff range
    sets = {"snr>30": snr > 30, "snr>30, ref Teff 4000-7000 K": (snr > 30) & grid, "ref Teff 4000-7000 K": grid,
            "all": np.isfinite(teff)}
    out: dict = {"n_stars": int(sub.sizes["star"]), "cpu_s_per_star": cpu,
                 "n_ok": int(sum(str(s) == "ok" for s in res["status"].values)), "sets": {}}
    names = [str(x) for x in res["label"].values]
    for name, sel in sets.items():
        out["sets"][name] = {
            lab: label_stats(res["median"].values[sel, j], sub[f"label_{lab}"].values[sel], res["p16"].values[sel, j],
                             res["p84"].values[sel, j])
            for j, lab in enumerate(names) if f"label_{lab}" in sub
        }
    ref = {lab: np.asarray(sub[f"label_{lab}"].values, float) for lab in names if f"label_{lab}" in sub}
    return {"stats": out, "results": res, "ref": ref, "snr": snr}


def scale_transfer(miles: dict, lamost: dict, lamost_miles_model: dict) -> dict:
    """Is the [Fe/H] (etc.) offset of the MILES model against LASP ours or a scale difference?

    On the LAMOST stars with LASP S/N > 30 inside the grid's Teff range, and on the MILES stars
    inside the same Teff / log g / [Fe/H] box, the synthetic model's median offset against each
    reference: offset(synth - LASP) - offset(synth - MILES literature) estimates the scale
    difference MILES literature - LASP on such stars (the synthetic model is the common ruler).
    The MILES model's own offset against LASP minus that scale difference is what the MILES model
    adds on survey spectra. Also: LAMOST labels of the synthetic model with its MILES offsets removed.
    ``by_class``: the same per stellar class of the reference labels (:func:`gsn_dask.validate.stellar_classes`,
    the classes of ``gsn-dask validate``'s class table)."""
    from gsn_dask.validate import stellar_classes

    sel_l = (lamost["snr"] > 30) & (lamost["ref"]["teff"] >= 4000) & (lamost["ref"]["teff"] <= 7000)
    box = {k: (np.nanmin(v[sel_l]), np.nanmax(v[sel_l])) for k, v in lamost["ref"].items()}
    sel_m = np.all([(miles["ref"][k] >= lo) & (miles["ref"][k] <= hi) for k, (lo, hi) in box.items()], axis=0)
    out = {"box": box, "n_lamost": int(sel_l.sum()), "n_miles": int(sel_m.sum()),
           "labels": _transfer(miles, lamost, lamost_miles_model, sel_l, sel_m, box), "by_class": {}}
    cls_l = stellar_classes(lamost["ref"]["teff"], lamost["ref"]["logg"])
    cls_m = stellar_classes(miles["ref"]["teff"], miles["ref"]["logg"])
    for cname in cls_l:
        cl, cm = sel_l & cls_l[cname], sel_m & cls_m[cname]
        out["by_class"][cname] = {"n_lamost": int(cl.sum()), "n_miles": int(cm.sum()),
                                  "labels": _transfer(miles, lamost, lamost_miles_model, cl, cm, box)}
    return out


def _transfer(miles: dict, lamost: dict, lamost_miles_model: dict, sel_l: np.ndarray, sel_m: np.ndarray,
              labels: Iterable[str]) -> dict:
    """:func:`scale_transfer`'s offsets per label for LAMOST stars ``sel_l`` and MILES stars ``sel_m``."""
    out = {}
    if not sel_l.any() or not sel_m.any():
        return out
    for lab in labels:
        def off(fit: dict, sel: np.ndarray) -> np.ndarray:
            return fit["results"]["median"].sel(label=lab).values[sel] - fit["ref"][lab][sel]

        d_sl, d_sm, d_ml = off(lamost, sel_l), off(miles, sel_m), off(lamost_miles_model, sel_l)
        scale = float(np.median(d_sl) - np.median(d_sm))
        cal = d_sl - np.median(d_sm)
        out[lab] = {
            "synth_minus_lasp": float(np.median(d_sl)), "synth_minus_miles_lit": float(np.median(d_sm)),
            "miles_lit_minus_lasp_scale": scale, "miles_model_minus_lasp": float(np.median(d_ml)),
            "miles_model_own_offset": float(np.median(d_ml) - scale),
            "synth_calibrated_to_miles_vs_lasp": {"bias": float(np.median(cal)),
                                                  "mad_std": float(1.4826 * np.median(np.abs(cal - np.median(cal))))},
        }
    return out


def hybrid_cube(miles_cube: Path, synth_cube: Path, miles_fit: dict, out: Path) -> tuple[Path, int]:
    """The hybrid training cube (:func:`gsn_dask.grid.hybrid.hybrid_cube`: every MILES star and every
    synthetic spectrum on their common pixels), a MILES star's [alpha/Fe] being the synthetic GSN's fit
    of it where its literature Teff is inside the grid's 4000-7000 K and the fit is ok (elsewhere the
    package's default, the Galactic pattern at its [Fe/H])."""
    from gsn_dask.cube import write_spectra
    from gsn_dask.grid.hybrid import hybrid_cube as join

    res = miles_fit["results"]
    stars = [str(x) for x in res["star"].values]
    m = gd.open_spectra(miles_cube).sel(star=stars).load()
    teff = miles_fit["ref"]["teff"]
    use_fit = np.array([str(x) == "ok" for x in res["status"].values]) & (teff >= 4000) & (teff <= 7000)
    m["label_alpha_fe"] = ("star", np.where(use_fit, res["median"].sel(label="alpha_fe").values, np.nan).astype(np.float32))
    ds = join(m, gd.open_spectra(synth_cube))
    write_spectra(ds, out, overwrite=True)
    return out, int(ds.sizes["star"])


def train_hybrid(miles_cube: Path, synth_cube: Path, miles_fit: dict, work: Path, overrides: dict) -> tuple:
    """Train the hybrid GSN (:func:`hybrid_cube`) as ``gsn-dask train`` does (its emulator error, label
    systematics and Kiel prior from the MILES stars)."""
    from gsn_dask.calibration import train_and_calibrate

    cube, n = hybrid_cube(miles_cube, synth_cube, miles_fit, work / "hybrid.zarr")
    t0 = time.perf_counter()
    model, _ = train_and_calibrate(cube, progress=False, **overrides)
    model.save(work / "hybrid_model")
    return model, n, time.perf_counter() - t0


def save_fits(fits: dict[str, dict], folder: Path) -> None:
    """Per star (CSV, one file per fitted sample): reference labels, status, median / p16 / p84."""
    import pandas as pd

    folder.mkdir(parents=True, exist_ok=True)
    for name, fit in fits.items():
        res = fit["results"]
        cols = {"star": [str(x) for x in res["star"].values], "status": [str(x) for x in res["status"].values],
                "snr": fit["snr"]}
        cols.update({f"ref_{k}": v for k, v in fit["ref"].items()})
        for q in ("median", "p16", "p84"):
            cols.update({f"{q}_{lab}": res[q].sel(label=lab).values for lab in (str(x) for x in res["label"].values)})
        slug = "".join(c if c.isalnum() else "_" for c in name.lower()).strip("_")
        pd.DataFrame(cols).to_csv(folder / f"fits_{slug}.csv", index=False, float_format="%.5g")


def alpha_pattern(fit: dict) -> dict:
    """Median [alpha/Fe] (and its spread) of metal-poor ([Fe/H]_ref < -1) and near-solar stars."""
    res, feh = fit["results"], fit["ref"]["feh"]
    ok = np.array([str(s) == "ok" for s in res["status"].values])
    alpha = res["median"].sel(label="alpha_fe").values
    out = {}
    for name, sel in (("feh < -1", feh < -1), ("-1 <= feh < -0.5", (feh >= -1) & (feh < -0.5)),
                      ("|feh| < 0.2", np.abs(feh) < 0.2)):
        a = alpha[ok & sel]
        out[name] = {"n": int(a.size), "median_alpha_fe": float(np.median(a)) if a.size else None,
                     "mad_std": float(1.4826 * np.median(np.abs(a - np.median(a)))) if a.size else None}
    return out


def alpha_figure(fits: dict[str, dict], path: Path) -> None:
    """[alpha/Fe] (ours) against [Fe/H] (reference) for each fitted sample."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from gsn_dask.labels import GALACTIC_ALPHA_PATTERN

    fig, axes = plt.subplots(1, len(fits), figsize=(5 * len(fits), 4), sharey=True, layout="constrained")
    for ax, (name, fit) in zip(np.atleast_1d(axes), fits.items()):
        res = fit["results"]
        ok = np.array([str(s) == "ok" for s in res["status"].values])
        a = res.sel(label="alpha_fe")
        x, y = fit["ref"]["feh"][ok], a["median"].values[ok]
        yerr = np.vstack([y - a["p16"].values[ok], a["p84"].values[ok] - y])
        ax.errorbar(x, y, yerr=yerr, fmt="o", ms=3, lw=0.5, alpha=0.6)
        ax.plot(*GALACTIC_ALPHA_PATTERN, "k--", lw=1, label="Galactic pattern (schematic)")
        ax.set_xlabel("[Fe/H] (reference)")
        ax.set_title(f"{name} (N = {int(ok.sum())})")
    np.atleast_1d(axes)[0].set_ylabel(r"[$\alpha$/Fe] (fitted)")
    np.atleast_1d(axes)[0].legend(fontsize=8)
    fig.savefig(path, dpi=130)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--miles-cube", type=Path, required=True)
    ap.add_argument("--lamost-cube", type=Path, required=True)
    ap.add_argument("--store", type=Path, default=None, help="grid synth store with spectra not yet shipped")
    ap.add_argument("--work", type=Path, required=True, help="folder for the cube and the model")
    ap.add_argument("--miles-model", type=Path, default=DEFAULT_MODEL_DIR)
    ap.add_argument("--model", type=Path, default=None,
                    help="a synthetic GSN already trained on this cube (e.g. WORK/model of an earlier run): skip training")
    ap.add_argument("--sampler", default="emcee")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training recipe override (JSON)")
    ap.add_argument("--save", type=Path, default=OUT)
    ap.add_argument("--hybrid", action="store_true",
                    help="also train and fit the hybrid GSN (MILES + synthetic spectra, MILES alpha_fe from the synthetic fits)")
    args = ap.parse_args(argv)
    from gsn_dask.calibration import train_and_calibrate

    args.work.mkdir(parents=True, exist_ok=True)
    cube, n_spec = build_cube(args.store, args.work / "synth.zarr")
    overrides = {k: json.loads(v) for k, v in (kv.split("=", 1) for kv in args.set)}
    t0 = time.perf_counter()
    if args.model is not None:
        model = gd.load_model(args.model)
    else:
        model, _ = train_and_calibrate(cube, progress=False, **overrides)
        model.save(args.work / "model")
    train_s = time.perf_counter() - t0
    cv = {k: v for k, v in model.meta.get("cv", {}).items() if k != "folds"}
    print(f"{'loaded' if args.model else 'trained'} on {n_spec} synthetic spectra in {train_s:.0f} s; CV: {cv}")
    miles_model = gd.load_model(args.miles_model)
    fits = {"MILES (literature)": fit_against(args.miles_cube, model, args.sampler, args.seed),
            "LAMOST (LASP)": fit_against(args.lamost_cube, model, args.sampler, args.seed)}
    lamost_miles = fit_against(args.lamost_cube, miles_model, args.sampler, args.seed)
    out = {
        "n_synthetic_spectra": n_spec, "train_wall_s": None if args.model else train_s, "recipe_overrides": overrides,
        "model": str(args.model or args.work / "model"), "model_id": model.model_id,
        "emulator_cv": cv, "label_systematics": (model.meta.get("label_systematics") or {}).get("sigma"),
        "sampler": args.sampler, "seed": args.seed,
        "synthetic_model": {k: v["stats"] for k, v in fits.items()},
        "miles_model_on_lamost": lamost_miles["stats"],
        "alpha_pattern": {k: alpha_pattern(v) for k, v in fits.items()},
        "scale_transfer": scale_transfer(fits["MILES (literature)"], fits["LAMOST (LASP)"], lamost_miles),
    }
    if args.hybrid:
        hyb, n_hyb, hyb_s = train_hybrid(args.miles_cube, cube, fits["MILES (literature)"], args.work, overrides)
        lamost_hyb = fit_against(args.lamost_cube, hyb, args.sampler, args.seed)
        fits["LAMOST (LASP), hybrid GSN"] = lamost_hyb
        out["hybrid_model_on_lamost"] = {"n_training_spectra": n_hyb, "train_wall_s": hyb_s,
                                         "label_systematics": (hyb.meta.get("label_systematics") or {}).get("sigma"),
                                         **lamost_hyb["stats"], "alpha_pattern": alpha_pattern(lamost_hyb)}
    print(json.dumps({k: v for k, v in out.items() if k != "emulator_cv"}, indent=1, default=str))
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(out, indent=1, default=str))
    alpha_figure(fits, args.save.with_name(args.save.stem + "_alpha.png"))
    save_fits({**fits, "LAMOST (LASP), MILES GSN": lamost_miles}, args.work)
    return 0


if __name__ == "__main__":
    sys.exit(main())
