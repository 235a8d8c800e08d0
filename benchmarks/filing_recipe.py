"""Issue 15's MILES hold-out reference against the recipe of its day, seed by seed.

The issue asks that the demo's hold-out stay "no worse than today: 122 K / 0.28 / 0.137 dex, in68
66 / 67 / 66%" -- one training seed of the demo as it was when the issue was filed. A training's
hold-out numbers are a draw (``network_variance.py``), so this script runs that demo itself (commit
:data:`FILING_COMMIT`, checked out as a git worktree, unchanged, each seed in its own subprocess with
one torch thread and its own XDG cache), reads each seed's hold-out fit from the files it wrote, and
compares the six means (three 1.4826 MAD, three in68) with today's default's seeds, read from the
``systematics_target.py`` result files that decided it.

    python benchmarks/filing_recipe.py --work W --seeds 0 1 2 3 4 5 --jobs 2 \\
        --today benchmarks/results/systematics_widen.json benchmarks/results/systematics_widen_345.json

Both sides are scored by the same code (``_common.label_stats`` on the posterior median and [p16,
p84] of all 210 observations). The filing-time demo draws its observations with ``seed + 2024``;
today's hold-out always uses seed 0's, so the old side also carries the observations' noise draw.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from _common import ROOT, label_stats

FILING_COMMIT = "c71e0bd3d5aa91cac4da5e7c2cbeba21c288794d"
LABELS = ("teff", "logg", "feh")
SAVE = ROOT / "benchmarks" / "results" / "filing_recipe.json"


def ensure_worktree(path: Path, commit: str = FILING_COMMIT) -> Path:
    """A detached git worktree of ``commit`` at ``path`` (made if missing; refused if it holds another commit)."""
    if not (path / ".git").exists():
        subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(path), commit], check=True)
    head = subprocess.run(["git", "-C", str(path), "rev-parse", "HEAD"], check=True, capture_output=True,
                          text=True).stdout.strip()
    if head != commit:
        raise SystemExit(f"{path} holds {head}, not the filing-time commit {commit}")
    return path


def run_demo_seed(worktree: Path, work: Path, seed: int, workers: int) -> Path:
    """Run the worktree's ``gsn-dask demo --seed SEED`` into ``work/seedN`` (skipped when its
    SUMMARY.md exists). One torch thread; the XDG cache ``work/xdg`` is shared by the seeds."""
    out = work / f"seed{seed}"
    if (out / "SUMMARY.md").exists():
        return out
    env = {**os.environ, "XDG_CACHE_HOME": str(work / "xdg"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONPATH": str(worktree)}
    cmd = [sys.executable, "-m", "gsn_dask", "demo", "--out", str(out), "--seed", str(seed),
           "--workers", str(workers), "--no-progress"]
    t0 = time.perf_counter()
    with open(work / f"seed{seed}.log", "w") as log:
        subprocess.run(cmd, cwd=worktree, env=env, stdout=log, stderr=subprocess.STDOUT, check=True)
    print(f"seed {seed}: filing-time demo done in {time.perf_counter() - t0:.0f} s", flush=True)
    return out


def holdout_stats(out: Path) -> dict[str, dict[str, float]]:
    """Per label, :func:`_common.label_stats` of a demo folder's hold-out fit (results and
    observations zarr stores, read with xarray alone)."""
    import xarray as xr

    res = xr.open_zarr(out / "miles_holdout_results.zarr", consolidated=False)
    obs = xr.open_zarr(out / "miles_holdout_obs.zarr", consolidated=False)
    if list(res["star"].values) != list(obs["star"].values):
        raise ValueError(f"{out}: results and observations hold different stars")
    return {lab: label_stats(res["median"].sel(label=lab).values, obs[f"label_{lab}"].values,
                             res["p16"].sel(label=lab).values, res["p84"].sel(label=lab).values)
            for lab in LABELS}


def today_seeds(files: list[Path], variant: str) -> dict[int, dict[str, dict[str, float]]]:
    """Today's default on the hold-out, per training seed, from ``systematics_target.py`` results."""
    out: dict[int, dict] = {}
    for f in files:
        for seed, row in json.loads(Path(f).read_text())["per_seed"].items():
            out[int(seed)] = row[variant]["hold-out"]
    return out


