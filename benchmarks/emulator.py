"""Benchmark of the GSN emulator (issue 5).

Measures, side by side in one run:
  1. K-fold cross-validated residuals per pixel vs the stars' noise (MILES training cube);
  2. label recovery: each star inverted with the fold model that did not see it (chi^2 with
     noise + emulator error, telluric pixels masked, coarse grid + least squares from 3 starts);
     bias and 1.4826*MAD vs the literature labels for 3500-8000 K and FGK 4000-7000 K;
  3. synthetic grid: median |residual| of held-out analytic spectra (4 labels, LAMOST pixels);
  4. throughput: spectra/s for a batch of 1024 on 1 CPU thread, numpy vs torch, vs FLOPs;
  5. CPU training time of the default recipe (``gsn-dask train``'s: K-fold CV + final fit).
``--sweep`` additionally cross-validates a list of settings (width, activation, ...).

    python benchmarks/emulator.py [--cube MILES_CUBE] [--sweep] [--save-model DIR]

The MILES training cube defaults to the one ``gsn-dask demo`` keeps in the user cache (built on
first use: the pinned MILES wheel is fetched and prepared, ~20 s).

Prints a table and writes benchmarks/results/emulator.json.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "emulator.json"
BASELINE = {"teff_scatter": 121.0, "logg_scatter": 0.34, "feh_scatter": 0.18, "logg_outlier_frac": 0.22}


# --------------------------------------------------------------------------- inversion
def _act_and_grad(name: str, z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    if name == "silu":
        s = 1 / (1 + np.exp(-z))
        return z * s, s * (1 + z * (1 - s))
    if name == "tanh":
        t = np.tanh(z)
        return t, 1 - t * t
    if name == "leaky_relu":
        return np.where(z >= 0, z, 0.01 * z), np.where(z >= 0, 1.0, 0.01)
    if name == "relu":
        return np.maximum(z, 0), (z > 0).astype(z.dtype)
    if name == "softplus":
        return np.logaddexp(0, z), 1 / (1 + np.exp(-z))
    if name == "sigmoid":
        s = 1 / (1 + np.exp(-z))
        return s, s * (1 - s)
    raise ValueError(name)


class Float64Net:
    """float64 forward pass + Jacobian in the scaled label space (for the inversion)."""

    def __init__(self, model) -> None:
        self.layers = [(W.astype(np.float64), b.astype(np.float64)) for W, b in model.hidden_layers]
        self.W_out = model.W_out.astype(np.float64)
        self.b_out = model.b_out.astype(np.float64)
        self.act = model.activation

    def forward(self, x: np.ndarray) -> np.ndarray:
        h = np.atleast_2d(x)
        for W, b in self.layers:
            h, _ = _act_and_grad(self.act, h @ W + b)
        return h @ self.W_out + self.b_out

    def forward_jac(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        h = np.asarray(x, np.float64)[None, :]
        J = np.eye(h.shape[1])  # d h / d x : (n_in, width)
        for W, b in self.layers:
            h, g = _act_and_grad(self.act, h @ W + b)
            J = (J @ W) * g
        fJ = np.vstack([h, J]) @ self.W_out  # one pass over W_out
        return fJ[0] + self.b_out, fJ[1:].T  # (n_pix,), (n_pix, n_in)


def invert_stars(model, flux, ivar, weights_extra_var, mask, *, n_grid=(25, 21, 15), n_starts=3):
    """Least-squares labels of each spectrum (rows of flux/ivar) with ``model``.

    chi^2 weights 1/(1/ivar + emulator_error^2) over unmasked pixels; coarse grid over the
    scaled label box (all labels), then scipy least_squares (analytic Jacobian, bounds)
    from the ``n_starts`` best distinct grid points. Returns physical labels (n, n_label), chi2_nu."""
    from scipy.optimize import least_squares

    net = Float64Net(model)
    nl = model.n_label
    axes = [np.linspace(-0.5, 0.5, n_grid[min(j, len(n_grid) - 1)]) for j in range(nl)]
    if nl > 3:
        axes = axes[:3] + [np.linspace(-0.5, 0.5, 5)] * (nl - 3)
    G = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(-1, nl)
    F = net.forward(G)  # (n_grid, n_pix)
    good = (ivar > 0) & mask[None, :]
    with np.errstate(divide="ignore"):
        w = np.where(good, 1.0 / (1.0 / np.where(good, ivar, 1.0) + weights_extra_var[None, :]), 0.0)
    y = np.where(good, flux, 0.0)
    chi2_grid = (w * y * y).sum(1)[:, None] - 2 * (w * y) @ F.T + w @ (F * F).T
    out = np.full((flux.shape[0], nl), np.nan)
    chi2nu = np.full(flux.shape[0], np.nan)
    for i in range(flux.shape[0]):
        if good[i].sum() < 50:
            continue
        sw = np.sqrt(w[i, good[i]])
        yi = y[i, good[i]]
        order = np.argsort(chi2_grid[i])
        starts, start_idx = [G[order[0]]], [order[0]]
        for k in order[1:]:
            if len(starts) >= n_starts:
                break
            if all(np.max(np.abs(G[k] - s)) > 0.2 for s in starts):
                starts.append(G[k])
                start_idx.append(k)
        best = None
        cache: dict = {}

        def fj(x, gi=good[i], sw=sw, yi=yi):
            key = x.tobytes()
            if key not in cache:
                cache.clear()
                f, J = net.forward_jac(x)
                cache[key] = (sw * (f[gi] - yi), sw[:, None] * J[gi])
            return cache[key]

        c0 = chi2_grid[i, order[0]]
        for j, x0 in enumerate(starts):
            # further starts only where the grid says another basin is competitive
            if j and chi2_grid[i, order[0]] > 0 and chi2_grid[i, start_idx[j]] > 1.5 * c0:
                continue
            res = least_squares(lambda x: fj(x)[0], x0, jac=lambda x: fj(x)[1], bounds=(-0.5, 0.5),
                                method="trf", x_scale=0.1, max_nfev=40)
            if best is None or res.cost < best.cost:
                best = res
        out[i] = model.unscale(best.x[None, :])[0]
        chi2nu[i] = 2 * best.cost / max(1, good[i].sum() - nl)
    return out, chi2nu


def recovery_stats(est: np.ndarray, lit: np.ndarray, names: list[str]) -> dict:
    """Bias (median), scatter (1.4826 MAD) and outlier fractions for the two Teff ranges."""
    out = {}
    teff = lit[:, names.index("teff")]
    for tag, (lo, hi) in {"3500-8000K": (3500, 8000), "FGK_4000-7000K": (4000, 7000)}.items():
        sel = (teff >= lo) & (teff <= hi) & np.all(np.isfinite(est), axis=1)
        d = est[sel] - lit[sel]
        st = {"n": int(sel.sum())}
        for j, nm in enumerate(names):
            dj = d[:, j]
            st[f"{nm}_bias"] = float(np.median(dj)) if dj.size else None
            st[f"{nm}_scatter"] = float(1.4826 * np.median(np.abs(dj - np.median(dj)))) if dj.size else None
        if "logg" in names and d.size:
            st["logg_outlier_frac"] = float(np.mean(np.abs(d[:, names.index("logg")]) > 0.5))
        if "teff" in names and d.size:
            st["teff_outlier_frac_gt500K"] = float(np.mean(np.abs(d[:, names.index("teff")]) > 500))
        out[tag] = st
    return out


# --------------------------------------------------------------------------- MILES
def miles_cv_and_recovery(cube: Path, cfg: dict, *, invert: bool = True, save_model: Path | None = None,
                          mask_telluric_fit: bool = True, progress: bool = False) -> dict:
    from gsn_dask.cube import open_spectra
    from gsn_dask.emulator_torch import diagnostics_figure, train_gsn
    from gsn_dask.grid.prepare import telluric_mask

    ds = open_spectra(cube)
    t0 = time.perf_counter()
    model, rep = train_gsn(ds, progress=progress, **cfg)
    model.meta["training"]["cube_path"] = str(Path(cube).resolve())
    t_train = time.perf_counter() - t0
    res = {
        "config": rep["config"], "n_star": rep["n_star"], "n_pix": rep["n_pix"],
        "train_time_s": round(t_train, 1), "cv_time_s": round(rep["cv_time_s"], 1),
        "final_epochs": rep["final_epochs"], "best_epochs": [f["best_epoch"] for f in rep["folds"]],
        "grid": [float(model.wavelength[0]), float(model.wavelength[-1])],
        **{k: rep[k] for k in rep if k.startswith(("cv_", "noise_", "emulator_error_")) and k != "cv_folds"},
    }
    if save_model is not None:
        model.save(save_model)
        diagnostics_figure(rep, Path(save_model) / "diagnostics.png")
        res["model_dir"] = str(save_model)
        res["model_id"] = model.model_id
    if invert:
        t1 = time.perf_counter()
        names = model.label_names
        mask = ~np.asarray(telluric_mask(model.wavelength)) if mask_telluric_fit else np.ones(model.n_pix, bool)
        est = np.full_like(rep["label_values"], np.nan)
        chi2 = np.full(rep["n_star"], np.nan)
        teff = rep["label_values"][:, names.index("teff")]
        near = (teff >= 3400) & (teff <= 8200)  # the stats use 3500-8000 K
        cv = rep["cv_folds"]
        for j, fm in enumerate(cv.models):
            sel = (cv.model_index == j) & near
            est[sel], chi2[sel] = invert_stars(
                fm, rep["flux"][sel], rep["ivar"][sel], model.emulator_error.astype(np.float64) ** 2, mask
            )
        res["recovery"] = recovery_stats(est, rep["label_values"], names)
        res["recovery"]["median_chi2_nu"] = float(np.nanmedian(chi2))
        res["invert_time_s"] = round(time.perf_counter() - t1, 1)
        res["_est"] = est
        res["_lit"] = rep["label_values"]
    return res


# --------------------------------------------------------------------------- synthetic
def synthetic_grid(n_train: int = 2000, n_test: int = 500, epochs: int = 400, hidden: int = 256, seed: int = 0) -> dict:
    from gsn_dask.cube import log_lambda_grid
    from gsn_dask.emulator_torch import analytic_cube, train_gsn

    wave = log_lambda_grid(3900, 5800)
    tr = analytic_cube(n_train, wavelength=wave, seed=seed, alpha=True)
    te = analytic_cube(n_test, wavelength=wave, seed=seed + 1, alpha=True)
    t0 = time.perf_counter()
    model, rep = train_gsn(tr, hidden=hidden, epochs=epochs, folds=1, val_fraction=0.1, weight_floor=0.0,
                           weight_decay=0.0, patience=epochs, seed=seed, progress=False, batch_size=128, lr=2e-3,
                           label_ranges=None)
    t = time.perf_counter() - t0
    lab = np.stack([te[f"label_{n}"].values for n in model.label_names], 1)
    r = model.predict(lab) - te["flux"].values
    return {
        "n_train": n_train, "n_test": n_test, "n_pix": int(wave.size), "labels": model.label_names,
        "hidden": hidden, "epochs": epochs, "train_time_s": round(t, 1),
        "heldout_median_abs_resid": float(np.median(np.abs(r))),
        "heldout_p95_abs_resid": float(np.percentile(np.abs(r), 95)),
        "heldout_median_abs_resid_in_lines": float(np.median(np.abs(r)[te["flux"].values < 0.95])),
        "line_pixel_fraction": float(np.mean(te["flux"].values < 0.95)),
    }


# --------------------------------------------------------------------------- throughput
def throughput(model_dir: str | None, n_pix: int, hidden: int, activation: str, batch: int = 1024, repeat: int = 20) -> dict:
    """Run in a subprocess with every thread pool set to 1 thread."""
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    code = f"""
import json, time, numpy as np, torch
torch.set_num_threads(1)
from gsn_dask.emulator import GSN, load_model
from gsn_dask.emulator_torch import net_from_gsn
from gsn_dask.cube import log_lambda_grid
md = {model_dir!r}
if md:
    m = load_model(md)
