"""Counter-based random numbers for the batched sampler: Philox4x32-10 (Salmon et al. 2011, the
generator of cuRAND and of numpy's Philox family; checked against the Random123 known-answer
vectors) with key = the star's 63-bit seed (:func:`gsn_dask.fit.seeds.star_seed`) and counter =
(index, the star's own step, stream). Integer arithmetic only, identical on CPU and CUDA, so a
star's random numbers depend on its seed and step, never on the other stars, the batch size, the
chunking or a device generator."""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

Tensor = torch.Tensor

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


def _philox_ok(device: torch.device, mul: Callable[[Tensor, int], tuple[Tensor, Tensor]]) -> bool:
    ctr = torch.tensor([k[0] for k in PHILOX_KAT], dtype=torch.int64, device=device)
    key = torch.tensor([k[1] for k in PHILOX_KAT], dtype=torch.int64, device=device)
    want = torch.tensor([k[2] for k in PHILOX_KAT], dtype=torch.int64, device=device)
    return bool((_philox(ctr, key, 10, mul) == want).all())


def _mulhilo32(device: torch.device) -> Callable[[Tensor, int], tuple[Tensor, Tensor]]:
    """The multiply for ``device``: the one-multiply version if it reproduces the known answers."""
    key = str(device)
    if key not in _FAST_MUL:
        _FAST_MUL[key] = _philox_ok(device, _mulhilo32_wrap)
    return _mulhilo32_wrap if _FAST_MUL[key] else _mulhilo32_limbs


def philox4x32(counter: Tensor, key: Tensor, rounds: int = 10) -> Tensor:
    """Philox4x32-``rounds`` (Random123): counter (..., 4) and key (..., 2) int64 tensors holding
    uint32 values -> (..., 4) int64 uint32 outputs."""
    return _philox(counter, key, rounds, _mulhilo32(counter.device))


def _philox(counter: Tensor, key: Tensor, rounds: int, mulhilo: Callable[[Tensor, int], tuple[Tensor, Tensor]]) -> Tensor:
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


__all__ = ["PHILOX_KAT", "STREAM_INIT", "STREAM_MCMC", "normals", "philox4x32", "seed_keys", "uniforms"]
