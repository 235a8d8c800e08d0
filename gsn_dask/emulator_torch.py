"""Torch side of the GSN emulator: the network, training with K-fold cross-validation,
the per-pixel emulator error, batched torch inference.

Training recipe (see :func:`train_gsn`):

* labels -> per-label transform (``log10`` for teff by default) -> min-max onto [-0.5, 0.5]
  of the training bounds;
* network ``Linear(n_label, h) -> act -> Linear(h, h) -> act -> Linear(h, h) -> act -> Linear(h, n_pix)``
  (three hidden layers as in the GSN paper), optional dropout after each hidden activation;
* loss: mean of ``w * (model - flux)**2`` with pixel weights ``w = 1 / (1/ivar + floor**2)``
  (0 where ivar is 0 or flux is not finite), normalised to mean 1 over good pixels;
* AdamW (weight decay), cosine learning-rate decay with a short warm-up, early stopping on a
  held-out split, best weights kept;
* K-fold cross-validation (stratified in the first label, fixed seed): out-of-fold predictions
  give the CV residuals and the per-pixel emulator error; the final model is trained on all stars
  for the median best epoch count of the folds.
"""
from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F

from .emulator import GSN, LABEL_TRANSFORMS, TRAIN_DEFAULTS as _D, default_normalisation

log = logging.getLogger(__name__)

#: chi^2 with one degree of freedom: median (used by the robust emulator-error estimate).
_CHI2_1_MEDIAN = 0.454936423119572

_TORCH_ACT = {
    "silu": F.silu,
    "tanh": torch.tanh,
    "leaky_relu": lambda x: F.leaky_relu(x, 0.01),
    "relu": F.relu,
    "softplus": F.softplus,
    "sigmoid": torch.sigmoid,
}


# ------------------------------------------------------------------------ network
class GSNNet(nn.Module):
    """labels (scaled) -> hidden layers -> linear output (one value per wavelength pixel)."""

    def __init__(
        self,
        n_label: int,
        n_pix: int,
        hidden: Sequence[int] = (256, 256, 256),
        activation: str = "silu",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if activation not in _TORCH_ACT:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_TORCH_ACT)}")
        sizes = [n_label, *[int(h) for h in hidden]]
        self.layers = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        self.out = nn.Linear(sizes[-1], n_pix)
        self.activation = activation
        self._act = _TORCH_ACT[activation]
        self.dropout = float(dropout)

    def hidden_forward(self, x: torch.Tensor) -> torch.Tensor:
        for lin in self.layers:
            x = self._act(lin(x))
            if self.dropout > 0:
                x = F.dropout(x, self.dropout, self.training)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.hidden_forward(x))


def net_from_gsn(model: GSN, device: str | torch.device | None = None) -> GSNNet:
    """A :class:`GSNNet` holding the weights of a (numpy) :class:`GSN`."""
    net = GSNNet(model.n_label, model.n_pix, model.hidden_widths, model.activation)
    with torch.no_grad():
        for lin, (W, b) in zip(net.layers, model.hidden_layers):
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))
            lin.bias.copy_(torch.from_numpy(b))
        net.out.weight.copy_(torch.from_numpy(np.ascontiguousarray(model.W_out.T)))
        net.out.bias.copy_(torch.from_numpy(model.b_out))
    return net.to(resolve_device(device)).eval()


def _gsn_from_net(net: GSNNet, template: dict[str, Any], emulator_error: np.ndarray | None, meta: dict) -> GSN:
    net = net.to("cpu")
    hidden = [
        (lin.weight.detach().numpy().T.copy(), lin.bias.detach().numpy().copy()) for lin in net.layers
    ]
    return GSN(
        hidden_layers=hidden,
        W_out=net.out.weight.detach().numpy().T.copy(),
        b_out=net.out.bias.detach().numpy().copy(),
        activation=net.activation,
        emulator_error=emulator_error,
        meta=meta,
        **template,
    )


