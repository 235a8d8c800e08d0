"""The Kiel prior's kernel and floor, side by side on the same networks (issue 15).

The prior only acts on the reported labels, so each variant is the same trained model with its
prior rebuilt from the same training stars (:func:`gsn_dask.label_prior.build`, the model's bounds)
with another ``bandwidth`` (log10 Teff, log g) or ``floor``. The trained models are those that
``systematics_target.py`` saved (``W/seedN/demo_models/VARIANT`` for the demo's hold-out and
``W/seedN/miles_models/VARIANT`` for the README path); the default kernel, rebuilt, must give the
stored prior back (checked). Each variant runs through both of issue 15's test sets (the demo's
hold-out, ``miles_holdout.py --model``; the README path's fit steps, ``readme_path.py --model``) and
is paired with the stored prior per seed (mean difference and its standard error):

    python benchmarks/kiel_bandwidth.py --work W --models median --lamost ../shared/data/lamost \\
        --lamost-cube lamost.zarr --miles-cube miles_train.zarr --seeds 0 1 2 \\
        --variant wide=logg:0.25 --variant narrow=logg:0.10 --variant floor20=floor:0.2 \\
        --stored-from benchmarks/results/systematics_target_6seeds.json

Saves ``benchmarks/results/kiel_bandwidth.json`` (``--with-results``: join another process's seeds).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

import gsn_dask as gd
from gsn_dask import demo, label_prior
from gsn_dask.emulator import load_model
from gsn_dask.emulator_data import prepare_training_data

sys.path.insert(0, str(Path(__file__).resolve().parent))
from systematics_target import earlier_seeds, holdout, lamost, save_paired  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "kiel_bandwidth.json"


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME=teff:DEX,logg:DEX,floor:F`` (any of them; others as the package's defaults) -> (name, build keywords)."""
    name, _, spec = text.partition("=")
    bw, kw = list(label_prior.BANDWIDTH), {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition(":")
        if key in ("teff", "logg"):
            bw[0 if key == "teff" else 1] = float(value)
        elif key == "floor":
            kw["floor"] = float(value)
        else:
            raise SystemExit(f"--variant {text!r}: unknown key {key!r} (teff, logg, floor)")
    return name, {"bandwidth": tuple(bw), **kw}


def training_kiel_labels(model, cube) -> tuple[np.ndarray, np.ndarray]:
    """The Teff and log g of the observed stars ``model`` trained on (its recipe's selection of ``cube``)."""
    rec = model.meta["training"]["recipe"]
    data = prepare_training_data(cube, labels=list(model.label_names), label_ranges=rec.get("label_ranges"),
                                 wavelength_range=rec.get("wavelength_range"), mask_telluric=bool(rec.get("mask_telluric")))
    lab, obs = data["label_values"], ~data["synthetic"]
    return lab[obs, data["labels"].index("teff")], lab[obs, data["labels"].index("logg")]


def with_prior(model_dir: Path, cube, build_kw: dict, out: Path) -> Path:
    """``model_dir``'s model with its Kiel prior rebuilt by ``build_kw``, saved to ``out``."""
    if (out / "model.json").exists():
        return out
    model = load_model(model_dir)
    teff, logg = training_kiel_labels(model, cube)
    again = label_prior.for_model(label_prior.with_label_prior(model, teff, logg))
    if not np.allclose(again.log_p, label_prior.for_model(model).log_p, atol=1e-5):  # the stored grid is float32
        raise SystemExit(f"{model_dir}: the default kernel on the training stars does not give the stored prior back")
    label_prior.with_label_prior(model, teff, logg, **build_kw).save(out)
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, required=True, help="systematics_target.py's work folder")
    ap.add_argument("--models", default="median", help="which of its variants' models (default median)")
    ap.add_argument("--miles-cube", type=Path, required=True, help="gsn-dask grid miles (the README path's cube)")
    ap.add_argument("--lamost-cube", type=Path, required=True)
    ap.add_argument("--lamost", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=SPEC", help=parse_variant.__doc__)
    ap.add_argument("--with-results", type=Path, nargs="*", default=[], metavar="FILE")
    ap.add_argument("--stored-from", type=Path, default=None, metavar="FILE",
                    help="systematics_target.py's results of the same work folder: the stored prior's numbers "
                         "are taken from it instead of fitted again")
    ap.add_argument("--save", type=Path, default=OUT)
    a = ap.parse_args(argv)
    variants = {"stored": {}, **dict(parse_variant(v) for v in a.variant)}
    full = gd.open_spectra(demo.miles_training_cube(progress=False)).load()
    cubes = {"demo": full.isel(star=np.flatnonzero(~demo.holdout_mask(full))), "miles": gd.open_spectra(a.miles_cube).load()}
    per_seed = earlier_seeds(a.with_results, variants)
    stored = json.loads(a.stored_from.read_text())["per_seed"] if a.stored_from else {}
    for seed in a.seeds:
        w = a.work.resolve() / f"seed{seed}"
        per_seed[seed] = {}
        for name, kw in variants.items():
            dirs = {k: w / f"{k}_models" / a.models for k in cubes}
            if not kw and a.models in stored.get(str(seed), {}):
                per_seed[seed][name] = stored[str(seed)][a.models]
                continue
            if kw:
                dirs = {k: with_prior(d, cubes[k], kw, w / "kiel" / f"{k}_{a.models}_{name}") for k, d in dirs.items()}
            sub = w / "kiel" / name
            sub.mkdir(parents=True, exist_ok=True)
            ho = holdout(dirs["demo"], f"seed{seed}-{a.models}-kiel-{name}", sub / "holdout.json")
            per_seed[seed][name] = {"hold-out": ho, **{f"LAMOST {k}": v for k, v in lamost(dirs["miles"], a, sub).items()}}
            for s, rows in per_seed[seed][name].items():
                print(f"seed {seed} {name:10s} {s:16s} " + "  ".join(
                    f"{lab} {r['mad_std']:.3g} ({100 * r['in68']:.0f}%)" for lab, r in rows.items()), flush=True)
    save_paired({"command": " ".join(sys.argv), "models": a.models, "variants": variants, "per_seed": per_seed}, a.save)
    return 0


if __name__ == "__main__":
    sys.exit(main())
