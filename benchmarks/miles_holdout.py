"""The demo's MILES hold-out, in one process, with fit settings to compare (issue 15's guard: a lever
that helps on LAMOST must not make the MILES hold-out worse).

Builds what ``gsn-dask demo`` builds (the hold-out split, the demo's cached model, or trains it
once with ``gsn-dask train``'s recipe; the LAMOST-like observations at S/N 30 and 100), fits them
in this process (``gd.fit``: the same numbers as the demo's Dask run) with ``--sampler`` and
``--set`` FitConfig settings, validates against the MILES literature labels and saves, per tag,
bias / 1.4826 MAD / in-68% per label for all observations and per S/N bin:

    python benchmarks/miles_holdout.py --tag default
    python benchmarks/miles_holdout.py --tag sky-arms4 --set mask_sky=true --set arm_split_aa=5900 --set cheb_degree=4
    python benchmarks/miles_holdout.py --tag train-seed1 --train-seed 1     # the demo's recipe, training seed 1
    python benchmarks/miles_holdout.py --tag ensemble3 --train-set ensemble=3

Saves ``benchmarks/results/miles_holdout.json`` (other tags are kept).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

import gsn_dask as gd
from _common import add_fit_run_args, fit_settings, label_stats, save_tagged
from gsn_dask import demo

OUT = Path(__file__).resolve().parent / "results" / "miles_holdout.json"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="model dir (default: the demo's, trained if not cached)")
    ap.add_argument("--train-seed", type=int, default=0,
                    help="seed of the demo's training (default 0, the demo's model; others are trained and cached "
                         "like the demo's): the training's share of the hold-out numbers")
    ap.add_argument("--train-set", action="append", default=[], metavar="KEY=VALUE",
                    help="training recipe setting (JSON value) on top of the demo's, e.g. ensemble=3")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads for a training (default 1: the numbers of the other benchmarks' "
                         "trainings; a training's result depends on its thread count)")
    add_fit_run_args(ap, OUT)
    args = ap.parse_args(argv)
    settings = fit_settings(args.set)
    full = gd.open_spectra(demo.miles_training_cube(progress=False)).load()
    hold = demo.holdout_mask(full)
    stars = [str(s) for s in np.asarray(full["star"].values)[hold]]
    recipe = demo.DemoSettings().recipe.replace(**fit_settings(args.train_set))
    model_dir = args.model or demo._model(full.isel(star=np.flatnonzero(~hold)),
                                          demo.DemoSettings(recipe=recipe, progress=False, seed=args.train_seed,
                                                            threads=args.threads))
    model = gd.load_model(model_dir)
    obs = demo.make_observations(full, stars, seed=args.seed + 2024)
    t0, c0 = time.perf_counter(), time.process_time()
    res = gd.fit(obs, model, sampler=args.sampler, config=settings, seed=args.seed)
    cpu = time.process_time() - c0
    snr = np.asarray(obs["snr"].values, float)
    out: dict = {"model": str(model_dir), "model_id": model.model_id, "train_seed": None if args.model else args.train_seed,
                 "train_settings": None if args.model else fit_settings(args.train_set),
                 "train_threads": None if args.model else args.threads,
                 "sampler": args.sampler, "settings": settings,
                 "n_obs": int(obs.sizes["star"]), "n_ok": int(sum(str(s) == "ok" for s in res["status"].values)),
                 "cpu_s_per_star": cpu / obs.sizes["star"], "wall_s": time.perf_counter() - t0, "sets": {}}
    for name, sel in [("all", np.ones_like(snr, bool)), *[(f"S/N {s:g}", snr == s) for s in demo.DEMO_SNR]]:
        row = {}
        for j, lab in enumerate(model.label_names):
            if f"label_{lab}" not in obs:  # e.g. alpha_fe of a four-label model: MILES has none
                continue
            med, lo, hi = (np.asarray(res[v].values, float)[sel, j] for v in ("median", "p16", "p84"))
            row[lab] = label_stats(med, np.asarray(obs[f"label_{lab}"].values, float)[sel], lo, hi)
        out["sets"][name] = row
        print(f"[{args.tag}] {name} (N={next(iter(row.values()))['n']}): " + " | ".join(
            f"{lab} {s['bias']:+.3g} / {s['mad_std']:.3g} / in68 {100 * s['in68']:.0f}%" for lab, s in row.items()))
    print(f"[{args.tag}] {out['cpu_s_per_star']:.3f} CPU s per spectrum, {out['n_ok']}/{out['n_obs']} ok")
    save_tagged(args.save, args.tag, out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
