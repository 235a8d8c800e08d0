"""Identical numbers before and after a refactor: fit the ingested LAMOST cube with both samplers
through the command line (``gsn-dask fit --engine serial``) and save ``median``, ``p16``, ``p84``
and ``flag`` of every star; then compare two such snapshots bit for bit.

    # snapshot (run it once on the old code, e.g. PYTHONPATH=<old checkout>, once on the new)
    python benchmarks/refactor_identity.py snapshot --cube lamost.zarr --model MODEL --out before.json
    python benchmarks/refactor_identity.py snapshot --cube lamost.zarr --model MODEL --out after.json
    # compare: prints a table, exits 1 if anything differs, saves the comparison as JSON
    python benchmarks/refactor_identity.py compare before.json after.json \\
        --save benchmarks/results/refactor_identity.json

The cube is ``gsn-dask ingest ../shared/data/lamost --recursive --labels ...dr1_labels_lasp.csv``
(181 stars); any model directory works, as long as both snapshots use the same one.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

FIELDS = ("median", "p16", "p84", "flag")


def snapshot(cube: Path, model: Path, out: Path, samplers: list[str], seed: int) -> dict:
    """Fit ``cube`` with each sampler (serial engine, CLI) and return the arrays as lists."""
    import xarray as xr

    snap: dict = {"cube": str(cube), "model": str(model), "seed": seed, "samplers": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for sampler in samplers:
            res = Path(tmp) / f"{sampler}.zarr"
            t0 = time.perf_counter()
            cmd = [sys.executable, "-m", "gsn_dask", "fit", str(cube), "--model", str(model), "--out", str(res),
                   "--engine", "serial", "--sampler", sampler, "--seed", str(seed), "--no-progress"]
            subprocess.run(cmd, check=True)
            wall = time.perf_counter() - t0
            with xr.open_zarr(res) as ds:
                entry = {"wall_s": round(wall, 2), "star": [str(s) for s in ds["star"].values],
                         "label": [str(s) for s in ds["label"].values],
                         "status": [str(s) for s in ds["status"].values]}
                for f in FIELDS:
                    entry[f] = np.asarray(ds[f].values).astype(float).tolist()
            snap["samplers"][sampler] = entry
            print(f"{sampler}: {len(entry['star'])} stars in {wall:.1f} s", flush=True)
    return snap


def compare(a: dict, b: dict) -> dict:
    """Per sampler and field: number of stars whose values differ (NaN == NaN)."""
    out: dict = {"identical": True, "samplers": {}}
    for sampler in sorted(set(a["samplers"]) | set(b["samplers"])):
        ea, eb = a["samplers"].get(sampler), b["samplers"].get(sampler)
        if ea is None or eb is None:
            out["samplers"][sampler] = {"missing": "a" if ea is None else "b"}
            out["identical"] = False
            continue
        row: dict = {"n_stars": len(ea["star"]), "same_stars": ea["star"] == eb["star"]}
        for f in FIELDS:
            x, y = np.asarray(ea[f], float), np.asarray(eb[f], float)
            if x.shape != y.shape:
                row[f] = f"shape {x.shape} vs {y.shape}"
                out["identical"] = False
                continue
            same = (x == y) | (np.isnan(x) & np.isnan(y))
            n_diff = int((~same.reshape(len(x), -1).all(axis=1)).sum())
            row[f"{f}_stars_differing"] = n_diff
            row[f"{f}_max_abs_diff"] = float(np.nanmax(np.abs(x - y))) if n_diff else 0.0
            out["identical"] &= n_diff == 0
        out["identical"] &= row["same_stars"]
        row["n_ok"] = int(sum(s == "ok" for s in eb["status"]))
        row["wall_s"] = {"a": ea.get("wall_s"), "b": eb.get("wall_s")}
        out["samplers"][sampler] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("snapshot", help="fit the cube with both samplers and save the numbers")
    s.add_argument("--cube", type=Path, required=True)
    s.add_argument("--model", type=Path, required=True)
    s.add_argument("--out", type=Path, required=True)
    s.add_argument("--samplers", nargs="+", default=["emcee", "batched"])
    s.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare", help="compare two snapshots bit for bit")
    c.add_argument("a", type=Path)
    c.add_argument("b", type=Path)
    c.add_argument("--save", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.cmd == "snapshot":
        snap = snapshot(args.cube, args.model, args.out, args.samplers, args.seed)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(snap))
        return 0
    res = compare(json.loads(args.a.read_text()), json.loads(args.b.read_text()))
    res.update(a=str(args.a), b=str(args.b))
    print(json.dumps(res, indent=1))
    if args.save:
        args.save.parent.mkdir(parents=True, exist_ok=True)
        args.save.write_text(json.dumps(res, indent=1))
    return 0 if res["identical"] else 1


if __name__ == "__main__":
    sys.exit(main())
