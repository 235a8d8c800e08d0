"""``gsn-dask train``: train the GSN emulator on a training cube, calibrate its label
systematics, and write a model directory. With no options it trains the default recipe
(:data:`gsn_dask.emulator_recipe.DEFAULT_RECIPE`), the same as the demo."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from ..emulator import ACTIVATIONS
from ..emulator_recipe import DEFAULT_RECIPE as R, SPLIT_RULES, SYSTEMATICS_TARGETS, TrainRecipe


def _ranges_text(ranges: Any) -> str:
    return ", ".join(f"{n} {lo:g}-{hi:g}" for n, (lo, hi) in (ranges or {}).items()) or "none"


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train the GSN emulator on a training cube -> model dir",
        description=(
            "Train the Generative Spectrum Network (labels -> normalised spectrum) on a training cube "
            "(zarr, from `gsn-dask grid`) with K-fold cross-validation, then measure each label's systematic "
            "error by fitting the held-out stars; writes MODEL_DIR/weights.safetensors, model.json (with the "
            "per-pixel emulator error, the label systematics and the training recipe) and diagnostics.png. "
            "The defaults are the best-measured recipe (the demo's)."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("train_cube", metavar="TRAIN_CUBE", help="training spectra cube (zarr)")
    p.add_argument("--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    p.add_argument("--labels", nargs="+", default=None, help="labels to emulate (default: all labels in the cube)")
    p.add_argument("--hidden", type=int, default=R.hidden, help="width of each hidden layer")
    p.add_argument("--layers", type=int, default=R.n_hidden_layers, help="number of hidden layers")
    p.add_argument("--activation", default=R.activation, choices=sorted(ACTIVATIONS))
    p.add_argument("--linear-teff", action="store_true", help="scale teff linearly (default: log10 teff)")
    p.add_argument("--ensemble", type=int, default=R.ensemble,
                   help="networks averaged into the model (merged into one GSN; M times slower inference)")
    p.add_argument("--distil", type=int, default=R.distil, metavar="M",
                   help="train M final networks and distil their average into one network of the same size "
                        "(the ensemble's lower network variance at one network's fit cost; training about "
                        "M + 2 refits longer); 1 = off")
    p.add_argument("--epochs", type=int, default=R.epochs, help="maximum epochs per fold")
    p.add_argument("--batch-size", type=int, default=R.batch_size)
    p.add_argument("--lr", type=float, default=R.lr, help="peak learning rate (AdamW, cosine decay)")
    p.add_argument("--weight-decay", type=float, default=R.weight_decay)
    p.add_argument("--dropout", type=float, default=R.dropout)
    p.add_argument("--patience", type=int, default=R.patience, help="early-stopping patience (epochs)")
    p.add_argument("--folds", type=int, default=R.folds, help="K-fold CV (<= 1: one held-out split)")
    p.add_argument("--weight-floor", type=float, default=R.weight_floor,
                   help="noise floor added to 1/ivar in the pixel weights (normalised flux)")
    p.add_argument("--synthetic-weight", type=float, default=R.synthetic_weight,
                   help="loss weight of a synthetic spectrum relative to an observed one, in a hybrid cube "
                        "(`gsn-dask grid hybrid`: observed and synthetic spectra, told apart by their source); "
                        "such a model's emulator error, label systematics and Kiel prior come from its observed stars")
    p.add_argument("--source-input", action="store_true", default=R.source_input,
                   help="in a hybrid cube, give the network an observed/synthetic input and keep its observed branch "
                        "(the input held at 'observed', folded into the first layer: same labels, same fit cost)")
    p.add_argument("--seed", type=int, default=R.seed)
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--threads", type=int, default=None,
                   help="torch CPU threads (default: torch's, about one per core). Two trainings sharing the same "
                        "cores slow each other down many times over: give each cores/jobs. The same seed, thread "
                        "count and CPU kind give the same model bit for bit (the count used is recorded in model.json)")
    p.add_argument("--wave-range", nargs=2, type=float, default=None, metavar=("MIN", "MAX"),
                   help="restrict the model grid to this vacuum range [A]")
    p.add_argument("--label-range", nargs=3, action="append", default=None, metavar=("NAME", "LO", "HI"),
                   help="train only on stars with LO <= label NAME <= HI (repeatable; replaces the recipe's "
                        f"ranges: {_ranges_text(R.label_ranges)})")
    p.add_argument("--all-stars", action="store_true",
                   help="no label range: train on every star of the cube with finite labels")
    p.add_argument("--mask-telluric", action="store_true", help="give telluric pixels zero weight in training")
    p.add_argument("--no-label-systematics", action="store_true",
                   help="skip the CV fits that measure each label's systematic error (the fit then reports "
                        "purely statistical intervals for this model)")
    p.add_argument("--label-systematics-by", default=R.label_systematics_by, metavar="LABEL",
                   help="measure the label systematics also in quantile bins of this fitted label (default "
                        "%(default)s; e.g. logg, so that giants and dwarfs get their own interval floors)")
    p.add_argument("--label-systematics-split", type=_split, default=argparse.SUPPRESS, metavar="LABEL=VALUE",
                   help="measure the label systematics apart, each with its own bins, for the stars fitted below and "
                        "above VALUE of LABEL (default logg=3.8: giants and dwarfs, where the cube has log g; see "
                        "--label-systematics-split-rule); none: one set for all stars")
    p.add_argument("--label-systematics-split-rule", default=R.label_systematics_split_rule, choices=SPLIT_RULES,
                   help="with --label-systematics-split: own: a star gets its class's floors; widen: at least the "
                        "floors of all stars (the split widens the class that needs it, e.g. giants' log g, and "
                        "narrows nothing). Default %(default)s")
    p.add_argument("--label-systematics-target", type=_target, default=R.label_systematics_target, metavar="RULE",
                   help="median: each floor makes the held-out training stars' median |z| that of a unit Gaussian "
                        "(narrower than 68%% coverage where the errors have heavy tails); coverage: makes their 68%% "
                        "intervals cover their labels 68.3%% of the time (wider intervals; README: measured); "
                        "LABEL=RULE,... per label, e.g. teff=coverage,logg=coverage (labels not named: median). "
                        "Default %(default)s")
    p.add_argument("--label-prior", default=R.label_prior, choices=["auto", "kiel", "none"],
                   help="kiel: store the density of the training stars in (Teff, log g) as the fit's prior (it keeps "
                        "fits off where no star lives, e.g. K dwarfs at log g 5; `gsn-dask fit --set label_prior=none` "
                        "switches it off); none: a uniform prior over the training box; auto: kiel for a library of "
                        "observed stars (MILES, also a MILES+synthetic hybrid), none for a synthetic grid")
    p.add_argument("--label-outlier-z", type=_per_label_value, default=R.label_outlier_z, metavar="Z",
                   help="train the final model without the stars whose out-of-fold fit contradicts a label by more "
                        "than Z sigma (library labels that their spectra disagree with; Z, or NAME=Z,... to judge only "
                        "those labels, e.g. teff=4,feh=4); the emulator error, label systematics and Kiel prior still "
                        "use every star (model.json: training.label_screen); none: off")
    p.add_argument("--label-noise-share", type=_per_label_value, default=R.label_noise_share, metavar="S",
                   help="errors in variables: put this share (0-1] of the fit-versus-label scatter beyond noise down "
                        "to the library's labels and train the final model on each star's label moved that far toward "
                        "its out-of-fold fit (precision-weighted; S, or NAME=S,... for those labels only); the "
                        "emulator error, label systematics and Kiel prior use the given labels "
                        "(model.json: training.errors_in_variables). auto (default): teff=0.5,feh=0.5 (the labels "
                        "the cube has) for a cube of observed stars with K-fold refit, else off; none: off")
    p.add_argument("--overwrite", action="store_true", help="replace an existing model in MODEL_DIR")
    p.add_argument("--no-figure", action="store_true", help="skip diagnostics.png")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress output (by default: bars on a terminal, one line per stage in a log)")
    p.set_defaults(func=run)


def _per_label_value(text: str) -> float | dict[str, float] | str | None:
    """``--label-outlier-z`` / ``--label-noise-share``: ``4`` (every label), ``teff=4,feh=4`` (those
    labels), ``none`` (off) or ``auto`` (the recipe's rule; ``--label-noise-share`` only)."""
    word = text.strip().lower()
    if word in ("none", "off", "auto"):
        return "auto" if word == "auto" else None
    try:
        if "=" not in text:
            return float(text)
        pairs = [part.split("=", 1) for part in text.split(",") if part.strip()]
        return {name.strip(): float(value) for name, value in pairs}
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"{text!r}: expected a number, NAME=VALUE,... (e.g. teff=0.5,feh=0.5), auto or none") from None


