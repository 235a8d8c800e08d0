r"""Batched MCMC: the walkers of many spectra advanced together as one tensor computation.

:func:`fit_spectra_batched` fits S spectra at once on CUDA (when present) or on the CPU, with
the posterior of :mod:`.posterior` (same weights, pixel range, rv shift, profiled Chebyshev
continuum, telluric mask, priors) and the moves of the emcee path; :func:`fit_block` is what
``gsn_dask.fit.block.fit_block(..., sampler="batched")`` calls. Imports torch and numpy only
(no dask / zarr / emcee / astropy / scipy at module level; ``fit_block`` imports xarray lazily).

Posterior (tensor form, S spectra x N walkers x n_pix pixels)
    Per spectrum the numpy :class:`~.posterior.SpectrumPosterior` is built (weights
    ``w = 1/(1/ivar + emu_err^2)``, used pixels ``[lo, hi)``, masks, priors) and its arrays are
    stacked. One step evaluates the emulator for all S x N proposals (float32, one GEMM per
    layer), shifts every spectrum by its own rv (a strided window per row; linear interpolation on
    the log grid, as :meth:`SpectrumPosterior.shift`), and forms the continuum normal equations
    ``b = (m_s * w f) @ T``, ``G_jk = (m_s^2 * w) @ (T_j T_k)`` in float64 (a shared basis T, so
    one GEMM for all spectra), solves the (d+1)x(d+1) systems, ``chi^2 = sum w f^2 - b.c``.
    :meth:`BatchedPosterior.log_prob` equals ``SpectrumPosterior.log_prob`` to float32 rounding of
    the emulator (tests/fit/test_batched.py).

Quadratic form (measured, not used by the sampler)
    The last layer is linear, m = h W + b_out, so with the rv shift ``m_s = (1-phi) u_n + phi u_{n+1}``
    (``u_a = h W_a + c_a``, W_a = W_out shifted by a pixels) ``b`` is linear in h and every
    ``G_jk`` is ``h^T Q h + h.L + kappa``. :class:`QuadraticChi2` evaluates it exactly from
    per-spectrum matrices ``Q_ab[jk] = W_a diag(w T_j T_k) W_b^T`` (a, b = n, n+1). Cost per
    walker: 3 (d+1)(d+2)/2 H^2 multiply-adds (18 x 256^2 = 1.2 M for H=256, d=2) against
    H x n_pix (~1.0 M for 3900 px) for the direct last layer, plus ~1.5 GMAC of set-up per
    spectrum and integer shift: the direct path is faster whenever rv is sampled (the rv shift
    mixes three matrix pairs; only with rv *and* continuum frozen would it drop to H^2 per
    walker, which would change the posterior). ``benchmarks/batched.py`` measures both.

Moves (``config.moves``, those of the emcee path's :func:`.sampler.make_moves`)
    ``stretch``: emcee's StretchMove (Goodman & Weare, a = 2): the ensemble is split at random
    into two halves of equal size (emcee's ``randomize_split``), each half is moved with
    ``q = c - z (c - s)``, ``z ~ g(z) ∝ 1/sqrt(z)`` on [1/a, a], partner c drawn from the other
    half, accepted if ``ln u < (ndim-1) ln z + ln p(q) - ln p(s)``; the halves in turn.
    ``de`` (DEMove + DESnookerMove) and ``laplace-de`` (Laplace/Student-t independence move,
    re-fitted to the burn-in, + DE + snooker) as emcee computes them; one move is chosen per
    step and star with the move weights. The weights and the Laplace df/scale are read from
    ``sampler.make_moves`` when emcee is importable (:func:`move_set`), so both paths always
    run the same mixture; :data:`MOVE_SETS` is the fallback without emcee.

Randomness: per star, never per batch
    Every random number is a Philox4x32-10 output (Salmon et al. 2011, the generator of cuRAND
    and of numpy's Philox family; checked against the Random123 known-answer vectors) with key
    = the star's 63-bit seed (:func:`.seeds.star_seed`) and counter = (index, the star's own
    step, stream). Integer arithmetic only, identical on CPU and CUDA, so a star's chain depends
    on its seed, its data and the config: not on the other stars, the batch size, the chunking
    or a device generator. (Floating point: BLAS and reduction kernels pick code paths by
    shape, so a star's numbers can differ in the last bits, ~1e-13 relative, between batch
    compositions; an accept/reject decision flips with probability ~1e-13 per step.)

MAP start (batched)
    Coarse search with one GEMM for all spectra x Sobol templates x integer rv shifts
    (the cross-correlation of :func:`.start.coarse_search`, continuum 1), re-ranking of the best
    ``max(64, 4 n_starts)`` with the profiled posterior, ``n_starts`` distinct starts, then
    batched bounded Levenberg-Marquardt on the whitened residuals (forward-difference Jacobian,
    one emulator call per iteration for all starts of all spectra), Laplace covariance
    ``inv(J^T J + diag(span^-2))``: the algorithm of :func:`.start.find_map`.

Sampling schedule, diagnostics and results: those of :func:`.sampler.fit_spectrum`
    walkers from N(MAP, cov) inside the bounds; ``n_burn`` steps; production of ``n_steps``,
    extended per star while shorter than ``tau_factor`` integrated autocorrelation times (up to
    ``max_steps``); tau per star and parameter from the FFT autocorrelation averaged over
    walkers with Sokal's window (c = 5), as ``emcee.autocorr.integrated_time``; the same result
    dict (``median``, ``p16``, ``p84``, ``map``, ``rv``, ``rv_err``, ``chi2_reduced``,
    ``acceptance``, ``tau_max``, ``n_eff_min``, ``flag``, ``status``, ``samples``, ...) and flags.

CPU cost (measured, benchmarks/batched.py, 1 core of a 2-core AMD EPYC VM)
    Per emulator row of the 3 x 256 / 3753 px GSN: the network 34 us (64 GFLOP/s, near this
    core's float32 GEMM peak), the rv shift ~7 us, the float64 continuum normal equations ~14 us
    (two skinny GEMMs, memory-bound). The emcee path already evaluates its 10 walkers in one
    vectorised call, so it pays the same per-row costs with a smaller GEMM: the batched sampler
    is 1.3x faster per effective sample on that model and 1.8x on the 3 x 768 ensemble, not
    more, because both sit near the same FLOP ceiling. The batch pays off on a GPU, where the
    rows of thousands of spectra fill the device.

Continuous batching and memory
    A pool of P slots (:class:`_Pool`) holds the stars being sampled, each at its own stage
    (burn-in, production, extension); a finished star frees its slot and, when the pool falls
    to 3/4 full, waiting stars are admitted (their MAP starts computed together), so a few slow
    stars never hold back a whole batch. P comes from :func:`auto_batch_size`:
    ``torch.cuda.mem_get_info`` on CUDA, the available RAM (capped at 128) on the CPU; any
    number of spectra goes through one pool; a CUDA out-of-memory error halves P and retries,
    any other error splits the stars in two and retries (results do not depend on the batch).
"""
from __future__ import annotations

import math
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..flags import Flag
from .config import FitConfig
from .posterior import C_KMS, SpectrumPosterior
from .result import (LabelSystematics, empty_result, input_problem, model_label_systematics, result_flags,
                     widen_intervals)

Tensor = torch.Tensor

# ====================================================================== random numbers
_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85
#: Philox counter word 2: independent streams of one star.
STREAM_MCMC, STREAM_INIT = 1, 2


