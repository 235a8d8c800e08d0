"""A simulated survey through the Dask runner with the ``map`` sampler: throughput, memory, recovery.

    gsn-dask simulate --n 100000 --seed 7 --out sim100k.zarr          # ~2 min, 2.4 GB
    python benchmarks/survey_scale.py --cube sim100k.zarr --out sim100k_results.zarr

Side by side in one run: (1) the per-star CPU cost of ``map`` in this process on ``--calib``
stars spread evenly through the cube (one core), which gives the ideal throughput cores / cost; (2) the whole cube
through the Dask runner (``gsn-dask fit``'s :func:`gsn_dask.pipeline.run_fit`) on a LocalCluster with one single-threaded worker per core,
with the resident memory of the client and of every worker sampled every 2 s. Then: every row
present (status not "not fitted"), throughput / ideal, and label recovery against the true labels
(``label_*``) in S/N bins. Saves ``benchmarks/results/survey_scale.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import sys
import threading
import time
from pathlib import Path

import numpy as np

import gsn_dask as gd
from gsn_dask.api import DEFAULT_MODEL_DIR
from gsn_dask.pipeline import run_fit

OUT = Path(__file__).resolve().parent / "results" / "survey_scale.json"


def _rss() -> int:
    import psutil

    return int(psutil.Process().memory_info().rss)


class MemoryMonitor:
    """Peak RSS (bytes) of each worker and of this client, sampled every ``period`` s."""

    def __init__(self, client, period: float = 2.0) -> None:
        self.client, self.period = client, period
        self.peak: dict[str, int] = {}
        self.client_peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for w, rss in self.client.run(_rss).items():
                    self.peak[w] = max(self.peak.get(w, 0), int(rss))
            except Exception:  # noqa: BLE001 - a worker restarting between samples
                pass
            self.client_peak = max(self.client_peak, _rss())
            self._stop.wait(self.period)

    def __enter__(self) -> MemoryMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def recovery(res, cube, labels: list[str]) -> dict:
    """Bias and 1.4826 MAD of (fit - truth) per label in S/N bins, and the fraction inside [p16, p84]."""
    snr = np.asarray(cube["snr"].values, float)
    ok = np.array([str(s) == "ok" for s in res["status"].values])
    out = {}
    for lo, hi in ((5, 20), (20, 40), (40, 80), (80, 1e9)):
        sel = ok & (snr >= lo) & (snr < hi)
        row = {"n": int(sel.sum())}
        for j, lab in enumerate(labels):
            d = res["median"].values[sel, j] - cube[f"label_{lab}"].values[sel]
            t = cube[f"label_{lab}"].values[sel]
            inside = (t >= res["p16"].values[sel, j]) & (t <= res["p84"].values[sel, j])
            row[lab] = {"bias": float(np.median(d)), "mad_std": float(1.4826 * np.median(np.abs(d - np.median(d)))),
                        "in68": float(inside.mean())}
        out[f"snr {lo:g}-{hi:g}"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cube", type=Path, required=True)
    ap.add_argument("--out", type=Path, required=True, help="results store (replaced)")
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--workers", type=int, default=os.cpu_count())
    ap.add_argument("--calib", type=int, default=1000, help="stars for the in-process cost measurement")
    ap.add_argument("--save", type=Path, default=OUT)
    args = ap.parse_args(argv)
    from distributed import Client, LocalCluster

    cube = gd.open_spectra(args.cube)
    n = int(cube.sizes["star"])
    model = gd.load_model(args.model)
    # the in-process cost on --calib stars spread evenly through the cube (after a 50-star warm-up)
    part = cube.isel(star=np.linspace(0, n - 1, args.calib).astype(int)).load()
    gd.fit(cube.isel(star=slice(0, 50)).load(), model, sampler="map")
    c0 = time.process_time()
    gd.fit(part, model, sampler="map")
    cost = (time.process_time() - c0) / args.calib
    shutil.rmtree(args.out, ignore_errors=True)
    with LocalCluster(n_workers=args.workers, threads_per_worker=1, processes=True, dashboard_address=None) as lc, \
            Client(lc) as client, MemoryMonitor(client) as mon:
        t0 = time.perf_counter()
        info: dict = {}
        run_fit(args.cube, args.model or DEFAULT_MODEL_DIR, args.out, client=client, sampler="map", progress=False,
                info=info)
        wall = time.perf_counter() - t0
    res = gd.open_results(args.out)
    status = np.asarray(res["status"].values).astype(object)
    missing = int(sum(str(s) == "not fitted" for s in status))
    rate = n / wall
    out = {
        "n_stars": n, "workers": args.workers, "wall_s": wall, "stars_per_s": rate,
        "stars_per_s_per_core": rate / args.workers, "map_cpu_s_per_star_in_process": cost,
        "ideal_stars_per_s": args.workers / cost, "throughput_over_ideal": rate / (args.workers / cost),
        "rows_not_fitted_placeholder": missing, "n_ok": int(sum(str(s) == "ok" for s in status)),
        "status_counts": {k: int(v) for k, v in zip(*np.unique([str(s).split(":")[0] for s in status], return_counts=True))},
        "peak_rss_worker_gb": {w.split(":")[-1]: round(b / 1e9, 3) for w, b in mon.peak.items()},
        "peak_rss_client_gb": round(max(mon.client_peak, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024) / 1e9, 3),
        "store_size_mb": round(sum(f.stat().st_size for f in args.out.rglob("*") if f.is_file()) / 1e6, 1),
        "n_tasks": len(info["task_records"]),
        "task_seconds_sum": {k: round(sum(r[b] - r[a] for r in info["task_records"]), 1) for k, a, b in
                             (("read", "t_start", "t_read"), ("fit", "t_read", "t_fit"), ("write", "t_fit", "t_end"))},
        "task_cpu_s_sum": round(sum(r["cpu_s"] for r in info["task_records"]), 1),
        "recovery": recovery(res.load(), cube, list(model.label_names)),
        "load_average_after": os.getloadavg(),
    }
    print(json.dumps(out, indent=1))
    args.save.parent.mkdir(parents=True, exist_ok=True)
    args.save.write_text(json.dumps(out, indent=1))
    return 0 if missing == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
