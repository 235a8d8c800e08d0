"""Hybrid GSN levers (issue 15): one hybrid training cube and recipe, measured on both guards side by side.

For one setting (``--tag``, training overrides ``--set``): the hybrid cube without the demo's MILES
hold-out stars is trained (``hybrid_holdout.py``); that one model is measured on the demo's MILES
hold-out (``miles_holdout.py``, emcee) and on the LAMOST stars against LASP through the README
path's fit steps (``readme_path.py --model``: quick map look, ``diagnose --write-model``, emcee fit,
validate). The LAMOST numbers are of a model that did not see the 105 hold-out stars, so compare
them with the demo's MILES model measured the same way (``--baseline-model``), not with the README
path's full MILES model.

    python benchmarks/hybrid_levers.py --hybrid-cube hybrid.zarr --lamost-cube lamost.zarr \
        --lamost ../shared/data/lamost --work W --tag w0.2 --set synthetic_weight=0.2

``--collect`` only gathers what an earlier run of the same tag left in ``W`` (no fitting).
Saves (per tag, other tags kept) ``benchmarks/results/hybrid_levers.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "hybrid_levers.json"


def _run(args: list[str]) -> None:
    print("$ " + " ".join(args), flush=True)
    subprocess.run([sys.executable, *args], cwd=HERE, check=True)


def steps(a: argparse.Namespace) -> dict[str, Path]:
    """Run (unless ``--collect``) the three scripts for tag ``a.tag``; their output paths."""
    w = a.work.resolve()
    p = {"model": w / f"m_{a.tag}", "holdout": w / "miles_holdout.json", "path": w / f"rp_{a.tag}.json"}
    if a.collect:
        return p
    w.mkdir(parents=True, exist_ok=True)
    sets = [x for kv in a.set for x in ("--set", kv)]
    if a.baseline_model is None:
        _run(["hybrid_holdout.py", "--hybrid-cube", str(a.hybrid_cube), "--out", str(p["model"]), *sets])
    model = str(a.baseline_model or p["model"])
    _run(["miles_holdout.py", "--model", model, "--tag", a.tag, "--save", str(p["holdout"])])
    _run(["readme_path.py", "--work", str(w / f"rp_{a.tag}"), "--lamost", str(a.lamost), "--model", model,
          "--cube", str(a.lamost_cube), "--workers", "1", "--no-plain-fit", "--save", str(p["path"])])
    return p


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--hybrid-cube", type=Path, help="hybrid training cube (gsn-dask grid hybrid)")
    ap.add_argument("--baseline-model", type=Path, default=None,
                    help="measure this model instead of training one (e.g. the demo's MILES model)")
    ap.add_argument("--lamost-cube", type=Path, required=True, help="ingested LAMOST cube with LASP labels")
    ap.add_argument("--lamost", type=Path, required=True, help="folder of LAMOST files with dr1_labels_lasp.csv")
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--tag", required=True)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="training recipe override (JSON)")
    ap.add_argument("--note", default="", help="what the tag is, for the JSON")
    ap.add_argument("--collect", action="store_true", help="only gather an earlier run's outputs")
    ap.add_argument("--save", type=Path, default=OUT)
    a = ap.parse_args(argv)
    if a.baseline_model is None and a.hybrid_cube is None:
        ap.error("--hybrid-cube or --baseline-model is needed")
    p = steps(a)
    hold = json.loads(p["holdout"].read_text())[a.tag]
    path = json.loads(p["path"].read_text())
    row = {"note": a.note, "hybrid_cube": str(a.hybrid_cube), "overrides": a.set,
           "model": str(a.baseline_model or p["model"]),
           "miles_holdout": {"sets": hold["sets"]["all"], "cpu_s_per_star": hold["cpu_s_per_star"]},
           "lamost_vs_lasp": path["labels_with_survey_error"],
           "lamost_fit_cpu_s_per_star": path["fit_cpu_s_per_star"]}
    for name, sets in (("MILES hold-out", row["miles_holdout"]["sets"]), ("LAMOST S/N>30", row["lamost_vs_lasp"]["snrg>30"])):
        print(f"[{a.tag}] {name}: " + " | ".join(f"{k} {s['bias']:+.3g} / {s['mad_std']:.3g} / in68 {100 * s['in68']:.0f}%"
                                             for k, s in sets.items()))
    saved = json.loads(a.save.read_text()) if a.save.exists() else {}
    saved[a.tag] = row
    a.save.parent.mkdir(parents=True, exist_ok=True)
    a.save.write_text(json.dumps(saved, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
