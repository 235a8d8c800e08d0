"""How much of the README path's LAMOST-vs-LASP numbers is the training seed (issue 15).

The same training cube (the MILES cube of the README path, or a hybrid cube), ``gsn-dask train --seed N`` for each ``--seeds``, then the README
path's fit steps with each model (``readme_path.py --model``: quick map look, ``diagnose
--write-model``, emcee fit, validate) on the same LAMOST cube. Prints and saves, per seed, bias /
1.4826 MAD / LASP inside [p16, p84] for LASP S/N_g > 30 and all strict matches, and per label the
spread (min, max, standard deviation) over the seeds: the size of a change that one training
cannot resolve on these 49 stars.

    python benchmarks/readme_path_seeds.py --miles-cube miles_train.zarr --lamost-cube lamost.zarr \
        --lamost ../shared/data/lamost --work W --seeds 0 1 2

A training option for every seed (written with ``=``, so that it is not read as this script's own):

    python benchmarks/readme_path_seeds.py ... --train-args=--label-outlier-z=4 --save results/readme_path_seeds_outlier_z4.json

Saves ``benchmarks/results/readme_path_seeds.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "readme_path_seeds.json"


def one_seed(seed: int, a: argparse.Namespace) -> dict:
    """Train with ``seed`` and run the README path's fit steps; readme_path.py's record."""
    w = a.work.resolve() / f"seed{seed}"
    model, save = w / "miles_model", w / "readme_path.json"
    if not (model / "model.json").exists():
        w.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "gsn_dask", "train", str(a.train_cube), "--out", str(model),
                        "--seed", str(seed), "--no-progress", "--no-figure", *a.train_args], check=True, stdout=subprocess.DEVNULL)
    if not save.exists():
        subprocess.run([sys.executable, str(HERE / "readme_path.py"), "--work", str(w / "path"), "--lamost", str(a.lamost),
                        "--model", str(model), "--cube", str(a.lamost_cube), "--workers", "1", "--no-plain-fit",
                        "--save", str(save)], check=True, cwd=HERE)
    return json.loads(save.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--train-cube", "--miles-cube", dest="train_cube", type=Path, required=True,
                    help="training cube: gsn-dask grid miles (the README path) or grid hybrid")
    ap.add_argument("--lamost-cube", type=Path, required=True, help="ingested LAMOST cube with LASP labels")
    ap.add_argument("--lamost", type=Path, required=True, help="folder of LAMOST files with dr1_labels_lasp.csv")
    ap.add_argument("--work", type=Path, required=True, help="work folder (a seed already done there is reused)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--save", type=Path, default=OUT)
    ap.add_argument("--train-args", nargs="*", default=[], metavar="ARG", help="more gsn-dask train options")
    a = ap.parse_args(argv)
    runs = {s: one_seed(s, a) for s in a.seeds}
    out: dict = {"seeds": a.seeds, "train_cube": str(a.train_cube), "train_args": a.train_args, "per_seed": {}, "spread": {}}
    for s, r in runs.items():
        out["per_seed"][str(s)] = {"labels": r["labels_with_survey_error"], "fit_cpu_s_per_star": r["fit_cpu_s_per_star"]}
        row = r["labels_with_survey_error"]["snrg>30"]
        print(f"seed {s} S/N>30: " + " | ".join(f"{k} {v['bias']:+.3g} / {v['mad_std']:.3g} / in68 {100 * v['in68']:.0f}%"
                                              for k, v in row.items()))
    for sel in ("snrg>30", "all"):
        out["spread"][sel] = {}
        for lab in runs[a.seeds[0]]["labels_with_survey_error"][sel]:
            for stat in ("bias", "mad_std", "in68"):
                v = np.array([runs[s]["labels_with_survey_error"][sel][lab][stat] for s in a.seeds], float)
                out["spread"][sel].setdefault(lab, {})[stat] = {"min": float(v.min()), "max": float(v.max()),
                                                                "std": float(v.std(ddof=1)) if v.size > 1 else 0.0}
    for lab, st in out["spread"]["snrg>30"].items():
        print(f"S/N>30 {lab}: MAD {st['mad_std']['min']:.3g}..{st['mad_std']['max']:.3g} (std {st['mad_std']['std']:.3g}), "
              f"bias {st['bias']['min']:+.3g}..{st['bias']['max']:+.3g}, in68 {st['in68']['min']:.2f}..{st['in68']['max']:.2f}")
    a.save.parent.mkdir(parents=True, exist_ok=True)
    a.save.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
