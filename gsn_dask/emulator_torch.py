"""Torch side of the GSN emulator: the network, training with K-fold cross-validation,
the per-pixel emulator error, batched torch inference.

Training (:func:`train_gsn`; the settings are a :class:`~gsn_dask.emulator_recipe.TrainRecipe`,
by default :data:`~gsn_dask.emulator_recipe.DEFAULT_RECIPE`):

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

Training never fits spectra: the label-systematics calibration that uses the fold models
(:attr:`CVFolds`) is a separate step, :mod:`gsn_dask.calibration`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch
import xarray as xr
from torch import nn
from torch.nn import functional as F

from .emulator import GSN, fix_label
from .emulator_data import (  # the numpy half of training; the figure and the test cube complete the API here
    SOURCE_LABEL,
    CVFolds,
    _weighted_mean_spectrum,
    analytic_cube,
    assign_folds,
    cv_metrics,
    diagnostics_figure,
    distillation_record,
    distillation_set,
    labels_sha256,
    loss_weights,
    network_template,
    observed_rows,
    open_training_cube,
    pixel_weights,
    prepare_training_data,
    robust_emulator_error,
    stratified_folds,
    training_config_record,
    training_meta,
)
from .emulator_recipe import DEFAULT_RECIPE, TrainRecipe
from .label_prior import LABELS as KIEL_LABELS, with_label_prior

log = logging.getLogger(__name__)

class _SiLU(torch.autograd.Function):
    """x / (1 + exp(-x)): the numpy GSN's formula (same rounding), with a gradient that stays
    finite where exp(-x) overflows."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        ctx.save_for_backward(x)
        return x / (1.0 + torch.exp(-x))

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (x,) = ctx.saved_tensors
        s = torch.sigmoid(x)
        return g * s * (1.0 + x * (1.0 - s))


