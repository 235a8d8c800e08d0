"""The GSN on a torch device for the batched fit: the network's one torch forward pass
(:class:`gsn_dask.emulator_torch.GSNNet`, shared with training) plus the model's label scaling in
float64 and the coarse template set of the MAP start."""
from __future__ import annotations

import weakref
from typing import Any

import numpy as np
import torch

from ...emulator_torch import hidden_stack, net_from_gsn, resolve_device

Tensor = torch.Tensor


class TorchEmulator:
    """A GSN's forward pass in torch (float32 by default) on ``device``.

    ``model`` is a :class:`gsn_dask.emulator.GSN` (weights, ``bounds``, ``label_transforms``).
    Label scaling as ``GSN.scale``: per-label transform (identity/log10), then the training
    range onto [-0.5, 0.5], in float64."""

    def __init__(self, model: Any, device: str | torch.device | None = None, dtype: torch.dtype = torch.float32) -> None:
        self.device = resolve_device(device)
        self.dtype = dtype
        self.net = net_from_gsn(model, self.device).to(dtype).requires_grad_(False)
        dev = self.device
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
        self.W_out = self.net.out.weight
        self.b_out = self.net.out.bias
        self._layers = self.net.hidden_params()  # held once: no module lookups per call
        self._act = self.net._act
        self.n_hidden = int(self.W_out.shape[0])
        self.n_pix = int(self.W_out.shape[1])
        self.widths = [int(lin.bias.shape[0]) for lin in self.net.layers]
        self._coarse: dict[int, tuple[Tensor, Tensor, Tensor]] = {}

    def flops_per_spectrum(self) -> int:
        """2 x multiply-adds of one forward pass (activations not counted; the blocks only of
        block-diagonal ensemble layers)."""
        return 2 * self.net.multiply_adds()

    def scale(self, labels: Tensor) -> Tensor:
        """(..., n_label) float64 physical labels -> network input (emulator dtype)."""
        t = torch.where(self.log_mask, torch.log10(labels.clamp_min(1e-300)), labels)
        return (-0.5 + (t - self.t_lo) / self.t_span * 1.0).to(self.dtype)

    def hidden(self, labels: Tensor) -> Tensor:
        """(R, n_label) -> (R, n_hidden) last hidden layer (:meth:`GSNNet.hidden_forward`)."""
        return hidden_stack(self.scale(labels), self._layers, self._act)

    def predict(self, labels: Tensor) -> Tensor:
        """(R, n_label) float64 labels -> (R, n_pix) spectra (emulator dtype), as :meth:`GSNNet.forward`."""
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


__all__ = ["TorchEmulator", "torch_emulator"]