def _target(text: str) -> str | dict[str, str]:
    """``--label-systematics-target``: ``median``, ``coverage`` or ``teff=coverage,logg=coverage``."""
    if "=" not in text:
        rules = {"": text.strip()}
    else:
        rules = {name.strip(): rule.strip() for name, _, rule in (part.partition("=") for part in text.split(",") if part.strip())}
    bad = sorted(r for r in rules.values() if r not in SYSTEMATICS_TARGETS)
    if bad or not rules:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one of {', '.join(SYSTEMATICS_TARGETS)}, or "
                                         "LABEL=RULE,... (e.g. teff=coverage,logg=coverage)")
    return rules[""] if "" in rules else rules


def _split(text: str) -> tuple[str, float] | None:
    """``--label-systematics-split``: ``logg=3.8`` or ``none``."""
    if text.strip().lower() in ("none", "off"):
        return None
    name, _, value = text.partition("=")
    try:
        return name.strip(), float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected LABEL=VALUE (e.g. logg=3.8) or none") from None


def recipe_from_args(args: argparse.Namespace) -> TrainRecipe:
    """The default recipe changed by the command-line options."""
    if args.all_stars and args.label_range:
        raise ValueError("--all-stars and --label-range exclude each other")
    ranges = R.label_ranges
    if args.all_stars:
        ranges = None
    elif args.label_range:
        ranges = {name: (float(lo), float(hi)) for name, lo, hi in args.label_range}
    return R.replace(
        labels=tuple(args.labels) if args.labels else None,
        hidden=args.hidden,
        n_hidden_layers=args.layers,
        activation=args.activation,
        label_transforms={"teff": "identity"} if args.linear_teff else R.label_transforms,
        epochs=args.epochs,
        ensemble=args.ensemble,
        distil=args.distil,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        dropout=args.dropout,
        patience=args.patience,
        folds=args.folds,
        weight_floor=args.weight_floor,
        synthetic_weight=args.synthetic_weight,
        source_input=args.source_input,
        seed=args.seed,
        wavelength_range=tuple(args.wave_range) if args.wave_range else None,
        label_ranges=ranges,
        mask_telluric=args.mask_telluric,
        label_systematics=not args.no_label_systematics,
        label_systematics_by=args.label_systematics_by,
        label_systematics_split=getattr(args, "label_systematics_split", R.label_systematics_split),
        label_systematics_split_rule=args.label_systematics_split_rule,
        label_systematics_target=args.label_systematics_target,
        label_prior=args.label_prior,
        label_outlier_z=args.label_outlier_z,
        label_noise_share=args.label_noise_share,
    )