class _Sigmoid(torch.autograd.Function):
    """1 / (1 + exp(-x)) as the numpy GSN computes it, with a finite gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        y = 1.0 / (1.0 + torch.exp(-x))
        ctx.save_for_backward(y)
        return y

    @staticmethod
    def backward(ctx: Any, g: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        (y,) = ctx.saved_tensors
        return g * y * (1.0 - y)


def _silu(x: torch.Tensor) -> torch.Tensor:
    if x.requires_grad:  # training: the custom gradient; inference: no autograd overhead per call
        return _SiLU.apply(x)
    return x / (1.0 + torch.exp(-x))


def _sigmoid(x: torch.Tensor) -> torch.Tensor:
    if x.requires_grad:
        return _Sigmoid.apply(x)
    return 1.0 / (1.0 + torch.exp(-x))


#: Activations written as the numpy ones of :mod:`gsn_dask.emulator` (same rounding order), so
#: training, torch inference and the batched fit run one forward pass.
_TORCH_ACT = {
    "silu": _silu,
    "tanh": torch.tanh,
    "leaky_relu": lambda x: torch.where(x >= 0, x, x * 0.01),
    "relu": lambda x: torch.clamp_min(x, 0.0),
    "softplus": lambda x: torch.where(x > 20, x, torch.log1p(torch.exp(torch.clamp_max(x, 20.0)))),
    "sigmoid": _sigmoid,
}


# ------------------------------------------------------------------------ network
def dense(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, n_blocks: int = 1) -> torch.Tensor:
    """``x @ weight + bias`` (weight (n_in, n_out)); block-diagonal (weight = blocks (m, a, b)):
    (m, R, a) @ (m, a, b), one batched product."""
    if n_blocks == 1:
        return x @ weight + bias
    m, a, b = weight.shape
    y = torch.bmm(x.reshape(-1, m, a).transpose(0, 1), weight).transpose(0, 1).reshape(-1, m * b)
    return y + bias


def hidden_stack(x: torch.Tensor, layers: Sequence[tuple[torch.Tensor, torch.Tensor, int]],
                 act: Any, dropout: float = 0.0) -> torch.Tensor:
    """The GSN's hidden layers: ``act(dense(x, W, b))`` per layer (dropout after each activation
    while training). :meth:`GSNNet.hidden_forward` and the batched fit's emulator
    (:mod:`gsn_dask.fit.torch.emulator`, with the layer list held once) both run it."""
    for W, b, m in layers:
        x = act(dense(x, W, b, m))
        if dropout > 0:
            x = F.dropout(x, dropout, True)
    return x


class DenseLayer(nn.Module):
    """``x @ weight + bias`` with ``weight`` (n_in, n_out), the numpy GSN's layout (so every
    torch pass multiplies the same contiguous matrix as the saved model); or a block-diagonal
    layer of an ensemble (``n_blocks`` > 1: ``weight`` holds the blocks (m, n_in/m, n_out/m),
    1/m of the multiply-adds). Initialised as ``nn.Linear``."""

    def __init__(self, n_in: int, n_out: int, n_blocks: int = 1) -> None:
        super().__init__()
        m = int(n_blocks)
        w = torch.empty(n_out, n_in)
        nn.init.kaiming_uniform_(w, a=math.sqrt(5))  # nn.Linear's initialisation, then transposed
        bound = 1.0 / math.sqrt(n_in) if n_in > 0 else 0.0
        self.bias = nn.Parameter(torch.empty(n_out).uniform_(-bound, bound))
        if m > 1:
            a, b = n_in // m, n_out // m
            w = torch.stack([w[k * b:(k + 1) * b, k * a:(k + 1) * a].T for k in range(m)])
            self.weight = nn.Parameter(w.contiguous())
        else:
            self.weight = nn.Parameter(w.T.contiguous())
        self.n_blocks = m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return dense(x, self.weight, self.bias, self.n_blocks)

    def dense_weight(self) -> torch.Tensor:
        """The (n_in, n_out) matrix (block-diagonal for an ensemble layer)."""
        return self.weight if self.n_blocks == 1 else torch.block_diag(*self.weight)

    def multiply_adds(self) -> int:
        return int(self.weight.numel())


class GSNNet(nn.Module):
    """The GSN's one torch forward pass: labels (scaled) -> hidden layers -> linear output (one
    value per wavelength pixel). Training, :func:`predict_torch` and the batched fit
    (the torch emulator of the fit layer) all run it; it computes what the numpy
    :meth:`GSN.predict` computes, in the same order (``x @ W + b``, the numpy activations)."""

    def __init__(
        self,
        n_label: int,
        n_pix: int,
        hidden: Sequence[int] = (256, 256, 256),
        activation: str = "silu",
        dropout: float = 0.0,
        blocks: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if activation not in _TORCH_ACT:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(_TORCH_ACT)}")
        sizes = [n_label, *[int(h) for h in hidden]]
        nb = list(blocks) if blocks is not None else [1] * (len(sizes) - 1)
        self.layers = nn.ModuleList(DenseLayer(a, b, m) for a, b, m in zip(sizes[:-1], sizes[1:], nb))
        self.out = DenseLayer(sizes[-1], n_pix)
        self.activation = activation
        self._act = _TORCH_ACT[activation]
        self.dropout = float(dropout)

    def hidden_params(self) -> list[tuple[torch.Tensor, torch.Tensor, int]]:
        """(weight, bias, n_blocks) of the hidden layers (the parameters themselves, not copies)."""
        return [(lin.weight, lin.bias, lin.n_blocks) for lin in self.layers]

    def hidden_forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, n_label) scaled labels -> (R, n_hidden) last hidden layer."""
        return hidden_stack(x, self.hidden_params(), self._act, self.dropout if self.training else 0.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(R, n_label) scaled labels -> (R, n_pix) spectra: ``addmm(b_out, h, W_out)``."""
        return torch.addmm(self.out.bias, self.hidden_forward(x), self.out.weight)

    def multiply_adds(self) -> int:
        """Multiply-adds of one forward pass (block-diagonal layers: their blocks only)."""
        return sum(lin.multiply_adds() for lin in self.layers) + self.out.multiply_adds()


def net_from_gsn(model: GSN, device: str | torch.device | None = None) -> GSNNet:
    """A :class:`GSNNet` (eval mode) holding the weights of a (numpy) :class:`GSN`; the
    block-diagonal layers of an ensemble stay block-diagonal."""
    blocks = [None if blk is None else blk for blk in (getattr(model, "layer_blocks", None)
                                                        or [None] * len(model.hidden_layers))]
    net = GSNNet(model.n_label, model.n_pix, model.hidden_widths, model.activation,
                 blocks=[1 if blk is None else int(blk.shape[0]) for blk in blocks])
    with torch.no_grad():
        for lin, (W, b), blk in zip(net.layers, model.hidden_layers, blocks):
            lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(W if blk is None else blk)))
            lin.bias.copy_(torch.from_numpy(b))
        net.out.weight.copy_(torch.from_numpy(np.ascontiguousarray(model.W_out)))
        net.out.bias.copy_(torch.from_numpy(model.b_out))
    return net.to(resolve_device(device)).eval()


def _gsn_from_net(net: GSNNet, template: dict[str, Any], emulator_error: np.ndarray | None, meta: dict) -> GSN:
    net = net.to("cpu")
    hidden = [
        (lin.dense_weight().detach().numpy().copy(), lin.bias.detach().numpy().copy()) for lin in net.layers
    ]
    return GSN(
        hidden_layers=hidden,
        W_out=net.out.weight.detach().numpy().copy(),
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


# ------------------------------------------------------------------------ training core
@contextlib.contextmanager
def _deterministic(seed: int, threads: int | None) -> Iterator[None]:
    """Seed torch, switch on its deterministic algorithms and (``threads``) set its CPU threads,
    for the duration of one training; the previous settings come back afterwards."""
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

    # a bar on a terminal only (disable=None): in a log file the caller writes one line per fold
    bar = tqdm(range(epochs), desc=desc, disable=None if progress else True, leave=False, dynamic_ncols=True)
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
def _note(progress: bool, msg: str) -> None:
    """One line per finished training stage: on stderr with ``progress``, else at INFO."""
    if progress:
        print(f"[gsn-dask train] {msg}", file=sys.stderr, flush=True)
    else:
        log.info(msg)


def _net_settings(recipe: TrainRecipe) -> dict[str, Any]:
    """The recipe's network and optimiser settings, as :func:`_fit_net` takes them."""
    return dict(hidden=recipe.hidden_widths, activation=recipe.activation, dropout=recipe.dropout,
                batch_size=recipe.batch_size, lr=recipe.lr, weight_decay=recipe.weight_decay)


def _train_members(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray], idx_tr: np.ndarray, idx_va: np.ndarray | None, *,
    recipe: TrainRecipe, template: dict[str, Any], epochs: int, patience: int, seed0: int, desc: str,
    device: torch.device, progress: bool,
) -> tuple[GSN, list[dict[str, Any]]]:
    """``recipe.ensemble`` networks trained on the stars ``idx_tr`` of ``arrays`` = (scaled
    labels, flux, weights), early-stopped on ``idx_va`` (None: all ``epochs``), as one GSN."""
    X, flux, w = arrays
    has_va = idx_va is not None
    gsns, infos = [], []
    for e in range(int(recipe.ensemble)):
        net, info = _fit_net(
            X[idx_tr], flux[idx_tr], w[idx_tr],
            X[idx_va] if has_va else None, flux[idx_va] if has_va else None, w[idx_va] if has_va else None,
            **_net_settings(recipe), device=device, progress=progress, epochs=epochs, patience=patience,
            seed=seed0 + 7919 * e,
            desc=desc + (f" member {e + 1}/{recipe.ensemble}" if recipe.ensemble > 1 else ""),
        )
        gsns.append(_gsn_from_net(net, template, None, {}))
        infos.append(info)
    return (merge_ensemble(gsns) if len(gsns) > 1 else gsns[0]), infos