def merge_ensemble(models: Sequence[GSN]) -> GSN:
    """One GSN that predicts exactly the mean of ``models`` (same labels, scaling, grid,
    activation, depth): first hidden layers side by side, deeper ones block-diagonal,
    output weights stacked and divided by the number of members. Costs M times the
    output-layer FLOPs of one member."""
    m0 = models[0]
    M = len(models)
    for m in models[1:]:
        if (m.label_names != m0.label_names or m.activation != m0.activation
                or len(m.hidden_layers) != len(m0.hidden_layers) or m.label_transforms != m0.label_transforms
                or not np.array_equal(m.bounds, m0.bounds) or not np.array_equal(m.wavelength, m0.wavelength)):
            raise ValueError("ensemble members differ in labels, scaling, grid, activation or depth")
    layers = [(np.concatenate([m.hidden_layers[0][0] for m in models], axis=1),
               np.concatenate([m.hidden_layers[0][1] for m in models]))]
    for i in range(1, len(m0.hidden_layers)):
        Ws = [m.hidden_layers[i][0] for m in models]
        W = np.zeros((sum(w.shape[0] for w in Ws), sum(w.shape[1] for w in Ws)), np.float32)
        r = c = 0
        for w_ in Ws:
            W[r : r + w_.shape[0], c : c + w_.shape[1]] = w_
            r, c = r + w_.shape[0], c + w_.shape[1]
        layers.append((W, np.concatenate([m.hidden_layers[i][1] for m in models])))
    W_out = np.concatenate([m.W_out for m in models], axis=0) / np.float32(M)
    b_out = np.mean([m.b_out for m in models], axis=0, dtype=np.float64).astype(np.float32)
    return GSN(
        hidden_layers=layers, W_out=W_out, b_out=b_out, activation=m0.activation, label_names=m0.label_names,
        label_units=m0.label_units, bounds=m0.bounds, label_transforms=m0.label_transforms,
        wavelength=m0.wavelength, emulator_error=m0.emulator_error, normalisation=m0.normalisation,
        meta={"ensemble": {"members": M, "member_hidden": m0.hidden_widths}},
    )


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """``device`` or CUDA when available, else CPU."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def predict_torch(
    model: GSN | GSNNet,
    labels: np.ndarray,
    *,
    device: str | torch.device | None = None,
    batch_size: int = 65536,
    scaler: GSN | None = None,
) -> np.ndarray:
    """Batched torch inference: (N, n_label) physical labels -> (N, n_pix) float32 flux.

    ``model`` is a :class:`GSN` (converted on the fly) or a :class:`GSNNet` with ``scaler``
    (the GSN whose label scaling to use)."""
    if isinstance(model, GSN):
        scaler = model
        net = net_from_gsn(model, device)
    else:
        if scaler is None:
            raise ValueError("predict_torch with a GSNNet needs scaler= (a GSN with the label scaling)")
        net = model.eval()
    dev = next(net.parameters()).device
    x = torch.from_numpy(scaler.scale(labels))
    out = []
    with torch.no_grad():
        for i in range(0, x.shape[0], batch_size):
            out.append(net(x[i : i + batch_size].to(dev)).cpu())
    return torch.cat(out).numpy() if out else np.zeros((0, scaler.n_pix), np.float32)


# ------------------------------------------------------------------------ data
def _trim_range(good_frac: np.ndarray, min_frac: float) -> slice:
    ok = np.flatnonzero(good_frac >= min_frac)
    if ok.size == 0:
        raise ValueError("no wavelength pixel has enough good (ivar > 0) training spectra")
    return slice(int(ok[0]), int(ok[-1]) + 1)


def prepare_training_data(
    train_ds: xr.Dataset,
    *,
    labels: Sequence[str] | None = None,
    wavelength_range: tuple[float, float] | None = None,
    label_ranges: dict[str, tuple[float, float]] | None = None,
    min_pixel_coverage: float = 0.5,
    mask_telluric: bool = False,
) -> dict[str, Any]:
    """Load a training cube into numpy: normalised flux, ivar, labels of usable stars.

    Stars with a non-finite label (or outside ``label_ranges``) or no good pixel are dropped.
    The grid is cut to ``wavelength_range`` and then to the contiguous run of pixels where at
    least ``min_pixel_coverage`` of the stars have ivar > 0 (e.g. MILES ends at 7410 A).
    """
    from .cube import label_names as cube_label_names

    names_all = cube_label_names(train_ds)
    if labels is None:
        labels = [n for n in names_all if np.mean(np.isfinite(np.asarray(train_ds[f"label_{n}"].values, float))) >= 0.5]
        canon = ["teff", "logg", "feh", "alpha_fe"]
        labels = sorted(labels, key=lambda n: (canon.index(n) if n in canon else len(canon), n))
    labels = [str(n) for n in labels]
    missing = [n for n in labels if n not in names_all]
    if missing:
        raise ValueError(f"training cube has no labels {missing} (it has {names_all})")
    if not labels:
        raise ValueError("no labels to train on")
    wave = np.asarray(train_ds["wavelength"].values, dtype=np.float64)
    sel = slice(None)
    if wavelength_range is not None:
        idx = np.flatnonzero((wave >= wavelength_range[0]) & (wave <= wavelength_range[1]))
        if idx.size < 2:
            raise ValueError(f"wavelength_range {wavelength_range} leaves < 2 pixels of {wave[0]:.1f}-{wave[-1]:.1f} A")
        sel = slice(int(idx[0]), int(idx[-1]) + 1)
    lab = np.stack([np.asarray(train_ds[f"label_{n}"].values, dtype=np.float64) for n in labels], axis=1)
    keep = np.all(np.isfinite(lab), axis=1)
    for name, (lo, hi) in (label_ranges or {}).items():
        if name not in labels:
            raise ValueError(f"label_ranges names {name!r}, not one of the training labels {labels}")
        j = labels.index(name)
        keep &= (lab[:, j] >= lo) & (lab[:, j] <= hi)
    idx_star = np.flatnonzero(keep)
    sub = train_ds.isel(star=idx_star, wavelength=sel)
    flux = np.asarray(sub["flux"].values, dtype=np.float32)
    ivar = np.asarray(sub["ivar"].values, dtype=np.float32)
    wave = np.asarray(sub["wavelength"].values, dtype=np.float64)
    attrs = dict(train_ds.attrs)
    if not bool(attrs.get("normalised", False)):
        recipe = default_normalisation(attrs)
        try:
            from .grid.prepare import continuum_normalise  # type: ignore[attr-defined]
        except ImportError as exc:  # pragma: no cover - prepare is part of the package
            raise ValueError("training cube is not normalised and gsn_dask.grid.prepare is unavailable") from exc
        flux, ivar = continuum_normalise(wave, flux, ivar, recipe)
        flux = np.asarray(flux, np.float32)
        ivar = np.asarray(ivar, np.float32)
    bad = ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar < 0)
    ivar = np.where(bad, 0, ivar).astype(np.float32)
    flux = np.where(bad, 0, flux).astype(np.float32)
    if mask_telluric:
        from .grid.prepare import telluric_mask  # type: ignore[attr-defined]

        ivar[:, np.asarray(telluric_mask(wave), bool)] = 0
    has = (ivar > 0).any(axis=1)
    flux, ivar, idx_star = flux[has], ivar[has], idx_star[has]
    lab = lab[idx_star]
    if flux.shape[0] < 4:
        raise ValueError(f"only {flux.shape[0]} usable training stars (finite labels and some good pixels)")
    cut = _trim_range((ivar > 0).mean(axis=0), min_pixel_coverage)
    flux, ivar, wave = flux[:, cut], ivar[:, cut], wave[cut]
    stars = np.asarray(sub["star"].values)[has]
    return {
        "labels": labels,
        "label_values": lab,
        "flux": np.ascontiguousarray(flux),
        "ivar": np.ascontiguousarray(ivar),
        "wavelength": wave,
        "star": np.array([str(s) for s in stars]),
        "attrs": attrs,
        "n_star_cube": int(train_ds.sizes["star"]),
    }


def pixel_weights(ivar: np.ndarray, floor: float) -> np.ndarray:
    """Loss weights ``1/(1/ivar + floor**2)``, 0 for ivar 0; infinite ivar -> 1/floor**2;
    scaled to mean 1 over good pixels. With ``floor = 0`` and no noise this is uniform."""
    ivar = np.asarray(ivar, np.float64)
    good = ivar > 0
    with np.errstate(divide="ignore"):
        var = np.where(good, 1.0 / np.where(good, ivar, 1.0), 0.0)
    if floor <= 0:
        floor = max(float(np.median(np.sqrt(var[good]))) * 1e-3, 1e-6) if good.any() else 1.0
    w = np.where(good, 1.0 / (var + floor**2), 0.0)
    m = w[good].mean() if good.any() else 1.0
    return (w / m).astype(np.float32)


def stratified_folds(values: np.ndarray, k: int, seed: int) -> np.ndarray:
    """Fold index (0..k-1) per star, stratified in ``values`` (each run of k stars sorted by
    value gets a random permutation of the folds)."""
    rng = np.random.default_rng(seed)
    n = values.size
    order = np.argsort(values, kind="stable")
    fold = np.empty(n, dtype=np.int64)
    for i in range(0, n, k):
        blk = order[i : i + k]
        fold[blk] = rng.permutation(k)[: blk.size]
    return fold


def robust_emulator_error(resid: np.ndarray, ivar: np.ndarray, min_stars: int = 5) -> np.ndarray:
    """Per-pixel emulator error s (n_pix,): the extra scatter of residuals beyond the noise.

    Solves ``median_i r_i**2 / (1/ivar_i + s**2) = median(chi2_1)`` for each pixel over stars
    with ivar > 0 (robust to outlier stars, correct for heteroscedastic noise); s = 0 where the
    noise alone explains the residuals. Pixels with < ``min_stars`` good stars get the largest s.
    """
    r2 = np.asarray(resid, np.float64) ** 2
    good = (np.asarray(ivar) > 0) & np.isfinite(r2)
    with np.errstate(divide="ignore"):
        var = np.where(good, 1.0 / np.where(good, ivar, 1.0), np.nan).astype(np.float64)
    r2 = np.where(good, r2, np.nan)
    n_good = good.sum(axis=0)

    def med_chi(s2: np.ndarray) -> np.ndarray:
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.nanmedian(r2 / (var + s2[None, :]), axis=0)

    n_pix = r2.shape[1]
    with np.errstate(invalid="ignore"):
        hi = np.sqrt(np.nan_to_num(np.nanmax(r2, axis=0), nan=0.0)) + 1e-12
    lo = np.zeros(n_pix)
    need = med_chi(np.zeros(n_pix)) > _CHI2_1_MEDIAN
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        too_small = med_chi(mid**2) > _CHI2_1_MEDIAN
        lo = np.where(too_small, mid, lo)
        hi = np.where(too_small, hi, mid)
    s = np.where(need, 0.5 * (lo + hi), 0.0)
    ok = n_good >= min_stars
    if ok.any() and not ok.all():
        s[~ok] = float(np.max(s[ok]))
    elif not ok.any():
        s[:] = 0.0
    return s.astype(np.float32)


def _weighted_mean_spectrum(flux: np.ndarray, w: np.ndarray) -> np.ndarray:
    sw = w.sum(axis=0)
    return np.where(sw > 0, (flux * w).sum(axis=0) / np.where(sw > 0, sw, 1), 1.0).astype(np.float32)


# ------------------------------------------------------------------------ training core
@contextlib.contextmanager
def _deterministic(seed: int, threads: int | None):
    prev_det = torch.are_deterministic_algorithms_enabled()
    prev_threads = torch.get_num_threads()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    try:
        torch.manual_seed(seed)
        torch.use_deterministic_algorithms(True, warn_only=True)
        if threads:
            torch.set_num_threads(int(threads))
        yield
    finally:
        torch.use_deterministic_algorithms(prev_det)
        torch.set_num_threads(prev_threads)


def _fit_net(
    x_tr: np.ndarray,
    y_tr: np.ndarray,
    w_tr: np.ndarray,
    x_va: np.ndarray | None,
    y_va: np.ndarray | None,
    w_va: np.ndarray | None,
    *,
    hidden: Sequence[int],
    activation: str,
    dropout: float,
    epochs: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    patience: int,
    seed: int,
    device: torch.device,
    progress: bool,
    desc: str,
) -> tuple[GSNNet, dict[str, Any]]:
    """Train one network; early stopping on (x_va, y_va) if given, else all ``epochs``."""
    torch.manual_seed(seed)
    n, n_pix = y_tr.shape
    net = GSNNet(x_tr.shape[1], n_pix, hidden, activation, dropout)
    with torch.no_grad():  # start the output at the weighted mean spectrum
        net.out.bias.copy_(torch.from_numpy(_weighted_mean_spectrum(y_tr, w_tr)))
        net.out.weight.mul_(0.1)
    net.to(device)
    X = torch.from_numpy(x_tr).to(device)
    Y = torch.from_numpy(y_tr).to(device)
    W = torch.from_numpy(w_tr).to(device)
    has_val = x_va is not None and len(x_va) > 0
    if has_val:
        Xv, Yv, Wv = (torch.from_numpy(a).to(device) for a in (x_va, y_va, w_va))
    decay, no_decay = [], []
    for name, p in net.named_parameters():
        (decay if name.endswith("weight") else no_decay).append(p)
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}], lr=lr
    )
    steps_per_epoch = max(1, math.ceil(n / batch_size))
    total = epochs * steps_per_epoch
    warm = max(1, min(total // 20, 5 * steps_per_epoch))

    def lr_at(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    gen = torch.Generator(device="cpu").manual_seed(seed)
    best = (math.inf, 0, None)
    history: list[tuple[int, float, float]] = []
    from tqdm.auto import tqdm

    bar = tqdm(range(epochs), desc=desc, disable=not progress, leave=False, dynamic_ncols=True)
    since_best = 0
    for ep in bar:
        net.train()
        perm = torch.randperm(n, generator=gen).to(device)
        tot = 0.0
        for i in range(0, n, batch_size):
            b = perm[i : i + batch_size]
            loss = (W[b] * (net(X[b]) - Y[b]) ** 2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            tot += float(loss.detach()) * b.numel()
        train_loss = tot / n
        if has_val:
            net.eval()
            with torch.no_grad():
                val_loss = float((Wv * (net(Xv) - Yv) ** 2).mean())
        else:
            val_loss = train_loss
        history.append((ep + 1, train_loss, val_loss))
        if val_loss < best[0]:
            best = (val_loss, ep + 1, {k: v.detach().clone() for k, v in net.state_dict().items()})
            since_best = 0
        else:
            since_best += 1
        bar.set_postfix(loss=f"{train_loss:.3g}", val=f"{val_loss:.3g}", best=best[1])
        if has_val and patience and since_best >= patience:
            break
    bar.close()
    if has_val and best[2] is not None:
        net.load_state_dict(best[2])
    net.eval()
    return net, {
        "best_epoch": int(best[1]) if has_val else epochs,
        "best_val_loss": float(best[0]),
        "epochs_run": len(history),
        "history": history,
    }


# ------------------------------------------------------------------------ public training API
def train_gsn(
    train_ds: xr.Dataset | str | Path,
    *,
    labels: Sequence[str] | None = None,
    hidden: int | Sequence[int] = _D["hidden"],
    n_hidden_layers: int = _D["n_hidden_layers"],
    activation: str = _D["activation"],
    label_transforms: dict[str, str] | None = None,
    epochs: int = _D["epochs"],
    batch_size: int = _D["batch_size"],
    lr: float = _D["lr"],
    weight_decay: float = _D["weight_decay"],
    dropout: float = _D["dropout"],
    patience: int = _D["patience"],
    folds: int = _D["folds"],
    val_fraction: float = _D["val_fraction"],
    weight_floor: float = _D["weight_floor"],
    seed: int = _D["seed"],
    device: str | torch.device | None = None,
    threads: int | None = None,
    wavelength_range: tuple[float, float] | None = None,
    label_ranges: dict[str, tuple[float, float]] | None = None,
    mask_telluric: bool = False,
    final: str = "refit",
    ensemble: int = _D["ensemble"],
    label_systematics: bool = _D["label_systematics"],
    progress: bool = True,
    keep_fold_models: bool = False,
) -> tuple[GSN, dict[str, Any]]:
    """Train a GSN on a training cube; returns (model, report).

    ``folds >= 2``: K-fold cross-validation (each fold early-stops on its held-out stars, whose
    out-of-fold predictions give the CV residuals and the per-pixel emulator error), then the
    final model is trained on all stars for the median best epoch count (``final="refit"``;
    ``final="none"`` keeps the first fold's model, for quick sweeps).
    ``ensemble = M > 1`` trains M networks (different seeds) per fit and merges them into one
    GSN predicting their mean (:func:`merge_ensemble`; M times the inference cost).
    ``folds <= 1``: one held-out split of ``val_fraction`` (fixed seed) for early stopping and
    the emulator error; the final model is that network.

    ``label_transforms`` maps label names to ``"log10"``/``"identity"`` (default: teff log10).
    ``weight_floor`` (normalised flux units) caps the weight of very high-S/N pixels.
    ``label_systematics``: fit every held-out star (MAP + Laplace, at most 800) with its fold
    model and store the per-label systematic sigma that calibrates the fit's intervals in
    ``meta["label_systematics"]`` (:mod:`gsn_dask.fit.systematics`; the fit folds it into p16/p84).
    ``report`` holds settings, timings, CV metrics and (arrays) ``oof_pred``, ``fold``,
    ``flux``, ``ivar``, ``label_values``, ``wavelength``; ``fold_models`` if ``keep_fold_models``.
    """
    t0 = time.perf_counter()
    cube_path = None
    if not isinstance(train_ds, (str, Path)) and train_ds.encoding.get("source"):
        cube_path = str(train_ds.encoding["source"])
    if isinstance(train_ds, (str, Path)):
        from .cube import open_spectra

        cube_path = str(Path(train_ds).resolve())
        train_ds = open_spectra(train_ds)
    if activation not in _TORCH_ACT:
        raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_TORCH_ACT)}")
    widths = [int(hidden)] * int(n_hidden_layers) if np.isscalar(hidden) else [int(h) for h in hidden]
    data = prepare_training_data(
        train_ds, labels=labels, wavelength_range=wavelength_range, label_ranges=label_ranges,
        mask_telluric=mask_telluric,
    )
    names = data["labels"]
    lab, flux, ivar, wave = data["label_values"], data["flux"], data["ivar"], data["wavelength"]
    n, n_pix = flux.shape
    tr = {"teff": "log10"}
    tr.update(label_transforms or {})
    transforms = [tr.get(nm, "identity") for nm in names]
    for t in transforms:
        if t not in LABEL_TRANSFORMS:
            raise ValueError(f"unknown label transform {t!r}")
    bounds = np.stack([lab.min(axis=0), lab.max(axis=0)], axis=1)
    for j, nm in enumerate(names):
        if bounds[j, 1] <= bounds[j, 0]:
            raise ValueError(f"label {nm} is constant over the training set ({bounds[j, 0]}): cannot train on it")
    from .cube import LABEL_UNITS

    template = {
        "label_names": names,
        "label_units": [LABEL_UNITS.get(nm, "") for nm in names],
        "bounds": bounds,
        "label_transforms": transforms,
        "wavelength": wave,
        "normalisation": default_normalisation(data["attrs"]),
    }
    scaler = GSN(
        hidden_layers=[(np.zeros((len(names), 1)), np.zeros(1))], W_out=np.zeros((1, n_pix)), b_out=np.zeros(n_pix),
        activation=activation, **template,
    )
    X = scaler.scale(lab)
    w = pixel_weights(ivar, weight_floor)
    dev = resolve_device(device)
    cfg = {
        "labels": names, "hidden": widths, "activation": activation, "label_transforms": dict(zip(names, transforms)),
        "epochs": epochs, "batch_size": batch_size, "lr": lr, "weight_decay": weight_decay, "dropout": dropout,
        "patience": patience, "folds": folds, "val_fraction": val_fraction, "weight_floor": weight_floor,
        "seed": seed, "device": str(dev), "threads": threads, "wavelength_range": wavelength_range,
        "label_ranges": label_ranges, "mask_telluric": mask_telluric, "final": final,
        "ensemble": int(ensemble), "label_systematics": bool(label_systematics),
    }
    common = dict(
        hidden=widths, activation=activation, dropout=dropout, batch_size=batch_size, lr=lr,
        weight_decay=weight_decay, device=dev, progress=progress,
    )
    oof = np.full((n, n_pix), np.nan, np.float32)
    fold_info: list[dict] = []
    fold_models: list[GSN] = []
    with _deterministic(seed, threads):
        if folds >= 2:
            fold = stratified_folds(lab[:, 0], int(folds), seed)
        else:
            rng = np.random.default_rng(seed)
            n_val = max(1, int(round(val_fraction * n)))
            fold = np.zeros(n, np.int64)
            fold[rng.permutation(n)[:n_val]] = 1  # 1 = validation
        k_list = range(int(folds)) if folds >= 2 else [1]
        def train_members(idx_tr, idx_va, *, n_ep, pat, seed0, desc):
            gsns, infos = [], []
            for e in range(int(ensemble)):
                has_va = idx_va is not None
                net, info = _fit_net(
                    X[idx_tr], flux[idx_tr], w[idx_tr],
                    X[idx_va] if has_va else None, flux[idx_va] if has_va else None, w[idx_va] if has_va else None,
                    epochs=n_ep, patience=pat, seed=seed0 + 7919 * e,
                    desc=desc + (f" member {e + 1}/{ensemble}" if ensemble > 1 else ""), **common,
                )
                gsns.append(_gsn_from_net(net, template, None, {}))
                infos.append(info)
            return (merge_ensemble(gsns) if len(gsns) > 1 else gsns[0]), infos

        for k in k_list:
            te = fold == k
            fm, infos = train_members(
                ~te, te, n_ep=epochs, pat=patience, seed0=seed + 1000 * (k + 1),
                desc=f"fold {k + 1}/{folds}" if folds >= 2 else "train",
            )
            oof[te] = fm.predict(lab[te])
            info = {
                "best_epoch": int(np.median([i["best_epoch"] for i in infos])),
                "member_best_epochs": [int(i["best_epoch"]) for i in infos],
                "best_val_loss": float(np.mean([i["best_val_loss"] for i in infos])),
                "epochs_run": int(sum(i["epochs_run"] for i in infos)),
            }
            log.info(
                "%s: best epoch %s, val loss %.4g (%.1f s so far)", f"fold {k + 1}/{folds}" if folds >= 2
                else "holdout", info["member_best_epochs"], info["best_val_loss"], time.perf_counter() - t0,
            )
            fold_info.append({"fold": int(k), "n_val": int(te.sum()), **info})
            fold_models.append(fm)
        val_mask = np.isfinite(oof[:, 0])
        resid = np.where(val_mask[:, None], oof - flux, np.nan)
        emu_err = robust_emulator_error(resid[val_mask], ivar[val_mask])
        systematics = None
        if label_systematics and fold_models:
            from .fit.systematics import estimate_label_systematics

            midx = np.full(n, -1, np.int64)
            for j, k in enumerate(k_list):
                midx[fold == k] = j
                fold_models[j].emulator_error = emu_err
            systematics = estimate_label_systematics(fold_models, flux, ivar, lab, midx, seed=seed, progress=progress)
        best_epochs = [e for f in fold_info for e in f["member_best_epochs"]]
        t_cv = time.perf_counter() - t0
        n_final = int(max(1, np.median(best_epochs)))
        if folds >= 2 and final == "refit":
            final_gsn, _ = train_members(np.ones(n, bool), None, n_ep=n_final, pat=0, seed0=seed, desc="final")
        elif final in ("none", "fold0") or folds < 2:
            final_gsn = fold_models[0]
        else:
            raise ValueError(f"final={final!r}: use 'refit' or 'none'")
    t_total = time.perf_counter() - t0
    metrics = cv_metrics(resid[val_mask], ivar[val_mask], emu_err)
    from . import __version__

    label_sha = __import__("hashlib").sha256(np.ascontiguousarray(lab, "<f8").tobytes()).hexdigest()
    meta = {
        "package_version": __version__,
        "training": {
            "cube_path": cube_path,
            "n_star_cube": data["n_star_cube"],
            "n_star": int(n),
            "labels_sha256": label_sha,
            "cube_source": data["attrs"].get("source"),
            "cube_version": data["attrs"].get("version") or data["attrs"].get("source_version"),
            "cube_gsn_dask_version": data["attrs"].get("gsn_dask_version"),
            "cube_schema": data["attrs"].get("schema"),
            "config": cfg,
            "final_epochs": int(n_final),
            "train_time_s": round(t_total, 2),
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
        "cv": {**metrics, "folds": fold_info, "kind": "kfold" if folds >= 2 else "holdout"},
    }
    if systematics is not None:
        meta["label_systematics"] = systematics
    if final_gsn.meta.get("ensemble"):
        meta["ensemble"] = final_gsn.meta["ensemble"]
    model = GSN(
        hidden_layers=final_gsn.hidden_layers, W_out=final_gsn.W_out, b_out=final_gsn.b_out,
        activation=final_gsn.activation, emulator_error=emu_err, meta=meta, **template,
    )
    report = {
        "config": cfg, "n_star": int(n), "n_pix": int(n_pix), "train_time_s": t_total, "cv_time_s": t_cv,
        "final_epochs": int(n_final), "folds": fold_info, **metrics,
        "oof_pred": oof, "fold": fold, "flux": flux, "ivar": ivar, "label_values": lab,
        "wavelength": wave, "star": data["star"], "emulator_error": emu_err, "val_mask": val_mask,
        "label_systematics": systematics,
    }
    if keep_fold_models:
        report["fold_models"] = fold_models
    elif folds >= 2:
        del fold_models
    return model, report


def cv_metrics(resid: np.ndarray, ivar: np.ndarray, emu_err: np.ndarray) -> dict[str, float]:
    """Summary numbers of validation residuals (stars x pixels, NaN/ivar 0 ignored)."""
    good = (ivar > 0) & np.isfinite(resid)
    r = np.where(good, resid, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        med_abs_pix = np.nanmedian(np.abs(r), axis=0)
        mad_pix = 1.4826 * np.nanmedian(np.abs(r - np.nanmedian(r, axis=0)), axis=0)
        noise_pix = np.nanmedian(np.where(good, 1 / np.sqrt(np.where(good, ivar, 1)), np.nan), axis=0)
        chi = r * np.sqrt(np.where(good, ivar, 0))
        chi_tot = r / np.sqrt(np.where(good, 1 / np.where(good, ivar, 1), np.nan) + emu_err[None, :] ** 2)
    return {
        "cv_median_abs_resid": float(np.nanmedian(np.abs(r))),
        "cv_resid_per_pixel_median": float(np.nanmedian(med_abs_pix)),
        "cv_scatter_per_pixel_median": float(np.nanmedian(mad_pix)),
        "noise_per_pixel_median": float(np.nanmedian(noise_pix)),
        "cv_rms_weighted_chi": float(np.sqrt(np.nanmean(chi**2))),
        "cv_chi_mad_std": float(1.4826 * np.nanmedian(np.abs(chi))),
        "cv_chi_tot_mad_std": float(1.4826 * np.nanmedian(np.abs(chi_tot))),
        "emulator_error_median": float(np.median(emu_err)),
        "emulator_error_p90": float(np.percentile(emu_err, 90)),
    }


# ------------------------------------------------------------------------ diagnostics
def diagnostics_figure(report: dict[str, Any], path: str | Path, n_worst: int = 3) -> Path:
    """PNG: (top) validation residual scatter per pixel vs wavelength compared with the median
    noise and the emulator error; (below) the ``n_worst`` worst-fit validation spectra."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    wave, flux, ivar, pred = report["wavelength"], report["flux"], report["ivar"], report["oof_pred"]
    vm = report["val_mask"]
    good = (ivar > 0) & vm[:, None]
    r = np.where(good, pred - flux, np.nan)
    with np.errstate(invalid="ignore", divide="ignore"):
        scat = 1.4826 * np.nanmedian(np.abs(r - np.nanmedian(r, axis=0)), axis=0)
        noise = np.nanmedian(np.where(good, 1 / np.sqrt(np.where(good, ivar, 1)), np.nan), axis=0)
        chi = np.nanmedian(np.abs(r) * np.sqrt(np.where(good, ivar, 0)), axis=1)
        chi = np.where(vm, chi, -np.inf)
    worst = np.argsort(chi)[::-1][:n_worst]
    fig, axes = plt.subplots(1 + len(worst), 1, figsize=(11, 2.6 * (1 + len(worst))), sharex=True)
    axes = np.atleast_1d(axes)
    ax = axes[0]
    ax.plot(wave, scat, lw=0.6, label="CV residual scatter (1.4826 MAD)")
    ax.plot(wave, noise, lw=0.6, label="median noise 1/sqrt(ivar)")
    ax.plot(wave, report["emulator_error"], lw=0.6, label="emulator error (beyond noise)")
    ax.set_yscale("log")
    ax.set_ylabel("normalised flux")
    ax.legend(fontsize=7, loc="upper right")
    ax.set_title(
        f"GSN cross-validation: {report['n_star']} stars, median |resid| {report['cv_median_abs_resid']:.4f}",
        fontsize=9,
    )
    names = report["config"]["labels"]
    for ax, i in zip(axes[1:], worst):
        g = ivar[i] > 0
        ax.plot(wave, np.where(g, flux[i], np.nan), lw=0.5, color="k", label="data")
        ax.plot(wave, pred[i], lw=0.5, color="C3", label="emulator (out-of-fold)")
        lab = ", ".join(f"{n}={v:.4g}" for n, v in zip(names, report["label_values"][i]))
        ax.set_title(f"{report['star'][i]}: {lab}  (median |chi| {chi[i]:.2f})", fontsize=8)
        ax.set_ylabel("flux")
        ax.legend(fontsize=7, loc="lower right")
    axes[-1].set_xlabel("vacuum wavelength [A]")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ------------------------------------------------------------------------ fixtures
def analytic_cube(
    n_star: int = 400,
    *,
    wavelength: np.ndarray | None = None,
    snr: float | None = None,
    seed: int = 0,
    alpha: bool = False,
) -> xr.Dataset:
    """A synthetic normalised training cube of smooth analytic spectra (tests, benchmarks).

    Flux = 1 - sum of Gaussian lines whose depths/widths depend smoothly (nonlinearly) on
    teff (3500-8000 K), logg (0-5), feh (-2.5..0.5) [and alpha_fe (-0.2..0.6)], plus Balmer-like
    lines. ``snr=None``: noiseless (ivar 1e8)."""
    from .cube import log_lambda_grid, make_spectra

    rng = np.random.default_rng(seed)
    w = log_lambda_grid(4000, 4500) if wavelength is None else np.asarray(wavelength, np.float64)
    teff = rng.uniform(3500, 8000, n_star)
    logg = rng.uniform(0, 5, n_star)
    feh = rng.uniform(-2.5, 0.5, n_star)
    afe = rng.uniform(-0.2, 0.6, n_star)
    lines = np.random.default_rng(12345).uniform(w[0], w[-1], 60)
    exc = np.random.default_rng(54321).uniform(0, 5, lines.size)
    kind = np.arange(lines.size) % 4
    theta = 5040.0 / teff
    flux = np.ones((n_star, w.size))
    for c, chi, kd in zip(lines, exc, kind):
        strength = 10 ** (feh + (afe if alpha and kd == 3 else 0) - theta * chi * 0.3 + 0.3 * (kd == 1) * (logg - 3) / 2)
        depth = 0.8 * strength / (1 + strength)
        width = 1.2 + 0.3 * (logg - 2.5) * (kd == 2) + 0.1 * kd
        flux -= depth[:, None] * np.exp(-0.5 * ((w[None, :] - c) / width[:, None]) ** 2)
    for c in (4102.9, 4341.7, 4862.7, 6564.6):  # Balmer-like, peaks near 9500 K
        depth = 0.6 * np.exp(-0.5 * ((teff - 9500) / 3000) ** 2)
        width = 3 + 4 * (logg / 5)
        flux -= depth[:, None] * np.exp(-np.abs((w[None, :] - c) / width[:, None]) ** 1.5)
    flux = np.clip(flux, 0.02, None)
    if snr is None:
        ivar = np.full_like(flux, 1e8)
    else:
        sig = flux / snr
        flux = flux + rng.normal(size=flux.shape) * sig
        ivar = 1 / sig**2
    labels = {"teff": teff, "logg": logg, "feh": feh}
    if alpha:
        labels["alpha_fe"] = afe
    return make_spectra(
        [f"s{i:05d}" for i in range(n_star)], w, flux, ivar, labels=labels, normalised=True,
        source=["analytic"] * n_star, attrs={"source": "analytic", "version": "1",
        "normalisation": json.dumps({"method": "none", "note": "analytic spectra are normalised"})},
    )


__all__ = [
    "GSNNet",
    "analytic_cube",
    "cv_metrics",
    "diagnostics_figure",
    "merge_ensemble",
    "net_from_gsn",
    "predict_torch",
    "prepare_training_data",
    "pixel_weights",
    "resolve_device",
    "robust_emulator_error",
    "stratified_folds",
    "train_gsn",
]
