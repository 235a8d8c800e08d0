"""Chain summaries of many stars at once: the integrated autocorrelation time (emcee's
estimator, as :func:`gsn_dask.fit.diagnostics.autocorr_time`) and numpy-'linear' percentiles."""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch

Tensor = torch.Tensor


def autocorr_time(chain: Tensor, c: float = 5.0) -> Tensor:
    """Integrated autocorrelation time (S, D) of chains (S, T, W, D), as
    :func:`gsn_dask.fit.diagnostics.autocorr_time` (emcee's estimator, walker-averaged ACF, Sokal window c;
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


def percentiles(flat: Tensor, qs: Sequence[float]) -> Tensor:
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


__all__ = ["autocorr_time", "percentiles"]