def _distil(teacher: GSN, x: np.ndarray, n_label: int, *, recipe: TrainRecipe, template: dict[str, Any],
            epochs: int, device: torch.device, progress: bool) -> tuple[GSN, dict[str, Any]]:
    """(student, record) of recipe ``distil``: one network trained for ``epochs`` on ``teacher``'s
    spectra (the final networks averaged) at the scaled inputs ``x`` and their jittered copies
    (:func:`~gsn_dask.emulator_data.distillation_set`), every pixel weighted 1."""
    x_s, y_s = distillation_set(teacher, x, n_label, recipe.seed)
    net, _ = _fit_net(x_s, y_s, np.ones_like(y_s), None, None, None, **_net_settings(recipe), epochs=epochs, patience=0,
                      seed=recipe.seed + 104729, device=device, progress=progress, desc="distil: student")
    return _gsn_from_net(net, template, None, {}), distillation_record(recipe.distil, epochs, len(x))


def _cross_validate(
    arrays: tuple[np.ndarray, np.ndarray, np.ndarray], lab: np.ndarray, fold: np.ndarray, k_list: list[int], *,
    recipe: TrainRecipe, template: dict[str, Any], device: torch.device, progress: bool, t0: float,
) -> tuple[np.ndarray, list[dict[str, Any]], list[GSN]]:
    """Train one model per held-out fold: (out-of-fold predictions (n_star, n_pix), NaN for
    stars never held out; per-fold info; the fold models)."""
    flux = arrays[1]
    oof = np.full(flux.shape, np.nan, np.float32)
    fold_info: list[dict[str, Any]] = []
    fold_models: list[GSN] = []
    kfold = recipe.folds >= 2
    for k in k_list:
        te = fold == k
        name = f"fold {k + 1}/{recipe.folds}" if kfold else "holdout"
        fm, infos = _train_members(
            arrays, ~te, te, recipe=recipe, template=template, epochs=recipe.epochs, patience=recipe.patience,
            seed0=recipe.seed + 1000 * (k + 1), desc=name if kfold else "train", device=device, progress=progress,
        )
        oof[te] = fm.predict(lab[te])
        info = {
            "best_epoch": int(np.median([i["best_epoch"] for i in infos])),
            "member_best_epochs": [int(i["best_epoch"]) for i in infos],
            "best_val_loss": float(np.mean([i["best_val_loss"] for i in infos])),
            "epochs_run": int(sum(i["epochs_run"] for i in infos)),
        }
        _note(progress, f"{name}: best epoch {info['member_best_epochs']}, val loss {info['best_val_loss']:.4g} "
                        f"({time.perf_counter() - t0:.1f} s so far)")
        fold_info.append({"fold": int(k), "n_val": int(te.sum()), **info})
        fold_models.append(fm)
    return oof, fold_info, fold_models


