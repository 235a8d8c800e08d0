"""Benchmark: seconds per spectrum per core for a converged posterior (n_eff >= 100 per label).

Side by side, in one process, on one core (BLAS limited to 1 thread):

* **gsn-dask**: :func:`gsn_dask.fit.sampler.fit_spectrum` with the default :class:`FitConfig`
  (batched MAP start, vectorised log-probability, Laplace + DE moves) held to the baseline's
  standard, emcee's chain >= 50 tau (the package default is 20 tau with 32 walkers: see
  ``benchmarks/walkers.py``; ``results/fit.json`` was measured with the former 10 walkers);
* **baseline**: what a straightforward user writes: ``emcee.EnsembleSampler`` with emcee's default
  stretch move, 32 walkers, and a NON-vectorised log-probability that calls the network for one
  walker at a time (``np.interp`` Doppler shift, ``np.linalg.lstsq`` continuum, same likelihood),
  started from the same MAP ball (a gift to the baseline), run until n_eff >= 100 for every
  parameter (checked every 100 steps after 100 burn-in steps).

Also measured: the autocorrelation time of the three move sets, and the two likelihood paths
(direct ``hidden @ W_out`` per walker vs a precomputed quadratic form in the last hidden layer at
a fixed rv), checked to give the same log-probability.

Times are CPU seconds of this process (``time.process_time``) and wall seconds; the machine may be
shared, so the ratio (measured side by side) is the robust number.

Usage: ``python benchmarks/fit.py [--n-stars 12] [--n-baseline 3] [--snr 30] [--model DIR]``.
Prints a table and writes ``benchmarks/results/fit.json``.
"""
from __future__ import annotations

import os

for _v in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_v, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
def load(model_dir: str | None):
    """The model of ``--model DIR``, else the shipped MILES GSN if installed, else the toy GSN."""
    from _common import default_model_dir

    from gsn_dask.emulator import load_model
    from gsn_dask.fit.testing import toy_model

    if model_dir:
        return load_model(model_dir), f"{model_dir}"
    shipped = default_model_dir()
    if shipped is not None:
        return load_model(shipped), f"{shipped}"
    return toy_model(), "gsn_dask.fit.testing.toy_model() (3x256 SiLU, 3753 px; no MILES model installed)"


def make_stars(model, n: int, snr: float, seed: int = 0):
    from gsn_dask.fit.testing import noisy_spectrum

    rng = np.random.default_rng(seed)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    out = []
    for _ in range(n):
        truth = lo + (0.15 + 0.7 * rng.random(lo.size)) * (hi - lo)
        rv = rng.uniform(-300, 300)
        flux, ivar = noisy_spectrum(model, truth, snr=snr, rv=rv, rng=rng)
        out.append((truth, rv, flux, ivar))
    return out


# --------------------------------------------------------------------------- baseline
def baseline_log_prob_factory(model, flux, ivar, config, lo_hi):
    """The straightforward one-walker log-probability (precomputes only the obvious)."""
    from numpy.polynomial import chebyshev

    from gsn_dask.fit.posterior import C_KMS, telluric_mask

    wave = model.wavelength.astype(np.float64)
    lo, hi = lo_hi
    f = flux[lo:hi].astype(np.float64)
    iv = ivar[lo:hi].astype(np.float64)
    good = (iv > 0) & np.isfinite(f) & ~telluric_mask(wave[lo:hi])
    w = 1.0 / (1.0 / iv[good] + model.emulator_error[lo:hi][good].astype(np.float64) ** 2)
    sw = np.sqrt(w)
    x = 2 * (wave[lo:hi] - wave[lo]) / (wave[hi - 1] - wave[lo]) - 1
    T = chebyshev.chebvander(x, config.cheb_degree)[good]
    logw = np.log10(wave)
    rest_log = logw[lo:hi][good]
    bl, bh = model.bounds[:, 0], model.bounds[:, 1]
    rvl, rvh = config.rv_bounds_kms

    def log_prob(theta):
        labels, rv = theta[:-1], theta[-1]
        if np.any(labels < bl) or np.any(labels > bh) or not (rvl <= rv <= rvh):
            return -np.inf
        spec = model.predict(labels[None, :])[0]
        m = np.interp(rest_log - np.log10(1 + rv / C_KMS), logw, spec)
        A = m[:, None] * T
        c = np.linalg.lstsq(A * sw[:, None], f[good] * sw, rcond=None)[0]
        r = f[good] - A @ c
        return -0.5 * float(np.sum(w * r * r))

    return log_prob


