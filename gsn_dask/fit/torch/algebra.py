"""Small fixed-shape linear algebra for the batched sampler: sums over a short last axis, and
Cholesky factorisation and solves of (d+1) x (d+1) systems, with elementwise operations only,
so a row's value never depends on the batch shape (as a batched reduction or LAPACK kernel's
might on CUDA); and the tile sizes that keep every GEMM's shape fixed."""
from __future__ import annotations

import torch

Tensor = torch.Tensor

#: Emulator rows per evaluation tile on the CPU and on CUDA (:meth:`BatchedPosterior._tiled`).
ROW_TILE_CPU, ROW_TILE_CUDA = 64, 4096
#: Stars per tile of the per-star reductions outside the likelihood (FFT, burn-in re-fit, coarse search).
STAR_TILE = 16


def dot(a: Tensor, b: Tensor) -> Tensor:
    """Sum over the last (small) dimension in a fixed order, with elementwise ops only, so a row's
    value never depends on the batch shape (as a reduction kernel's might)."""
    out = a[..., 0] * b[..., 0]
    for i in range(1, a.shape[-1]):
        out = out + a[..., i] * b[..., i]
    return out


def matvec(A: Tensor, x: Tensor) -> Tensor:
    """A (..., m, k) @ x (..., k) -> (..., m) with :func:`dot`."""
    return torch.stack([dot(A[..., i, :], x) for i in range(A.shape[-2])], dim=-1)


def chol(A: Tensor) -> tuple[Tensor, Tensor]:
    """Cholesky factor L (lower) of SPD matrices A (..., k, k) and an ok mask (...,) (False where
    A is not positive definite; L is then garbage). Elementwise ops only (k is small)."""
    k = A.shape[-1]
    L = torch.zeros_like(A)
    ok = torch.ones(A.shape[:-2], dtype=torch.bool, device=A.device)
    for j in range(k):
        d = A[..., j, j] - dot(L[..., j, :j], L[..., j, :j]) if j else A[..., j, j]
        ok = ok & (d > 0) & torch.isfinite(d)
        ljj = torch.sqrt(torch.where(d > 0, d, torch.ones_like(d)))
        L[..., j, j] = ljj
        for i in range(j + 1, k):
            e = A[..., i, j] - dot(L[..., i, :j], L[..., j, :j]) if j else A[..., i, j]
            L[..., i, j] = e / ljj
    return L, ok


def solve_lower(L: Tensor, b: Tensor) -> Tensor:
    """y with L y = b (L lower (..., k, k), b (..., k))."""
    k = L.shape[-1]
    ys: list[Tensor] = []
    for i in range(k):
        acc = b[..., i]
        for j in range(i):
            acc = acc - L[..., i, j] * ys[j]
        ys.append(acc / L[..., i, i])
    return torch.stack(ys, dim=-1)


def solve_upper_t(L: Tensor, y: Tensor) -> Tensor:
    """x with L^T x = y."""
    k = L.shape[-1]
    xs: list[Tensor | None] = [None] * k
    for i in reversed(range(k)):
        acc = y[..., i]
        for j in range(i + 1, k):
            acc = acc - L[..., j, i] * xs[j]  # type: ignore[operator]
        xs[i] = acc / L[..., i, i]
    return torch.stack(xs, dim=-1)  # type: ignore[arg-type]


def spd_solve(A: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
    """x = A^-1 b for SPD A (..., k, k), b (..., k) by Cholesky; (x, ok)."""
    L, ok = chol(A)
    return solve_upper_t(L, solve_lower(L, b)), ok


def spd_inv(A: Tensor) -> tuple[Tensor, Tensor]:
    """A^-1 for SPD A (..., k, k); (inverse, ok)."""
    L, ok = chol(A)
    k = A.shape[-1]
    eye = torch.eye(k, dtype=A.dtype, device=A.device).expand(*A.shape[:-2], k, k)
    cols = [solve_upper_t(L, solve_lower(L, eye[..., :, i])) for i in range(k)]
    return torch.stack(cols, dim=-1), ok


def star_tiles(n: int, size: int, device: torch.device) -> list[tuple[Tensor, int]]:
    """Index tensors of exactly ``size`` entries covering 0..n-1 (the last padded with n-1), and
    the number of real entries of each."""
    out = []
    for a in range(0, n, size):
        b = min(n, a + size)
        out.append((torch.arange(a, a + size, device=device).clamp_max(n - 1), b - a))
    return out


__all__ = ["ROW_TILE_CPU", "ROW_TILE_CUDA", "STAR_TILE", "chol", "dot", "matvec", "solve_lower", "solve_upper_t",
           "spd_inv", "spd_solve", "star_tiles"]