def _with_error(model: GSN, emulator_error: np.ndarray, meta: dict | None = None) -> GSN:
    """A copy of ``model`` carrying ``emulator_error`` (n_pix,), and ``meta`` instead of its own if given."""
    return GSN(
        hidden_layers=model.hidden_layers, W_out=model.W_out, b_out=model.b_out, activation=model.activation,
        label_names=model.label_names, label_units=model.label_units, bounds=model.bounds,
        label_transforms=model.label_transforms, wavelength=model.wavelength, emulator_error=emulator_error,
        normalisation=model.normalisation, meta=model.meta if meta is None else meta,
    )


class _CV(NamedTuple):
    """The cross-validation stage's results (:func:`_cv_stage`)."""

    fold: np.ndarray  # (n_star,) fold of each star
    k_list: list[int]  # the held-out folds, in the order of the fold models
    info: list[dict[str, Any]]  # per fold: best epochs, validation loss
    oof: np.ndarray  # (n_star, n_pix) out-of-fold predictions, NaN for stars never held out
    val_mask: np.ndarray  # (n_star,) stars held out once
    resid: np.ndarray  # (n_star, n_pix) oof - flux, NaN outside val_mask
    emu_err: np.ndarray  # (n_pix,) emulator error of the observed stars' residuals
    n_final: int  # the final network's epochs: the median best epoch
    models: list[GSN]  # the fold models (the observed branch held, for a flagged cube)
    folds: CVFolds  # the fold models with the emulator error, for calibration
    seconds: float  # wall seconds from the start of the training to the end of the CV


def _cv_stage(arrays: tuple[np.ndarray, np.ndarray, np.ndarray], data: dict[str, Any], lab_in: np.ndarray,
              observed: np.ndarray, flagged: bool, run: dict[str, Any], t0: float) -> _CV:
    """K-fold CV (:func:`_cross_validate`) and what the training takes from it."""
    recipe, lab, flux, ivar = run["recipe"], data["label_values"], data["flux"], data["ivar"]
    fold, k_list = assign_folds(lab[:, 0], recipe.folds, recipe.val_fraction, recipe.seed)
    oof, fold_info, fold_models = _cross_validate(arrays, lab_in, fold, k_list, t0=t0, **run)
    val_mask = np.isfinite(oof[:, 0])
    resid = np.where(val_mask[:, None], oof - flux, np.nan)
    emu_err = robust_emulator_error(resid[val_mask & observed], ivar[val_mask & observed])
    t_cv = time.perf_counter() - t0
    n_final = int(max(1, np.median([e for f in fold_info for e in f["member_best_epochs"]])))
    if flagged:  # the observed branch: the source input held at "observed", folded into the first layer
        fold_models = [fix_label(m, SOURCE_LABEL, 1.0) for m in fold_models]
    model_index = np.full(lab.shape[0], -1, np.int64)
    for j, k in enumerate(k_list):
        model_index[(fold == k) & observed] = j  # the calibration fits observed stars only
    folds = CVFolds([_with_error(m, emu_err) for m in fold_models], model_index, flux, ivar, lab, recipe.seed)
    return _CV(fold, k_list, fold_info, oof, val_mask, resid, emu_err, n_final, fold_models, folds, t_cv)


