"""A training option against the default, paired by training seed, on both of issue 15's test sets.

One training differs from another by 10-30 K and 0.02-0.05 dex on these small test sets, so a
training option is judged on several seeds, each paired with the default's training of the same
seed. Reads what ``readme_path_seeds.py`` (LAMOST DR1 vs LASP) and ``miles_holdout.py`` (the demo's
MILES hold-out) saved, and prints per test set, label and statistic (1.4826 MAD, |median bias|,
reference inside [p16, p84]) the mean over seeds of the default and of the option, and the mean
paired difference (option - default) with its standard error (std / sqrt(n_seeds)):

    python benchmarks/seed_compare.py --name teff-feh-screen \
        --lamost-base results/readme_path_seeds.json results/readme_path_seeds_345.json \
        --lamost-option results/readme_path_seeds_outlier_teff_feh.json results/readme_path_seeds_outlier_teff_feh_345.json \
        --holdout-base emcee-walkers32 emcee-train-seed1 emcee-train-seed2 \
        --holdout-option emcee-outlier-z4-teff-feh-seed0 emcee-outlier-z4-teff-feh-seed1 emcee-outlier-z4-teff-feh-seed2

Hold-out tags are looked up in ``results/miles_holdout.json``; a tag's training seed is its
``train_seed`` (none recorded: the demo's model, seed 0). Only seeds that both arms have are
compared. Saves ``benchmarks/results/seed_compare.json`` (one entry per ``--name``).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from _common import save_tagged

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "seed_compare.json"
HOLDOUT = HERE / "results" / "miles_holdout.json"
STATS = ("mad_std", "abs_bias", "in68")


def _stats(row: dict) -> dict[str, float]:
    """The compared statistics of one label's record (``label_stats``)."""
    return {"mad_std": float(row["mad_std"]), "abs_bias": abs(float(row["bias"])), "in68": float(row["in68"])}


def lamost_runs(files: list[Path]) -> dict[int, dict[str, dict[str, dict[str, float]]]]:
    """seed -> set ('snrg>30', 'all') -> label -> statistics, from readme_path_seeds.py files."""
    out: dict[int, dict] = {}
    for f in files:
        for seed, rec in json.loads(f.read_text())["per_seed"].items():
            out[int(seed)] = {s: {lab: _stats(v) for lab, v in rec["labels"][s].items()} for s in ("snrg>30", "all")}
    return out


def holdout_runs(tags: list[str], path: Path = HOLDOUT) -> dict[int, dict[str, dict[str, dict[str, float]]]]:
    """seed -> {'hold-out': label -> statistics}, from miles_holdout.py's tags."""
    allr = json.loads(path.read_text())
    missing = [t for t in tags if t not in allr]
    if missing:
        raise SystemExit(f"no such tag in {path}: {', '.join(missing)}")
    return {int(allr[t].get("train_seed") or 0): {"hold-out": {lab: _stats(v) for lab, v in allr[t]["sets"]["all"].items()}}
            for t in tags}


def paired(base: dict[int, dict], option: dict[int, dict]) -> dict[str, dict]:
    """set -> label -> stat -> {base, option, diff, diff_se, n}: means over the seeds both arms have."""
    seeds = sorted(set(base) & set(option))
    if not seeds:
        raise SystemExit("the two arms share no training seed")
    out: dict[str, dict] = {"seeds": seeds}
    for sel in base[seeds[0]]:
        for lab in base[seeds[0]][sel]:
            for st in STATS:
                b = np.array([base[s][sel][lab][st] for s in seeds])
                o = np.array([option[s][sel][lab][st] for s in seeds])
                d = o - b
                se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else float("nan")
                out.setdefault(sel, {}).setdefault(lab, {})[st] = {
                    "base": float(b.mean()), "option": float(o.mean()), "diff": float(d.mean()), "diff_se": se,
                    "base_per_seed": b.tolist(), "option_per_seed": o.tolist()}
    return out


def _fmt(lab: str, st: str, v: float) -> str:
    if st == "in68":
        return f"{100 * v:.0f}%"
    return f"{v:.0f}" if lab == "teff" else f"{v:.3f}"


def print_table(res: dict[str, dict]) -> None:
    """Markdown: one row per set and label, columns default / option / paired difference per statistic."""
    print("| set | label | seeds | " + " | ".join(f"{st}: default / option / diff ± se" for st in STATS) + " |")
    print("|---|---|---|" + "---|" * len(STATS))
    for sel, labs in res.items():
        if sel == "seeds":
            continue
        for lab, sts in labs.items():
            cells = []
            for st in STATS:
                v = sts[st]
                scale = 100 if st == "in68" else 1
                dig = 0 if (lab == "teff" or st == "in68") else 3
                cells.append(f"{_fmt(lab, st, v['base'])} / {_fmt(lab, st, v['option'])} / "
                             f"{scale * v['diff']:+.{dig}f} ± {scale * v['diff_se']:.{dig}f}")
            print(f"| {sel} | {lab} | {len(res['seeds'])} | " + " | ".join(cells) + " |")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--name", required=True, help="name of this comparison in the results file")
    ap.add_argument("--lamost-base", type=Path, nargs="+", required=True, help="readme_path_seeds.py files, default recipe")
    ap.add_argument("--lamost-option", type=Path, nargs="+", required=True, help="readme_path_seeds.py files, the option")
    ap.add_argument("--holdout-base", nargs="+", required=True, help="miles_holdout.json tags, default recipe")
    ap.add_argument("--holdout-option", nargs="+", required=True, help="miles_holdout.json tags, the option")
    ap.add_argument("--holdout-file", type=Path, default=HOLDOUT)
    ap.add_argument("--save", type=Path, default=OUT)
    a = ap.parse_args(argv)
    res = {"lamost": paired(lamost_runs(a.lamost_base), lamost_runs(a.lamost_option)),
           "holdout": paired(holdout_runs(a.holdout_base, a.holdout_file), holdout_runs(a.holdout_option, a.holdout_file))}
    for k in ("lamost", "holdout"):
        print(f"\n{k} (seeds {res[k]['seeds']})")
        print_table(res[k])
    inputs = {k: [str(x) for x in v] if isinstance(v, list) else str(v) for k, v in vars(a).items() if k not in ("save", "name")}
    save_tagged(a.save, a.name, {"inputs": inputs, **res})
    return 0


if __name__ == "__main__":
    sys.exit(main())
