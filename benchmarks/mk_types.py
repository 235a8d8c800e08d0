"""Whose Teff scale? Our Teff and LASP's against a third reference: the MK spectral type that the
LAMOST 1D pipeline assigns by template matching (the catalogue's ``subclass``), turned into Teff
with the mean dwarf sequence of Pecaut & Mamajek (2013, ApJS 208, 9, Table 5; values rounded to
10 K, luminosity class ignored).

The subclass is coarse (F/G/K templates at F0, F2, F5, F9, G0, G2, G5, K1, K3, K5, K7; A stars
by subtype and luminosity class), so per star it says little, but its median offset per spectral
class separates a *scale* difference (ours and LASP's offsets from the MK scale differ) from
scatter. Reported per class (A, F, G, K) for the strict matches, at S/N > 30 and all: n, median
(ours - MK), median (LASP - MK), median (ours - LASP), and 1.4826 MAD of each.

    python benchmarks/mk_types.py --results results.zarr --cube lamost.zarr \
        --labels ../shared/data/lamost/dr1_labels_lasp.csv

Saves ``benchmarks/results/mk_types.json``.
"""
from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np

from _common import mad_std

OUT = Path(__file__).resolve().parent / "results" / "mk_types.json"

#: Dwarf Teff (K) per spectral subtype, Pecaut & Mamajek (2013) Table 5, A0-K7 (rounded).
MK_TEFF = {
    "A0": 9700, "A1": 9200, "A2": 8840, "A3": 8550, "A4": 8270, "A5": 8080, "A6": 8000, "A7": 7800,
    "A8": 7500, "A9": 7440, "F0": 7220, "F1": 7030, "F2": 6810, "F3": 6720, "F4": 6640, "F5": 6510,
    "F6": 6340, "F7": 6240, "F8": 6170, "F9": 6060, "G0": 5920, "G1": 5880, "G2": 5770, "G3": 5720,
    "G4": 5680, "G5": 5660, "G6": 5590, "G7": 5530, "G8": 5490, "G9": 5340, "K0": 5280, "K1": 5170,
    "K2": 5040, "K3": 4830, "K4": 4600, "K5": 4410, "K6": 4230, "K7": 4070,
}


def mk_teff(subclass: str) -> float:
    """Teff (K) of a LAMOST subclass such as ``A3V``, ``A2IV`` or ``G5`` (NaN if not in the table)."""
    m = re.match(r"^([AFGK]\d)", str(subclass).strip())
    return float(MK_TEFF.get(m.group(1), np.nan)) if m else float("nan")


def compare(ours: np.ndarray, lasp: np.ndarray, mk: np.ndarray, cls: np.ndarray, sel: np.ndarray) -> dict:
    """Per spectral class (and all): offsets of ours and LASP from MK and from each other (K)."""
    out = {}
    for name in ("A", "F", "G", "K", "all"):
        s = sel & np.isfinite(ours) & np.isfinite(lasp) & np.isfinite(mk) & ((cls == name) | (name == "all"))
        d_o, d_l, d_ol = ours[s] - mk[s], lasp[s] - mk[s], ours[s] - lasp[s]
        out[name] = {"n": int(s.sum()),
                     "ours_minus_mk": {"median": _r(np.median(d_o)), "mad_std": _r(mad_std(d_o))} if s.any() else None,
                     "lasp_minus_mk": {"median": _r(np.median(d_l)), "mad_std": _r(mad_std(d_l))} if s.any() else None,
                     "ours_minus_lasp": {"median": _r(np.median(d_ol)), "mad_std": _r(mad_std(d_ol))} if s.any() else None}
    return out


def _r(x: float) -> float:
    return round(float(x), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--results", type=Path, required=True, help="results store of a fit of the LAMOST cube")
    ap.add_argument("--cube", type=Path, required=True, help="the ingested LAMOST cube (with LASP labels)")
    ap.add_argument("--labels", type=Path, required=True, help="dr1_labels_lasp.csv (its `subclass` column)")
    ap.add_argument("--save", type=Path, default=OUT)
    args = ap.parse_args(argv)

    import pandas as pd

    import gsn_dask as gd

    res = gd.open_results(args.results).load()
    cube = gd.open_spectra(args.cube)
    csv = pd.read_csv(args.labels)
    sub_of = dict(zip(csv["filename"].astype(str), csv["subclass"].astype(str)))
    files = [Path(str(s)).name for s in cube["source"].values]
    subclass = np.array([sub_of.get(f, "") for f in files])
    mk = np.array([mk_teff(s) for s in subclass])
    cls = np.array([s[:1] for s in subclass])
    lasp = np.asarray(cube["label_teff"].values, float)  # NaN unless a strict match
    ours = np.asarray(res["median"].sel(label="teff").values, float)
    snr = np.asarray(cube["snr"].values, float)
    strict = np.isfinite(lasp)
    out = {"results": str(args.results), "cube": str(args.cube),
           "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
           "mk_scale": "Pecaut & Mamajek (2013) Table 5 dwarf sequence, luminosity class ignored",
           "snrg>30": compare(ours, lasp, mk, cls, strict & (snr > 30)),
           "all": compare(ours, lasp, mk, cls, strict)}
    for sel in ("snrg>30", "all"):
        print(f"strict matches, {sel}:  class  n   ours-MK (med/MAD)   LASP-MK (med/MAD)   ours-LASP (med/MAD)  [K]")
        for name, row in out[sel].items():
            if row["n"]:
                print(f"   {name:>4s} {row['n']:4d}   " + "   ".join(
                    f"{row[k]['median']:+7.0f} / {row[k]['mad_std']:4.0f}"
                    for k in ("ours_minus_mk", "lasp_minus_mk", "ours_minus_lasp")))
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(out, indent=1))
    print(f"saved {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