def _final_network(arrays: tuple[np.ndarray, np.ndarray, np.ndarray], keep: np.ndarray, cv: _CV, n_label: int,
                   flagged: bool, run: dict[str, Any], t0: float) -> tuple[GSN, dict[str, Any] | None]:
    """(final network, distillation record or None): with ``refits``, ``recipe.ensemble`` networks
    (``distil`` M: M, distilled into one) trained on the stars ``keep`` of ``arrays`` for the CV's
    epoch count; else the first fold model."""
    recipe, progress = run["recipe"], run["progress"]
    if not recipe.refits:
        return cv.models[0], None
    final_run = {**run, "recipe": recipe.replace(ensemble=recipe.distil, distil=1)} if recipe.distil > 1 else run
    final_gsn, _ = _train_members(arrays, keep, None, epochs=cv.n_final, patience=0, seed0=recipe.seed, desc="final",
                                  **final_run)
    distilled = None
    if recipe.distil > 1:
        final_gsn, distilled = _distil(final_gsn, arrays[0][keep], n_label, epochs=cv.n_final, **run)
        _note(progress, f"distilled {recipe.distil} final networks into one ({time.perf_counter() - t0:.1f} s so far)")
    return (fix_label(final_gsn, SOURCE_LABEL, 1.0) if flagged else final_gsn), distilled


