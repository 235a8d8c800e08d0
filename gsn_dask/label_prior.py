"""The Kiel-diagram prior: which log g a star of a given Teff has, learned from a model's training labels.

At R~1800 Teff and log g are partly degenerate, and a fit can settle where no star lives (a K dwarf
at log g 5.0, where main-sequence K dwarfs have 4.5-4.7). The prior is the shape of the training
stars' density in (log10 Teff, log g), smoothed with a Gaussian kernel (``bandwidth``: 0.015 dex in
Teff, about 190 K at 5500 K, and 0.15 dex in log g), scaled to 1 at its peak in every Teff column
(so it says which log g, not which Teff: a library's Teff distribution is its selection, not the
survey's), and mixed with a uniform ``floor`` (0.05: at most -3.0 in log prior, so nothing inside
the training box is excluded)::

    p(log g | Teff) = (1 - floor) * kde(Teff, log g) / max_g kde(Teff, g) + floor

It is tabulated once, at training, on a regular grid over the model's bounds and stored in
``model.json`` (``label_prior``).

It acts on the *reported* labels, the emulator's labels plus the model's label systematics (the
label-scale error learned in cross-validation, :func:`gsn_dask.fit.result.widen_intervals`): Teff
and log g are taken as independent split normals (median, p16, p84), multiplied by the prior on a
2-D quadrature grid, and summarised again (:func:`apply`). That is the same for every sampler, and
deterministic. Other labels keep their summaries. Numpy only.
"""
from __future__ import annotations

import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

KIND = "kiel"
#: Kernel sigma: log10 Teff (dex), log g (dex).
BANDWIDTH: tuple[float, float] = (0.015, 0.15)
#: Uniform part of the mixture (fraction of the peak density).
FLOOR = 0.05
#: Grid nodes: log10 Teff, log g.
SHAPE: tuple[int, int] = (96, 64)
LABELS = ("teff", "logg")