def run_baseline(model, flux, ivar, config, seed, n_walkers=32, n_burn=100, chunk=100, max_steps=5000):
    import emcee

    from gsn_dask.fit.diagnostics import autocorr_time
    from gsn_dask.fit.posterior import SpectrumPosterior
    from gsn_dask.fit.seeds import random_state
    from gsn_dask.fit.start import find_map

    post = SpectrumPosterior(model, flux, ivar, config)
    t0c, t0w = time.process_time(), time.perf_counter()
    mres = find_map(post, n_coarse=config.n_coarse, n_starts=config.n_starts)
    lp = baseline_log_prob_factory(model, flux, ivar, config, (post.lo, post.hi))
    rng = np.random.default_rng(seed)
    p0 = mres.theta + rng.standard_normal((n_walkers, post.ndim)) @ np.linalg.cholesky(mres.cov).T
    p0 = np.clip(p0, post.lower + 1e-6 * (post.upper - post.lower), post.upper - 1e-6 * (post.upper - post.lower))
    s = emcee.EnsembleSampler(n_walkers, post.ndim, lp)
    state = s.run_mcmc(emcee.State(p0, random_state=random_state(seed).get_state()), n_burn, progress=False)
    s.reset()
    n = 0
    first: dict | None = None
    while True:
        state = s.run_mcmc(state, chunk, progress=False)
        n += chunk
        tau = autocorr_time(s.get_chain())
        n_eff = n * n_walkers / tau
        row = {
            "cpu_s": time.process_time() - t0c,
            "wall_s": time.perf_counter() - t0w,
            "n_eff_min": float(np.min(n_eff)),
            "tau_max": float(np.max(tau)),
            "n_steps": n + n_burn,
            "n_eval": (n + n_burn) * n_walkers,
            "converged_50tau": bool(n >= 50 * np.max(tau)),
        }
        if first is None and np.min(n_eff) >= 100:
            first = row  # the n_eff >= 100 standard
        if (first is not None and row["converged_50tau"]) or n >= max_steps:
            break
    return {"neff100": first or row, "converged": row}


# --------------------------------------------------------------------------- likelihood paths
class QuadraticPath:
    """chi^2 at a FIXED rv as a quadratic form in the last hidden layer h (continuum profiled):
    m_v = h W_v + b_v (W_v = the shifted W_out), so G_jk = h^T Q_jk h + 2 h.q_jk + s_jk and
    b_j = h.g_j + e_j, with Q_jk = W_v diag(w T_j T_k) W_v^T (float64, n_hidden^2 each)."""

    def __init__(self, post, rv: float):
        self.post = post
        W = post.shift(post.model.W_out, np.full(post.model.W_out.shape[0], rv)).astype(np.float64)
        # shift() is linear: the bias shifts on its own
        b = post.shift(post.model.b_out[None, :], np.array([rv]))[0].astype(np.float64)
        w, T, f = post.w, post.T, post.f
        self.pairs = post._pairs
        self.Q = np.stack([(W * (w * T[:, j] * T[:, k])) @ W.T for j, k in self.pairs])
        nh = W.shape[0]
        self.Qcat = np.ascontiguousarray(self.Q.transpose(1, 0, 2).reshape(nh, -1))  # (n_h, n_pairs * n_h)
        self.q = np.stack([W @ (w * T[:, j] * T[:, k] * b) for j, k in self.pairs])
        self.s = np.array([np.sum(w * T[:, j] * T[:, k] * b * b) for j, k in self.pairs])
        self.g = np.stack([W @ (w * f * T[:, j]) for j in range(post.n_cont)])
        self.e = np.array([np.sum(w * f * T[:, j] * b) for j in range(post.n_cont)])
        self.rv = rv

    def chi2(self, labels: np.ndarray) -> np.ndarray:
        H = self.post.model.hidden(labels).astype(np.float64)
        n, nh = H.shape
        HQ = (H @ self.Qcat).reshape(n, -1, nh)  # one gemm for all pairs
        gp = np.einsum("npj,nj->np", HQ, H) + 2 * H @ self.q.T + self.s
        b = H @ self.g.T + self.e
        k = self.post.n_cont
        G = np.empty((H.shape[0], k, k))
        for p, (j, kk) in enumerate(self.pairs):
            G[:, j, kk] = G[:, kk, j] = gp[:, p]
        c = np.linalg.solve(G, b[..., None])[..., 0]
        return self.post._wff - np.einsum("nk,nk->n", b, c)


