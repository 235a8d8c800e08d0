"""The options shared by ``gsn-dask fit`` and ``python -m spark_compat fit`` (inputs, output
store, sampling) and the FitConfig they build: one definition, so the two commands cannot drift.
Imports no engine."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any



def _model_dir(value: str | None) -> str:
    """``--model`` as given, or the model directory shipped with the package."""
    if value:
        return value
    from pathlib import Path

    return str(Path(__file__).resolve().parents[1] / "data" / "model")

def add_io_arguments(parser: argparse.ArgumentParser, *, cube_help: str) -> None:
    """``CUBE``, ``--model MODEL_DIR`` and ``--out RESULTS`` of ``gsn-dask fit`` and
    ``python -m spark_compat fit``."""
    parser.add_argument("cube", metavar="CUBE", help=cube_help)
    parser.add_argument("--model", type=_model_dir, default=_model_dir(None), metavar="MODEL_DIR",
                        help="trained GSN model directory (default: the MILES GSN shipped with the package)")
    parser.add_argument("--out", required=True, metavar="RESULTS", help="results cube to write (zarr directory)")


def add_store_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The results-store options (``--resume``, ``--overwrite``, ``--force-unlock``) of
    ``gsn-dask fit`` and ``python -m spark_compat fit``; returns the group (for more options)."""
    s = parser.add_argument_group("output store")
    s.add_argument("--resume", action="store_true",
                   help="continue RESULTS from an interrupted run: fit only chunks not yet written")
    s.add_argument("--overwrite", action="store_true", help="replace an existing RESULTS store")
    s.add_argument("--force-unlock", action="store_true",
                   help="take over RESULTS' lock even if another run seems to hold it (only if that run is dead)")
    return s


def add_fit_options(parser: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """The sampling options (``--seed``, ``--sampler``, ``--walkers`` ... ``--config``, ``--set``)
    that :func:`build_config` reads, shared by ``gsn-dask fit`` and ``python -m spark_compat fit``."""
    from ..fit.config import SAMPLERS, FitConfig

    f = parser.add_argument_group("sampling (defaults: gsn_dask.fit.config.FitConfig)")
    f.add_argument("--seed", type=int, default=0, help="run seed (default 0)")
    f.add_argument("--sampler", choices=SAMPLERS, default="emcee", help="emcee (default: MCMC per star), batched (torch, all stars of a block at once) or map (quick look: MAP + Laplace approximation, ~10x cheaper)")
    d = FitConfig()
    f.add_argument("--walkers", type=int, default=None, metavar="N", help=f"number of walkers (default {d.n_walkers})")
    f.add_argument("--burn", type=int, default=None, metavar="N", help=f"burn-in steps, discarded (default {d.n_burn})")
    f.add_argument("--steps", type=int, default=None, metavar="N",
                   help=f"production steps at least (default {d.n_steps}); extended until they cover "
                        f"tau_factor ({d.tau_factor:g}) autocorrelation times")
    f.add_argument("--max-steps", type=int, default=None, metavar="N",
                   help=f"production steps at most (default {d.max_steps}; a chain stopped there is flagged NOT_CONVERGED)")
    f.add_argument("--thin", type=int, default=None, metavar="N", help="keep every N-th production step")
    f.add_argument("--draws", type=int, default=None, metavar="N",
                   help="posterior draws kept per star in the results (`samples`; default 0 = none)")
    f.add_argument("--prior", action="append", default=[], metavar="LABEL=MU,SIGMA",
                   help="Gaussian prior on a label, e.g. --prior teff=5000,200 (repeatable)")
    f.add_argument("--config", default=None, metavar="JSON",
                   help="FitConfig settings: a JSON file or a JSON string (options above override it)")
    f.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="settings",
                   help="any FitConfig setting, e.g. --set min_good_pixels=300 (repeatable)")
    return f


def parse_prior(text: str) -> tuple[str, tuple[float, float]]:
    """``"teff=5000,200"`` -> ``("teff", (5000.0, 200.0))``."""
    try:
        name, rest = text.split("=", 1)
        mu, sigma = (float(x) for x in rest.split(","))
    except ValueError:
        raise ValueError(f"--prior {text!r}: expected LABEL=MU,SIGMA, e.g. teff=5000,200") from None
    return name.strip(), (mu, sigma)


def _parse_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def build_config(args: argparse.Namespace):
    """The FitConfig of the command line: defaults <- --config <- --set <- explicit options."""
    from ..fit.config import FitConfig

    d: dict[str, Any] = FitConfig().to_dict()
    if args.config:
        text = args.config
        if not text.lstrip().startswith("{"):
            src = Path(text)
            if not src.is_file():
                raise FileNotFoundError(f"--config {text}: no such file (and not a JSON string)")
            text = src.read_text()
        try:
            d.update(json.loads(text))
        except json.JSONDecodeError as exc:
            raise ValueError(f"--config: not a JSON file or JSON string ({exc})") from None
    for item in args.settings:
        if "=" not in item:
            raise ValueError(f"--set {item!r}: expected KEY=VALUE")
        k, v = item.split("=", 1)
        d[k.strip()] = _parse_value(v)
    explicit = {
        "n_walkers": args.walkers, "n_burn": args.burn, "n_steps": args.steps,
        "max_steps": args.max_steps, "thin": args.thin, "n_draws": args.draws,
    }
    d.update({k: v for k, v in explicit.items() if v is not None})
    if args.steps is not None and args.max_steps is None and d.get("max_steps", 0) < args.steps:
        d["max_steps"] = args.steps
    if args.prior:
        priors = dict(d.get("priors") or {})
        priors.update(dict(parse_prior(t) for t in args.prior))
        d["priors"] = priors
    return FitConfig.from_dict(d)


__all__ = ["add_fit_options", "add_io_arguments", "add_store_options", "build_config", "parse_prior"]
