"""Networks averaged in label space, on the demo's MILES hold-out (issue 15, a prototype measurement).

``network_variance.py`` found that averaging the fitted labels of a training's three fold models
reads the hold-out's library spectra better than the final model does (log g 0.283 / 0.227 / 0.256
against 0.327 / 0.284 / 0.309 dex on seeds 0 / 1 / 2, MAP, no floor or prior), while averaging
networks in spectrum space (``--distil``, ``--ensemble``) gains less. This asks whether that survives
the demo's whole fit: the LAMOST-like observations at S/N 30 and 100, the model's label-systematics
floor and Kiel prior (``gd.fit``, the same reporting for every network: each fold model gets the
final model's floor and prior). Per seed it trains the demo's split once (``train_and_calibrate``,
one thread), fits the observations with the final model and with each fold model, and combines the
fold models' reported labels as an equal mixture: median = mean of the members' medians, 68%
half-width = sqrt(mean of the members' squared half-widths + variance of their medians) (the law of
total variance; the members' intervals symmetrised). With ``--finals M`` also M final networks (the
final model and M - 1 trained as it was, with the seeds of ensemble members) and their mixture, the
same members at full strength. Prints and saves bias / 1.4826 MAD / in68 per label for each network
and mixture:

    python benchmarks/label_ensemble.py --seeds 0 1 2 --work W --sampler map

and the same networks on LAMOST DR1 against LASP, after ``readme_path.py --model W/seedN/NET --work
L/seedN/NET --cube lamost.zarr`` for NET = final, fold0, fold1, fold2 (each network with its own
survey error and the README path's emcee fit):

    python benchmarks/label_ensemble.py --seeds 0 1 2 --work W --lamost-work L --lamost-cube lamost.zarr

Saves ``benchmarks/results/label_ensemble.json`` (seeds merged). A prototype: the package has no
label-space ensemble; the fit cost of M members is M fits.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from _common import add_seed_run_args, demo_holdout_observations, label_stats, run_seeds
from network_variance import final_inputs

OUT = Path(__file__).resolve().parent / "results" / "label_ensemble.json"


def mixture(meds: np.ndarray, los: np.ndarray, his: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, p16, p84) of an equal mixture of members (axis 0) from their medians and intervals:
    the mean of the medians and sqrt(mean half-width^2 + variance of the medians) either side."""
    med = meds.mean(axis=0)
    half = np.sqrt(np.mean(((his - los) / 2.0) ** 2, axis=0) + meds.var(axis=0))
    return med, med - half, med + half


def widened(med: np.ndarray, lo: np.ndarray, hi: np.ndarray, meds: np.ndarray) -> tuple[np.ndarray, ...]:
    """(median, p16, p84): one network's median, each side widened in quadrature by the standard
    deviation of the members' medians ``meds`` (members on axis 0)."""
    sd = meds.std(axis=0)
    return med, med - np.hypot(med - lo, sd), med + np.hypot(hi - med, sd)