def train_gsn(
    train_ds: xr.Dataset | str | Path,
    recipe: TrainRecipe | None = None,
    *,
    device: str | torch.device | None = None,
    threads: int | None = None,
    progress: bool = True,
    screen: Callable[[CVFolds, Any], tuple[np.ndarray, dict[str, Any]]] | None = None,
    relabel: Callable[[CVFolds, Any], tuple[np.ndarray, dict[str, Any]]] | None = None,
    **overrides: Any,
) -> tuple[GSN, dict[str, Any]]:
    """Train a GSN on a training cube (dataset or zarr path); returns (model, report).

    ``recipe`` (default :data:`~gsn_dask.emulator_recipe.DEFAULT_RECIPE`) with ``overrides``
    (recipe fields, e.g. ``epochs=20``; :class:`~gsn_dask.emulator_recipe.TrainRecipe` says what
    each does). K-fold CV: each fold early-stops on its held-out stars, whose out-of-fold
    predictions give the CV residuals and the per-pixel emulator error; the final model is then
    trained on all stars for the median best epoch count. ``threads``: torch CPU threads;
    ``progress``: bars on a terminal, one line per fold and a summary line otherwise.
    This trains only: :func:`gsn_dask.calibration.train_and_calibrate` adds the label systematics and,
    for ``label_outlier_z``, a ``screen``: (CVFolds, z) -> (stars the final model trains on, record), and
    for ``label_noise_share``, a ``relabel``: (CVFolds, share) -> (the labels the final model trains on,
    record); without a ``relabel``, ``label_noise_share="auto"`` leaves the labels as given.
    ``report`` holds settings, timings, CV metrics, the arrays ``oof_pred``, ``fold``, ``flux``,
    ``ivar``, ``label_values``, ``wavelength``, and ``cv_folds`` (:class:`CVFolds`).
    """
    t0 = time.perf_counter()
    recipe = (recipe or DEFAULT_RECIPE).replace(**overrides)
    train_ds, cube_path = open_training_cube(train_ds)
    data = prepare_training_data(
        train_ds, labels=recipe.labels, wavelength_range=recipe.wavelength_range,
        label_ranges=recipe.label_ranges, mask_telluric=recipe.mask_telluric,
    )
    lab, flux, ivar = data["label_values"], data["flux"], data["ivar"]
    template = network_template(data, recipe)
    observed = observed_rows(data["synthetic"])
    flagged = recipe.source_input and not observed.all()  # a mixed cube
    lab_in = np.c_[lab, observed.astype(np.float64)] if flagged else lab  # the network's inputs
    template_in = network_template({**data, "labels": [*data["labels"], SOURCE_LABEL], "label_values": lab_in}, recipe) \
        if flagged else template
    n_pix = flux.shape[1]
    scaler = GSN(
        hidden_layers=[(np.zeros((lab_in.shape[1], 1)), np.zeros(1))], W_out=np.zeros((1, n_pix)), b_out=np.zeros(n_pix),
        activation=recipe.activation, **template_in,
    )
    arrays = (scaler.scale(lab_in), flux, loss_weights(ivar, observed, recipe.weight_floor, recipe.synthetic_weight))
    dev = resolve_device(device)
    run = {"template": template_in, "recipe": recipe, "device": dev, "progress": progress}
    share = recipe.checked_noise_share(data["labels"], not np.all(data["synthetic"]), screen=screen is not None,
                                       relabel=relabel is not None)
    with _deterministic(recipe.seed, threads):
        cv = _cv_stage(arrays, data, lab_in, observed, flagged, run, t0)
        z_max = recipe.label_outlier_z
        keep, screened = (np.ones(lab.shape[0], bool), None) if z_max is None else screen(cv.folds, z_max)
        final_arrays, refined = arrays, None
        if share is not None:  # errors in variables: the final network's labels
            lab_final, refined = relabel(cv.folds, share)
            refined["labels_sha256"] = labels_sha256(lab_final)
            final_arrays = (scaler.scale(np.c_[lab_final, observed] if flagged else lab_final), *arrays[1:])
        final_gsn, distilled = _final_network(final_arrays, keep, cv, lab.shape[1], flagged, run, t0)
    t_total = time.perf_counter() - t0
    metrics = cv_metrics(cv.resid[cv.val_mask], ivar[cv.val_mask], cv.emu_err)
    cfg = training_config_record(data, recipe, dev, threads or torch.get_num_threads())  # the count used
    kiel = recipe.kiel_prior_for(train_ds.attrs) and set(KIEL_LABELS) <= set(data["labels"])
    cfg["label_prior"] = "kiel" if kiel else "none"
    cfg["label_noise_share"] = share  # "auto" resolved for this cube
    meta = training_meta(data, recipe, cfg, cube_path, metrics, cv.info, cv.n_final, t_total)
    if final_gsn.meta.get("ensemble"):
        meta["ensemble"] = final_gsn.meta["ensemble"]
    if flagged:
        meta["fixed_labels"] = {SOURCE_LABEL: 1.0}
    screen_record = None if screened is None else {**screened, "stars": [str(x) for x in np.asarray(data["star"])[~keep]]}
    for key, record in (("label_screen", screen_record), ("errors_in_variables", refined), ("distillation", distilled)):
        if record is not None:
            meta["training"][key] = record
    model = GSN(
        hidden_layers=final_gsn.hidden_layers, W_out=final_gsn.W_out, b_out=final_gsn.b_out,
        activation=final_gsn.activation, emulator_error=cv.emu_err, meta=meta, **template,
    )
    if kiel:
        it, ig = (model.label_names.index(n) for n in KIEL_LABELS)  # each fold model: its own training stars
        model = with_label_prior(model, lab[observed, it], lab[observed, ig])
        cv.folds.models = [with_label_prior(m, lab[(cv.fold != k) & observed, it], lab[(cv.fold != k) & observed, ig])
                           for m, k in zip(cv.folds.models, cv.k_list)]
    report = {
        "config": cfg, "recipe": recipe, "n_star": int(lab.shape[0]), "n_pix": int(n_pix), "train_time_s": t_total,
        "cv_time_s": cv.seconds, "final_epochs": int(cv.n_final), "folds": cv.info, **metrics,
        "oof_pred": cv.oof, "fold": cv.fold, "flux": flux, "ivar": ivar, "label_values": lab,
        "wavelength": data["wavelength"], "star": data["star"], "emulator_error": cv.emu_err, "val_mask": cv.val_mask,
        "cv_folds": cv.folds,
    }
    _note(progress, f"trained GSN {model.model_id} on {lab.shape[0]} stars x {n_pix} px "
                    f"({'%d-fold CV' % recipe.folds if recipe.folds >= 2 else 'holdout'}, final {cv.n_final} epochs) "
                    f"in {t_total:.1f} s: CV median |resid| {metrics['cv_resid_per_pixel_median']:.4g}, "
                    f"emulator error median {metrics['emulator_error_median']:.4g}")
    return model, report


__all__ = [
    "CVFolds",
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
