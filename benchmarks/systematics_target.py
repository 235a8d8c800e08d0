"""How the label-systematics floor is solved, side by side on the same networks (issue 15).

The floor only changes the intervals' width, not the networks, so each training seed is trained
once (``train_and_calibrate``, one thread, the default recipe) and calibrated with every
``--variant`` from the same held-out fits (:func:`gsn_dask.calibration.calibrate`; the fits are
made once). Each calibrated model is then run through both of issue 15's test sets:

* the demo's MILES hold-out (``miles_holdout.py --model``; the demo's training split and seed);
* the README path on LAMOST DR1 (``readme_path.py --model``: quick map look, ``diagnose
  --write-model``, emcee fit, validate) with the model trained on the whole MILES cube.

Prints and saves, per seed and variant, bias / 1.4826 MAD / reference inside [p16, p84] / robust std
of z per label, and per variant the mean paired difference from the first variant with its standard
error (std / sqrt(n_seeds)):

    python benchmarks/systematics_target.py --miles-cube miles_train.zarr --lamost-cube lamost.zarr \\
        --lamost ../shared/data/lamost --work W --seeds 0 1 2 \\
        --variant median=target=median --variant coverage=target=coverage \\
        --variant coverage-split=target=coverage,split=logg:3.8

Saves ``benchmarks/results/systematics_target.json``.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

import gsn_dask as gd
from gsn_dask import demo
from gsn_dask.calibration import calibrate, train_and_calibrate
from gsn_dask.emulator_recipe import DEFAULT_RECIPE

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "systematics_target.json"


def parse_variant(text: str) -> tuple[str, dict]:
    """``NAME=target=T[,split=LABEL:VALUE][,by=LABEL][,widen=1]`` -> (name, calibrate keywords); ``T`` is
    ``median``, ``coverage`` or per label ``teff:coverage+logg:coverage`` (others median); ``widen=1``
    (with a split): each class's floor at least the unsplit floor (the package's ``split_rule="widen"``)."""
    name, _, spec = text.partition("=")
    kw: dict = {}
    for part in filter(None, spec.split(",")):
        key, _, value = part.partition("=")
        if key == "widen":
            kw["split_rule"] = "widen" if int(value) else "own"
        elif key == "split":
            label, _, at = value.partition(":")
            kw["split"] = (label, float(at))
        elif key == "target" and ":" in value:
            kw[key] = dict(rule.split(":", 1) for rule in value.split("+"))
        elif key in ("target", "by"):
            kw[key] = value
        else:
            raise SystemExit(f"--variant {text!r}: unknown key {key!r} (target, split, by, widen)")
    if kw.get("split_rule") == "widen" and "split" not in kw:
        raise SystemExit(f"--variant {text!r}: widen=1 needs a split")
    return name, kw


def trained_variants(train, seed: int, variants: dict[str, dict], out: Path) -> dict[str, Path]:
    """Train once with ``seed`` and save one model per variant (its own calibration) under ``out``."""
    dirs = {name: out / name for name in variants}
    if all((d / "model.json").exists() for d in dirs.values()):
        return dirs
    model, report = train_and_calibrate(train, DEFAULT_RECIPE.replace(seed=seed), threads=1, progress=False)
    recipe = model.meta["training"]["recipe"]
    for name, kw in variants.items():
        calibrate(model, report["cv_folds"], **kw)  # the held-out fits are made once, then reused
        recipe.update({"label_systematics_target": kw.get("target", "median"), "label_systematics_split": kw.get("split"),
                       "label_systematics_by": kw.get("by", "teff"), "label_systematics_split_rule": kw.get("split_rule", "own")})
        model.meta["training"]["recipe_is_default"] = DEFAULT_RECIPE.from_json(recipe).replace(seed=0) == DEFAULT_RECIPE
        model.save(dirs[name])
    return dirs


def holdout(model_dir: Path, tag: str, save: Path) -> dict:
    """The demo's hold-out with ``model_dir`` (miles_holdout.py), its statistics for all observations."""
    subprocess.run([sys.executable, str(HERE / "miles_holdout.py"), "--model", str(model_dir), "--tag", tag,
                    "--save", str(save)], check=True, stdout=subprocess.DEVNULL)
    return json.loads(save.read_text())[tag]["sets"]["all"]


def lamost(model_dir: Path, a: argparse.Namespace, work: Path) -> dict:
    """The README path's fit steps with ``model_dir`` (readme_path.py --model): LASP comparison."""
    save = work / "readme_path.json"
    if not save.exists():
        subprocess.run([sys.executable, str(HERE / "readme_path.py"), "--work", str(work / "path"), "--lamost",
                        str(a.lamost), "--model", str(model_dir), "--cube", str(a.lamost_cube), "--workers", "1",
                        "--save", str(save), "--no-plain-fit"], check=True, stdout=subprocess.DEVNULL)
    rec = json.loads(save.read_text())["labels_with_survey_error"]
    return {s: rec[s] for s in ("snrg>30", "all")}