def stacked(members: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(medians, p16s, p84s) of members given as (median, p16, p84), each with the members on axis 0."""
    return tuple(np.stack([m[i] for m in members]) for i in range(3))


def print_rows(title: str, rows: dict) -> None:
    """One line per network or combination: bias / 1.4826 MAD / in68 per label."""
    print(f"{title}: bias / 1.4826 MAD / in68")
    for name, row in rows.items():
        print(f"  {name:48s} " + " | ".join(
            f"{n} {s['bias']:+.3g} / {s['mad_std']:.3g} / {100 * s['in68']:.0f}%" for n, s in row.items()))


def combinations(final: tuple[np.ndarray, ...], folds: list[tuple[np.ndarray, ...]]) -> dict[str, tuple]:
    """(median, p16, p84) per name: the final model, each fold model, the mixture of the fold models,
    of final and fold models, and the final model widened by the fold models' spread."""
    spread = stacked(folds)
    return {"final model": final, **{f"fold model {k}": f for k, f in enumerate(folds)},
            "mixture of the fold models": mixture(*spread),
            "mixture of final and fold models": mixture(*stacked([final, *folds])),
            "final model, widened by the fold models' spread": widened(*final, spread[0])}


def stats(names: list[str], med: np.ndarray, lo: np.ndarray, hi: np.ndarray, truth: np.ndarray) -> dict:
    return {n: label_stats(med[:, k], truth[:, k], lo[:, k], hi[:, k]) for k, n in enumerate(names)}


def with_reporting(member, model, path: Path):  # noqa: ANN001, ANN201
    """``member`` (a GSN) saved to ``path`` with ``model``'s label systematics and Kiel prior, loaded back."""
    import gsn_dask as gd

    member.meta.update(label_systematics=model.meta["label_systematics"], label_prior=model.meta["label_prior"])
    member.save(path)  # under the id of what it now is (the prior is part of it)
    return gd.load_model(path)


def more_finals(model, cv, seed: int, threads: int, m: int) -> list:  # noqa: ANN001
    """The final network's m - 1 siblings: trained as the final refit is (its labels, weights and
    epochs), with the seeds ``train_gsn`` gives ensemble members 1 .. m - 1, and its emulator error."""
    from gsn_dask.emulator_torch import _deterministic, _train_members, _with_error

    recipe, _, arrays, every, epochs, run = final_inputs(model, cv)
    out = []
    with _deterministic(seed, threads):
        for e in range(1, m):
            g, _ = _train_members(arrays, every, None, recipe=recipe.replace(ensemble=1, distil=1), epochs=epochs,
                                  patience=0, seed0=seed + 7919 * e, desc="final", **run)
            out.append(_with_error(g, model.emulator_error))
    return out


def one_seed(seed: int, threads: int, sampler: str, work: Path, finals: int = 0) -> dict:
    """Train the demo's split with ``seed``; the hold-out through the final model, each fold model
    and their label-space mixture (and, with ``finals`` = M > 1, the mixture of M final networks)."""
    import gsn_dask as gd
    from gsn_dask import demo
    from gsn_dask.calibration import train_and_calibrate

    full = gd.open_spectra(demo.miles_training_cube(progress=False)).load()
    hold = demo.holdout_mask(full)
    t0 = time.perf_counter()
    here = work / f"seed{seed}"
    saved = [here / "final", *sorted(here.glob("fold*")), *[here / f"final{e}" for e in range(1, finals)]]
    if len(saved) >= 4 and all((d / "model.json").exists() for d in saved):  # done before: the saved networks
        model, members = gd.load_model(here / "final"), [gd.load_model(d) for d in sorted(here.glob("fold*"))]
        siblings = [gd.load_model(here / f"final{e}") for e in range(1, finals)]
    else:
        model, rep = train_and_calibrate(full.isel(star=np.flatnonzero(~hold)), threads=threads, progress=False,
                                         seed=seed)
        members = [with_reporting(fold, model, here / f"fold{k}")  # the final model's reporting
                   for k, fold in enumerate(rep["cv_folds"].models)]
        siblings = [with_reporting(g, model, here / f"final{e + 1}")
                    for e, g in enumerate(more_finals(model, rep["cv_folds"], seed, threads, finals))]
        model.save(here / "final")
        model = gd.load_model(here / "final")
    names = list(model.label_names)
    obs, truth = demo_holdout_observations(full, names)

    def fitted(m) -> tuple[np.ndarray, np.ndarray, np.ndarray, float]:  # noqa: ANN001 - a GSN
        c0 = time.process_time()
        r = gd.fit(obs, m, sampler=sampler, seed=0)
        return (*(np.asarray(r[v].values, float) for v in ("median", "p16", "p84")),
                (time.process_time() - c0) / obs.sizes["star"])

    final = fitted(model)
    folds = [fitted(m) for m in members]
    rows = {name: stats(names, *c, truth) for name, c in combinations(final[:3], [f[:3] for f in folds]).items()}
    if siblings:
        fin = [final, *[fitted(m) for m in siblings]]
        for e, f in enumerate(fin[1:]):
            rows[f"final network {e + 1}"] = stats(names, *f[:3], truth)
        rows[f"mixture of {len(fin)} final networks"] = stats(names, *mixture(*stacked([f[:3] for f in fin])), truth)
    return {"seed": seed, "model_id": model.model_id, "sampler": sampler, "n_obs": int(obs.sizes["star"]),
            "cpu_s_per_star": {"final": round(final[3], 4), "fold_mean": round(float(np.mean([f[3] for f in folds])), 4)},
            "rows": rows, "wall_s": round(time.perf_counter() - t0, 1)}


def lamost_rows(here: Path, cube: Path) -> dict:
    """The same networks on LAMOST DR1 against LASP: each network's README-path results store
    (``readme_path.py --model NET --work here/NET``: its own survey error, emcee) combined as on the
    hold-out, for LASP S/N_g > 30 and all strict matches."""
    import gsn_dask as gd

    sub = gd.open_spectra(cube)
    names = ["teff", "logg", "feh"]
    ref = np.stack([np.asarray(sub[f"label_{n}"].values, float) for n in names], axis=1)
    snr = np.asarray(sub["snr"].values, float)

    def read(net: str) -> tuple[np.ndarray, ...]:
        res = gd.open_results(here / net / "results.zarr").load()
        idx = [list(map(str, res["label"].values)).index(n) for n in names]
        return tuple(np.asarray(res[v].values, float)[:, idx] for v in ("median", "p16", "p84"))

    combos = combinations(read("final"), [read(d.name) for d in sorted(here.glob("fold*"))])
    ok = np.isfinite(ref[:, 0])
    return {set_: {name: stats(names, *(a[sel] for a in c), ref[sel]) for name, c in combos.items()}
            for set_, sel in (("snrg>30", ok & (snr > 30)), ("all", ok))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_seed_run_args(ap, OUT, "map", "folder for the member models (a seed whose networks are there is not trained again)")
    ap.add_argument("--finals", type=int, default=0, metavar="M",
                    help="also M final networks (the final model and M - 1 siblings trained as it was) and their mixture")
    ap.add_argument("--lamost-work", type=Path, default=None, metavar="DIR",
                    help="instead of the hold-out: combine the networks' LAMOST fits, DIR/seedN/{final,foldK}/ "
                         "from readme_path.py --model (needs --lamost-cube)")
    ap.add_argument("--lamost-cube", type=Path, default=None, help="the ingested LAMOST cube with LASP labels")
    args = ap.parse_args(argv)
    if args.lamost_work is not None:
        saved = json.loads(args.save.read_text()) if args.save.exists() else {}
        lam = saved.get("lamost", {})
        for seed in args.seeds:
            lam[str(seed)] = lamost_rows(args.lamost_work / f"seed{seed}", args.lamost_cube)
            for set_, rows in lam[str(seed)].items():
                print_rows(f"seed {seed}, LAMOST {set_}", rows)
        args.save.write_text(json.dumps({**saved, "lamost": lam, "lamost_command": "python benchmarks/label_ensemble.py "
                                         + " ".join(sys.argv[1:])}, indent=1) + "\n")
        print(f"saved {args.save}")
        return 0
    run_seeds(args.save, "label_ensemble.py", args.seeds,
              args.sampler + "-{seed}" + (f"-finals{args.finals}" if args.finals > 1 else ""),
              lambda seed: one_seed(seed, args.threads, args.sampler, args.work, args.finals), print_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