def compare(old: dict[int, dict], new: dict[int, dict]) -> dict[str, dict[str, dict[str, float]]]:
    """Per label and statistic (mad_std, in68): the two seed means, today − filing, its Welch
    standard error and whether today is worse (larger scatter, lower coverage)."""
    res: dict[str, dict] = {}
    for lab in LABELS:
        res[lab] = {}
        for st in ("mad_std", "in68"):
            a = np.array([old[s][lab][st] for s in sorted(old)])
            b = np.array([new[s][lab][st] for s in sorted(new)])
            diff = float(b.mean() - a.mean())
            se = float(np.sqrt(a.var(ddof=1) / a.size + b.var(ddof=1) / b.size)) if min(a.size, b.size) > 1 else np.nan
            worse = diff > 0 if st == "mad_std" else diff < 0
            res[lab][st] = {"filing": float(a.mean()), "today": float(b.mean()), "diff": diff, "se": se,
                            "today_worse": bool(worse)}
    return res


def print_report(old: dict[int, dict], new: dict[int, dict], cmp_: dict) -> None:
    """Seed table of both recipes and the comparison of the means."""
    def row(name: str, r: dict) -> str:
        return (f"| {name} | " + " | ".join(f"{r[lab]['mad_std']:.4g}" for lab in LABELS) + " | "
                + " / ".join(f"{100 * r[lab]['in68']:.1f}" for lab in LABELS) + " |")

    print("| hold-out | Teff | log g | [Fe/H] | in68 % |\n|---|---|---|---|---|")
    for s in sorted(old):
        print(row(f"filing-time demo, seed {s}", old[s]))
    for s in sorted(new):
        print(row(f"today's default, seed {s}", new[s]))
    for lab in LABELS:
        for st, c in cmp_[lab].items():
            print(f"{lab} {st}: filing {c['filing']:.4g}, today {c['today']:.4g}, diff {c['diff']:+.4g} "
                  f"+- {c['se']:.2g}{'  (today worse)' if c['today_worse'] else ''}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="folder for the worktree's demo runs and its cache")
    ap.add_argument("--worktree", type=Path, default=None,
                    help=f"git worktree of {FILING_COMMIT[:7]} (default WORK/filing_worktree, made if missing)")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0], help="demo seeds (default 0, the issue's)")
    ap.add_argument("--jobs", type=int, default=1, help="demo runs side by side (default 1)")
    ap.add_argument("--workers", type=int, default=1, help="Dask workers per demo run (default 1)")
    ap.add_argument("--today", type=Path, nargs="+", required=True,
                    help="systematics_target.py result files with today's default per seed")
    ap.add_argument("--variant", default="widen", help="today's default's variant name in those files")
    ap.add_argument("--save", type=Path, default=SAVE, help=f"result JSON (default {SAVE.name})")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.work.mkdir(parents=True, exist_ok=True)
    tree = ensure_worktree(args.worktree or args.work / "filing_worktree")
    seeds = list(args.seeds)
    if not any((args.work / "xdg").glob("gsn-dask/miles_train_*.zarr")):  # the first run builds the shared cube
        run_demo_seed(tree, args.work, seeds.pop(0), args.workers)
    with ThreadPoolExecutor(max(1, args.jobs)) as pool:
        list(pool.map(lambda s: run_demo_seed(tree, args.work, s, args.workers), seeds))
    old = {s: holdout_stats(args.work / f"seed{s}") for s in args.seeds}
    new = today_seeds(args.today, args.variant)
    cmp_ = compare(old, new)
    print_report(old, new, cmp_)
    args.save.write_text(json.dumps({
        "command": "python benchmarks/filing_recipe.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "filing_commit": FILING_COMMIT, "filing_seeds": {str(s): v for s, v in old.items()},
        "today_seeds": {str(s): v for s, v in new.items()}, "compare": cmp_}, indent=1) + "\n")
    print(f"saved {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