else:
    rng = np.random.default_rng(0); w = log_lambda_grid(3700, 9100)[:{n_pix}]; h = {hidden}
    sizes = [3, h, h, h]
    m = GSN(hidden_layers=[(rng.normal(size=(a, b)) / a**.5, np.zeros(b)) for a, b in zip(sizes[:-1], sizes[1:])],
            W_out=rng.normal(size=(h, w.size)) * 0.01, b_out=np.ones(w.size), activation={activation!r},
            label_names=["teff", "logg", "feh"], bounds=[[3500, 8000], [0, 5], [-2.5, 0.5]], wavelength=w)
rng = np.random.default_rng(1)
lab = m.bounds[:, 0] + rng.uniform(size=({batch}, m.n_label)) * (m.bounds[:, 1] - m.bounds[:, 0])
def best(f):
    f(); ts = []
    for _ in range({repeat}):
        t = time.perf_counter(); f(); ts.append(time.perf_counter() - t)
    return min(ts)
t_np = best(lambda: m.predict(lab))
net = net_from_gsn(m, "cpu"); x = torch.from_numpy(m.scale(lab))
def tf():
    with torch.inference_mode():
        net(x)
t_t = best(tf)
fl = m.flops_per_spectrum() * {batch}
print(json.dumps(dict(batch={batch}, n_pix=m.n_pix, hidden=m.hidden_widths, flops_per_spectrum=m.flops_per_spectrum(),
    numpy_spectra_per_s={batch}/t_np, torch_spectra_per_s={batch}/t_t, numpy_gflops=fl/t_np/1e9, torch_gflops=fl/t_t/1e9,
    numpy_ms_per_batch=t_np*1e3, torch_ms_per_batch=t_t*1e3)))