@dataclass(frozen=True)
class KielPrior:
    """log p on a regular grid: ``x`` = log10 Teff from ``x0`` in ``nx`` steps of ``dx``, ``y`` = log g
    from ``y0`` in ``ny`` steps of ``dy``; ``log_p`` (ny, nx); ``record``: how it was made."""

    x0: float
    dx: float
    y0: float
    dy: float
    log_p: np.ndarray
    record: Mapping[str, Any]

    def to_json(self) -> dict[str, Any]:
        """The ``model.json`` ``label_prior`` entry (log p rounded to 1e-6)."""
        ny, nx = self.log_p.shape
        return {"kind": KIND, "labels": list(LABELS), "x": {"label": "teff", "transform": "log10", "start": self.x0,
                                                             "step": self.dx, "n": nx},
                "y": {"label": "logg", "transform": "identity", "start": self.y0, "step": self.dy, "n": ny},
                "log_p": np.round(self.log_p, 6).tolist(), **dict(self.record)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> KielPrior:
        """The prior of a ``model.json`` ``label_prior`` entry; ValueError if it is not one."""
        if d.get("kind") != KIND or list(d.get("labels", [])) != list(LABELS):
            raise ValueError(f"label_prior must be kind {KIND!r} over {list(LABELS)}, got {d.get('kind')!r} {d.get('labels')}")
        log_p = np.asarray(d["log_p"], dtype=np.float64)
        x, y = d["x"], d["y"]
        if log_p.shape != (int(y["n"]), int(x["n"])) or min(log_p.shape) < 2 or not np.all(np.isfinite(log_p)):
            raise ValueError(f"label_prior grid has shape {log_p.shape}, expected ({y['n']}, {x['n']}) finite values")
        rec = {k: v for k, v in d.items() if k not in ("kind", "labels", "x", "y", "log_p")}
        return cls(float(x["start"]), float(x["step"]), float(y["start"]), float(y["step"]), log_p, rec)


def build(teff: np.ndarray, logg: np.ndarray, teff_bounds: tuple[float, float], logg_bounds: tuple[float, float], *,
          bandwidth: tuple[float, float] = BANDWIDTH, floor: float = FLOOR, shape: tuple[int, int] = SHAPE) -> KielPrior:
    """The prior of training stars ``teff`` (K) and ``logg`` (dex) over the model's bounds."""
    teff, logg = np.asarray(teff, np.float64), np.asarray(logg, np.float64)
    ok = np.isfinite(teff) & np.isfinite(logg) & (teff > 0)
    if ok.sum() < 10:
        raise ValueError(f"a Kiel prior needs at least 10 stars with Teff and log g, got {int(ok.sum())}")
    if not 0.0 < floor <= 1.0:
        raise ValueError(f"floor must be in (0, 1], got {floor}")
    nx, ny = shape
    xs = np.linspace(np.log10(teff_bounds[0]), np.log10(teff_bounds[1]), nx)
    ys = np.linspace(logg_bounds[0], logg_bounds[1], ny)
    ex = np.exp(-0.5 * ((xs[:, None] - np.log10(teff[ok])[None, :]) / bandwidth[0]) ** 2)  # (nx, n)
    ey = np.exp(-0.5 * ((ys[:, None] - logg[ok][None, :]) / bandwidth[1]) ** 2)  # (ny, n)
    kde = ey @ ex.T  # (ny, nx)
    shape_g = kde / np.maximum(kde.max(axis=0, keepdims=True), np.finfo(float).tiny)  # each Teff column peaks at 1
    log_p = np.log((1.0 - floor) * shape_g + floor)
    rec = {"n_star": int(ok.sum()), "bandwidth": {"log10_teff": bandwidth[0], "logg": bandwidth[1]}, "floor": floor,
           "method": "Gaussian KDE of the training labels in (log10 Teff, log g), normalised to 1 at the peak of "
                     "every Teff column (p(log g | Teff)), mixed with a uniform floor"}
    return KielPrior(float(xs[0]), float(xs[1] - xs[0]), float(ys[0]), float(ys[1] - ys[0]), log_p, rec)


def log_density(prior: KielPrior, teff: np.ndarray, logg: np.ndarray) -> np.ndarray:
    """log p at ``teff`` (K), ``logg`` (dex) (arrays of one shape), bilinear in the grid nodes;
    outside the grid the edge value."""
    ny, nx = prior.log_p.shape
    fx = ((np.log10(teff) - prior.x0) / prior.dx).clip(0.0, nx - 1.0)
    fy = ((np.asarray(logg) - prior.y0) / prior.dy).clip(0.0, ny - 1.0)
    ix, iy = np.floor(fx).clip(0, nx - 2), np.floor(fy).clip(0, ny - 2)
    tx, ty = fx - ix, fy - iy
    ix, iy, g = ix.astype(np.int64), iy.astype(np.int64), prior.log_p
    return ((1 - ty) * ((1 - tx) * g[iy, ix] + tx * g[iy, ix + 1])
            + ty * ((1 - tx) * g[iy + 1, ix] + tx * g[iy + 1, ix + 1]))


#: Quadrature nodes per label, in units of each side's sigma, for :func:`apply`.
NODES = np.linspace(-5.0, 5.0, 121)


#: The standard normal's 84th percentile: a split normal's sigma per side is (p84 - median) / Z84.
Z84 = 0.9944578832097535


def _split_normal(med: float, lo: float, hi: float, u: np.ndarray) -> np.ndarray:
    """Label values at ``u`` sigmas of a split normal with median ``med`` and percentiles 16/84 ``lo``/``hi``."""
    return med + np.where(u < 0, u * (med - lo), u * (hi - med)) / Z84


def apply(prior: KielPrior, median: np.ndarray, p16: np.ndarray, p84: np.ndarray, idx: tuple[int, int],
          lower: np.ndarray, upper: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(median, p16, p84) of one star's labels after the prior: labels ``idx`` = (teff, logg) as
    independent split normals in cells of :data:`NODES` (each cell its normal probability), weighted
    by the prior at the cell centres (beyond the model's bounds ``lower``, ``upper``: its value at the
    bound), their marginal quantiles; other labels unchanged."""
    from scipy.special import ndtr

    med, lo, hi = (np.array(a, dtype=np.float64) for a in (median, p16, p84))
    edges = np.r_[NODES - 0.5 * (NODES[1] - NODES[0]), NODES[-1] + 0.5 * (NODES[1] - NODES[0])]
    mass = np.diff(ndtr(edges))
    centres = [_split_normal(med[j], lo[j], hi[j], NODES) for j in idx]
    if not all(np.all(np.isfinite(c)) for c in centres):
        return med, lo, hi
    at = np.meshgrid(*(np.clip(c, lower[j], upper[j]) for c, j in zip(centres, idx)), indexing="ij")
    w = mass[:, None] * mass[None, :] * np.exp(log_density(prior, *at))
    for j, m in ((idx[0], w.sum(axis=1)), (idx[1], w.sum(axis=0))):
        cum = np.r_[0.0, np.cumsum(m)] / m.sum()
        med[j], lo[j], hi[j] = np.interp([0.5, 0.16, 0.84], cum, _split_normal(med[j], lo[j], hi[j], edges))
    return med, lo, hi


def reweight_draws(prior: KielPrior, draws: np.ndarray, idx: tuple[int, int]) -> np.ndarray:
    """Posterior draws (n, n_label) resampled by the prior's weights at their (teff, logg):
    systematic resampling at the fixed positions (k + 1/2) / n (deterministic; draws keep their order)."""
    draws = np.asarray(draws, dtype=np.float64)
    n = draws.shape[0]
    if n == 0:
        return draws
    w = np.exp(log_density(prior, draws[:, idx[0]], draws[:, idx[1]]))
    c = np.cumsum(w) / w.sum()
    return draws[np.minimum(np.searchsorted(c, (np.arange(n) + 0.5) / n), n - 1)]


_CACHE: "weakref.WeakKeyDictionary[object, tuple[int, KielPrior]]" = weakref.WeakKeyDictionary()


def for_model(model: Any) -> KielPrior | None:
    """The Kiel prior a model carries (``meta['label_prior']``), or None."""
    rec = (getattr(model, "meta", None) or {}).get("label_prior")
    if not rec:
        return None
    try:
        hit = _CACHE.get(model)
    except TypeError:  # not weak-referenceable
        return KielPrior.from_json(rec)
    if hit is None or hit[0] != id(rec):
        hit = (id(rec), KielPrior.from_json(rec))
        _CACHE[model] = hit
    return hit[1]


def with_label_prior(model: Any, teff: np.ndarray, logg: np.ndarray, **build_kw: Any) -> Any:
    """A copy of ``model`` (a :class:`gsn_dask.emulator.GSN` with labels teff and logg) carrying the
    Kiel prior of training labels ``teff``, ``logg`` (a new model id); ``build_kw`` (``bandwidth``,
    ``floor``) go to :func:`build`."""
    names = list(model.label_names)
    if not set(LABELS) <= set(names):
        raise ValueError(f"a Kiel prior needs labels {list(LABELS)}; the model has {names}")
    b = np.asarray(model.bounds, np.float64)
    prior = build(teff, logg, tuple(b[names.index("teff")]), tuple(b[names.index("logg")]), **build_kw)
    meta = {k: v for k, v in model.meta.items() if k != "weights"}
    meta["label_prior"] = prior.to_json()
    return type(model)(hidden_layers=model.hidden_layers, W_out=model.W_out, b_out=model.b_out,
                       activation=model.activation, label_names=model.label_names, bounds=model.bounds,
                       wavelength=model.wavelength, emulator_error=model.emulator_error, label_units=model.label_units,
                       label_transforms=model.label_transforms, normalisation=model.normalisation, meta=meta)


__all__ = ["BANDWIDTH", "FLOOR", "NODES", "KielPrior", "apply", "build", "for_model", "log_density", "reweight_draws",
           "with_label_prior"]
