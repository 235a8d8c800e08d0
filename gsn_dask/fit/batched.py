r"""The batched strategy: the walkers of many spectra advanced together as one tensor computation.

:func:`fit_many` is what :func:`gsn_dask.fit.block.fit_block` calls with ``sampler="batched"``;
:func:`fit_spectra_batched` fits S normalised spectra at once on CUDA (when present) or on the
CPU, with the posterior of :mod:`gsn_dask.fit.posterior` (same weights, pixel range, rv shift,
profiled Chebyshev continuum, telluric mask, priors), the MAP start of :mod:`gsn_dask.fit.start`,
the moves, walker start, burn-in re-fit and stopping rule of the emcee path
(:mod:`gsn_dask.fit.rules`), and the same :class:`~gsn_dask.fit.result.FitResult` and flags.
The pieces, one concern per module, are in :mod:`gsn_dask.fit.torch`. torch is imported here and
there only (the emcee path never imports it).

Randomness: per star, never per batch
    Every random number is a Philox4x32-10 output keyed by the star's seed and counted by the
    star's own step (:mod:`gsn_dask.fit.torch.rng`), so a star's chain depends on its seed, its data
    and the config: not on the other stars, the batch size, the chunking or a device generator.
    (Floating point: BLAS and reduction kernels pick code paths by shape, so a star's numbers can
    differ in the last bits, ~1e-13 relative, between batch compositions; an accept/reject
    decision flips with probability ~1e-13 per step.)

CPU cost (measured, benchmarks/batched.py, 1 core of a 2-core AMD EPYC VM)
    Per emulator row of the 3 x 256 / 3753 px GSN: the network 34 us (64 GFLOP/s, near this
    core's float32 GEMM peak), the rv shift ~7 us, the float64 continuum normal equations ~14 us
    (two skinny GEMMs, memory-bound). The emcee path already evaluates its walkers in one
    vectorised call, so it pays the same per-row costs with a smaller GEMM: with 10 walkers the
    batched sampler was 1.3x faster per effective sample on that model and 1.8x on the 3 x 768
    ensemble, not more, because both sit near the same FLOP ceiling. With the 32-walker default
    emcee's calls are larger and fewer: on the 181 LAMOST DR1 spectra (MILES GSN, 3012 px) the
    batched sampler takes 0.27 and emcee 0.24 CPU s per star (``benchmarks/walkers.py``). The
    batch pays off on a GPU, where the rows of thousands of spectra fill the device.

Memory
    The pool's size P (``config.batch_size``, or :func:`auto_batch_size`: ``torch.cuda.mem_get_info``
    on CUDA, the available RAM capped at 128 on the CPU); any number of spectra goes through one
    pool; a CUDA out-of-memory error halves P and retries; any other error splits the stars in two
    and retries (results do not depend on the batch), down to one star, which gets an error row.
"""
from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch

from ..emulator_torch import resolve_device
from .config import FitConfig, check_config
from .result import FitResult, Reporting, few_pixels, report_labels, reporting, result_flags
from .rules import converged
from .torch.emulator import TorchEmulator, torch_emulator
from .torch.pool import run_pool
from .torch.posterior import SpectraStack

Priors = Mapping[str, tuple[float, float]]


# ====================================================================== batch sizing
def bytes_per_star(n_pix: int, n_hidden: int, config: FitConfig, ndim: int) -> int:
    """Rough peak device memory of one star in a batch (bytes): the largest emulator call
    (walkers x pixels, ~64 B per pixel with temporaries), the MAP Jacobians, the coarse search and
    the chain buffer."""
    W = config.n_walkers
    k = max(1, config.n_starts)
    evals = W * n_pix * 64 + W * n_hidden * 16
    rerank = 64 * n_pix * 48 // 8  # re-ranking runs in chunks of 64 stars
    lm = k * (ndim + 1) * n_pix * 80
    coarse = 40 * n_pix * 2 * 4 + 40 * config.n_coarse * 8 * 3
    chain = max(config.max_steps, config.n_steps) * W * ndim * 4 * 2 + config.n_burn * W * ndim * 4
    tau = 2 * 2 * max(config.max_steps, config.n_steps) * W * ndim * 16 // 8  # FFT in chunks of 8 stars
    return int(max(evals, lm, coarse, rerank) + chain + tau + 16 * n_pix * 8)


def _mem_available_cpu() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 2 << 30