def paired(per_seed: dict, names: list[str]) -> dict:
    """Mean paired difference (variant - first variant) and its standard error, per set/label/stat."""
    base, out = names[0], {}
    for name in names[1:]:
        out[name] = {}
        for s in per_seed[next(iter(per_seed))][base]:
            for lab in per_seed[next(iter(per_seed))][base][s]:
                for stat in ("mad_std", "in68", "z_rstd"):
                    d = np.array([r[name][s][lab][stat] - r[base][s][lab][stat] for r in per_seed.values()])
                    se = float(d.std(ddof=1) / np.sqrt(d.size)) if d.size > 1 else None  # one seed: no error
                    out[name].setdefault(s, {}).setdefault(lab, {})[stat] = {"mean": float(d.mean()), "se": se}
    return out


def _as_now(variant: dict) -> dict:
    """A saved variant in today's keywords: files written before ``widen=1`` became the package's
    ``split_rule="widen"`` say ``"widen": true`` (the same floors at every (Teff, log g))."""
    v = dict(variant)
    return {**v, "split_rule": "widen"} if v.pop("widen", False) else v


def earlier_seeds(files: list[Path], variants: dict[str, dict]) -> dict:
    """The per-seed records of ``files`` (saved by this script with the same ``variants``)."""
    out: dict = {}
    for f in files:
        rec = json.loads(f.read_text())
        saved = {k: _as_now(v) for k, v in rec["variants"].items()}
        if saved != json.loads(json.dumps(variants, default=list)):
            raise SystemExit(f"{f}: variants {rec['variants']} differ from this run's {variants}")
        out.update({int(k): v for k, v in rec["per_seed"].items()})
    return out


def add_path_args(ap: argparse.ArgumentParser) -> None:
    """The inputs of both test sets: --miles-cube, --lamost-cube, --lamost."""
    ap.add_argument("--miles-cube", type=Path, required=True, help="gsn-dask grid miles (the README path's cube)")
    ap.add_argument("--lamost-cube", type=Path, required=True, help="gsn-dask ingest of the LAMOST files")
    ap.add_argument("--lamost", type=Path, required=True, help="the LAMOST files (for readme_path.py)")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_path_args(ap)
    ap.add_argument("--work", type=Path, required=True)
    ap.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2], help="training seeds to run (none: only pair --with-results)")
    ap.add_argument("--variant", action="append", required=True, metavar="NAME=SPEC", help=parse_variant.__doc__)
    ap.add_argument("--save", type=Path, default=OUT)
    ap.add_argument("--with-results", type=Path, nargs="*", default=[], metavar="FILE",
                    help="files this script saved for other seeds (the same variants; e.g. a second process on "
                         "another core): their seeds join the pairing")
    a = ap.parse_args(argv)
    variants = dict(parse_variant(v) for v in a.variant)
    earlier = earlier_seeds(a.with_results, variants)
    full = gd.open_spectra(demo.miles_training_cube(progress=False)).load()
    demo_train = full.isel(star=np.flatnonzero(~demo.holdout_mask(full)))
    per_seed: dict = {}
    for seed in a.seeds:
        w = a.work.resolve() / f"seed{seed}"
        demo_dirs = trained_variants(demo_train, seed, variants, w / "demo_models")
        miles_dirs = trained_variants(str(a.miles_cube), seed, variants, w / "miles_models")
        per_seed[seed] = {}
        for name in variants:
            ho = holdout(demo_dirs[name], f"seed{seed}-{name}", w / "holdout.json")
            per_seed[seed][name] = {"hold-out": ho, **{f"LAMOST {k}": v for k, v in lamost(miles_dirs[name], a, w / name).items()}}
            for s, rows in per_seed[seed][name].items():
                print(f"seed {seed} {name:16s} {s:16s} " + "  ".join(
                    f"{lab} {r['mad_std']:.3g} ({100 * r['in68']:.0f}%, z {r['z_rstd']:.2f})" for lab, r in rows.items()), flush=True)
    per_seed = {**earlier, **per_seed}
    save_paired({"command": " ".join(sys.argv), "variants": variants, "per_seed": per_seed}, a.save)
    return 0


def save_paired(out: dict, save: Path) -> None:
    """Add the pairing with the first variant to ``out`` (``variants``, ``per_seed``), save it, print it."""
    names = list(out["variants"])
    out["paired"] = paired(out["per_seed"], names)
    save.write_text(json.dumps(out, indent=1, default=list))
    for name, sets in out["paired"].items():
        for s, labs in sets.items():
            print(f"{name} - {names[0]} {s:16s} " + "  ".join(
                f"{lab} MAD {v['mad_std']['mean']:+.3g}±{v['mad_std']['se'] or 0:.2g} in68 {100 * v['in68']['mean']:+.1f}±{100 * (v['in68']['se'] or 0):.1f}"
                for lab, v in labs.items()))
    print(f"saved {save}")


if __name__ == "__main__":
    sys.exit(main())