def check_split(args: argparse.Namespace, cube_labels: list[str]) -> None:
    """Refuse a ``--label-systematics-split`` given on the command line whose label the training
    does not emulate (without the option, the default split applies where the cube has log g)."""
    split = getattr(args, "label_systematics_split", None)
    labels = list(args.labels) if args.labels else list(cube_labels)
    if split is not None and not args.no_label_systematics and split[0] not in labels:
        raise ValueError(f"--label-systematics-split {split[0]}={split[1]:g}: {split[0]!r} is not among the training "
                         f"labels {labels} (use --label-systematics-split none, or leave the option out)")


def run(args: argparse.Namespace) -> int:
    from ..extras import require

    require("torch", "gsn-dask train")
    from ..calibration import train_and_calibrate
    from ..cube import label_names, open_spectra
    from ..emulator_data import diagnostics_figure

    out = Path(args.out)
    if (out / "model.json").exists() and not args.overwrite:
        raise FileExistsError(f"{out} already holds a model (use --overwrite)")
    recipe = recipe_from_args(args)
    ds = open_spectra(args.train_cube)
    check_split(args, label_names(ds))
    model, rep = train_and_calibrate(ds, recipe, device=args.device, threads=args.threads,
                                     progress=not args.no_progress)
    model.meta["training"]["cube_path"] = str(Path(args.train_cube).resolve())
    model.meta["training"]["cli_args"] = {k: v for k, v in vars(args).items() if k != "func"}
    model.save(out)
    fig = None
    if not args.no_figure:
        fig = diagnostics_figure(rep, out / "diagnostics.png")
    systematics = rep.get("label_systematics")
    summary = {
        "model_dir": str(out),
        "model_id": model.model_id,
        "recipe": "default" if recipe == R else "default with changes (model.json: training.recipe)",
        "labels": model.label_names,
        "n_star": rep["n_star"],
        "n_pix": rep["n_pix"],
        "grid": f"{model.wavelength[0]:.1f}-{model.wavelength[-1]:.1f} A",
        "cv": "k-fold" if recipe.folds >= 2 else "holdout",
        "cv_resid_per_pixel_median": round(rep["cv_resid_per_pixel_median"], 5),
        "cv_scatter_per_pixel_median": round(rep["cv_scatter_per_pixel_median"], 5),
        "noise_per_pixel_median": round(rep["noise_per_pixel_median"], 5),
        "emulator_error_median": round(rep["emulator_error_median"], 5),
        "final_epochs": rep["final_epochs"],
        "label_systematics": ({k: (round(v, 4) if v is not None else None) for k, v in systematics["sigma"].items()}
                              if systematics else None),
        "label_prior": (f"kiel (p(log g | Teff) of {model.meta['label_prior']['n_star']} stars)"
                        if model.meta.get("label_prior") else "none"),
        "label_screen": (f"{screen['n_left_out']} of {screen['n_fitted']} stars left out of the final model "
                         f"(|z| > {screen['z_max']})" if (screen := model.meta["training"].get("label_screen")) else "none"),
        "errors_in_variables": (f"labels of {eiv['n_fitted']} stars moved toward their out-of-fold fits (share "
                                f"{eiv['share']}; median |move| " + ", ".join(f"{k} {v:.3g}" for k, v in eiv["move_median"].items())
                                + ")" if (eiv := model.meta["training"].get("errors_in_variables")) else "none"),
        "train_time_s": round(rep["train_time_s"], 1),
        "diagnostics": str(fig) if fig else None,
    }
    width = max(len(k) for k in summary)
    for k, v in summary.items():
        print(f"{k:<{width}}  {v}")
    sys.stdout.flush()
    return 0