def auto_batch_size(model_or_emu: Any, config: FitConfig, device: str | torch.device | None = None, *,
                    cpu_cap: int = 128, gpu_fraction: float = 0.5, cpu_fraction: float = 0.25) -> int:
    """Stars per batch: ``gpu_fraction`` of the free CUDA memory (``torch.cuda.mem_get_info``), or
    ``cpu_fraction`` of the available RAM capped at ``cpu_cap`` (bigger CPU batches buy nothing:
    the GEMMs are already efficient at ~100 stars x walkers), divided by :func:`bytes_per_star`."""
    dev = resolve_device(device)
    n_pix = int(getattr(model_or_emu, "n_pix", 0) or np.asarray(getattr(model_or_emu, "wavelength", np.zeros(4000))).size)
    n_hidden = int(getattr(model_or_emu, "n_hidden", 256))
    ndim = int(getattr(model_or_emu, "n_label", np.asarray(getattr(model_or_emu, "bounds", np.zeros((4, 2)))).shape[0])) + 1
    per = bytes_per_star(n_pix, n_hidden, config, ndim)
    if dev.type == "cuda":
        free, _ = torch.cuda.mem_get_info(dev)
        return max(1, int(gpu_fraction * free) // per)
    return max(1, min(cpu_cap, int(cpu_fraction * _mem_available_cpu()) // per))


# ====================================================================== results
def _finalise(stack: SpectraStack, i: int, res: FitResult, snr: float, seed: int, cfg: FitConfig,
              return_chain: bool, how: Reporting) -> FitResult:
    """Flags, S/N and seed of a pool result; its reported labels (``how``: the model's label
    systematics and Kiel prior, :func:`.result.report_labels`)."""
    tpl = stack.template
    snr_used = float(snr) if np.isfinite(snr) else float(stack.snr_median[i])
    conv = bool(converged(res.n_steps, res.tau_max, cfg.tau_factor))
    res.flag = result_flags(tpl, res.median, res.rv, res.chi2_reduced, snr_used, conv, cfg, bool(stack.dead_terms[i].any()))
    res.snr, res.n_good, res.seed = snr_used, int(stack.n_good[i]), int(seed)
    if return_chain:
        res.param_names = list(tpl.param_names)
    return report_labels(res, how)  # type: ignore[return-value]


def _sample_block(emu: TorchEmulator, stack: SpectraStack, todo: list[int], seeds: Sequence[int], snrs: np.ndarray,
                  cfg: FitConfig, bs: int, return_chain: bool, how: Reporting,
                  pbar: Any) -> tuple[dict[int, FitResult], int]:
    """Results of the stack rows ``todo`` (seeds, S/N by stack row), the pool of ``bs`` slots
    halved on CUDA out-of-memory, the stars split in two on any other error (a single star that
    still fails gets an error row). Returns ({row: result}, the batch size that worked)."""
    out: dict[int, FitResult] = {}
    queue = [todo] if todo else []
    L = stack.template.n_label
    while queue:
        chunk = queue.pop(0)
        try:
            with torch.no_grad():
                raw = run_pool(emu, stack, chunk, [seeds[k] for k in chunk], cfg, bs, return_chain, pbar=pbar)
            for k, r in zip(chunk, raw):
                out[k] = _finalise(stack, k, r, float(snrs[k]), seeds[k], cfg, return_chain, how)
        except Exception as exc:  # noqa: BLE001 - isolate: results do not depend on the batch
            if emu.device.type == "cuda":
                torch.cuda.empty_cache()
            if isinstance(exc, (MemoryError, torch.cuda.OutOfMemoryError)) and bs > 1:
                bs = max(1, bs // 2)  # a smaller pool, the same stars
                queue.insert(0, chunk)
            elif len(chunk) > 1:
                h = len(chunk) // 2
                queue[:0] = [chunk[:h], chunk[h:]]
            else:
                out[chunk[0]] = FitResult.not_fitted(L, f"error: {type(exc).__name__}: {exc}", seed=int(seeds[chunk[0]]))
    return out, bs


@contextmanager
def _torch_threads(n: int | None, device: torch.device) -> Iterator[None]:
    """torch CPU threads limited to ``n`` meanwhile (None: as is)."""
    old = torch.get_num_threads()
    if n is not None and device.type == "cpu":
        torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(old)


# ====================================================================== entry points
def fit_spectra_batched(
    model: Any,
    flux: np.ndarray,
    ivar: np.ndarray,
    *,
    config: FitConfig | None = None,
    seeds: Sequence[int],
    snr: Sequence[float] | np.ndarray | None = None,
    priors: Priors | Sequence[Priors | None] | None = None,
    progress: bool = False,
    return_chain: bool = False,
    threads: int | None = None,
) -> list[FitResult]:
    """Posteriors of S normalised spectra on ``model.wavelength`` (flux, ivar (S, n_pix), every
    row with usable pixels: :func:`gsn_dask.fit.result.input_problem` is the caller's check), all
    walkers of a batch advanced together (module docstring).

    ``seeds`` (S,) per-star seeds (:func:`gsn_dask.fit.seeds.star_seed`); ``snr`` per-pixel S/N for
    the LOW_SNR flag (NaN: median of |flux| sqrt(ivar)); ``priors``: one mapping for all stars or a
    sequence of per-star mappings (None = config.priors); ``config.device`` (None = CUDA if
    available) and ``config.batch_size`` (None = :func:`auto_batch_size`); ``threads``: torch CPU
    threads while fitting (None = ``config.blas_threads``). Returns one
    :class:`~gsn_dask.fit.result.FitResult` per star (``chain``, ``param_names``, ``map_start``
    with ``return_chain``). A star that cannot be fitted gets a NOT_FITTED result with ``status``
    saying why; only a config that does not fit the model raises (ConfigError)."""
    cfg = config or FitConfig()
    check_config(cfg, model, "batched")
    flux = np.atleast_2d(np.asarray(flux, dtype=np.float64))
    ivar = np.atleast_2d(np.asarray(ivar, dtype=np.float64))
    S = flux.shape[0]
    seeds = [int(s) for s in np.asarray(seeds, dtype=object).reshape(-1)]
    if len(seeds) != S or ivar.shape[0] != S:
        raise ValueError(f"{S} spectra but {len(seeds)} seeds / {ivar.shape[0]} ivar rows")
    snrs = np.full(S, np.nan) if snr is None else np.asarray(snr, dtype=np.float64).reshape(S)
    star_priors = [priors] * S if priors is None or isinstance(priors, Mapping) else list(priors)
    if len(star_priors) != S:
        raise ValueError(f"{len(star_priors)} prior mappings for {S} spectra")
    dev = resolve_device(cfg.device)
    emu = torch_emulator(model, dev)
    how = reporting(model, cfg)  # once per call, not per star
    bs = cfg.batch_size or auto_batch_size(emu, cfg, dev)
    results: list[FitResult | None] = [None] * S
    pbar = None
    if progress:
        from tqdm.auto import tqdm

        pbar = tqdm(total=S, desc="fit (batched)", unit="star")
    block_size = max(4 * bs, 4096)
    try:
        with _torch_threads(threads if threads is not None else cfg.blas_threads, dev):
            for b0 in range(0, S, block_size):
                rows = list(range(b0, min(S, b0 + block_size)))
                # the posteriors' arrays, all stars of the block at once (SpectrumPosterior's setup)
                stack = SpectraStack(model, flux[rows], ivar[rows], cfg, [star_priors[i] for i in rows])
                todo = []
                for k, i in enumerate(rows):
                    snr_used = float(snrs[i]) if np.isfinite(snrs[i]) else float(stack.snr_median[k])
                    results[i] = few_pixels(len(model.label_names), int(stack.n_good[k]), snr_used, cfg, seed=seeds[i])
                    if results[i] is None:
                        todo.append(k)
                done, bs = _sample_block(emu, stack, todo, [seeds[i] for i in rows], snrs[rows], cfg, bs,
                                         return_chain, how, pbar)
                for k, res in done.items():
                    results[rows[k]] = res
    finally:
        if pbar is not None:
            pbar.close()
    return results  # type: ignore[return-value]


def fit_many(model: Any, flux: np.ndarray, ivar: np.ndarray, *, seeds: Sequence[int], snr: np.ndarray,
             priors: Sequence[Priors | None], config: FitConfig, progress: bool = False) -> list[FitResult]:
    """The batched strategy of :func:`gsn_dask.fit.block.fit_block`: every spectrum of the block
    sampled in batches by :func:`fit_spectra_batched`."""
    return fit_spectra_batched(model, flux, ivar, config=config, seeds=seeds, snr=snr, priors=list(priors),
                               progress=progress)


__all__ = ["auto_batch_size", "bytes_per_star", "fit_many", "fit_spectra_batched"]