"""
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------- main
#: Settings cross-validated by ``--sweep`` (each changes one thing from the defaults; epochs
#: 400 / patience 50; ``final="none"``: CV + recovery only, no final refit).
_SW = {"epochs": 400, "patience": 50, "final": "none"}
SWEEP = [
    {"name": "default", **_SW},
    {"name": "h128", "hidden": 128, **_SW},
    {"name": "h300", "hidden": 300, **_SW},
    {"name": "tanh", "activation": "tanh", **_SW},
    {"name": "leaky_relu", "activation": "leaky_relu", **_SW},
    {"name": "linear_teff", "label_transforms": {"teff": "identity"}, **_SW},
    {"name": "weight_decay_1e-2", "weight_decay": 1e-2, **_SW},
    {"name": "teff_le_10000K", "label_ranges": {"teff": [2500, 10000]}, **_SW},
    {"name": "ensemble3", "ensemble": 3, **_SW},
    {"name": "ensemble3_h128", "ensemble": 3, "hidden": 128, **_SW},
]


def _json_default(o):
    return o.tolist() if hasattr(o, "tolist") else str(o)


def fmt(v):
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cube", type=Path, default=None,
                    help="MILES training cube (default: the demo's, in the user cache; built on first use)")
    ap.add_argument("--sweep", action="store_true", help="cross-validate the SWEEP settings too")
    ap.add_argument("--sweep-only", nargs="*", default=None, help="names from SWEEP to run")
    ap.add_argument("--save-model", type=Path, default=None, help="save the default MILES model here")
    ap.add_argument("--skip", nargs="*", default=[],
                    help="sections to skip: miles (the default MILES model) synthetic throughput")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--set", nargs=2, action="append", default=[], metavar=("KEY", "JSON"),
                    help="override a train_gsn setting for every MILES run, e.g. --set weight_decay 1e-3")
    ap.add_argument("--out", type=Path, default=RESULTS)
    ap.add_argument("--throughput-models", nargs="*", type=Path, default=[],
                    help="more model dirs to time (e.g. an ensemble model)")
    ap.add_argument("--label-range", nargs=3, action="append", default=None, metavar=("NAME", "LO", "HI"))
    return ap.parse_args(argv)


def show(name: str, r: dict) -> None:
    """One line per trained recipe: CV residuals, emulator error, recovery per Teff range."""
    print(f"[{name}] cv|r|={r['cv_resid_per_pixel_median']:.4g} emu={r['emulator_error_median']:.4g} "
          f"chi_tot={r['cv_chi_tot_mad_std']:.3g} train={r['train_time_s']}s "
          + " | ".join(f"{tag}: n={s['n']} T {s['teff_bias']:+.0f}/{s['teff_scatter']:.0f} "
                       f"g {s['logg_bias']:+.2f}/{s['logg_scatter']:.2f} "
                       f"m {s['feh_bias']:+.2f}/{s['feh_scatter']:.2f} out_g {s['logg_outlier_frac']:.1%}"
                       for tag, s in r["recovery"].items() if isinstance(s, dict)), flush=True)


def miles_sections(args: argparse.Namespace, base: dict, results: dict) -> None:
    """The default recipe on the MILES cube (CV, refit, recovery) and the ``--sweep`` settings."""
    from gsn_dask.demo import miles_training_cube

    if args.cube is None:
        args.cube = miles_training_cube(progress=sys.stderr.isatty(), n_workers=0)
    elif not args.cube.exists():
        raise SystemExit(f"no MILES cube at {args.cube}")
    if "miles" not in args.skip:  # the default recipe: K-fold CV, refit on all stars, recovery
        r = miles_cv_and_recovery(args.cube, dict(base), save_model=args.save_model, progress=sys.stderr.isatty())
        est, lit = r.pop("_est"), r.pop("_lit")
        np.savez(HERE / "results" / "emulator_miles_recovery.npz", est=est, lit=lit)
        results["miles"] = r
        show("default", r)
    if args.sweep or args.sweep_only:
        sweep = results.get("miles_sweep", {})
        for run in [r for r in SWEEP if not args.sweep_only or r["name"] in args.sweep_only]:
            cfg = {**base, **{k: v for k, v in run.items() if k != "name"}}
            r = miles_cv_and_recovery(args.cube, cfg, progress=sys.stderr.isatty())
            r.pop("_est"), r.pop("_lit")
            sweep[run["name"]] = r
            show(run["name"], r)
            results["miles_sweep"] = sweep
            args.out.write_text(json.dumps(results, indent=1, default=_json_default))


def throughput_sections(args: argparse.Namespace, results: dict) -> None:
    """Spectra per second of the saved (or a random default-size) model and of ``--throughput-models``."""
    from gsn_dask.emulator_recipe import DEFAULT_RECIPE

    md = str(args.save_model) if args.save_model and (args.save_model / "model.json").exists() else None
    n_pix = results.get("miles", {}).get("n_pix", 3000)
    results["throughput"] = throughput(md, n_pix, DEFAULT_RECIPE.hidden_widths[0], DEFAULT_RECIPE.activation)
    results["throughput"]["model"] = md or "random weights, default architecture"
    print("[throughput]", results["throughput"], flush=True)
    for extra in args.throughput_models:
        t = throughput(str(extra), 0, 0, "")
        t["model"] = str(extra)
        results[f"throughput_{extra.name}"] = t
        print(f"[throughput {extra.name}]", t, flush=True)


def table_rows(results: dict) -> list[tuple[str, str]]:
    """(quantity, value) rows of the printed table."""
    rows = []
    m = results.get("miles")
    if m:
        rows.append(("MILES n_star / n_pix", f"{m['n_star']} / {m['n_pix']}"))
        rows.append(("CV median |resid| per pixel (median over px)", fmt(m["cv_resid_per_pixel_median"])))
        rows.append(("CV residual scatter per pixel (median)", fmt(m["cv_scatter_per_pixel_median"])))
        rows.append(("star noise per pixel (median)", fmt(m["noise_per_pixel_median"])))
        rows.append(("emulator error median / p90", f"{fmt(m['emulator_error_median'])} / {fmt(m['emulator_error_p90'])}"))
        rows.append(("CV chi (noise+emu err) MAD-std", fmt(m["cv_chi_tot_mad_std"])))
        for tag, s in m.get("recovery", {}).items():
            if not isinstance(s, dict):
                continue
            rows.append((f"recovery {tag} (n={s['n']}) Teff bias/scatter [K]", f"{s['teff_bias']:+.0f} / {s['teff_scatter']:.0f}"))
            rows.append((f"recovery {tag} logg bias/scatter [dex]", f"{s['logg_bias']:+.3f} / {s['logg_scatter']:.3f}"))
            rows.append((f"recovery {tag} [Fe/H] bias/scatter [dex]", f"{s['feh_bias']:+.3f} / {s['feh_scatter']:.3f}"))
            rows.append((f"recovery {tag} |dlogg|>0.5 fraction", f"{s['logg_outlier_frac']:.1%}"))
        rows.append(("MILES train time CPU (K-fold + final) [s]", fmt(m["train_time_s"])))
    for name, r in results.get("miles_sweep", {}).items():
        s = r["recovery"]["3500-8000K"]
        rows.append((f"sweep {name}: CV |r| / emu err / T,logg,feh scatter / |dlogg|>0.5",
                     f"{r['cv_resid_per_pixel_median']:.4f} / {r['emulator_error_median']:.4f} / "
                     f"{s['teff_scatter']:.0f} K, {s['logg_scatter']:.2f}, {s['feh_scatter']:.2f} / "
                     f"{s['logg_outlier_frac']:.1%}  ({r['train_time_s']:.0f} s)"))
    s = results.get("synthetic")
    if s:
        rows.append((f"synthetic held-out median |resid| ({s['n_pix']} px, 4 labels)", fmt(s["heldout_median_abs_resid"])))
        if "heldout_median_abs_resid_in_lines" in s:
            rows.append((f"synthetic held-out median |resid| in lines (flux < 0.95, {s['line_pixel_fraction']:.0%} of px)",
                         fmt(s["heldout_median_abs_resid_in_lines"])))
        rows.append(("synthetic held-out p95 |resid|", fmt(s["heldout_p95_abs_resid"])))
    t = results.get("throughput")
    if t:
        rows.append(("throughput numpy 1 thread [spectra/s] (GFLOP/s)", f"{t['numpy_spectra_per_s']:.0f} ({t['numpy_gflops']:.1f})"))
        rows.append(("throughput torch 1 thread [spectra/s] (GFLOP/s)", f"{t['torch_spectra_per_s']:.0f} ({t['torch_gflops']:.1f})"))
    for key, t in results.items():
        if key.startswith("throughput_"):
            rows.append((f"{key} numpy / torch 1 thread [spectra/s]",
                         f"{t['numpy_spectra_per_s']:.0f} / {t['torch_spectra_per_s']:.0f} (hidden {t['hidden']})"))
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)

    from gsn_dask.emulator_recipe import DEFAULT_RECIPE

    base = {"threads": args.threads, "labels": ["teff", "logg", "feh"]}
    if args.label_range:
        base["label_ranges"] = {n: (float(lo), float(hi)) for n, lo, hi in args.label_range}
    for k, v in args.set:
        base[k] = json.loads(v)
    results: dict = {"defaults": DEFAULT_RECIPE.to_json(), "overrides": {k: v for k, v in base.items()},
                     "baseline_payne_style": BASELINE}
    if args.out.exists():
        try:
            results = {**json.loads(args.out.read_text()), **results}
        except json.JSONDecodeError:
            pass
    if "miles" not in args.skip or args.sweep or args.sweep_only:
        miles_sections(args, base, results)
    if "synthetic" not in args.skip:
        results["synthetic"] = synthetic_grid()
        print("[synthetic]", results["synthetic"], flush=True)
    if "throughput" not in args.skip:
        throughput_sections(args, results)
    rows = table_rows(results)
    w = max((len(r[0]) for r in rows), default=10)
    print("\n" + "\n".join(f"{a:<{w}}  {b}" for a, b in rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=1, default=_json_default))
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
