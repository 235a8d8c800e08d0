"""Benchmark of training-grid preparation (issue 4): spectra per second.

1. PHOENIX-size fixtures: ``--n-spectra`` synthetic spectra written in the PHOENIX HiRes file
   format at full size (1,569,128 pixels, 500-55000 A; ``gsn_dask.grid.phoenix.write_fixture_grid``),
   then the whole path of ``gsn-dask grid phoenix`` (read FITS, degrade to R=1800, rebin onto the
   LAMOST grid, normalise, write zarr), side by side:
     * in-process (synchronous Dask scheduler),
     * a LocalCluster with 1 worker and with 2 workers (1 thread each), started before the
       timer (start-up reported separately) and passed in by address.
   Also the in-memory cost of ``prepare_spectrum`` alone (no I/O) for one such spectrum.
2. MILES: the full build (945 stars) in-process and on the 2-worker cluster (wheel from the cache;
   ``--skip-miles`` to leave it out).

    python benchmarks/grid.py [--n-spectra 12] [--workers 1 2] [--skip-miles]

Prints a table and writes benchmarks/results/grid.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "grid.json"


def _fixture_points(n: int) -> list[dict[str, float]]:
    teffs = [4000.0 + 100.0 * i for i in range(n)]
    return [{"teff": t, "logg": 4.5, "feh": 0.0, "alpha_fe": 0.0} for t in teffs]


def bench_prepare_only(root: Path, repeats: int = 3) -> dict[str, float]:
    from gsn_dask.grid import build as B

    loader = B.PhoenixLoader(str(root), r_source=500000.0)
    files = sorted(root.rglob("lte*.fits"))
    cfg = B.PrepareConfig()
    wave = B.cube_wavelength(500.0, 55000.0, cfg)
    t0 = time.perf_counter()
    spec = loader(files[0])
    t_read = time.perf_counter() - t0
    best = np.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        f, iv, _ = B.prepare_spectrum(spec, wave, cfg)
        best = min(best, time.perf_counter() - t0)
    from gsn_dask.grid.prepare import continuum_normalise

    t0 = time.perf_counter()
    continuum_normalise(wave, f, iv)
    t_norm = time.perf_counter() - t0
    return {"n_pix_source": int(spec.flux.size), "read_s": t_read, "degrade_rebin_s": best, "normalise_s": t_norm}


def bench_build(fn, n: int, workers: int | None) -> dict[str, float]:
    """Run ``fn(scheduler)`` in-process (workers None) or on a fresh LocalCluster."""
    if workers is None:
        t0 = time.perf_counter()
        res = fn(None)
        dt = time.perf_counter() - t0
        return _row(0, 0.0, dt, res)
    from distributed import LocalCluster

    t0 = time.perf_counter()
    cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0")
    startup = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        res = fn(cluster.scheduler_address)
        dt = time.perf_counter() - t0
    finally:
        cluster.close()
    return _row(workers, startup, dt, res)


def _row(workers: int, startup: float, dt: float, res) -> dict[str, float]:
    return {"workers": workers, "startup_s": startup, "wall_s": dt, "n": res.n_written,
            "spectra_per_s": res.n_written / dt, "task_s": res.task_seconds, "task_cpu_s": res.task_cpu_seconds,
            "spectra_per_task_s": res.n_written / max(res.task_seconds, 1e-9),
            "spectra_per_cpu_s": res.n_written / max(res.task_cpu_seconds, 1e-9)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-spectra", type=int, default=12, help="PHOENIX-size fixture spectra")
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--skip-miles", action="store_true")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)

    from gsn_dask.grid import build as B
    from gsn_dask.grid import phoenix

    out: dict[str, object] = {
        "machine": {"python": sys.version.split()[0], "platform": platform.platform(), "cpus": os.cpu_count(),
                    "loadavg_start": os.getloadavg()},
        "notes": ("wall-clock seconds; cluster start-up excluded from wall_s; task_s / task_cpu_s = wall / CPU time "
                  "summed inside the preparation tasks; shared 2-core machine, load varies"),
    }
    tmp = Path(tempfile.mkdtemp(prefix="gsn-grid-bench-"))
    try:
        root = tmp / "HiResFITS"
        t0 = time.perf_counter()
        phoenix.write_fixture_grid(root, _fixture_points(args.n_spectra), n_pix=phoenix.PHOENIX_NPIX)
        t_fix = time.perf_counter() - t0
        print(f"wrote {args.n_spectra} PHOENIX-size fixtures ({phoenix.PHOENIX_NPIX} px) in {t_fix:.1f} s")
        out["phoenix_prepare_only"] = bench_prepare_only(root)
        rows = []
        for w in [None, *args.workers]:
            def fn(sched, w=w):
                return B.build_phoenix_cube(root, tmp / f"phx_{w}.zarr", feh=0.0, scheduler=sched, batch_size=2,
                                            overwrite=True, progress=False)
            r = bench_build(fn, args.n_spectra, w)
            rows.append(r)
            print(f"phoenix  workers={r['workers']}: {r['n']} spectra in {r['wall_s']:.1f} s "
                  f"({r['spectra_per_s']:.2f}/s; start-up {r['startup_s']:.1f} s)")
        out["phoenix_build"] = rows
        if not args.skip_miles:
            from gsn_dask.grid.libraries import build_miles_cube

            mrows = []
            for w in [None, 2]:
                def fn(sched, w=w):
                    return build_miles_cube(tmp / f"miles_{w}.zarr", scheduler=sched, overwrite=True, progress=False)
                r = bench_build(fn, 945, w)
                mrows.append(r)
                print(f"miles    workers={r['workers']}: {r['n']} spectra in {r['wall_s']:.1f} s "
                      f"({r['spectra_per_s']:.1f}/s; start-up {r['startup_s']:.1f} s)")
            out["miles_build"] = mrows
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    out["machine"]["loadavg_end"] = os.getloadavg()  # type: ignore[index]

    print()
    print(f"{'case':<15}{'workers':>8}{'n':>6}{'wall s':>9}{'spec/s':>9}{'startup s':>11}{'task s':>9}{'task cpu s':>11}"
          f"{'spec/cpu-s':>11}")
    for key in ("phoenix_build", "miles_build"):
        for r in out.get(key, []):  # type: ignore[union-attr]
            print(f"{key:<15}{r['workers']:>8}{r['n']:>6}{r['wall_s']:>9.1f}{r['spectra_per_s']:>9.2f}{r['startup_s']:>11.1f}"
                  f"{r['task_s']:>9.1f}{r['task_cpu_s']:>11.1f}{r['spectra_per_cpu_s']:>11.2f}")
    p = out["phoenix_prepare_only"]
    print(f"one PHOENIX-size spectrum ({p['n_pix_source']} px): read {p['read_s']:.2f} s, degrade+rebin "
          f"{p['degrade_rebin_s']:.2f} s, normalise {p['normalise_s'] * 1e3:.1f} ms")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(out, indent=2))
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
