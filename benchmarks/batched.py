"""Benchmark: the batched sampler (gsn_dask.fit.batched) against emcee per spectrum (fit_spectrum).

Side by side in one run, on the same simulated spectra and the same FitConfig:

* ``emcee``: :func:`gsn_dask.fit.sampler.fit_spectrum`, one spectrum at a time, 1 BLAS thread;
* ``batched-cpu``: :func:`gsn_dask.fit.batched.fit_spectra_batched` on the CPU, 1 torch thread;
* ``batched-cuda``: the same on the GPU when CUDA is available (more spectra);

for each move mixture asked (``--moves``, default the config default "laplace-de" and emcee's
"stretch"), plus: the MAP start (start.find_map per star vs batched_map), and the cost per
walker evaluation of the direct likelihood against the quadratic form through the linear last
layer (QuadraticChi2), with its set-up cost.

Reported per run: spectra/s, ms per spectrum, median n_eff_min (per label and rv) and the
fraction of stars with n_eff_min >= 100 and converged (>= tau_factor tau), the speed-up per
core against emcee at equal n_eff (ms per 100 effective samples), and on the GPU the fraction of
its FP32 peak reached (FLOPs counted: emulator forward pass 2 x sum(n_in x n_out) + rv shift
3 n_used + continuum normal equations 2 n_used (k + k(k+1)/2) + 4 n_used per evaluated row).

Model: ``--model DIR`` (``--model toy``: the analytic toy GSN), else the MILES GSN shipped in the package
(``gsn_dask/data/model``) when this installation has it, else the analytic toy GSN of the default size (3 x 256 SiLU, 3757 px; gsn_dask.fit.testing.toy_model),
else (no xarray) a random network of that size. With ``--no-emcee`` the script needs only
numpy + torch (a model directory is read without xarray/safetensors by a small reader).

    python benchmarks/batched.py                         # CPU, default sizes
    python benchmarks/batched.py --no-emcee --gpu-spectra 20000   # on a GPU machine

Prints a table and writes benchmarks/results/batched.json.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import struct
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from _common import default_model_dir  # noqa: E402  (benchmarks/ is on sys.path when run as a script)
from gsn_dask.fit.batched import fit_spectra_batched  # noqa: E402
from gsn_dask.fit.torch.emulator import TorchEmulator, torch_emulator  # noqa: E402
from gsn_dask.fit.torch.posterior import BatchedPosterior  # noqa: E402
from gsn_dask.fit.torch.quadratic import QuadraticChi2  # noqa: E402
from gsn_dask.fit.torch.start import batched_map  # noqa: E402
from gsn_dask.fit.config import FitConfig  # noqa: E402
from gsn_dask.fit.posterior import SpectrumPosterior, log10_step, rv_to_pixels  # noqa: E402


#: FP32 (non-tensor-core) peak, FLOP/s, by device-name fragment.
FP32_PEAK = {"H200": 67e12, "H100 PCIe": 51e12, "H100": 67e12, "A100": 19.5e12, "L40S": 91.6e12, "V100": 15.7e12}


# ---------------------------------------------------------------------- models
class LightModel:
    """What the posterior and the batched sampler need from a GSN, numpy only."""

    def __init__(self, layers, W_out, b_out, activation, label_names, bounds, wavelength, emulator_error,
                 label_transforms=None, model_id="light"):
        self.hidden_layers = [(np.asarray(W, np.float32), np.asarray(b, np.float32)) for W, b in layers]
        self.W_out = np.asarray(W_out, np.float32)
        self.b_out = np.asarray(b_out, np.float32)
        self.activation = activation
        self.label_names = list(label_names)
        self.bounds = np.asarray(bounds, np.float64)
        self.wavelength = np.asarray(wavelength, np.float64)
        self.emulator_error = np.asarray(emulator_error, np.float32)
        self.label_transforms = list(label_transforms or ["identity"] * len(self.label_names))
        self.model_id = model_id
        self.n_pix = self.wavelength.size
        self.n_label = len(self.label_names)
        self.hidden_widths = [int(W.shape[1]) for W, _ in self.hidden_layers]

    def predict(self, labels):
        emu = torch_emulator(self, "cpu")
        with torch.no_grad():
            return emu.predict(torch.as_tensor(np.atleast_2d(labels), dtype=torch.float64)).numpy()


def read_safetensors(path: Path) -> dict[str, np.ndarray]:
    """Tensors of a safetensors file (format: u64 header length, JSON header, raw little-endian data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    dt = {"F32": np.float32, "F64": np.float64, "F16": np.float16, "I64": np.int64, "I32": np.int32}
    out = {}
    for k, v in header.items():
        if k == "__metadata__":
            continue
        a, b = v["data_offsets"]
        out[k] = np.frombuffer(raw[8 + n + a : 8 + n + b], dtype=dt[v["dtype"]]).reshape(v["shape"]).copy()
    return out


def load_light(model_dir: Path) -> LightModel:
    meta = json.loads((model_dir / "model.json").read_text())
    t = read_safetensors(model_dir / "weights.safetensors")
    nh = len(meta["architecture"]["hidden"])
    return LightModel(
        [(t[f"hidden.{i}.weight"], t[f"hidden.{i}.bias"]) for i in range(nh)], t["out.weight"], t["out.bias"],
        meta["architecture"]["activation"], meta["labels"]["names"], meta["labels"]["bounds"], t["wavelength"],
        t["emulator_error"], (meta.get("label_scaling") or {}).get("transforms"), meta.get("model_id", "?"))


def random_model(n_label: int = 3, hidden=(256, 256, 256), seed: int = 0) -> LightModel:
    rng = np.random.default_rng(seed)
    wave = 10.0 ** (3.5682 + np.arange(3757) * 1e-4 + np.log10(3750.0 / 10**3.5682))
    layers, n_in = [], n_label
    for i, w in enumerate(hidden):
        layers.append((rng.normal(0, 4.0 if i == 0 else 1.6 / np.sqrt(n_in), (n_in, w)), rng.normal(0, 0.3, w)))
        n_in = w
    W_out = rng.normal(0, 0.02 / np.sqrt(n_in), (n_in, wave.size))
    bounds = np.array([[4000, 7000], [1, 5], [-2, 0.5]])[:n_label]
    return LightModel(layers, W_out, np.full(wave.size, 0.8), "silu", ["teff", "logg", "feh"][:n_label], bounds, wave,
                      np.full(wave.size, 0.002), model_id="random-256x3")


def get_model(arg: str | None):
    if arg == "toy":  # the default-size analytic GSN (3 x 256 SiLU, 3757 px)
        from gsn_dask.fit.testing import toy_model

        return toy_model(), "analytic toy GSN 3x256 SiLU (gsn_dask.fit.testing.toy_model)"
    if arg:
        d = Path(arg)
        try:
            from gsn_dask.emulator import load_model

            return load_model(d), f"model dir {d}"
        except ImportError:
            return load_light(d), f"model dir {d} (light reader)"
    shipped = default_model_dir()
    if shipped is not None:
        try:
            from gsn_dask.emulator import load_model

            return load_model(shipped), f"MILES GSN {shipped}"
        except ImportError:
            return load_light(shipped), f"MILES GSN {shipped} (light reader)"
    try:
        from gsn_dask.fit.testing import toy_model

        return toy_model(), "analytic toy GSN 3x256 SiLU (gsn_dask.fit.testing.toy_model)"
    except ImportError:
        return random_model(), "random network 3x256 SiLU, 3757 px"


# ---------------------------------------------------------------------- data
def simulate(model, n: int, snr: float, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """n spectra from the emulator at labels in the central 80% of the box, rv in +-150 km/s,
    noise of S/N ``snr`` plus the emulator error (the likelihood's variance)."""
    rng = np.random.default_rng(seed)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    labels = lo + (0.1 + 0.8 * rng.random((n, lo.size))) * (hi - lo)
    rv = rng.uniform(-150, 150, n)
    wave = np.asarray(model.wavelength, np.float64)
    spec = np.asarray(model.predict(labels), np.float64)
    step = log10_step(wave)
    flux = np.empty_like(spec)
    for i in range(n):
        pix = np.arange(wave.size) - rv_to_pixels(rv[i], step)
        flux[i] = np.interp(pix, np.arange(wave.size), spec[i])
    sig2 = 1.0 / snr**2 + np.asarray(model.emulator_error, np.float64) ** 2
    flux += rng.normal(size=flux.shape) * np.sqrt(sig2)
    ivar = np.full_like(flux, snr**2)
    return flux.astype(np.float32), ivar.astype(np.float32), labels, rv


# ---------------------------------------------------------------------- helpers
def flops_per_row(model, post: SpectrumPosterior) -> float:
    emu = torch_emulator(model, "cpu").flops_per_spectrum()  # block-diagonal ensemble layers: blocks only
    k = post.n_cont
    return float(emu + 3 * post.n_used + 2 * post.n_used * (k + k * (k + 1) // 2) + 4 * post.n_used)


def summarise(name: str, res: list, dt: float, n_cores: int, fl_row: float, device: str | None = None,
              cpu: float | None = None) -> dict:
    """Throughput, n_eff and FLOP rate of one run (``res``: the :class:`~gsn_dask.fit.result.FitResult`
    of each spectrum); ``cpu`` = process CPU seconds (used for the per-core figures: on a shared
    machine they are steadier than wall time)."""
    ok = [r for r in res if r.ok]
    neff = np.array([r.n_eff_min for r in ok])
    conv = np.array([not (r.flag & 2) for r in ok])
    rows = np.array([r.n_eval for r in ok], float)
    n = len(res)
    out = {
        "run": name, "n_spectra": n, "n_ok": len(ok), "seconds": dt, "spectra_per_s": n / dt,
        "ms_per_spectrum": 1e3 * dt / n,
        "ms_per_spectrum_per_core": 1e3 * (cpu if cpu is not None else dt * n_cores) / n,
        "cpu_seconds": cpu,
        "n_eff_min_median": float(np.median(neff)) if neff.size else math.nan,
        "frac_n_eff_ge_100": float(np.mean(neff >= 100)) if neff.size else math.nan,
        "frac_converged": float(np.mean(conv)) if conv.size else math.nan,
        "tau_max_median": float(np.median([r.tau_max for r in ok])) if ok else math.nan,
        "steps_median": float(np.median([r.n_steps for r in ok])) if ok else math.nan,
        "rows_per_spectrum": float(np.nanmean(rows)) if rows.size else math.nan,
        "ms_per_100_neff_per_core": (float(1e3 * (cpu if cpu is not None else dt * n_cores)
                                           / np.sum(np.minimum(neff, 1e9)) * 100) if neff.size else math.nan),
        "gflops_per_s": float(np.nansum(rows) * fl_row / dt / 1e9),
        "gflops_per_cpu_s": float(np.nansum(rows) * fl_row / cpu / 1e9) if cpu else None,
    }
    if device is not None:
        out["device"] = device
    return out


def peak_fp32(name: str) -> float | None:
    for k, v in FP32_PEAK.items():
        if k in name:
            return v
    return None


# ---------------------------------------------------------------------- parts
def bench_likelihood(model, posts, n_walkers: int, reps: int = 5) -> dict:
    """Direct vs quadratic-form chi2 per walker evaluation (CPU, 1 thread, float64 emulator for
    the comparison's agreement, float32 direct path timed as the sampler runs it)."""
    emu32 = TorchEmulator(model, "cpu")
    emu64 = TorchEmulator(model, "cpu", dtype=torch.float64)
    bp32 = BatchedPosterior(emu32, posts)
    bp64 = BatchedPosterior(emu64, posts)
    S = len(posts)
    rng = np.random.default_rng(0)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    lab = lo + (0.3 + 0.4 * rng.random((S, n_walkers, lo.size))) * (hi - lo)
    theta = torch.as_tensor(np.concatenate([lab, rng.uniform(5.0, 60.0, (S, n_walkers, 1))], -1))
    t0 = time.perf_counter()
    q = QuadraticChi2(bp64, 0, 0)
    t_setup = (time.perf_counter() - t0) / S
    c_q = q.chi2(theta)
    c_d = bp64.chi2(theta)
    agree = float(np.nanmax(((c_q - c_d).abs() / c_d).numpy()))

    def timeit(fn):
        fn()
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        return (time.perf_counter() - t) / reps / (S * n_walkers)

    return {
        "n_spectra": S, "n_walkers": n_walkers,
        "direct_f32_us_per_eval": 1e6 * timeit(lambda: bp32.log_prob(theta)),
        "direct_f64_us_per_eval": 1e6 * timeit(lambda: bp64.chi2(theta)),
        "quadratic_f64_us_per_eval": 1e6 * timeit(lambda: q.chi2(theta)),
        "quadratic_setup_s_per_spectrum_per_shift": t_setup,
        "quadratic_vs_direct_max_rel_diff": agree,
    }


def bench_map(model, posts, cfg) -> dict:
    out = {}
    emu = TorchEmulator(model, "cpu")
    bp = BatchedPosterior(emu, posts)
    emu.coarse_set(cfg.n_coarse)
    t = time.perf_counter()
    m = batched_map(bp, n_coarse=cfg.n_coarse, n_starts=cfg.n_starts, rv_bounds=cfg.rv_bounds_kms)
    out["batched_map_ms_per_spectrum"] = 1e3 * (time.perf_counter() - t) / len(posts)
    try:
        from gsn_dask.fit.start import coarse_set, find_map
    except ImportError:
        return out
    coarse_set(model, cfg.n_coarse)
    t = time.perf_counter()
    lps = [find_map(p, n_coarse=cfg.n_coarse, n_starts=cfg.n_starts).log_prob for p in posts]
    out["find_map_ms_per_spectrum"] = 1e3 * (time.perf_counter() - t) / len(posts)
    out["map_log_prob_batched_minus_find_map_median"] = float(np.median(m.log_prob.numpy() - np.array(lps)))
    return out


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command-line options."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=None, help="model directory, or \"toy\" (default: the shipped MILES GSN if installed, else toy)")
    ap.add_argument("--n-spectra", type=int, default=128, help="spectra for the batched CPU run")
    ap.add_argument("--n-emcee", type=int, default=8, help="spectra for the emcee run (laplace-de)")
    ap.add_argument("--n-emcee-stretch", type=int, default=2, help="spectra for the emcee run with stretch moves")
    ap.add_argument("--gpu-spectra", type=int, default=10000)
    ap.add_argument("--snr", type=float, default=30.0)
    ap.add_argument("--moves", default="laplace-de,stretch")
    ap.add_argument("--no-emcee", action="store_true", help="skip emcee/scipy parts (torch + numpy only)")
    ap.add_argument("--no-cpu", action="store_true", help="skip the batched CPU run")
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for both samplers")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "batched.json"))
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)

    model, model_desc = get_model(args.model)
    n_all = max(args.n_spectra, args.n_emcee, args.n_emcee_stretch)
    flux, ivar, labels, rvs = simulate(model, n_all, args.snr, args.seed)
    cuda = torch.cuda.is_available()
    info = {
        "model": model_desc, "n_pix": int(np.asarray(model.wavelength).size),
        "hidden": [int(np.asarray(W).shape[1]) for W, _ in model.hidden_layers], "snr": args.snr,
        "cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(), "threads": args.threads,
        "torch": torch.__version__, "cuda": torch.cuda.get_device_name(0) if cuda else None,
    }
    print("model:", model_desc, "|", info["n_pix"], "px, hidden", info["hidden"])
    seeds = list(range(1000, 1000 + n_all))
    runs: list[dict] = []
    extra: dict = {}
    base = FitConfig(min_good_pixels=100, blas_threads=args.threads)
    post0 = SpectrumPosterior(model, flux[0], ivar[0], base)
    fl_row = flops_per_row(model, post0)
    info["flops_per_row"] = fl_row
    torch.set_num_threads(args.threads)
    for moves in [m.strip() for m in args.moves.split(",") if m.strip()]:
        cfg = base.replace(moves=moves)
        if not args.no_emcee:
            from gsn_dask.fit.sampler import fit_spectrum
            from gsn_dask.fit.threads import blas_threads

            ne = args.n_emcee if moves != "stretch" else args.n_emcee_stretch
            if ne > 0:
                fit_spectrum(model, flux[0], ivar[0], config=cfg.replace(n_steps=10, n_burn=0, max_steps=10), seed=1)
                with blas_threads(args.threads):
                    t, c = time.perf_counter(), time.process_time()
                    res = [fit_spectrum(model, flux[i], ivar[i], config=cfg, seed=seeds[i]) for i in range(ne)]
                    dt, dc = time.perf_counter() - t, time.process_time() - c
                runs.append(summarise(f"emcee/{moves}", res, dt, args.threads, fl_row, cpu=dc))
                print(runs[-1])
        if not args.no_cpu and args.n_spectra > 0:
            n = args.n_spectra
            cpu_cfg = cfg.replace(device="cpu", batch_size=args.batch_size)
            fit_spectra_batched(model, flux[:2], ivar[:2], config=cpu_cfg.replace(n_steps=10, n_burn=0, max_steps=10),
                                seeds=seeds[:2], threads=args.threads)
            t, c = time.perf_counter(), time.process_time()
            res = fit_spectra_batched(model, flux[:n], ivar[:n], config=cpu_cfg, seeds=seeds[:n], threads=args.threads)
            dt, dc = time.perf_counter() - t, time.process_time() - c
            runs.append(summarise(f"batched-cpu/{moves}", res, dt, args.threads, fl_row, cpu=dc))
            print(runs[-1])
        if cuda and args.gpu_spectra > 0:
            n = args.gpu_spectra
            fg, ig, _, _ = simulate(model, n, args.snr, args.seed + 1) if n > n_all else (flux[:n], ivar[:n], None, None)
            sg = list(range(5000, 5000 + n))
            gpu_cfg = cfg.replace(device="cuda", batch_size=args.batch_size)
            fit_spectra_batched(model, fg[:64], ig[:64], config=gpu_cfg.replace(n_steps=10, n_burn=0, max_steps=10),
                                seeds=sg[:64])
            torch.cuda.synchronize()
            t = time.perf_counter()
            res = fit_spectra_batched(model, fg, ig, config=gpu_cfg, seeds=sg)
            torch.cuda.synchronize()
            dt = time.perf_counter() - t
            r = summarise(f"batched-cuda/{moves}", res, dt, 1, fl_row, device=info["cuda"])
            pk = peak_fp32(info["cuda"] or "")
            r["fp32_peak_flops"] = pk
            r["fraction_of_fp32_peak"] = (r["gflops_per_s"] * 1e9 / pk) if pk else None
            runs.append(r)
            print(r)
    # ---- speed-ups at equal n_eff (per core)
    by = {r["run"]: r for r in runs}
    for moves in [m.strip() for m in args.moves.split(",") if m.strip()]:
        e = by.get(f"emcee/{moves}") or by.get("emcee/laplace-de")
        for kind in ("batched-cpu", "batched-cuda"):
            b = by.get(f"{kind}/{moves}")
            if e and b:
                extra[f"speedup_{kind}/{moves}_vs_{e['run']}_per_100neff_per_core"] = (
                    e["ms_per_100_neff_per_core"] / b["ms_per_100_neff_per_core"])
    # ---- likelihood forms and MAP start
    try:
        posts = [SpectrumPosterior(model, flux[i], ivar[i], base) for i in range(min(8, n_all))]
        extra["likelihood"] = bench_likelihood(model, posts, base.n_walkers)
        print("likelihood:", extra["likelihood"])
        if not args.no_emcee:
            extra["map"] = bench_map(model, posts, base)
            print("map:", extra["map"])
    except Exception as exc:  # noqa: BLE001 - a side measurement must not lose the main table
        extra["side_error"] = f"{type(exc).__name__}: {exc}"
    # ---- table
    cols = ("run", "n_spectra", "ms_per_spectrum", "ms_per_spectrum_per_core", "n_eff_min_median", "frac_n_eff_ge_100",
            "frac_converged", "tau_max_median", "steps_median", "ms_per_100_neff_per_core", "gflops_per_s")
    print("(per core = process CPU seconds with 1 thread; wall time on a shared machine is noisier)")
    print()
    print(" | ".join(f"{c:>14s}" if i else f"{c:<26s}" for i, c in enumerate(cols)))
    for r in runs:
        print(" | ".join(f"{r[c]:<26s}" if i == 0 else f"{r[c]:14.4g}" for i, c in enumerate(cols)))
    for k, v in extra.items():
        if not isinstance(v, dict):
            print(f"{k}: {v:.3g}" if isinstance(v, float) else f"{k}: {v}")
    out = {"info": info, "config": base.to_dict(), "runs": runs, **extra}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=1, default=float))
    print("wrote", args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