def bench_paths(model, star, config, n_walkers, reps=200):
    from gsn_dask.fit.posterior import SpectrumPosterior

    truth, rv, flux, ivar = star
    post = SpectrumPosterior(model, flux, ivar, config)
    t = time.process_time()
    qp = QuadraticPath(post, rv)
    t_pre = time.process_time() - t
    rng = np.random.default_rng(0)
    span = model.bounds[:, 1] - model.bounds[:, 0]
    lab = truth + rng.normal(0, 0.003, (n_walkers, truth.size)) * span
    th = np.column_stack([lab, np.full(n_walkers, rv)])
    direct = post.chi2(th)
    quad = qp.chi2(lab)
    out = {"max_abs_dchi2": float(np.max(np.abs(direct - quad))), "chi2": float(direct[0]),
           "precompute_s": t_pre, "n_walkers": n_walkers}
    for name, fn in (("direct", lambda: post.chi2(th)), ("quadratic", lambda: qp.chi2(lab))):
        fn()
        t = time.process_time()
        for _ in range(reps):
            fn()
        out[f"{name}_s_per_call"] = (time.process_time() - t) / reps
    gain = out["direct_s_per_call"] - out["quadratic_s_per_call"]
    out["break_even_calls"] = float(t_pre / gain) if gain > 0 else float("inf")
    return out


def bench_moves(model, stars, moves=("stretch", "de", "laplace-de")):
    from gsn_dask.fit.config import FitConfig
    from gsn_dask.fit.sampler import fit_spectrum

    rows = []
    for mv in moves:
        taus, accs = [], []
        for i, (truth, rv, flux, ivar) in enumerate(stars):
            cfg = FitConfig(moves=mv, n_walkers=12, n_burn=100, n_steps=600, max_steps=600)
            r = fit_spectrum(model, flux, ivar, config=cfg, seed=1000 + i)
            taus.append(r.tau_max)
            accs.append(r.acceptance)
        rows.append({"moves": mv, "n_walkers": 12, "tau_max_mean": float(np.mean(taus)), "tau_max": taus,
                     "acceptance_mean": float(np.mean(accs)), "steps_for_50tau": float(50 * np.mean(taus))})
    return rows


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-stars", type=int, default=12, help="spectra fitted with gsn-dask")
    ap.add_argument("--n-baseline", type=int, default=3, help="spectra fitted with the baseline")
    ap.add_argument("--snr", type=float, default=30.0)
    ap.add_argument("--model", default=None, help="model dir (default: the shipped MILES GSN if installed, else toy)")
    ap.add_argument("--skip-moves", action="store_true", help="skip the move comparison")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "fit.json"))
    return ap.parse_args(argv)