def _mulhilo32_limbs(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit halves of a * m for a in [0, 2^32) (int64 tensor) and a 32-bit constant m,
    exact with 16-bit limbs (no int64 overflow)."""
    m_lo, m_hi = m & 0xFFFF, m >> 16
    a_lo = a & 0xFFFF
    a_hi = a >> 16
    ll = a_lo * m_lo
    mid = a_hi * m_lo + a_lo * m_hi + (ll >> 16)
    hi = a_hi * m_hi + (mid >> 16)
    lo = ((mid & 0xFFFF) << 16) | (ll & 0xFFFF)
    return hi, lo


def _mulhilo32_wrap(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """As :func:`_mulhilo32_limbs` with one int64 multiply, relying on two's-complement wrap-around
    of int64 overflow (what CPU and CUDA kernels do; checked per device by :func:`_philox_ok`)."""
    p = a * m
    return (p >> 32) & _MASK32, p & _MASK32


#: Random123 known-answer vectors of Philox4x32-10: (counter, key, output).
PHILOX_KAT = (
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((_MASK32,) * 4, (_MASK32,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
)
_FAST_MUL: dict[str, bool] = {}


def _philox_ok(device: torch.device, mul) -> bool:
    ctr = torch.tensor([k[0] for k in PHILOX_KAT], dtype=torch.int64, device=device)
    key = torch.tensor([k[1] for k in PHILOX_KAT], dtype=torch.int64, device=device)
    want = torch.tensor([k[2] for k in PHILOX_KAT], dtype=torch.int64, device=device)
    return bool((_philox(ctr, key, 10, mul) == want).all())


def _mulhilo32(device: torch.device):
    """The multiply for ``device``: the one-multiply version if it reproduces the known answers."""
    key = str(device)
    if key not in _FAST_MUL:
        _FAST_MUL[key] = _philox_ok(device, _mulhilo32_wrap)
    return _mulhilo32_wrap if _FAST_MUL[key] else _mulhilo32_limbs


def philox4x32(counter: Tensor, key: Tensor, rounds: int = 10) -> Tensor:
    """Philox4x32-``rounds`` (Random123): counter (..., 4) and key (..., 2) int64 tensors holding
    uint32 values -> (..., 4) int64 uint32 outputs."""
    return _philox(counter, key, rounds, _mulhilo32(counter.device))


def _philox(counter: Tensor, key: Tensor, rounds: int, mulhilo) -> Tensor:
    c0, c1, c2, c3 = (counter[..., i] & _MASK32 for i in range(4))
    k0, k1 = key[..., 0] & _MASK32, key[..., 1] & _MASK32
    for r in range(rounds):
        if r:
            k0 = (k0 + _PHILOX_W0) & _MASK32
            k1 = (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = mulhilo(c0, _PHILOX_M0)
        hi1, lo1 = mulhilo(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return torch.stack((c0, c1, c2, c3), dim=-1)


def seed_keys(seeds: Sequence[int] | np.ndarray, device: torch.device | str = "cpu") -> Tensor:
    """Philox keys (S, 2) int64 from 63-bit star seeds (low and high 32-bit words)."""
    s = [int(x) for x in np.asarray(seeds, dtype=object).reshape(-1)]
    return torch.tensor([[x & _MASK32, (x >> 32) & _MASK32] for x in s], dtype=torch.int64,
                        device=device).reshape(-1, 2)


def uniforms(keys: Tensor, step: Tensor | int, n: int, stream: int) -> Tensor:
    """(S, n) float64 uniforms in (0, 1) for S stars at counter step ``step`` (S,) of ``stream``:
    Philox(key_s, (j, step_s low, stream, step_s high)), j = 0..ceil(n/4)-1; 32-bit resolution."""
    S = keys.shape[0]
    nb = (n + 3) // 4
    dev = keys.device
    step = torch.as_tensor(step, dtype=torch.int64, device=dev).expand(S)
    ctr = torch.empty((S, nb, 4), dtype=torch.int64, device=dev)
    ctr[..., 0] = torch.arange(nb, dtype=torch.int64, device=dev)
    ctr[..., 1] = (step & _MASK32)[:, None]
    ctr[..., 2] = int(stream)
    ctr[..., 3] = (step >> 32)[:, None]
    out = philox4x32(ctr, keys[:, None, :].expand(S, nb, 2))
    u = (out.reshape(S, nb * 4)[:, :n].to(torch.float64) + 0.5) * (1.0 / 4294967296.0)
    return u


def normals(u: Tensor) -> Tensor:
    """Standard normals from uniforms (..., 2k) by Box-Muller (both outputs used)."""
    a, b = u[..., 0::2], u[..., 1::2]
    r = torch.sqrt(-2.0 * torch.log(a))
    t = 2.0 * math.pi * b
    return torch.stack((r * torch.cos(t), r * torch.sin(t)), dim=-1).reshape(*u.shape[:-1], -1)


# ====================================================================== emulator in torch
def _act(name: str):
    """Torch activations written as the numpy ones in gsn_dask.emulator (same rounding order)."""
    if name == "silu":
        return lambda x: x / (1.0 + torch.exp(-x))
    if name == "tanh":
        return torch.tanh
    if name == "leaky_relu":
        return lambda x: torch.where(x >= 0, x, x * 0.01)
    if name == "relu":
        return lambda x: torch.clamp_min(x, 0.0)
    if name == "softplus":
        return lambda x: torch.where(x > 20, x, torch.log1p(torch.exp(torch.clamp_max(x, 20.0))))
    if name == "sigmoid":
        return lambda x: 1.0 / (1.0 + torch.exp(-x))
    raise ValueError(f"unknown activation {name!r}")


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device``, or CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


class TorchEmulator:
    """A GSN's forward pass in torch (float32 by default) on ``device``.

    ``model`` needs ``hidden_layers`` [(W (n_in, n_out), b)], ``W_out`` (n_hidden, n_pix),
    ``b_out``, ``activation``, ``bounds`` and optionally ``label_transforms`` (a
    :class:`gsn_dask.emulator.GSN` has them all). Label scaling as ``GSN.scale``: per-label
    transform (identity/log10), then the training range onto [-0.5, 0.5], in float64."""

    def __init__(self, model: Any, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.device = resolve_device(device)
        self.dtype = dtype
        dev = self.device
        self.layers = [
            (torch.as_tensor(np.asarray(W), device=dev).to(dtype), torch.as_tensor(np.asarray(b), device=dev).to(dtype))
            for W, b in model.hidden_layers
        ]
        self.blocks = [None if blk is None else torch.as_tensor(np.asarray(blk), device=dev).to(dtype)
                       for blk in (getattr(model, "layer_blocks", None) or [None] * len(self.layers))]
        self.W_out = torch.as_tensor(np.asarray(model.W_out), device=dev).to(dtype).contiguous()
        self.b_out = torch.as_tensor(np.asarray(model.b_out), device=dev).to(dtype)
        self.activation = str(model.activation)
        self._act = _act(self.activation)
        bounds = np.asarray(model.bounds, dtype=np.float64)
        self.n_label = bounds.shape[0]
        tr = list(getattr(model, "label_transforms", None) or ["identity"] * self.n_label)
        self.log_mask = torch.tensor([t == "log10" for t in tr], device=dev)
        tb = bounds.copy()
        for j, t in enumerate(tr):
            if t == "log10":
                tb[j] = np.log10(tb[j])
        self.t_lo = torch.tensor(tb[:, 0], dtype=torch.float64, device=dev)
        self.t_span = torch.tensor(tb[:, 1] - tb[:, 0], dtype=torch.float64, device=dev)
        self.n_hidden = int(self.W_out.shape[0])
        self.n_pix = int(self.W_out.shape[1])
        self.widths = [int(W.shape[1]) for W, _ in self.layers]
        self._coarse: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def flops_per_spectrum(self) -> int:
        """2 x multiply-adds of one forward pass (activations not counted; the blocks only of
        block-diagonal ensemble layers)."""
        macs = [W.numel() if blk is None else blk.numel() for (W, _), blk in zip(self.layers, self.blocks)]
        return int(2 * (sum(macs) + self.W_out.numel()))

    def scale(self, labels: Tensor) -> Tensor:
        """(..., n_label) float64 physical labels -> network input (emulator dtype)."""
        t = torch.where(self.log_mask, torch.log10(labels.clamp_min(1e-300)), labels)
        return (-0.5 + (t - self.t_lo) / self.t_span * 1.0).to(self.dtype)

    def hidden(self, labels: Tensor) -> Tensor:
        """(R, n_label) -> (R, n_hidden) last hidden layer."""
        x = self.scale(labels)
        for (W, b), blk in zip(self.layers, self.blocks):
            if blk is None:
                x = self._act(x @ W + b)
            else:  # block-diagonal (ensemble) layer: (m, R, a) @ (m, a, b)
                m, a, bb = blk.shape
                y = torch.bmm(x.reshape(-1, m, a).transpose(0, 1), blk).transpose(0, 1).reshape(-1, m * bb)
                x = self._act(y + b)
        return x

    def predict(self, labels: Tensor) -> Tensor:
        """(R, n_label) float64 labels -> (R, n_pix) spectra (emulator dtype)."""
        return torch.addmm(self.b_out, self.hidden(labels), self.W_out)

    def coarse_set(self, n: int) -> tuple[Tensor, Tensor, Tensor]:
        """(labels (n, L) float64, spectra - 1 (n, n_pix), squares) at n scrambled-Sobol points
        (torch SobolEngine, seed 0) uniform in the bounds (scale space); cached."""
        if n not in self._coarse:
            eng = torch.quasirandom.SobolEngine(self.n_label, scramble=True, seed=0)
            u = eng.draw(n, dtype=torch.float64).to(self.device)
            t = self.t_lo + u * self.t_span
            labels = torch.where(self.log_mask, 10.0**t, t)
            M = self.predict(labels) - 1.0
            self._coarse[n] = (labels, M, M * M)
        return self._coarse[n]


_EMU_CACHE: "weakref.WeakKeyDictionary[object, dict[tuple[str, torch.dtype], TorchEmulator]]" = weakref.WeakKeyDictionary()


def torch_emulator(model: Any, device: str | torch.device | None = None,
                   dtype: torch.dtype = torch.float32) -> TorchEmulator:
    """:class:`TorchEmulator` of ``model`` on ``device``, cached per model object."""
    dev = resolve_device(device)
    key = (str(dev), dtype)
    try:
        per = _EMU_CACHE.setdefault(model, {})
    except TypeError:
        per = {}
    if key not in per:
        per[key] = TorchEmulator(model, dev, dtype)
    return per[key]


# ====================================================================== batched posterior
# ====================================================================== fixed-shape small algebra
#: Emulator rows per evaluation tile on the CPU and on CUDA (:meth:`BatchedPosterior._tiled`).
ROW_TILE_CPU, ROW_TILE_CUDA = 64, 4096
#: Stars per tile of the per-star reductions outside the likelihood (FFT, burn-in re-fit, coarse search).
STAR_TILE = 16


def _dot(a: Tensor, b: Tensor) -> Tensor:
    """Sum over the last (small) dimension in a fixed order, with elementwise ops only, so a row's
    value never depends on the batch shape (as a reduction kernel's might)."""
    out = a[..., 0] * b[..., 0]
    for i in range(1, a.shape[-1]):
        out = out + a[..., i] * b[..., i]
    return out


def _matvec(A: Tensor, x: Tensor) -> Tensor:
    """A (..., m, k) @ x (..., k) -> (..., m) with :func:`_dot`."""
    return torch.stack([_dot(A[..., i, :], x) for i in range(A.shape[-2])], dim=-1)


def _chol(A: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky factor L (lower) of SPD matrices A (..., k, k) and an ok mask (...,) (False where
    A is not positive definite; L is then garbage). Elementwise ops only (k is small)."""
    k = A.shape[-1]
    L = torch.zeros_like(A)
    ok = torch.ones(A.shape[:-2], dtype=torch.bool, device=A.device)
    for j in range(k):
        d = A[..., j, j] - _dot(L[..., j, :j], L[..., j, :j]) if j else A[..., j, j]
        ok = ok & (d > 0) & torch.isfinite(d)
        ljj = torch.sqrt(torch.where(d > 0, d, torch.ones_like(d)))
        L[..., j, j] = ljj
        for i in range(j + 1, k):
            e = A[..., i, j] - _dot(L[..., i, :j], L[..., j, :j]) if j else A[..., i, j]
            L[..., i, j] = e / ljj
    return L, ok


def _solve_lower(L: Tensor, b: Tensor) -> Tensor:
    """y with L y = b (L lower (..., k, k), b (..., k))."""
    k = L.shape[-1]
    ys: list[Tensor] = []
    for i in range(k):
        acc = b[..., i]
        for j in range(i):
            acc = acc - L[..., i, j] * ys[j]
        ys.append(acc / L[..., i, i])
    return torch.stack(ys, dim=-1)


def _solve_upper_t(L: Tensor, y: Tensor) -> Tensor:
    """x with L^T x = y."""
    k = L.shape[-1]
    xs: list[Tensor | None] = [None] * k
    for i in reversed(range(k)):
        acc = y[..., i]
        for j in range(i + 1, k):
            acc = acc - L[..., j, i] * xs[j]  # type: ignore[operator]
        xs[i] = acc / L[..., i, i]
    return torch.stack(xs, dim=-1)  # type: ignore[arg-type]


def _spd_solve(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """x = A^-1 b for SPD A (..., k, k), b (..., k) by Cholesky; (x, ok)."""
    L, ok = _chol(A)
    return _solve_upper_t(L, _solve_lower(L, b)), ok


def _spd_inv(A: Tensor) -> tuple[Tensor, Tensor]:
    """A^-1 for SPD A (..., k, k); (inverse, ok)."""
    L, ok = _chol(A)
    k = A.shape[-1]
    eye = torch.eye(k, dtype=A.dtype, device=A.device).expand(*A.shape[:-2], k, k)
    cols = [_solve_upper_t(L, _solve_lower(L, eye[..., :, i])) for i in range(k)]
    return torch.stack(cols, dim=-1), ok


def _star_tiles(n: int, size: int, device: torch.device) -> list[tuple[Tensor, int]]:
    """Index tensors of exactly ``size`` entries covering 0..n-1 (the last padded with n-1), and
    the number of real entries of each."""
    out = []
    for a in range(0, n, size):
        b = min(n, a + size)
        out.append((torch.arange(a, a + size, device=device).clamp_max(n - 1), b - a))
    return out


class SpectraStack:
    """The per-spectrum arrays of :class:`~.posterior.SpectrumPosterior` for S spectra at once
    (numpy, vectorised: the same formulas, ~50x faster than S constructors): weights ``w``,
    data ``f`` on the used pixels, ``wff``, ``n_good``, ``snr_median``, ``dof``, dense priors.
    ``template`` is the SpectrumPosterior of the first spectrum: the shared geometry (pixel
    range, rv step, Chebyshev basis, bounds)."""

    def __init__(self, model: Any, flux: np.ndarray, ivar: np.ndarray, config: FitConfig,
                 priors: Sequence[Mapping[str, tuple[float, float]] | None] | None = None) -> None:
        from .posterior import merged_priors, telluric_mask

        flux = np.asarray(flux, dtype=np.float64)
        ivar = np.asarray(ivar, dtype=np.float64)
        S = flux.shape[0]
        self.template = tpl = SpectrumPosterior(model, flux[0], ivar[0], config)
        sl = slice(tpl.lo, tpl.hi)
        wave = np.asarray(model.wavelength, dtype=np.float64)
        emu = np.asarray(model.emulator_error, dtype=np.float64).reshape(-1)
        good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0)
        if config.mask_telluric:
            good &= ~telluric_mask(wave)[None, :]
        with np.errstate(divide="ignore", invalid="ignore"):
            w = np.where(good, 1.0 / (1.0 / np.where(good, ivar, 1.0) + emu**2), 0.0)
        self.good = good[:, sl]
        self.w = np.ascontiguousarray(w[:, sl])
        self.f = np.ascontiguousarray(np.where(self.good, flux[:, sl], 0.0))
        self.n_good = self.good.sum(axis=1)
        with np.errstate(invalid="ignore"):
            snr = np.where(self.good, np.abs(self.f) * np.sqrt(np.where(self.good, ivar[:, sl], 0.0)), np.nan)
        self.snr_median = np.full(S, np.nan)
        has = self.n_good > 0
        if has.any():
            self.snr_median[has] = np.nanmedian(snr[has], axis=1)
        self.wff = np.sum(self.w * self.f**2, axis=1)
        self.dof = np.maximum(self.n_good - tpl.ndim - tpl.n_cont, 1).astype(np.float64)
        L = tpl.n_label
        self.prior_mu = np.zeros((S, L))
        self.prior_isig = np.zeros((S, L))
        self.errors: dict[int, str] = {}
        plist = list(priors) if priors is not None else [None] * S
        common = merged_priors(tpl.label_names, config, None)
        for i in range(S):
            try:
                pri = merged_priors(tpl.label_names, config, plist[i]) if plist[i] else common
            except ValueError as exc:
                self.errors[i] = f"error: ValueError: {exc}"
                continue
            for k, (mu, sig) in pri.items():
                j = tpl.label_names.index(k)
                self.prior_mu[i, j], self.prior_isig[i, j] = mu, 1.0 / sig
        self.S = S

    @classmethod
    def from_posteriors(cls, posts: Sequence[SpectrumPosterior]) -> SpectraStack:
        """A stack from ready SpectrumPosterior objects (same model and config)."""
        p0 = posts[0]
        for p in posts[1:]:
            if (p.lo, p.hi, p.n_cont) != (p0.lo, p0.hi, p0.n_cont) or not np.array_equal(p.lower, p0.lower) \
                    or not np.array_equal(p.upper, p0.upper):
                raise ValueError("all posteriors of a batch must share the model, pixel range and bounds")
        st = cls.__new__(cls)
        st.template, st.S = p0, len(posts)
        st.w = np.stack([p.w for p in posts])
        st.f = np.stack([p.f for p in posts])
        st.good = np.stack([p.good for p in posts])
        st.n_good = np.array([p.n_good for p in posts])
        st.snr_median = np.array([p.snr_median for p in posts])
        st.wff = np.array([p._wff for p in posts])
        st.dof = np.array([p.dof for p in posts], dtype=np.float64)
        st.prior_mu = np.zeros((st.S, p0.n_label))
        st.prior_isig = np.zeros((st.S, p0.n_label))
        for i, p in enumerate(posts):
            for k, m, sg in zip(p._prior_idx, p._prior_mu, p._prior_sig):
                st.prior_mu[i, k], st.prior_isig[i, k] = m, 1.0 / sg
        st.errors = {}
        return st


class BatchedPosterior:
    """log p(labels, rv | spectrum) for S spectra at once (stacked :class:`SpectrumPosterior`
    arrays: a list of posteriors or a :class:`SpectraStack` and the rows ``idx`` of it).

    Every spectrum shares the model and config (pixel range, basis, bounds); priors may differ.
    ``theta`` is (S, N, n_label + 1), rows in the order of ``posts`` / ``idx``."""

    def __init__(self, emu: TorchEmulator, posts: Sequence[SpectrumPosterior] | SpectraStack | None = None, *,
                 idx: np.ndarray | None = None, _from: dict | None = None) -> None:
        self.emu = emu
        dev = emu.device
        if _from is not None:
            self.__dict__.update(_from)
            return
        assert posts is not None and (isinstance(posts, SpectraStack) or len(posts)), "need at least one spectrum"
        st = posts if isinstance(posts, SpectraStack) else SpectraStack.from_posteriors(posts)
        rows = np.arange(st.S) if idx is None else np.asarray(idx, dtype=np.int64)
        p0 = st.template
        f64 = torch.float64
        self.S = int(rows.size)
        self.n_label, self.ndim = p0.n_label, p0.ndim
        self.lo, self.hi, self.n_used, self.step = p0.lo, p0.hi, p0.n_used, p0.step
        self.n_cont = p0.n_cont
        self.pairs = list(p0._pairs)
        k = self.n_cont
        pair_of = np.zeros((k, k), dtype=np.int64)  # G[j, kk] = gp[pair_of[j, kk]] (symmetric)
        for p, (j, kk) in enumerate(self.pairs):
            pair_of[j, kk] = pair_of[kk, j] = p
        self.pair_of = torch.as_tensor(pair_of.reshape(-1), device=dev)
        T = torch.as_tensor(p0.T, dtype=f64, device=dev)
        TT = torch.stack([T[:, j] * T[:, k] for j, k in self.pairs], dim=1)
        self.T, self.TT = T, TT
        self.lower = torch.as_tensor(p0.lower, dtype=f64, device=dev)
        self.upper = torch.as_tensor(p0.upper, dtype=f64, device=dev)
        self.w = torch.as_tensor(st.w[rows], dtype=f64, device=dev)
        self.f = torch.as_tensor(st.f[rows], dtype=f64, device=dev)
        self.wf = self.w * self.f
        self.wff = torch.as_tensor(st.wff[rows], dtype=f64, device=dev)
        self.prior_mu = torch.as_tensor(st.prior_mu[rows], dtype=f64, device=dev)
        self.prior_isig = torch.as_tensor(st.prior_isig[rows], dtype=f64, device=dev)
        self.dof = torch.as_tensor(st.dof[rows], dtype=f64, device=dev)
        # emulator rows per evaluation tile (fixed shapes, see _tiled); CPU: small enough for cache
        self.row_tile = ROW_TILE_CPU if dev.type == "cpu" else ROW_TILE_CUDA
        self.pad_tiles = dev.type != "cpu"

    _PER_STAR = ("w", "f", "wf", "wff", "prior_mu", "prior_isig", "dof")

    def take(self, idx: Tensor) -> BatchedPosterior:
        """The sub-batch of stars ``idx`` (LongTensor, repeats allowed)."""
        d = dict(self.__dict__)
        for k in self._PER_STAR:
            d[k] = d[k][idx]
        d["S"] = int(idx.numel())
        return BatchedPosterior(self.emu, _from=d)

    def _slice(self, a: int, b: int) -> BatchedPosterior:
        d = dict(self.__dict__)
        for k in self._PER_STAR:
            d[k] = d[k][a:b]
        d["S"] = b - a
        return BatchedPosterior(self.emu, _from=d)

    def _tiled(self, fn, theta: Tensor, per: int | None = None):
        """fn(sub-posterior, theta) over tiles of exactly ``per`` stars (default: row_tile // N,
        the last tile padded with copies of the last star on CUDA), outputs concatenated along
        stars (fn returns a tensor or a tuple of tensors). On CUDA every GEMM and reduction then
        has the same shape whatever the batch (cuBLAS picks its kernel by shape, so a star's
        float32 spectra would otherwise depend on the batch size); on the CPU (MKL's float32
        GEMM rows do not depend on M) the last tile is not padded, which saves the padding's work."""
        S, N = theta.shape[:2]
        per = per or max(1, self.row_tile // max(N, 1))
        if not self.pad_tiles:
            per = min(per, S)
        outs = []
        for a in range(0, S, per):
            b = min(S, a + per)
            if b - a == per or not self.pad_tiles:
                sub, th = self._slice(a, b), theta[a:b]
            else:
                idx = torch.arange(a, a + per, device=theta.device).clamp_max(S - 1)
                sub, th = self.take(idx), theta[idx]
            out = fn(sub, th)
            outs.append(tuple(o[: b - a] for o in out) if isinstance(out, tuple) else out[: b - a])
        if isinstance(outs[0], tuple):
            return tuple(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)

    # ---------------------------------------------------------------- pieces
    def in_bounds(self, theta: Tensor) -> Tensor:
        return (torch.isfinite(theta) & (theta >= self.lower) & (theta <= self.upper)).all(dim=-1)

    def log_prior(self, theta: Tensor) -> Tensor:
        """(S, N) log prior: -inf outside the bounds, Gaussian terms inside."""
        z = (theta[..., : self.n_label] - self.prior_mu[:, None, :]) * self.prior_isig[:, None, :]
        lp = -0.5 * _dot(z, z)
        return torch.where(self.in_bounds(theta), lp, torch.full_like(lp, -math.inf))

    def shift(self, spectra: Tensor, rv: Tensor) -> Tensor:
        """(R, n_pix) rest-frame spectra -> (R, n_used) at velocities rv (R,) km/s: linear
        interpolation on the log grid, ``a + phi (prev - a)`` as SpectrumPosterior.shift."""
        R = spectra.shape[0]
        delta = torch.log10(1.0 + rv / C_KMS) / self.step
        n = torch.floor(delta)
        phi = (delta - n).to(spectra.dtype)[:, None]
        start = (self.lo - n.to(torch.int64) - 1).clamp(0, spectra.shape[1] - self.n_used - 1)
        win = spectra.unfold(1, self.n_used + 1, 1)[torch.arange(R, device=spectra.device), start]
        return torch.lerp(win[:, 1:], win[:, :-1], phi)  # a + phi (prev - a), one pass

    def normal_equations(self, ms: Tensor) -> tuple[Tensor, Tensor]:
        """G (S, N, k, k) and b (S, N, k) of the continuum least squares, float64, for shifted
        spectra ms (S, N, n_used)."""
        md = ms.to(torch.float64)  # once (a float32 * float64 product would convert ms each time)
        b = (md * self.wf[:, None, :]) @ self.T  # exact products, float64 sums
        gp = (md * self.w[:, None, :]).mul_(md) @ self.TT
        k = self.n_cont
        return gp[..., self.pair_of].reshape(*gp.shape[:-1], k, k), b

    @staticmethod
    def solve(G: Tensor, b: Tensor) -> Tensor:
        """c = G^-1 b per row (G is SPD: Cholesky; pseudo-inverse for singular rows, as lstsq in
        the numpy path)."""
        if G.device.type == "cpu":  # LAPACK per matrix: fast, and a row's result is its own
            c, info = torch.linalg.solve_ex(G, b[..., None])
            c, bad = c[..., 0], info != 0
        else:  # explicit Cholesky: no batched-kernel choice by batch size
            c, ok = _spd_solve(G, b)
            bad = ~ok
        if bool(bad.any()):
            c[bad] = (torch.linalg.pinv(G[bad]) @ b[bad][..., None])[..., 0]
        return c

    def _spectra(self, theta: Tensor) -> tuple[Tensor, Tensor]:
        """Shifted spectra (S, N, n_used) at theta (clamped into the bounds) and the in-bounds mask."""
        S, N, D = theta.shape
        inb = self.in_bounds(theta)
        mid = 0.5 * (self.lower + self.upper)
        safe = torch.where(inb[..., None], theta, mid)
        spec = self.emu.predict(safe[..., : self.n_label].reshape(S * N, self.n_label))
        ms = self.shift(spec, safe[..., self.n_label].reshape(S * N))
        return ms.reshape(S, N, self.n_used), inb

    def chi2_of_shifted(self, ms: Tensor) -> tuple[Tensor, Tensor]:
        """Profiled chi2 (S, N) and continuum coefficients (S, N, k) of shifted spectra."""
        G, b = self.normal_equations(ms)
        c = self.solve(G, b)
        chi2 = self.wff[:, None] - _dot(b, c)
        return chi2.clamp_min(0.0), c

    def chi2(self, theta: Tensor) -> Tensor:
        """(S, N) profiled chi2 (theta clamped into the bounds)."""
        return self._tiled(lambda bp, th: bp.chi2_of_shifted(bp._spectra(th)[0])[0], theta)

    def log_prob(self, theta: Tensor) -> Tensor:
        """(S, N) log posterior (up to a constant) at theta (S, N, ndim) float64; -inf outside."""
        return self._tiled(BatchedPosterior._log_prob, theta)

    def _log_prob(self, theta: Tensor) -> Tensor:
        ms, inb = self._spectra(theta)
        chi2, _ = self.chi2_of_shifted(ms)
        lp = self.log_prior(theta) - 0.5 * chi2
        return torch.where(inb, lp, torch.full_like(lp, -math.inf))

    def residuals(self, theta: Tensor) -> Tensor:
        """(S, N, n_used + n_label) whitened residuals sqrt(w)(f - P m) (0 on masked pixels) and
        prior terms (theta - mu)/sigma (0 without a prior): ``sum r^2 = chi2 - 2 log prior``."""
        return self._tiled(BatchedPosterior._residuals, theta)

    def _residuals(self, theta: Tensor) -> Tensor:
        ms, _ = self._spectra(theta)
        G, b = self.normal_equations(ms)
        c = self.solve(G, b)
        cont = c[..., 0, None] * self.T[:, 0]
        for j in range(1, self.n_cont):
            cont = cont + c[..., j, None] * self.T[:, j]
        mu = ms.to(torch.float64) * cont
        r = (self.f[:, None, :] - mu) * torch.sqrt(self.w)[:, None, :]
        rp = (theta[..., : self.n_label] - self.prior_mu[:, None, :]) * self.prior_isig[:, None, :]
        return torch.cat([r, rp], dim=-1)


class QuadraticChi2:
    """The profiled chi2 through the linear last layer (see the module docstring): exact for
    walkers whose integer pixel shift ``floor(log10(1+v/c)/step)`` lies in ``n0..n1``; NaN
    elsewhere. Float64 throughout. A reference for the tests and for the cost comparison in
    benchmarks/batched.py; the sampler uses the direct path (faster, see the docstring)."""

    def __init__(self, bp: BatchedPosterior, n0: int, n1: int) -> None:
        self.bp = bp
        emu = bp.emu
        f64 = torch.float64
        self.n0, self.n1 = int(n0), int(n1)
        lo, hi = bp.lo, bp.hi
        Wf = emu.W_out.to(f64)
        bf = emu.b_out.to(f64)
        A = list(range(self.n0, self.n1 + 2))  # u_a for a = n0 .. n1+1
        U = torch.stack([Wf[:, lo - a : hi - a] for a in A])  # (nA, H, n_used)
        C = torch.stack([bf[lo - a : hi - a] for a in A])  # (nA, n_used)
        wfT = bp.wf[:, :, None] * bp.T  # (S, n_used, k)
        self.B = torch.einsum("ahi,sik->sahk", U, wfT)  # (S, nA, H, k)
        self.beta = torch.einsum("ai,sik->sak", C, wfT)  # (S, nA, k)
        wTT = bp.w[:, :, None] * bp.TT  # (S, n_used, P)
        S, P, H = bp.S, len(bp.pairs), emu.n_hidden

        def pair(a: int, b: int) -> tuple[Tensor, Tensor, Tensor]:
            # Q[s, p] = U_a diag(wTT[s, :, p]) U_b^T: one (H x n) @ (n x H) GEMM per star and p
            Q = torch.empty((S, P, H, H), dtype=f64, device=U.device)
            for s in range(S):
                for p in range(P):
                    Q[s, p] = (U[a] * wTT[s, :, p]) @ U[b].T
            Lv = (torch.einsum("hi,sip->sph", U[a], wTT * C[b][None, :, None])
                  + torch.einsum("hi,sip->sph", U[b], wTT * C[a][None, :, None]))
            return Q, Lv, torch.einsum("i,sip,i->sp", C[a], wTT, C[b])

        diag = [pair(a, a) for a in range(len(A))]
        off = [pair(a, a + 1) for a in range(len(A) - 1)]
        self.Qd, self.Ld, self.kd = (torch.stack([d[i] for d in diag], 1) for i in range(3))
        self.Qo, self.Lo, self.ko = (torch.stack([d[i] for d in off], 1) for i in range(3))

    def _quad(self, h: Tensor, Q: Tensor, Lv: Tensor, kap: Tensor) -> Tensor:
        """h^T Q_p h + h.L_p + kappa_p (S, N, P) for one matrix set per star: Q (S, P, H, H)."""
        S, P, H, _ = Q.shape
        hQ = torch.bmm(h, Q.permute(0, 2, 1, 3).reshape(S, H, P * H)).reshape(*h.shape[:2], P, H)
        return (hQ * h[:, :, None, :]).sum(-1) + torch.bmm(h, Lv.transpose(1, 2)) + kap[:, None, :]

    def chi2(self, theta: Tensor) -> Tensor:
        """(S, N) profiled chi2 at theta (S, N, ndim): per integer shift present, a batched GEMM
        of the walkers' hidden vectors with the star's matrices (3 (d+1)(d+2)/2 H^2 per walker)."""
        bp = self.bp
        S, N, _ = theta.shape
        h = bp.emu.hidden(theta[..., : bp.n_label].reshape(S * N, -1)).to(torch.float64).reshape(S, N, -1)
        delta = torch.log10(1.0 + theta[..., bp.n_label] / C_KMS) / bp.step
        n = torch.floor(delta)
        phi = delta - n
        ok = (n >= self.n0) & (n <= self.n1)
        a_idx = (n.to(torch.int64) - self.n0).clamp(0, self.n1 - self.n0)  # (S, N)
        k = bp.n_cont
        b = torch.zeros((S, N, k), dtype=torch.float64, device=theta.device)
        gp = torch.zeros((S, N, len(bp.pairs)), dtype=torch.float64, device=theta.device)
        for a in torch.unique(a_idx).tolist():
            sel = (a_idx == a)[..., None]
            lin0 = torch.bmm(h, self.B[:, a]) + self.beta[:, a, None, :]
            lin1 = torch.bmm(h, self.B[:, a + 1]) + self.beta[:, a + 1, None, :]
            ph = phi[..., None]
            bb = (1 - ph) * lin0 + ph * lin1
            g = ((1 - ph) ** 2 * self._quad(h, self.Qd[:, a], self.Ld[:, a], self.kd[:, a])
                 + 2.0 * ph * (1 - ph) * self._quad(h, self.Qo[:, a], self.Lo[:, a], self.ko[:, a])
                 + ph**2 * self._quad(h, self.Qd[:, a + 1], self.Ld[:, a + 1], self.kd[:, a + 1]))
            b = torch.where(sel, bb, b)
            gp = torch.where(sel, g, gp)
        G = torch.empty((S, N, k, k), dtype=torch.float64, device=theta.device)
        for p, (j, kk) in enumerate(bp.pairs):
            G[..., j, kk] = gp[..., p]
            G[..., kk, j] = gp[..., p]
        c = bp.solve(G, b)
        chi2 = (bp.wff[:, None] - (b * c).sum(-1)).clamp_min(0.0)
        return torch.where(ok, chi2, torch.full_like(chi2, math.nan))


# ====================================================================== MAP start
def _coarse_search(bp: BatchedPosterior, n_coarse: int, rv_bounds: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    """Per star: coarse template index (S, n), rv (S, n) km/s and unit-continuum chi2 (S, n),
    best first (the cross-correlation of start.coarse_search: one GEMM per tile of stars)."""
    tile = STAR_TILE if bp.emu.device.type == "cpu" else 16 * STAR_TILE
    return bp._tiled(lambda sub, th: _coarse_tile(sub, n_coarse, rv_bounds),
                     torch.zeros((bp.S, 1, 1), device=bp.emu.device), per=tile)


def _coarse_tile(bp: BatchedPosterior, n_coarse: int, rv_bounds: tuple[float, float]) -> tuple[Tensor, Tensor, Tensor]:
    emu = bp.emu
    labels_c, M, M2 = emu.coarse_set(n_coarse)
    n_pix = emu.n_pix
    dev = emu.device
    lo, hi = bp.lo, bp.hi
    d_lo = math.log10(1.0 + rv_bounds[0] / C_KMS) / bp.step
    d_hi = math.log10(1.0 + rv_bounds[1] / C_KMS) / bp.step
    shifts = np.arange(int(np.floor(d_lo)), int(np.floor(d_hi)) + 2)
    shifts = shifts[(lo - shifts >= 0) & (hi - shifts <= n_pix)]
    S = bp.S
    wr = torch.zeros((S, n_pix), dtype=M.dtype, device=dev)
    wf = torch.zeros((S, n_pix), dtype=M.dtype, device=dev)
    wr[:, lo:hi] = (bp.w * (bp.f - 1.0)).to(M.dtype)
    wf[:, lo:hi] = bp.w.to(M.dtype)
    p0, p1 = max(0, -int(shifts.min())), max(0, int(shifts.max()))
    sh = torch.as_tensor(shifts + p0, device=dev)
    Dt = torch.nn.functional.pad(wr, (p0, p1)).unfold(1, n_pix, 1)[:, sh]  # (S, n_shift, n_pix)
    Wt = torch.nn.functional.pad(wf, (p0, p1)).unfold(1, n_pix, 1)[:, sh]
    ns = shifts.size
    cross = (Dt.reshape(S * ns, n_pix) @ M.T).reshape(S, ns, -1).to(torch.float64)
    norm = (Wt.reshape(S * ns, n_pix) @ M2.T).reshape(S, ns, -1).to(torch.float64)
    c0 = ((bp.w * (bp.f - 1.0) ** 2) @ torch.ones(bp.n_used, 1, dtype=torch.float64, device=dev))[:, 0]
    chi2 = c0[:, None, None] - 2.0 * cross + norm  # (S, n_shift, n)
    k = chi2.argmin(dim=1)  # (S, n)
    best = chi2.gather(1, k[:, None, :])[:, 0]
    km = k.clamp(1, ns - 2)
    y0, y1, y2 = (chi2.gather(1, (km + j)[:, None, :])[:, 0] for j in (-1, 0, 1))
    den = y0 - 2 * y1 + y2
    off = torch.where(den > 0, 0.5 * (y0 - y2) / torch.where(den > 0, den, torch.ones_like(den)), torch.zeros_like(den))
    sht = torch.as_tensor(shifts, dtype=torch.float64, device=dev)
    pix = sht[km] + off.clamp(-1.0, 1.0)
    edge = (k == 0) | (k == ns - 1)
    pix = torch.where(edge, sht[k], pix)
    rv = (C_KMS * (10.0 ** (pix * bp.step) - 1.0)).clamp(bp.lower[-1], bp.upper[-1])
    order = torch.argsort(best, dim=1, stable=True)
    return order, rv.gather(1, order), best.gather(1, order)


def _distinct(cand: Tensor, lower: Tensor, upper: Tensor, k: int, min_dist: float = 0.1) -> tuple[Tensor, Tensor]:
    """Per star: indices (S, k) of up to k candidates (in order) at least ``min_dist`` apart
    (max-norm in the unit box), and a validity mask (S, k)."""
    S, n, _ = cand.shape
    u = (cand - lower) / (upper - lower)
    dist = (u[:, :, None, :] - u[:, None, :, :]).abs().amax(-1)  # (S, n, n)
    ok = torch.ones((S, n), dtype=torch.bool, device=cand.device)
    idx = torch.zeros((S, k), dtype=torch.int64, device=cand.device)
    valid = torch.zeros((S, k), dtype=torch.bool, device=cand.device)
    rows = torch.arange(S, device=cand.device)
    for j in range(k):
        has = ok.any(dim=1)
        first = ok.to(torch.int8).argmax(dim=1)
        idx[:, j] = torch.where(has, first, idx[:, 0])
        valid[:, j] = has
        ok &= ~(has[:, None] & (dist[rows, first] < min_dist))
    return idx, valid


def _eval_jac(bp: BatchedPosterior, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """For problems x (P, D) of bp (S = P): cost = sum r^2 / 2 (P,), A = J^T J (P, D, D),
    g = J^T r (P, D) with a forward-difference Jacobian (backward at the upper bound)."""
    P, D = x.shape
    step = torch.where(x + h <= bp.upper, h.expand_as(x), -h.expand_as(x))
    rows = x[:, None, :].repeat(1, D + 1, 1)
    rows[:, 1:, :] += torch.diag_embed(step)
    st = step[:, None, :].expand(P, D + 1, D)  # carried along the tiles in theta's last axis

    def fn(sub: BatchedPosterior, th: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        R = sub._residuals(th[..., :D])  # (p, D+1, n_res)
        r0 = R[:, 0]
        J = (R[:, 1:] - r0[:, None]) / th[:, 0, D:, None]  # (p, D, n_res)
        one = torch.ones(R.shape[-1], 1, dtype=R.dtype, device=R.device)
        return 0.5 * ((r0 * r0) @ one)[:, 0], J @ J.transpose(1, 2), (J @ r0[:, :, None])[..., 0]

    return bp._tiled(fn, torch.cat([rows, st], dim=-1))


def levenberg_marquardt(bp: BatchedPosterior, x0: Tensor, active: Tensor, *, max_iter: int = 40,
                        ftol_abs: float = 1e-3, xtol: float = 1e-7, h_frac: float = 3e-4,
                        group: int = 1) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Bounded Levenberg-Marquardt for P problems at once (bp has one row per problem), as
    :func:`.start.levenberg_marquardt`: a problem stops when an accepted step lowers the cost by
    less than ``ftol_abs`` or moves less than ``xtol`` (fraction of the box), or when it comes
    within 1e-4 of the box of a better start of the same star (``group`` consecutive problems
    per star). Returns (x (P, D), cost (P,), J^T J (P, D, D), converged (P,), emulator rows
    evaluated (P,))."""
    lower, upper = bp.lower, bp.upper
    span = upper - lower
    h = h_frac * span
    x = torch.minimum(torch.maximum(x0, lower + 1e-6 * span), upper - 1e-6 * span)
    P, D = x.shape
    cost = torch.full((P,), math.inf, dtype=torch.float64, device=x.device)
    A = torch.zeros((P, D, D), dtype=torch.float64, device=x.device)
    g = torch.zeros((P, D), dtype=torch.float64, device=x.device)
    n_rows = torch.zeros(P, dtype=torch.int64, device=x.device)
    ia = active.nonzero()[:, 0]
    if ia.numel():
        cost[ia], A[ia], g[ia] = _eval_jac(bp.take(ia), x[ia], h)
        n_rows[ia] += D + 1
    lam = torch.full((P,), 1e-3, dtype=torch.float64, device=x.device)
    active = active.clone()
    done = torch.zeros(P, dtype=torch.bool, device=x.device)
    eye = torch.eye(D, dtype=torch.float64, device=x.device)
    eps = 1e-9 * span
    for _ in range(max_iter):
        ia = active.nonzero()[:, 0]
        if ia.numel() == 0:
            break
        xa, Aa, ga, la, ca = x[ia], A[ia], g[ia], lam[ia], cost[ia]
        frozen = ((xa <= lower + eps) & (ga > 0)) | ((xa >= upper - eps) & (ga < 0))
        free = ~frozen
        fm = (free[:, :, None] & free[:, None, :]).to(torch.float64)
        Af = Aa * fm + torch.diag_embed(frozen.to(torch.float64))
        d = torch.diagonal(Af, dim1=1, dim2=2).clone()
        d[d <= 0] = 1e-12
        gf = torch.where(free, ga, torch.zeros_like(ga))
        step, ok = _spd_solve(Af + la[:, None, None] * torch.diag_embed(d), -gf)
        bad = ~ok | ~torch.isfinite(step).all(-1)
        if bool(bad.any()):
            step[bad] = -gf[bad] / (d[bad] * (1 + la[bad, None]))
        step = torch.where(free, step, torch.zeros_like(step))
        x_new = torch.minimum(torch.maximum(xa + step, lower), upper)
        c_new, A_new, g_new = _eval_jac(bp.take(ia), x_new, h)
        n_rows[ia] += D + 1
        dx = ((x_new - xa).abs() / span).amax(-1)
        better = torch.isfinite(c_new) & (c_new <= ca)
        small = ((ca - c_new) <= ftol_abs) | (dx <= xtol)
        x[ia] = torch.where(better[:, None], x_new, xa)
        A[ia] = torch.where(better[:, None, None], A_new, Aa)
        g[ia] = torch.where(better[:, None], g_new, ga)
        cost[ia] = torch.where(better, c_new, ca)
        lam_new = torch.where(better, (la / 3.0).clamp_min(1e-9), la * 4.0)
        lam[ia] = lam_new
        stop = (better & small) | (~better & ((lam_new > 1e8) | (dx <= xtol)))
        active[ia] = active[ia] & ~stop
        done[ia] = done[ia] | stop
        if group > 1:  # drop starts that have joined a better start of the same star
            xg, cg = (x / span).reshape(-1, group, D), cost.reshape(-1, group)
            near = (xg[:, :, None, :] - xg[:, None, :, :]).abs().amax(-1) < 1e-4
            near &= cg[:, None, :] <= cg[:, :, None]
            near &= ~torch.eye(group, dtype=torch.bool, device=x.device)
            active &= ~near.any(-1).reshape(-1)
    del eye
    return x, cost, A, done, n_rows


def batched_map(bp: BatchedPosterior, *, n_coarse: int = 1024, n_starts: int = 3, rv_bounds: tuple[float, float],
                max_iter: int = 40) -> dict[str, Tensor]:
    """MAP and Laplace covariance of every star of ``bp`` (see the module docstring).
    Returns theta (S, D), cov (S, D, D), log_prob (S,), chi2 (S,), success (S,), n_eval (S,)."""
    S, D = bp.S, bp.ndim
    dev = bp.emu.device
    lower, upper = bp.lower, bp.upper
    span = upper - lower
    labels_c, M, _ = bp.emu.coarse_set(n_coarse)
    order, rv, _ = _coarse_search(bp, n_coarse, rv_bounds)
    n_rank = min(order.shape[1], max(64, 4 * n_starts))
    cand = torch.cat([labels_c[order[:, :n_rank]], rv[:, :n_rank, None]], dim=-1)  # (S, n_rank, D)
    # re-rank with the profiled continuum, from the cached coarse spectra (as start.find_map)

    def rerank(sub: BatchedPosterior, th: Tensor) -> Tensor:
        spec = M[th[..., -1].to(torch.int64).reshape(-1)] + 1.0
        ms = sub.shift(spec, th[..., -2].reshape(-1)).reshape(*th.shape[:2], -1)
        return sub.log_prior(th[..., :-1]) - 0.5 * sub.chi2_of_shifted(ms)[0]

    lp = bp._tiled(rerank, torch.cat([cand, order[:, :n_rank, None].to(torch.float64)], dim=-1))
    o2 = torch.argsort(-lp, dim=1, stable=True)
    cand = cand.gather(1, o2[..., None].expand_as(cand))
    k = max(1, int(n_starts))
    idx, valid = _distinct(cand, lower, upper, k)
    starts = cand.gather(1, idx[..., None].expand(S, k, D))  # (S, k, D)
    sidx = torch.arange(S, device=dev).repeat_interleave(k)
    x, cost, A, conv, rows = levenberg_marquardt(bp.take(sidx), starts.reshape(S * k, D), valid.reshape(-1),
                                                 max_iter=max_iter, group=k)
    cost = torch.where(valid.reshape(-1), cost, torch.full_like(cost, math.inf)).reshape(S, k)
    b = cost.argmin(dim=1)
    flat = torch.arange(S, device=dev) * k + b
    theta, Ab, success = x[flat], A[flat], conv[flat]
    H = Ab + torch.diag_embed((1.0 / span**2).expand(S, D))
    cov, ok1 = _spd_inv(H)
    cov = 0.5 * (cov + cov.transpose(1, 2))
    _, ok2 = _chol(cov)
    badc = ~ok1 | ~ok2 | ~torch.isfinite(cov).all(-1).all(-1)
    if bool(badc.any()):
        cov[badc] = torch.diag((0.01 * span) ** 2)
    chi2 = bp.chi2(theta[:, None, :])[:, 0]
    lpm = bp.log_prior(theta[:, None, :])[:, 0] - 0.5 * chi2
    n_eval = 1 + rows.reshape(S, k).sum(1)  # emulator rows per star (coarse set excluded)
    return {"theta": theta, "cov": cov, "log_prob": lpm, "chi2": chi2, "success": success, "n_eval": n_eval}


def init_walkers(bp: BatchedPosterior, mean: Tensor, cov: Tensor, n_walkers: int, keys: Tensor) -> Tensor:
    """(S, W, D) walkers from N(mean, cov) inside the bounds (up to 20 redraws per walker from
    the star's own stream, then clipped into the interior)."""
    S, D = mean.shape
    Lc, _ = _chol(cov)
    nu = 2 * ((n_walkers * D + 1) // 2)
    out = None
    for attempt in range(21):
        z = normals(uniforms(keys, attempt, nu, STREAM_INIT))[:, : n_walkers * D].reshape(S, n_walkers, D)
        x = mean[:, None, :] + _matvec(Lc[:, None], z)
        if out is None:
            out = x
        else:
            bad = ~bp.in_bounds(out)
            if not bool(bad.any()):
                break
            out = torch.where(bad[..., None], x, out)
    assert out is not None
    span = bp.upper - bp.lower
    return torch.minimum(torch.maximum(out, bp.lower + 1e-6 * span), bp.upper - 1e-6 * span)


# ====================================================================== moves
#: Fallback move mixtures (as sampler.make_moves); when emcee is importable the mixture and the
#: Laplace proposal's df/scale are read from sampler.make_moves itself (:func:`move_set`).
MOVE_SETS: dict[str, list[tuple[str, float]]] = {
    "stretch": [("stretch", 1.0)],
    "de": [("de", 0.8), ("snooker", 0.2)],
    "laplace-de": [("laplace", 0.8), ("de", 0.16), ("snooker", 0.04)],
}
_STRETCH_A = 2.0
_DE_SIGMA = 1.0e-5
_SNOOKER_GAMMA = 1.7
_LAPLACE_DF = 5
_LAPLACE_SCALE = 1.0


def burn_discard(n_burn: int) -> int:
    """Burn-in steps skipped before re-fitting the Laplace proposal (as fit_spectrum)."""
    return min(10, n_burn // 2)


def move_set(kind: str, ndim: int = 4) -> tuple[list[tuple[str, float]], dict[str, float]]:
    """(moves [(name, weight)], params {a, de_sigma, snooker_gamma, laplace_df, laplace_scale}) of
    ``config.moves``: from :func:`.sampler.make_moves` when emcee is importable, else
    :data:`MOVE_SETS`."""
    params = {"a": _STRETCH_A, "de_sigma": _DE_SIGMA, "snooker_gamma": _SNOOKER_GAMMA,
              "laplace_df": float(_LAPLACE_DF), "laplace_scale": _LAPLACE_SCALE}
    if kind not in MOVE_SETS:
        raise ValueError(f"unknown moves {kind!r}; choose from {sorted(MOVE_SETS)}")
    try:
        from .sampler import make_moves
    except ImportError:
        return list(MOVE_SETS[kind]), params
    out = []
    for mv, wt in make_moves(kind, np.zeros(ndim), np.eye(ndim)):
        name = type(mv).__name__
        if name == "StretchMove":
            out.append(("stretch", float(wt)))
            params["a"] = float(mv.a)
        elif name == "DEMove":
            out.append(("de", float(wt)))
            params["de_sigma"] = float(mv.sigma)
            if mv.gamma0 is not None:
                raise ValueError("DEMove with a fixed gamma0 is not supported by the batched sampler")
        elif name == "DESnookerMove":
            out.append(("snooker", float(wt)))
            params["snooker_gamma"] = float(mv.gammas)
        elif name == "LaplaceMove":
            out.append(("laplace", float(wt)))
            params["laplace_df"] = float(mv.df)
            params["laplace_scale"] = float(getattr(mv, "scale", mv.chol[0, 0]))
        else:
            raise ValueError(f"the batched sampler has no implementation of emcee move {name}")
    return out, params


_PERM3 = ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


def _slots(kind: str, ndim: int, df: int = _LAPLACE_DF) -> int:
    """Uniforms per walker and step that a move uses: slot 0 is the acceptance uniform; stretch:
    1 z, 2 partner; de: 1 pair, 2-3 gamma's normal; snooker: 1-3 partners, 4 roles; laplace: the
    ndim + df normals (Box-Muller pairs)."""
    return {"stretch": 3, "de": 4, "snooker": 5, "laplace": 1 + 2 * ((ndim + df + 1) // 2)}[kind]


def _gather_walkers(X: Tensor, idx: Tensor) -> Tensor:
    """X (n, W, ...) at walker indices idx (n, m) -> (n, m, ...)."""
    if X.dim() == 2:
        return X.gather(1, idx)
    return X.gather(1, idx[..., None].expand(*idx.shape, X.shape[-1]))


def _scatter_walkers(X: Tensor, idx: Tensor, val: Tensor) -> Tensor:
    if X.dim() == 2:
        return X.scatter(1, idx, val)
    return X.scatter(1, idx[..., None].expand(*idx.shape, X.shape[-1]), val)


def _red_blue(bp: BatchedPosterior, X: Tensor, LP: Tensor, u: Tensor, kind: str,
              params: Mapping[str, float]) -> tuple[Tensor, Tensor, Tensor, int]:
    """One emcee red-blue move (stretch, de or snooker) for n stars: X (n, W, D), LP (n, W),
    u (n, 1 + W + W*K) uniforms. Returns new X, LP, accepted (n, W) and rows evaluated per star."""
    a_st, sig_de, gam_sn = params["a"], params["de_sigma"], params["snooker_gamma"]
    n, W, D = X.shape
    nsp = 4 if kind == "snooker" else 2
    perm = torch.argsort(u[:, 1 : 1 + W], dim=1, stable=True)  # random split (randomize_split)
    K = (u.shape[1] - 1 - W) // W
    U = u[:, 1 + W :].reshape(n, W, K)
    acc_all = torch.zeros((n, W), dtype=torch.bool, device=X.device)
    rows = 0
    for split in range(nsp):
        mem = perm[:, split::nsp]  # (n, Ns)
        Ns = mem.shape[1]
        s = _gather_walkers(X, mem)
        uw = _gather_walkers(U, mem)  # (n, Ns, K)
        if kind in ("stretch", "de"):
            comp = torch.cat([perm[:, j::nsp] for j in range(nsp) if j != split], dim=1)
            c = _gather_walkers(X, comp)  # (n, Nc, D)
            Nc = c.shape[1]
            if kind == "stretch":
                z = ((a_st - 1.0) * uw[..., 1] + 1.0) ** 2 / a_st
                r = (uw[..., 2] * Nc).to(torch.int64).clamp_max(Nc - 1)
                cp = _gather_walkers(c, r)
                q = cp - (cp - s) * z[..., None]
                factor = (D - 1.0) * torch.log(z)
            else:
                npair = Nc * (Nc - 1)
                p = (uw[..., 1] * npair).to(torch.int64).clamp_max(npair - 1)
                i = torch.div(p, Nc - 1, rounding_mode="floor")
                j = p - i * (Nc - 1)
                j = j + (j >= i).to(torch.int64)
                g0 = 2.38 / math.sqrt(2 * D)
                nrm = normals(uw[..., 2:4])[..., 0]
                gamma = g0 * (1.0 + sig_de * nrm)
                q = s + gamma[..., None] * (_gather_walkers(c, j) - _gather_walkers(c, i))
                factor = torch.zeros_like(gamma)
        else:  # snooker: one partner from each of the other three sets, roles shuffled
            others = [perm[:, j::nsp] for j in range(nsp) if j != split]
            picks = []
            for t, oth in enumerate(others):
                Nt = oth.shape[1]
                r = (uw[..., 1 + t] * Nt).to(torch.int64).clamp_max(Nt - 1)
                picks.append(_gather_walkers(X, oth.gather(1, r)))
            wst = torch.stack(picks, dim=2)  # (n, Ns, 3, D)
            pidx = (uw[..., 4] * 6).to(torch.int64).clamp_max(5)
            roles = torch.as_tensor(_PERM3, device=X.device)[pidx]  # (n, Ns, 3)
            wst = wst.gather(2, roles[..., None].expand(*roles.shape, D))
            zz, z1, z2 = wst[:, :, 0], wst[:, :, 1], wst[:, :, 2]
            delta = s - zz
            norm = torch.sqrt(_dot(delta, delta))
            uu = delta / torch.sqrt(norm)[..., None]
            q = s + uu * gam_sn * (_dot(uu, z1) - _dot(uu, z2))[..., None]
            dq = q - zz
            factor = 0.5 * (D - 1.0) * (torch.log(torch.sqrt(_dot(dq, dq))) - torch.log(norm))
        lp_new = bp.log_prob(q)
        rows += Ns
        lp_old = _gather_walkers(LP, mem)
        acc = torch.log(uw[..., 0]) < factor + lp_new - lp_old
        X = _scatter_walkers(X, mem, torch.where(acc[..., None], q, s))
        LP = _scatter_walkers(LP, mem, torch.where(acc, lp_new, lp_old))
        acc_all = _scatter_walkers(acc_all, mem, acc)
    return X, LP, acc_all, rows


def _laplace_logq(x: Tensor, mean: Tensor, chol: Tensor, df: float) -> Tensor:
    D = x.shape[-1]
    z = _solve_lower(chol[:, None], x - mean[:, None, :])
    return -0.5 * (df + D) * torch.log1p(_dot(z, z) / df)


def _laplace(bp: BatchedPosterior, X: Tensor, LP: Tensor, u: Tensor, mean: Tensor, chol: Tensor,
             df: int) -> tuple[Tensor, Tensor, Tensor, int]:
    """emcee MH step with the Laplace (Student-t independence) proposal of sampler.LaplaceMove."""
    n, W, D = X.shape
    K = (u.shape[1] - 1 - W) // W
    U = u[:, 1 + W :].reshape(n, W, K)
    z = normals(U[..., 1:])  # (n, W, K-1) normals
    zg = z[..., D : D + df]
    g = _dot(zg, zg) / df  # chi-square(df) / df
    q = mean[:, None, :] + _matvec(chol[:, None], z[..., :D]) / torch.sqrt(g)[..., None]
    factor = _laplace_logq(X, mean, chol, df) - _laplace_logq(q, mean, chol, df)
    lp_new = bp.log_prob(q)
    acc = torch.log(U[..., 0]) < lp_new - LP + factor
    return torch.where(acc[..., None], q, X), torch.where(acc, lp_new, LP), acc, W


# ====================================================================== autocorrelation
def autocorr_time(chain: Tensor, c: float = 5.0) -> Tensor:
    """Integrated autocorrelation time (S, D) of chains (S, T, W, D), as
    :func:`.diagnostics.autocorr_time` (emcee's estimator, walker-averaged ACF, Sokal window c;
    inf for a parameter that does not move or is not finite; at least 1)."""
    x = chain.to(torch.float64)
    S, T, W, D = x.shape
    nfft = 1
    while nfft < T:
        nfft <<= 1
    xc = x - x.mean(dim=1, keepdim=True)
    F = torch.fft.rfft(xc, n=2 * nfft, dim=1)
    acf = torch.fft.irfft(F * F.conj(), n=2 * nfft, dim=1)[:, :T]  # (S, T, W, D)
    acf = acf / acf[:, :1]
    f = acf.mean(dim=2)  # (S, T, D)
    taus = 2.0 * torch.cumsum(f, dim=1) - 1.0
    m = torch.arange(T, device=x.device, dtype=torch.float64)[None, :, None] < c * taus
    anym = m.any(dim=1)
    first_false = (~m).to(torch.int8).argmax(dim=1)  # 0 when all True (as np.argmin)
    win = torch.where(anym, first_false, torch.full_like(first_false, T - 1))
    tau = taus.gather(1, win[:, None, :])[:, 0]
    fin = torch.isfinite(x).all(dim=2).all(dim=1)
    ptp = (x.amax(dim=(1, 2)) - x.amin(dim=(1, 2))) > 0
    tau = torch.where(fin & ptp & torch.isfinite(tau), tau, torch.full_like(tau, math.inf))
    return tau.clamp_min(1.0)


def _percentiles(flat: Tensor, qs: Sequence[float]) -> Tensor:
    """numpy-'linear' percentiles along dim 1 of (S, n, D) -> (len(qs), S, D)."""
    srt, _ = torch.sort(flat.to(torch.float64), dim=1)
    n = srt.shape[1]
    out = []
    for q in qs:
        pos = q / 100.0 * (n - 1)
        i0 = int(math.floor(pos))
        i1 = min(i0 + 1, n - 1)
        fr = pos - i0
        a, b = srt[:, i0], srt[:, i1]
        out.append(a + (b - a) * fr)
    return torch.stack(out)


# ====================================================================== the walker pool
def _moves_step(bp: BatchedPosterior, X: Tensor, LP: Tensor, u: Tensor, moves: list[tuple[str, float]], cdf: Tensor,
                params: Mapping[str, float], df: int, lap_mean: Tensor,
                lap_chol: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """One sampler step for n stars (one move per star, chosen with the move weights as emcee
    does): returns X, LP, accepted (n, W), emulator rows evaluated (n,)."""
    n, W, _ = X.shape
    acc = torch.zeros((n, W), dtype=torch.bool, device=X.device)
    rows = torch.zeros(n, dtype=torch.int64, device=X.device)
    if len(moves) == 1:
        choice = None
    else:
        choice = torch.searchsorted(cdf, u[:, 0].contiguous(), right=True).clamp_max(len(moves) - 1)
    for m, (kind, _) in enumerate(moves):
        sel = None if choice is None else (choice == m).nonzero()[:, 0]
        if sel is not None and sel.numel() == 0:
            continue
        full = sel is None or sel.numel() == n
        bps = bp if full else bp.take(sel)
        xs, ls, us = (X, LP, u) if full else (X[sel], LP[sel], u[sel])
        if kind == "laplace":
            mean, chol = (lap_mean, lap_chol) if full else (lap_mean[sel], lap_chol[sel])
            xs, ls, ac, r = _laplace(bps, xs, ls, us, mean, chol, df)
        else:
            xs, ls, ac, r = _red_blue(bps, xs, ls, us, kind, params)
        if full:
            X, LP, acc = xs, ls, ac
            rows += r
        else:
            X[sel], LP[sel], acc[sel] = xs, ls, ac
            rows[sel] += r
    return X, LP, acc, rows


class _Pool:
    """Continuous batching: up to ``capacity`` stars sampled together, each at its own stage
    (burn-in, production, extension); a finished star frees its slot and waiting stars are
    admitted (MAP start in a batch) when the pool runs low. A star's numbers depend only on its
    seed, data and the config (its random counter is its own step index)."""

    FREE, BURN, PROD = 0, 1, 2

    def __init__(self, emu: TorchEmulator, stack: SpectraStack, cfg: FitConfig, capacity: int, return_chain: bool) -> None:
        ndim = stack.template.ndim
        self.emu, self.cfg, self.stack = emu, cfg, stack
        self.P, self.W, self.D = int(capacity), cfg.n_walkers, ndim
        self.L = ndim - 1
        dev = self.dev = emu.device
        self.moves, self.params = move_set(cfg.moves, ndim)
        w = torch.tensor([m[1] for m in self.moves], dtype=torch.float64)
        self.cdf = (torch.cumsum(w, 0) / w.sum()).to(dev)
        self.df = int(round(self.params["laplace_df"]))
        if any(k == "laplace" for k, _ in self.moves) and abs(self.df - self.params["laplace_df"]) > 1e-12:
            raise ValueError("the batched Laplace move needs an integer df")
        self.K = max(_slots(k, ndim, self.df) for k, _ in self.moves)
        self.R = 1 + self.W + self.W * self.K
        self.return_chain = return_chain
        P, W, D = self.P, self.W, self.D
        f64, i64 = torch.float64, torch.int64
        self.slot_star = np.full(P, -1, dtype=np.int64)
        self.phase = torch.zeros(P, dtype=torch.int8, device=dev)
        self.t = torch.zeros(P, dtype=i64, device=dev)
        self.k_burn = torch.zeros(P, dtype=i64, device=dev)
        self.n_prod = torch.zeros(P, dtype=i64, device=dev)
        self.target = torch.zeros(P, dtype=i64, device=dev)
        self.X = torch.zeros((P, W, D), dtype=f64, device=dev)
        self.LP = torch.zeros((P, W), dtype=f64, device=dev)
        self.keys = torch.zeros((P, 2), dtype=i64, device=dev)
        self.lap_mean = torch.zeros((P, D), dtype=f64, device=dev)
        self.lap_chol = torch.eye(D, dtype=f64, device=dev).repeat(P, 1, 1)
        self.map_theta = torch.zeros((P, D), dtype=f64, device=dev)
        self.map_cov = torch.eye(D, dtype=f64, device=dev).repeat(P, 1, 1)
        self.map_lp = torch.zeros(P, dtype=f64, device=dev)
        self.map_ok = torch.zeros(P, dtype=torch.bool, device=dev)
        self.rows = torch.zeros(P, dtype=i64, device=dev)
        self.n_acc = torch.zeros((P, W), dtype=i64, device=dev)
        self.best_lp = torch.full((P,), -math.inf, dtype=f64, device=dev)
        self.best_x = torch.zeros((P, D), dtype=f64, device=dev)
        self.n_keep = cfg.n_burn - burn_discard(cfg.n_burn) if cfg.n_burn >= 20 else 0
        self.burnbuf = torch.zeros((P, self.n_keep, W, D), dtype=torch.float32, device=dev)
        self.chain = torch.zeros((P, cfg.n_steps, W, D), dtype=torch.float32, device=dev)
        self.bp: BatchedPosterior | None = None
        self._bp_live: tuple[bytes, BatchedPosterior] | None = None
        self.tau_last = np.zeros((P, D))

    # ---------------------------------------------------------------- admission
    def n_alive(self) -> int:
        return int((self.slot_star >= 0).sum())

    def admit(self, stars: list[int], seeds: list[int]) -> None:
        """Place new stars (rows of the stack) in free slots: MAP start (batched), walkers,
        initial log-probs."""
        cfg, dev = self.cfg, self.dev
        free = np.flatnonzero(self.slot_star < 0)[: len(stars)]
        assert free.size == len(stars)
        bp_new = BatchedPosterior(self.emu, self.stack, idx=np.asarray(stars))
        if self.bp is None:  # the pool's posterior: first stars, padded with copies of the first
            idx = torch.as_tensor(np.minimum(np.arange(self.P), len(stars) - 1), device=dev)
            self.bp = bp_new.take(idx)
        sl = torch.as_tensor(free, device=dev)
        for k in BatchedPosterior._PER_STAR:
            getattr(self.bp, k)[sl] = getattr(bp_new, k)
        self._bp_live = None
        keys = seed_keys(seeds, dev)
        mres = batched_map(bp_new, n_coarse=cfg.n_coarse, n_starts=cfg.n_starts, rv_bounds=cfg.rv_bounds_kms)
        X0 = init_walkers(bp_new, mres["theta"], mres["cov"], self.W, keys)
        self.X[sl], self.LP[sl], self.keys[sl] = X0, bp_new.log_prob(X0), keys
        self.map_theta[sl], self.map_cov[sl], self.map_lp[sl] = mres["theta"], mres["cov"], mres["log_prob"]
        self.map_ok[sl] = mres["success"]
        self.rows[sl] = mres["n_eval"] + self.W
        self._set_laplace(sl, mres["theta"], mres["cov"])
        self.t[sl] = 0
        self.k_burn[sl] = 0
        self.slot_star[free] = stars
        if cfg.n_burn > 0:
            self.phase[sl] = self.BURN
        else:
            self._start_production(sl)

    def _set_laplace(self, sl: Tensor, mean: Tensor, cov: Tensor) -> None:
        self.lap_mean[sl] = mean
        self.lap_chol[sl] = _chol(cov * self.params["laplace_scale"] ** 2)[0]

    def _start_production(self, sl: Tensor) -> None:
        self.phase[sl] = self.PROD
        self.n_prod[sl] = 0
        self.target[sl] = self.cfg.n_steps
        self.n_acc[sl] = 0
        self.best_lp[sl] = -math.inf

    # ---------------------------------------------------------------- stepping
    def _live_bp(self, live: Tensor) -> BatchedPosterior:
        assert self.bp is not None
        if live.numel() == self.P:
            return self.bp
        key = live.cpu().numpy().tobytes()
        if self._bp_live is None or self._bp_live[0] != key:
            self._bp_live = (key, self.bp.take(live))
        return self._bp_live[1]

    def step(self) -> list[tuple[int, dict[str, Any]]]:
        """Advance every live star by one step; returns (star, result) of the stars that finished."""
        cfg = self.cfg
        live = (self.phase > 0).nonzero()[:, 0]
        if live.numel() == 0:
            return []
        u = uniforms(self.keys[live], self.t[live], self.R, STREAM_MCMC)
        X, LP, acc, rows = _moves_step(self._live_bp(live), self.X[live], self.LP[live], u, self.moves, self.cdf,
                                       self.params, self.df, self.lap_mean[live], self.lap_chol[live])
        self.X[live], self.LP[live] = X, LP
        self.t[live] += 1
        self.rows[live] += rows
        ph = self.phase[live]
        # ---- burn-in: keep the last n_keep steps for the Laplace re-fit
        bsel = (ph == self.BURN).nonzero()[:, 0]
        if bsel.numel():
            b = live[bsel]
            kb = self.k_burn[b]
            if self.n_keep:
                keep = kb >= cfg.n_burn - self.n_keep
                if bool(keep.any()):
                    self.burnbuf[b[keep], kb[keep] - (cfg.n_burn - self.n_keep)] = X[bsel[keep]].to(torch.float32)
            self.k_burn[b] += 1
            endb = b[self.k_burn[b] >= cfg.n_burn]
            if endb.numel():
                if self.n_keep:  # re-fit the Laplace proposal to the burn-in (tiles of fixed shape)
                    for ti, nr in _star_tiles(endb.numel(), STAR_TILE, self.dev):
                        e = endb[ti]
                        half = self.burnbuf[e].to(torch.float64).reshape(ti.numel(), -1, self.D)
                        mean = half.mean(1)
                        xc = half - mean[:, None]
                        cov = xc.transpose(1, 2) @ xc / (half.shape[1] - 1)
                        _, ok = _chol(cov)
                        ok = ok & torch.isfinite(cov).all(-1).all(-1)
                        e, ok, mean, cov = e[:nr], ok[:nr], mean[:nr], cov[:nr]
                        self._set_laplace(e, torch.where(ok[:, None], mean, self.map_theta[e]),
                                          torch.where(ok[:, None, None], cov, self.map_cov[e]))
                self._start_production(endb)
        # ---- production: record, count, track the best point
        psel = (ph == self.PROD).nonzero()[:, 0]
        if not psel.numel():
            return []
        p = live[psel]
        pos = self.n_prod[p]
        need = int(pos.max()) + 1
        if need > self.chain.shape[1]:
            new_cap = min(max(self.cfg.max_steps, self.cfg.n_steps), max(need, int(self.target[p].max())))
            new_cap = max(new_cap, need)
            extra = torch.zeros((self.P, new_cap - self.chain.shape[1], self.W, self.D), dtype=self.chain.dtype,
                                device=self.dev)
            self.chain = torch.cat([self.chain, extra], dim=1)
        Xp, LPp = X[psel], LP[psel]
        self.chain[p, pos] = Xp.to(torch.float32)
        self.n_acc[p] += acc[psel].to(torch.int64)
        lmax, kmax = LPp.max(dim=1)
        better = lmax > self.best_lp[p]
        self.best_lp[p] = torch.where(better, lmax, self.best_lp[p])
        self.best_x[p] = torch.where(better[:, None], Xp[torch.arange(p.numel(), device=self.dev), kmax], self.best_x[p])
        self.n_prod[p] += 1
        hit = p[self.n_prod[p] >= self.target[p]]
        if not hit.numel():
            return []
        return self._at_target(hit)

    def _at_target(self, hit: Tensor) -> list[tuple[int, dict[str, Any]]]:
        """Stars whose production reached its target: estimate tau; extend (as fit_spectrum) or
        finish. Returns (star, result) of the finished stars."""
        cfg = self.cfg
        max_steps = max(cfg.max_steps, cfg.n_steps)
        hs = hit.cpu().numpy()
        n_prod = self.n_prod[hit].cpu().numpy()
        for T in np.unique(n_prod):
            g = torch.as_tensor(hs[n_prod == T], device=self.dev)
            for ti, nr in _star_tiles(g.numel(), STAR_TILE, self.dev):
                gg = g[ti]
                self.tau_last[gg[:nr].cpu().numpy()] = autocorr_time(self.chain[gg, : int(T)]).cpu().numpy()[:nr]
        tmax = self.tau_last[hs].max(axis=1)
        extend = (n_prod < cfg.tau_factor * tmax) & (n_prod < max_steps)
        if extend.any():
            e = hs[extend]
            want = np.ceil(1.1 * cfg.tau_factor * tmax[extend]).astype(np.int64) - n_prod[extend]
            extra = np.minimum(np.maximum(want, 20), max_steps - n_prod[extend])  # as fit_spectrum
            et = torch.as_tensor(e, device=self.dev)
            self.target[et] = self.n_prod[et] + torch.as_tensor(extra, device=self.dev)
        done = hs[~extend]
        if not done.size:
            return []
        out = [(int(self.slot_star[slot]), res) for slot, res in self._summarise(done)]
        dt = torch.as_tensor(done, device=self.dev)
        self.phase[dt] = self.FREE
        self.slot_star[done] = -1
        return out

    def _summarise(self, slots: np.ndarray) -> list[tuple[int, dict[str, Any]]]:
        cfg, D, L, W = self.cfg, self.D, self.L, self.W
        dev = self.dev
        st = torch.as_tensor(slots, device=dev)
        n_prod = self.n_prod[st].cpu().numpy()
        q = np.zeros((3, slots.size, D))
        draws: list[np.ndarray | None] = [None] * slots.size
        for T in np.unique(n_prod):
            a = np.flatnonzero(n_prod == T)
            g = st[torch.as_tensor(a, device=dev)]
            flat = self.chain[g, : int(T) : cfg.thin].reshape(a.size, -1, D)
            q[:, a] = _percentiles(flat, (16.0, 50.0, 84.0)).cpu().numpy()
            if cfg.n_draws > 0:
                idx = torch.as_tensor(np.linspace(0, flat.shape[1] - 1, cfg.n_draws).round().astype(np.int64), device=dev)
                dd = flat[:, idx, :L].to(torch.float64).cpu().numpy()
                for j, k in enumerate(a):
                    draws[k] = dd[j]
        better = self.best_lp[st] > self.map_lp[st]
        theta_map = torch.where(better[:, None], self.best_x[st], self.map_theta[st])
        assert self.bp is not None
        bps = self.bp.take(st)
        chi2r = (bps.chi2(theta_map[:, None, :])[:, 0] / bps.dof).cpu().numpy()
        tm = theta_map.cpu().numpy()
        acc = (self.n_acc[st].sum(1).to(torch.float64) / (self.n_prod[st] * W).to(torch.float64)).cpu().numpy()
        rows = self.rows[st].cpu().numpy()
        map_ok = self.map_ok[st].cpu().numpy()
        out = []
        for j, slot in enumerate(slots):
            tau = self.tau_last[slot].copy()
            res = {
                "median": q[1, j, :L].copy(), "p16": q[0, j, :L].copy(), "p84": q[2, j, :L].copy(),
                "map": tm[j, :L].copy(), "rv": float(q[1, j, L]), "rv_err": float(0.5 * (q[2, j, L] - q[0, j, L])),
                "chi2_reduced": float(chi2r[j]), "acceptance": float(acc[j]), "tau_max": float(tau.max()),
                "n_eff_min": float(np.min(n_prod[j] * W / tau)), "samples": draws[j], "n_steps": int(n_prod[j]),
                "rv_map": float(tm[j, L]), "n_eval": int(rows[j]), "map_success": bool(map_ok[j]),
                "converged": bool(n_prod[j] >= cfg.tau_factor * tau.max()), "tau": tau,
            }
            if self.return_chain:
                res["chain"] = self.chain[int(slot), : int(n_prod[j])].to(torch.float64).cpu().numpy()
                res["map_start"] = self.map_theta[int(slot)].cpu().numpy()
            out.append((int(slot), res))
        return out


def _run_pool(emu: TorchEmulator, stack: SpectraStack, rows: Sequence[int], seeds: Sequence[int], cfg: FitConfig,
              capacity: int, return_chain: bool, refill: float = 0.75, pbar: Any = None) -> list[dict[str, Any]]:
    """Sample the stars ``rows`` of ``stack`` (seeds ``seeds``) with a pool of ``capacity``
    slots (continuous batching); raw per-star results (no flags), in the order of ``rows``."""
    n = len(rows)
    pool = _Pool(emu, stack, cfg, min(capacity, n), return_chain)
    pos = {int(r): i for i, r in enumerate(rows)}
    results: list[dict[str, Any] | None] = [None] * n
    nxt = 0
    while True:
        alive = pool.n_alive()
        if nxt < n and (alive == 0 or alive <= refill * pool.P):
            k = min(pool.P - alive, n - nxt)
            pool.admit([int(r) for r in rows[nxt : nxt + k]], [int(x) for x in seeds[nxt : nxt + k]])
            nxt += k
        if pool.n_alive() == 0:
            break
        finished = pool.step()
        for star, res in finished:
            results[pos[star]] = res
        if pbar is not None and finished:
            pbar.update(len(finished))
    return results  # type: ignore[return-value]


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


# ====================================================================== driver
def _finalise(stack: SpectraStack, i: int, res: dict[str, Any], snr: float, seed: int, cfg: FitConfig,
              return_chain: bool, systematics: LabelSystematics | None) -> dict[str, Any]:
    """Add flags, status, S/N and seed to a pool result (the keys of fit_spectrum) and fold the
    model's label ``systematics`` into its interval."""
    tpl = stack.template
    snr_used = float(snr) if np.isfinite(snr) else float(stack.snr_median[i])
    out = dict(res)
    out["flag"] = result_flags(tpl, res["median"], res["rv"], res["chi2_reduced"], snr_used, bool(out.pop("converged")), cfg)
    out.update(status="ok", snr=snr_used, n_good=int(stack.n_good[i]), seed=int(seed))
    if return_chain:
        out["param_names"] = list(tpl.param_names)
    else:
        out.pop("tau", None)
    return widen_intervals(out, systematics)


def _input_problems(flux: np.ndarray, ivar: np.ndarray, n_pix: int) -> list[str | None]:
    """:func:`gsn_dask.fit.result.input_problem` for every row (vectorised)."""
    if flux.ndim != 2 or flux.shape != ivar.shape or flux.shape[1] != n_pix:
        return [f"flux/ivar shape {flux.shape[1:]}/{ivar.shape[1:]} is not the model grid ({n_pix} px)"] * flux.shape[0]
    nofin = ~np.isfinite(flux).any(axis=1)
    noivar = ~(np.isfinite(ivar) & (ivar > 0)).any(axis=1)
    return ["no finite flux (all NaN)" if a else "no pixel with ivar > 0" if b else None for a, b in zip(nofin, noivar)]


def fit_spectra_batched(
    model: Any,
    flux: np.ndarray,
    ivar: np.ndarray,
    *,
    config: FitConfig | None = None,
    seeds: Sequence[int],
    snr: Sequence[float] | np.ndarray | None = None,
    priors: Mapping[str, tuple[float, float]] | Sequence[Mapping[str, tuple[float, float]] | None] | None = None,
    device: str | torch.device | None = None,
    batch_size: int | None = None,
    progress: bool = False,
    return_chain: bool = False,
    threads: int | None = None,
) -> list[dict[str, Any]]:
    """Posteriors of S normalised spectra on ``model.wavelength`` (flux, ivar (S, n_pix)), all
    walkers of a batch advanced together (module docstring).

    ``seeds`` (S,) per-star seeds (:func:`.seeds.star_seed`); ``snr`` per-pixel S/N for the
    LOW_SNR flag (NaN: median of |flux| sqrt(ivar)); ``priors``: one mapping for all stars or a
    sequence of per-star mappings (None = config.priors); ``device``: None = CUDA if available;
    ``batch_size``: stars per batch (None = :func:`auto_batch_size`); ``threads``: torch CPU
    threads while fitting (None = ``config.blas_threads``). Returns one dict per star with the
    keys of :func:`.sampler.fit_spectrum` (plus ``chain`` (n_steps, n_walkers, ndim),
    ``param_names`` and ``tau`` with ``return_chain``). A bad star gets a NOT_FITTED dict with
    ``status`` saying why; nothing raises for bad data (only for a bad config)."""
    cfg = config or FitConfig()
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    if flux.ndim == 1:
        flux, ivar = flux[None], ivar[None]
    S = flux.shape[0]
    seeds = [int(s) for s in np.asarray(seeds, dtype=object).reshape(-1)]
    if len(seeds) != S or ivar.shape[0] != S:
        raise ValueError(f"{S} spectra but {len(seeds)} seeds / {ivar.shape[0]} ivar rows")
    snrs = np.full(S, np.nan) if snr is None else np.asarray(snr, dtype=np.float64).reshape(S)
    if priors is None or isinstance(priors, Mapping):
        star_priors = [priors] * S
    else:
        star_priors = list(priors)
        if len(star_priors) != S:
            raise ValueError(f"{len(star_priors)} prior mappings for {S} spectra")
    L = len(model.label_names)
    ndim = L + 1
    if cfg.n_walkers < 2 * ndim:
        raise ValueError(f"n_walkers={cfg.n_walkers} must be >= 2 * n_dim = {2 * ndim}")
    if cfg.moves not in MOVE_SETS:
        raise ValueError(f"unknown moves {cfg.moves!r}")
    n_pix = int(np.asarray(model.wavelength).size)
    dev = resolve_device(device)
    results: list[dict[str, Any] | None] = [None] * S
    problems = _input_problems(flux, ivar, n_pix)
    for i, pb in enumerate(problems):
        if pb is not None:
            results[i] = empty_result(L, status=f"bad input: {pb}", snr=float(snrs[i]), n_good=0, seed=seeds[i])
    ok_rows = [i for i in range(S) if problems[i] is None]
    if not ok_rows:
        return [r for r in results]  # type: ignore[misc]
    emu = torch_emulator(model, dev)
    systematics = model_label_systematics(model, cfg)  # once per call, not per star
    bs = int(batch_size) if batch_size else auto_batch_size(emu, cfg, dev)
    old_threads = torch.get_num_threads()
    nt = threads if threads is not None else cfg.blas_threads
    if nt is not None and dev.type == "cpu":
        torch.set_num_threads(int(nt))
    pbar = None
    if progress:
        try:
            from tqdm.auto import tqdm

            pbar = tqdm(total=len(ok_rows), desc="fit (batched)", unit="star")
        except ImportError:
            pbar = None
    block_size = max(4 * bs, 4096)
    try:
        for b0 in range(0, len(ok_rows), block_size):
            rows = ok_rows[b0 : b0 + block_size]
            # ---- the posteriors' arrays, all stars of the block at once (SpectrumPosterior's setup)
            stack = SpectraStack(model, flux[rows], ivar[rows], cfg, [star_priors[i] for i in rows])
            todo: list[int] = []  # rows of the stack to sample
            for k, i in enumerate(rows):
                snr_used = float(snrs[i]) if np.isfinite(snrs[i]) else float(stack.snr_median[k])
                if k in stack.errors:
                    results[i] = empty_result(L, status=stack.errors[k], seed=seeds[i])
                elif stack.n_good[k] < cfg.min_good_pixels:
                    flag = Flag.NOT_FITTED | Flag.FEW_PIXELS
                    if np.isfinite(snr_used) and snr_used < cfg.snr_low:
                        flag |= Flag.LOW_SNR
                    results[i] = empty_result(
                        L, flag=int(flag), snr=snr_used, n_good=int(stack.n_good[k]), seed=seeds[i],
                        status=f"few good pixels: {int(stack.n_good[k])} < min_good_pixels={cfg.min_good_pixels}")
                else:
                    todo.append(k)
            queue = [todo] if todo else []
            while queue:
                chunk = queue.pop(0)
                try:
                    with torch.no_grad():
                        raw = _run_pool(emu, stack, chunk, [seeds[rows[k]] for k in chunk], cfg, bs, return_chain,
                                        pbar=pbar)
                    res = [_finalise(stack, k, r, float(snrs[rows[k]]), seeds[rows[k]], cfg, return_chain, systematics)
                           for k, r in zip(chunk, raw)]
                except Exception as exc:  # noqa: BLE001 - isolate: split (results do not depend on the batch)
                    oom = isinstance(exc, (MemoryError, getattr(torch.cuda, "OutOfMemoryError", MemoryError)))
                    if dev.type == "cuda":
                        torch.cuda.empty_cache()
                    if oom and bs > 1:  # a smaller pool, the same stars
                        bs = max(1, bs // 2)
                        queue.insert(0, chunk)
                        continue
                    if len(chunk) > 1:
                        h = len(chunk) // 2
                        queue[:0] = [chunk[:h], chunk[h:]]
                        continue
                    res = [empty_result(L, status=f"error: {type(exc).__name__}: {exc}", seed=seeds[rows[chunk[0]]])]
                for k, r in zip(chunk, res):
                    results[rows[k]] = r
    finally:
        if pbar is not None:
            pbar.close()
        torch.set_num_threads(old_threads)
    return [r if r is not None else empty_result(L, status="error: not fitted") for r in results]


def fit_block(block: Any, model: Any, *, config: FitConfig, run_seed: int, progress: bool = False,
              device: str | torch.device | None = None, batch_size: int | None = None) -> Any:
    """:func:`gsn_dask.fit.block.fit_block` with the batched sampler: the same pixel cut,
    normalisation, per-star seeds and priors and the same result rows (``block``'s helpers),
    every good star of the block fitted in batches by :func:`fit_spectra_batched`.
    Never raises for a bad star."""
    from ..cube import empty_results
    from . import block as _blk
    from .seeds import star_seed

    config = config or FitConfig()
    labels = list(model.label_names)
    stars = _blk._str(block["star"].values)
    n = len(stars)
    out = empty_results(stars, labels, n_draws=config.n_draws, status="not fitted",
                        attrs=_blk.results_attrs(model, config, run_seed, "batched"))
    if n == 0:
        return out
    try:
        sl = model.pixel_slice(np.asarray(block["wavelength"].values, dtype=np.float64))
    except Exception as exc:  # noqa: BLE001
        reason = (f"model mismatch: {exc}" if type(exc).__name__ == "ModelMismatchError"
                  else f"error: {type(exc).__name__}: {exc}")
        out["status"].values[:] = reason
        return out
    flux = np.asarray(block["flux"].values[:, sl], dtype=np.float64)
    ivar = np.asarray(block["ivar"].values[:, sl], dtype=np.float64)
    snr = (np.asarray(block["snr"].values, dtype=np.float64).reshape(n) if "snr" in block.variables
           else np.full(n, np.nan))
    n_pix = flux.shape[1]
    problems = {i: input_problem(flux[i], ivar[i], n_pix) for i in range(n)}
    errors: dict[int, str] = {}
    if not bool(block.attrs.get("normalised", False)):
        from .threads import blas_threads

        todo = np.array([i for i in range(n) if problems[i] is None], dtype=int)
        with blas_threads(config.blas_threads):
            flux, ivar, errors = _blk._normalise(model, flux, ivar, todo)
    L = len(labels)
    good = [i for i in range(n) if problems[i] is None and i not in errors]
    res_good: list[dict[str, Any]] = []
    if good:
        try:
            res_good = fit_spectra_batched(
                model, flux[good], ivar[good], config=config, seeds=[star_seed(run_seed, stars[i]) for i in good],
                snr=snr[good], priors=[_blk.star_priors(block, labels, i) or None for i in good],
                device=device, batch_size=batch_size, progress=progress)
        except Exception as exc:  # noqa: BLE001 - a config error: every star gets the reason
            res_good = [empty_result(L, status=f"error: {type(exc).__name__}: {exc}") for _ in good]
    by_row = dict(zip(good, res_good))
    for i in range(n):
        if problems[i] is not None:
            res = empty_result(L, status=f"bad input: {problems[i]}")
        elif i in errors:
            res = empty_result(L, status=errors[i])
        else:
            res = by_row[i]
        _blk._fill(out, i, res)
    return out


__all__ = [
    "BatchedPosterior", "MOVE_SETS", "QuadraticChi2", "SpectraStack", "TorchEmulator", "auto_batch_size",
    "autocorr_time", "batched_map", "burn_discard", "bytes_per_star", "fit_block", "fit_spectra_batched",
    "init_walkers", "levenberg_marquardt", "move_set", "normals", "philox4x32", "seed_keys", "torch_emulator",
    "uniforms",
]