def print_report(r: dict) -> None:
    """The benchmark table of a result record (as written to the JSON file)."""
    print(f"model: {r['model']}  ({r['n_pix']} px, labels {r['labels']})")
    print(f"S/N {r['snr']}; 1 BLAS thread; load average {r['machine']['loadavg_start'][0]:.1f} -> {r['machine']['loadavg_end'][0]:.1f} "
          f"on {os.cpu_count()} cores (CPU seconds are this process's)")
    hdr = f"{'method':<46}{'stars':>6}{'cpu s/spec':>11}{'wall s':>8}{'n_eff_min':>10}{'tau':>6}{'steps':>7}{'evals':>7}{'cpu s/100neff':>14}{'>=50tau':>8}"
    print(hdr)
    print("-" * len(hdr))
    names = {
        "gsn_dask": "gsn-dask default (n_eff>=100, >=50 tau)",
        "baseline_converged": "baseline, same standard (n_eff>=100, >=50 tau)",
        "gsn_dask_neff100_only": "gsn-dask, n_eff>=100 only",
        "baseline_neff100_only": "baseline, n_eff>=100 only",
    }
    for key, name in names.items():
        s_ = r["summary"][key]
        print(f"{name:<46}{s_['n_stars']:>6}{s_['cpu_s']:>11.3f}{s_['wall_s']:>8.2f}{s_['n_eff_min']:>10.0f}{s_['tau_max']:>6.1f}"
              f"{s_['n_steps']:>7.0f}{s_['n_eval']:>7.0f}{s_['cpu_s_per_100_neff']:>14.4f}{s_['converged_50tau_fraction']:>8.0%}")
    for k, v in r["speedup"].items():
        print(f"speed-up, {k}: {v:.1f}x")
    print(f"gsn-dask default: min n_eff over stars {r['summary']['gsn_dask']['min_n_eff_min']:.0f}; "
          f"coarse set (once per model) {r['coarse_set_cpu_s_once_per_model']:.3f} s")
    print("\nlikelihood paths at a fixed rv (quadratic form vs direct):")
    for p in r["likelihood_paths"]:
        print(f"  {p['n_walkers']:>3} walkers: direct {p['direct_s_per_call']*1e3:.3f} ms/call, quadratic "
              f"{p['quadratic_s_per_call']*1e3:.3f} ms/call, precompute {p['precompute_s']*1e3:.0f} ms, "
              f"break-even {p['break_even_calls']:.0f} calls, max |dchi2| {p['max_abs_dchi2']:.2e} (chi2 {p['chi2']:.0f})")
    if r["moves"]:
        print("\nmoves (12 walkers, 600 production steps):")
        for m in r["moves"]:
            print(f"  {m['moves']:<11} tau_max {m['tau_max_mean']:.1f} steps, acceptance {m['acceptance_mean']:.2f}, "
                  f"50 tau = {m['steps_for_50tau']:.0f} steps")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from gsn_dask import __version__
    from gsn_dask.fit.config import FitConfig
    from gsn_dask.fit.sampler import fit_spectrum
    from gsn_dask.fit.start import coarse_set
    from gsn_dask.fit.threads import blas_threads

    assert "torch" not in sys.modules
    load0 = os.getloadavg()
    model, model_desc = load(args.model)
    cfg = FitConfig(tau_factor=50.0)  # the baseline's standard (emcee's 50-tau rule)
    stars = make_stars(model, max(args.n_stars, args.n_baseline), args.snr)
    keys = ("cpu_s", "wall_s", "n_eff_min", "tau_max", "n_steps", "n_eval")

    def fit_rows(config, n):
        rows = []
        for i, (truth, rv, flux, ivar) in enumerate(stars[:n]):
            c0, w0 = time.process_time(), time.perf_counter()
            r = fit_spectrum(model, flux, ivar, config=config, seed=i)
            rows.append({"cpu_s": time.process_time() - c0, "wall_s": time.perf_counter() - w0,
                         "n_eff_min": r.n_eff_min, "tau_max": r.tau_max, "n_steps": r.n_steps + config.n_burn,
                         "n_eval": r.n_eval, "flag": r.flag, "converged_50tau": bool(r.n_steps >= 50 * r.tau_max),
                         "z": ((r.median - truth) / (0.5 * (r.p84 - r.p16))).tolist()})
        return rows

    # n_eff >= 100 only (no 50-tau rule): short production, no extension
    cfg_neff = cfg.replace(n_steps=40, max_steps=40, tau_factor=0.0)
    with blas_threads(1):
        t = time.process_time()
        coarse_set(model, cfg.n_coarse)
        t_coarse = time.process_time() - t
        ours = fit_rows(cfg, args.n_stars)
        ours_neff = fit_rows(cfg_neff, args.n_stars)
        base_runs = [run_baseline(model, flux, ivar, cfg, seed=i) for i, (_, _, flux, ivar) in enumerate(stars[: args.n_baseline])]
        paths = [bench_paths(model, stars[0], cfg, n) for n in (cfg.n_walkers // 2, cfg.n_walkers)]
        moves = [] if args.skip_moves else bench_moves(model, stars[:3])
    assert "torch" not in sys.modules, "the fit must not import torch"
    base_neff = [b["neff100"] for b in base_runs]
    base_conv = [b["converged"] for b in base_runs]

    def agg(rows):
        out = {k: float(np.median([r[k] for r in rows])) for k in keys}
        out["cpu_s_per_100_neff"] = float(np.median([r["cpu_s"] / r["n_eff_min"] * 100 for r in rows]))
        out["min_n_eff_min"] = float(min(r["n_eff_min"] for r in rows))
        out["converged_50tau_fraction"] = float(np.mean([r["converged_50tau"] for r in rows]))
        out["n_stars"] = len(rows)
        return out

    summary = {
        "gsn_dask": agg(ours),
        "gsn_dask_neff100_only": agg(ours_neff),
        "baseline_neff100_only": agg(base_neff),
        "baseline_converged": agg(base_conv),
    }
    speedup = {
        "converged (n_eff>=100 and >=50 tau), CPU s": summary["baseline_converged"]["cpu_s"] / summary["gsn_dask"]["cpu_s"],
        "n_eff>=100 only, CPU s": summary["baseline_neff100_only"]["cpu_s"] / summary["gsn_dask_neff100_only"]["cpu_s"],
        "CPU s per 100 effective samples (default vs baseline converged)":
            summary["baseline_converged"]["cpu_s_per_100_neff"] / summary["gsn_dask"]["cpu_s_per_100_neff"],
    }
    result = {
        "benchmark": "fit",
        "package_version": __version__,
        "model": model_desc,
        "model_id": model.model_id,
        "n_pix": int(model.wavelength.size),
        "hidden": list(getattr(model, "hidden_widths", [])),
        "labels": list(model.label_names),
        "snr": args.snr,
        "config": cfg.to_dict(),
        "config_neff100_only": cfg_neff.to_dict(),
        "baseline": "emcee StretchMove, 32 walkers, non-vectorised log-prob (1 emulator call per walker), "
                    "MAP-ball start, 100 burn-in steps, checked every 100 steps",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "processor": platform.processor(),
                    "loadavg_start": load0, "loadavg_end": os.getloadavg(), "blas_threads": 1},
        "coarse_set_cpu_s_once_per_model": t_coarse,
        "summary": summary,
        "speedup": speedup,
        "goal": {"speedup>=20 (converged)": speedup["converged (n_eff>=100 and >=50 tau), CPU s"] >= 20,
                 "gsn_dask_cpu_s<0.25": summary["gsn_dask"]["cpu_s"] < 0.25},
        "likelihood_paths": paths,
        "moves": moves,
        "per_star": {"gsn_dask": ours, "gsn_dask_neff100_only": ours_neff, "baseline": base_runs},
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))

    print_report(result)
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
