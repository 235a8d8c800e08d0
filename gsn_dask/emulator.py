"""The Generative Spectrum Network (GSN) emulator: numpy inference and model-directory I/O.

A GSN (Wang & Luo et al., GSN) maps stellar labels to a normalised spectrum::

    labels --scale--> x (n_label) -> [Linear -> act] x 3 hidden layers -> Linear -> flux (n_pix)

This module needs only numpy + safetensors (no torch): the fit and the Dask/Spark
workers import it. Training and torch inference live in :mod:`gsn_dask.emulator_torch`.

Model directory (schema ``gsn-dask/model/1``)::

    weights.safetensors   tensors only: hidden.<i>.weight (n_in, n_out), hidden.<i>.bias,
                          out.weight (n_hidden, n_pix), out.bias, emulator_error (n_pix),
                          wavelength (n_pix, float64)
    model.json            labels, units, bounds, scaling, architecture, grid, normalisation,
                          provenance, training config, CV metrics, weights sha256

Loading never unpickles (``safetensors.numpy.load_file`` + ``json``).
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .labels import LABEL_UNITS

MODEL_SCHEMA = "gsn-dask/model/1"
WEIGHTS_FILE = "weights.safetensors"
META_FILE = "model.json"

#: Network input range: each (transformed) label is mapped linearly from its training
#: range onto [SCALE_LO, SCALE_HI].
SCALE_RANGE: tuple[float, float] = (-0.5, 0.5)

#: Supported label transforms applied before the linear scaling.
LABEL_TRANSFORMS = ("identity", "log10")

#: Slope of LeakyReLU for x < 0 (torch's default).
LEAKY_SLOPE = 0.01

#: Largest wavelength grid stored inline in model.json (it is always in the weights file too).
_INLINE_GRID_MAX = 20000


class ModelMismatchError(ValueError):
    """A model does not fit the data or request (wavelength grid, label names, shapes)."""


class ModelFileError(ValueError):
    """A model directory is missing, damaged or not a gsn-dask model; the message names the file."""


# ------------------------------------------------------------------------ activations
def _silu(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return x / (np.float32(1.0) + np.exp(-x))


def _tanh(x: np.ndarray) -> np.ndarray:
    return np.tanh(x)


def _leaky_relu(x: np.ndarray) -> np.ndarray:
    return np.where(x >= 0, x, x * np.float32(LEAKY_SLOPE))


def _relu(x: np.ndarray) -> np.ndarray:
    return np.maximum(x, np.float32(0.0))


def _softplus(x: np.ndarray) -> np.ndarray:
    # torch.nn.Softplus(beta=1, threshold=20)
    with np.errstate(over="ignore"):
        return np.where(x > 20, x, np.log1p(np.exp(np.minimum(x, 20)))).astype(x.dtype)


def _sigmoid(x: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return np.float32(1.0) / (np.float32(1.0) + np.exp(-x))


#: numpy activations, elementwise, identical in definition to torch's.
ACTIVATIONS: dict[str, Any] = {
    "silu": _silu,
    "tanh": _tanh,
    "leaky_relu": _leaky_relu,
    "relu": _relu,
    "softplus": _softplus,
    "sigmoid": _sigmoid,
}


# ------------------------------------------------------------------------ helpers
def diagonal_blocks(W: np.ndarray, m: int) -> np.ndarray | None:
    """The m diagonal blocks (m, n_in/m, n_out/m) of a block-diagonal weight matrix (an
    ensemble's merged deeper layer, :func:`gsn_dask.emulator_torch.merge_ensemble`), or None if
    ``W`` is not exactly block-diagonal with m equal blocks."""
    if m < 2 or W.ndim != 2 or W.shape[0] % m or W.shape[1] % m:
        return None
    a, b = W.shape[0] // m, W.shape[1] // m
    blocks = np.stack([W[k * a:(k + 1) * a, k * b:(k + 1) * b] for k in range(m)])
    mask = np.kron(np.eye(m, dtype=bool), np.ones((a, b), dtype=bool))
    return np.ascontiguousarray(blocks) if not np.any(W[~mask]) else None


def _find_blocks(W: np.ndarray, max_blocks: int = 16) -> np.ndarray | None:
    """The diagonal blocks of ``W`` for the largest block count (2..max_blocks) at which it is
    exactly block-diagonal, or None (a dense layer: every ordinary GSN)."""
    if W.ndim != 2 or W[0, W.shape[1] - 1] != 0 or W[W.shape[0] - 1, 0] != 0:  # cheap reject
        return None
    for m in range(max_blocks, 1, -1):
        blk = diagonal_blocks(W, m)
        if blk is not None:
            return blk
    return None


def block_matmul(x: np.ndarray, blocks: np.ndarray) -> np.ndarray:
    """x (N, m a) @ blockdiag(blocks (m, a, b)) -> (N, m b), one batched product (1/m the FLOPs)."""
    m, a, b = blocks.shape
    y = np.matmul(x.reshape(-1, m, a).transpose(1, 0, 2), blocks)  # (m, N, b)
    return y.transpose(1, 0, 2).reshape(-1, m * b)


def wavelength_sha256(wavelength: np.ndarray) -> str:
    """sha256 hex digest of the grid as little-endian float64 bytes."""
    return hashlib.sha256(np.ascontiguousarray(wavelength, dtype="<f8").tobytes()).hexdigest()


def file_sha256(path: str | Path) -> str:
    """sha256 hex digest of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _grid_log10_step(w: np.ndarray) -> float:
    d = np.diff(np.log10(np.asarray(w, dtype=np.float64)))
    return float(np.median(d)) if d.size else float("nan")


def _grid_desc(w: np.ndarray) -> str:
    w = np.asarray(w, dtype=np.float64)
    if w.size == 0:
        return "empty grid"
    return f"{w[0]:.3f}-{w[-1]:.3f} A, {w.size} px, log10 step {_grid_log10_step(w):.6g}"


def _jsonable(obj: Any) -> Any:
    """Convert numpy scalars/arrays inside dicts/lists to plain JSON types."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def _atomic_write_bytes(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


# ------------------------------------------------------------------------ the model
class GSN:
    """A trained GSN emulator (numpy float32 inference).

    Attributes follow the contract: ``label_names``, ``label_units``, ``bounds`` (n_label, 2)
    physical training range, ``wavelength`` (n_pix,) vacuum Angstrom float64,
    ``emulator_error`` (n_pix,) normalised-flux units, ``normalisation`` recipe dict,
    ``meta`` (the full model.json), ``model_id``, ``sha256`` (of weights.safetensors, "" until
    saved or loaded), ``W_out`` (n_hidden, n_pix) float32, ``b_out`` (n_pix,) float32.
    """

    def __init__(
        self,
        *,
        hidden_layers: Sequence[tuple[np.ndarray, np.ndarray]],
        W_out: np.ndarray,
        b_out: np.ndarray,
        activation: str,
        label_names: Sequence[str],
        bounds: np.ndarray,
        wavelength: np.ndarray,
        emulator_error: np.ndarray | None = None,
        label_units: Sequence[str] | None = None,
        label_transforms: Sequence[str] | None = None,
        normalisation: dict | None = None,
        meta: dict | None = None,
    ) -> None:
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; choose from {sorted(ACTIVATIONS)}")
        self.label_names = [str(n) for n in label_names]
        n_label = len(self.label_names)
        self.label_units = (
            [str(u) for u in label_units] if label_units is not None else [LABEL_UNITS.get(n, "") for n in self.label_names]
        )
        self.label_transforms = (
            [str(t) for t in label_transforms] if label_transforms is not None else ["identity"] * n_label
        )
        for t in self.label_transforms:
            if t not in LABEL_TRANSFORMS:
                raise ValueError(f"unknown label transform {t!r}; choose from {LABEL_TRANSFORMS}")
        self.bounds = np.asarray(bounds, dtype=np.float64).reshape(n_label, 2)
        if not np.all(self.bounds[:, 1] > self.bounds[:, 0]):
            raise ValueError(f"label bounds must have hi > lo, got {self.bounds.tolist()}")
        self.activation = activation
        self._act = ACTIVATIONS[activation]
        self.hidden_layers = [
            (np.ascontiguousarray(W, dtype=np.float32), np.ascontiguousarray(b, dtype=np.float32))
            for W, b in hidden_layers
        ]
        self.W_out = np.ascontiguousarray(W_out, dtype=np.float32)
        self.b_out = np.ascontiguousarray(b_out, dtype=np.float32)
        self.wavelength = np.ascontiguousarray(wavelength, dtype=np.float64)
        n_pix = self.wavelength.size
        self.emulator_error = (
            np.zeros(n_pix, np.float32)
            if emulator_error is None
            else np.ascontiguousarray(emulator_error, dtype=np.float32)
        )
        self.normalisation = normalisation
        self._check_shapes()
        # an ensemble's deeper layers are block-diagonal: multiply the blocks only
        self.layer_blocks = [None] + [_find_blocks(W) for W, _ in self.hidden_layers[1:]]
        # scaling constants on the transformed labels
        t_b = self._transform(self.bounds.T).T  # (n_label, 2)
        self._t_lo = t_b[:, 0].copy()
        self._t_span = (t_b[:, 1] - t_b[:, 0]).copy()
        self.sha256 = ""
        self.meta: dict = dict(meta or {})
        self.meta.update(self._core_meta())
        self.model_id = self._compute_model_id()
        self.meta["model_id"] = self.model_id

    # ---------------------------------------------------------------- shapes/meta
    @property
    def n_label(self) -> int:
        return len(self.label_names)

    @property
    def n_pix(self) -> int:
        return int(self.wavelength.size)

    @property
    def hidden_widths(self) -> list[int]:
        return [int(W.shape[1]) for W, _ in self.hidden_layers]

    @property
    def n_hidden(self) -> int:
        return int(self.W_out.shape[0])

    def _check_shapes(self) -> None:
        n_in = self.n_label
        if not self.hidden_layers:
            raise ModelMismatchError("a GSN needs at least one hidden layer")
        for i, (W, b) in enumerate(self.hidden_layers):
            if W.ndim != 2 or W.shape[0] != n_in or b.shape != (W.shape[1],):
                raise ModelMismatchError(
                    f"hidden layer {i}: weight {W.shape} / bias {b.shape} do not chain from {n_in} inputs"
                )
            n_in = W.shape[1]
        if self.W_out.shape != (n_in, self.n_pix) or self.b_out.shape != (self.n_pix,):
            raise ModelMismatchError(
                f"output layer weight {self.W_out.shape} / bias {self.b_out.shape} do not match "
                f"{n_in} hidden units and {self.n_pix} wavelength pixels"
            )
        if self.emulator_error.shape != (self.n_pix,):
            raise ModelMismatchError(
                f"emulator_error has shape {self.emulator_error.shape}, expected ({self.n_pix},)"
            )

    def _core_meta(self) -> dict:
        w = self.wavelength
        grid: dict[str, Any] = {
            "min": float(w[0]),
            "max": float(w[-1]),
            "n": int(w.size),
            "log10_step": _grid_log10_step(w),
            "medium": "vacuum",
            "unit": "Angstrom",
            "sha256": wavelength_sha256(w),
        }
        if w.size <= _INLINE_GRID_MAX:
            grid["values"] = w.tolist()
        return {
            "schema": MODEL_SCHEMA,
            "labels": {
                "names": list(self.label_names),
                "units": list(self.label_units),
                "bounds": self.bounds.tolist(),
            },
            "label_scaling": {
                "method": "minmax",
                "range": list(SCALE_RANGE),
                "transforms": list(self.label_transforms),
                "note": "x = lo_r + (f(label) - f(bound_lo)) / (f(bound_hi) - f(bound_lo)) * (hi_r - lo_r)",
            },
            "architecture": {
                "type": "GSN-MLP",
                "n_input": self.n_label,
                "hidden": self.hidden_widths,
                "activation": self.activation,
                "leaky_slope": LEAKY_SLOPE if self.activation == "leaky_relu" else None,
                "n_output": self.n_pix,
            },
            "wavelength": grid,
            "normalisation": self.normalisation,
            "emulator_error": {
                "tensor": "emulator_error",
                "median": float(np.median(self.emulator_error)) if self.n_pix else 0.0,
                "p90": float(np.percentile(self.emulator_error, 90)) if self.n_pix else 0.0,
            },
        }

    def _compute_model_id(self) -> str:
        h = hashlib.sha256()
        for W, b in [*self.hidden_layers, (self.W_out, self.b_out)]:
            h.update(W.tobytes())
            h.update(b.tobytes())
        h.update(self.emulator_error.tobytes())
        core = self._core_meta()
        core["wavelength"].pop("values", None)
        h.update(json.dumps(_jsonable(core), sort_keys=True).encode())
        if self.meta.get("label_prior"):  # the fit's prior is part of what the model gives
            h.update(json.dumps(_jsonable(self.meta["label_prior"]), sort_keys=True).encode())
        return h.hexdigest()[:12]

    # ---------------------------------------------------------------- labels
    def _transform(self, labels: np.ndarray) -> np.ndarray:
        """Apply per-label transforms; labels (..., n_label) float64."""
        out = np.array(labels, dtype=np.float64, copy=True)
        for j, t in enumerate(self.label_transforms):
            if t == "log10":
                with np.errstate(invalid="ignore", divide="ignore"):
                    out[..., j] = np.log10(out[..., j])
        return out

    def _untransform(self, t: np.ndarray) -> np.ndarray:
        out = np.array(t, dtype=np.float64, copy=True)
        for j, tr in enumerate(self.label_transforms):
            if tr == "log10":
                out[..., j] = 10.0 ** out[..., j]
        return out

    def _as_labels(self, labels: np.ndarray) -> np.ndarray:
        arr = np.asarray(labels, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr[None, :]
        if arr.ndim != 2 or arr.shape[1] != self.n_label:
            raise ModelMismatchError(
                f"labels must be (N, {self.n_label}) for {self.label_names}, got shape {np.shape(labels)}"
            )
        return arr

    def scale(self, labels: np.ndarray) -> np.ndarray:
        """(N, n_label) physical labels -> (N, n_label) float32 network input in SCALE_RANGE."""
        arr = self._as_labels(labels)
        lo_r, hi_r = SCALE_RANGE
        x = lo_r + (self._transform(arr) - self._t_lo) / self._t_span * (hi_r - lo_r)
        return x.astype(np.float32)

    def unscale(self, x: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`scale` (float64 physical labels)."""
        x = np.asarray(x, dtype=np.float64)
        lo_r, hi_r = SCALE_RANGE
        return self._untransform((x - lo_r) / (hi_r - lo_r) * self._t_span + self._t_lo)

    def check_labels(self, requested: Sequence[str]) -> None:
        """Raise :class:`ModelMismatchError` unless ``requested`` equals the model's labels (same order)."""
        req = [str(r) for r in requested]
        if req != self.label_names:
            raise ModelMismatchError(
                f"model {self.model_id} was trained on labels {self.label_names}, "
                f"but {req} were requested (retrain with --labels {' '.join(req)}, or request {self.label_names})"
            )

    def in_bounds(self, labels: np.ndarray) -> np.ndarray:
        """(N,) bool: labels inside the training bounds."""
        arr = self._as_labels(labels)
        return np.all((arr >= self.bounds[:, 0]) & (arr <= self.bounds[:, 1]), axis=1)

    # ---------------------------------------------------------------- inference
    def hidden(self, labels: np.ndarray) -> np.ndarray:
        """(N, n_label) physical labels -> (N, n_hidden) float32 output of the last hidden layer."""
        x = self.scale(labels)
        for (W, b), blk in zip(self.hidden_layers, self.layer_blocks):
            x = self._act((x @ W if blk is None else block_matmul(x, blk)) + b)
        return x

    def predict(self, labels: np.ndarray) -> np.ndarray:
        """(N, n_label) physical labels -> (N, n_pix) float32 normalised flux."""
        return self.hidden(labels) @ self.W_out + self.b_out

    def flops_per_spectrum(self) -> int:
        """Multiply-add FLOPs (2 per MAC) of one forward pass (activations not counted; the
        blocks only of block-diagonal ensemble layers)."""
        layers = [W.size if blk is None else blk.size for (W, _), blk in zip(self.hidden_layers, self.layer_blocks)]
        return int(2 * (sum(layers) + self.W_out.size))

    # ---------------------------------------------------------------- grid
    def pixel_slice(self, cube_wavelength: np.ndarray) -> slice:
        """The slice of ``cube_wavelength`` that is the model grid.

        The model grid must be a run of the cube's pixels: the same log10 step (1e-6 relative)
        and pixel-aligned (within 1e-3 px). Otherwise :class:`ModelMismatchError` explains both grids.
        """
        cw = np.asarray(cube_wavelength, dtype=np.float64)
        mw = self.wavelength

        def fail(why: str) -> ModelMismatchError:
            return ModelMismatchError(
                f"model {self.model_id} wavelength grid ({_grid_desc(mw)}) is not a run of the cube's grid "
                f"({_grid_desc(cw)}): {why}"
            )

        if cw.ndim != 1 or cw.size < 2:
            raise fail("the cube grid must be 1-D with >= 2 pixels")
        lc = np.log10(cw)
        lm = np.log10(mw)
        dc = np.diff(lc)
        step_c = float(np.median(dc))
        step_m = _grid_log10_step(mw)
        if step_c <= 0 or np.max(np.abs(dc - step_c)) > 1e-3 * step_c:
            raise fail("the cube grid is not log-linear")
        if mw.size > 1 and abs(step_m - step_c) > 1e-6 * abs(step_c):
            raise fail(f"log10 steps differ ({step_m:.9g} vs {step_c:.9g})")
        pos = (lm - lc[0]) / step_c  # model pixels in cube pixel units
        k0 = int(np.rint(pos[0]))
        if np.max(np.abs(pos - (k0 + np.arange(mw.size)))) > 1e-3:
            raise fail(f"pixels are misaligned by {abs(pos[0] - k0):.3g} px")
        if k0 < 0 or k0 + mw.size > cw.size:
            raise fail("the model range extends beyond the cube's range")
        sl = slice(k0, k0 + mw.size)
        # final check on the actual values (catches a grid with a different step inside)
        if np.max(np.abs(lc[sl] - lm)) > 1e-3 * step_c:
            raise fail("pixels are misaligned")
        return sl

    # ---------------------------------------------------------------- I/O
    def tensors(self) -> dict[str, np.ndarray]:
        """All arrays as named tensors (the weights file content)."""
        t: dict[str, np.ndarray] = {}
        for i, (W, b) in enumerate(self.hidden_layers):
            t[f"hidden.{i}.weight"] = W
            t[f"hidden.{i}.bias"] = b
        t["out.weight"] = self.W_out
        t["out.bias"] = self.b_out
        t["emulator_error"] = self.emulator_error
        t["wavelength"] = self.wavelength
        return t

    def save(self, model_dir: str | Path) -> None:
        """Write ``weights.safetensors`` and ``model.json`` into ``model_dir`` (created if needed)."""
        from safetensors.numpy import save as st_save

        from ._version import __version__

        model_dir = Path(model_dir)
        model_dir.mkdir(parents=True, exist_ok=True)
        # one metadata key: safetensors writes a dict's keys in hash order, so two keys would make the
        # file bytes (and its sha256) differ between saves of the same model
        data = st_save(self.tensors(), metadata={"schema": MODEL_SCHEMA})
        _atomic_write_bytes(model_dir / WEIGHTS_FILE, data)
        self.sha256 = hashlib.sha256(data).hexdigest()
        self.model_id = self._compute_model_id()  # of what is written (``meta["label_prior"]`` may have changed)
        self.meta = {"schema": MODEL_SCHEMA, "model_id": self.model_id, **self.meta, **self._core_meta()}
        self.meta["model_id"] = self.model_id
        self.meta["weights"] = {"file": WEIGHTS_FILE, "sha256": self.sha256, "format": "safetensors"}
        self.meta.setdefault("package_version", __version__)
        text = json.dumps(_jsonable(self.meta), indent=1, sort_keys=False)
        _atomic_write_bytes(model_dir / META_FILE, text.encode())

    @classmethod
    def load(
        cls,
        model_dir: str | Path,
        *,
        labels: Sequence[str] | None = None,
        verify_sha256: bool = True,
    ) -> GSN:
        """Load a model directory (never unpickles). Checks schema, tensor shapes, the grid hash,
        the weights' sha256, and (if given) that ``labels`` are the model's label names."""
        model_dir = Path(model_dir)
        meta_path = model_dir / META_FILE
        w_path = model_dir / WEIGHTS_FILE
        if not model_dir.is_dir():
            raise FileNotFoundError(f"no model directory at {model_dir}")
        if not meta_path.is_file():
            raise ModelFileError(f"{meta_path} is missing: {model_dir} is not a gsn-dask model directory")
        if not w_path.is_file():
            raise ModelFileError(f"{w_path} is missing")
        try:
            meta = json.loads(meta_path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ModelFileError(f"{meta_path} is not valid JSON ({exc}); the file is damaged") from exc
        if not isinstance(meta, dict) or meta.get("schema") != MODEL_SCHEMA:
            got = meta.get("schema") if isinstance(meta, dict) else type(meta).__name__
            raise ModelMismatchError(f"{meta_path}: schema is {got!r}, expected {MODEL_SCHEMA!r}")
        raw = w_path.read_bytes()
        sha = hashlib.sha256(raw).hexdigest()
        want_sha = (meta.get("weights") or {}).get("sha256")
        if verify_sha256 and want_sha and want_sha != sha:
            raise ModelFileError(
                f"{w_path} is damaged or was modified: sha256 {sha[:16]}... differs from the "
                f"{want_sha[:16]}... recorded in {META_FILE}"
            )
        try:
            from safetensors.numpy import load as st_load

            t = st_load(raw)
        except Exception as exc:  # safetensors raises its own error types
            raise ModelFileError(f"{w_path} is not a readable safetensors file (damaged or truncated?): {exc}") from exc
        try:
            arch = meta["architecture"]
            lab = meta["labels"]
            n_h = len(arch["hidden"])
            hidden_layers = [(t[f"hidden.{i}.weight"], t[f"hidden.{i}.bias"]) for i in range(n_h)]
            W_out, b_out = t["out.weight"], t["out.bias"]
            wavelength = t["wavelength"]
            err = t["emulator_error"]
        except KeyError as exc:
            raise ModelFileError(f"{model_dir}: missing entry {exc} in {META_FILE} or {WEIGHTS_FILE}") from exc
        grid = meta.get("wavelength", {})
        if grid.get("sha256") and grid["sha256"] != wavelength_sha256(wavelength):
            raise ModelMismatchError(
                f"{w_path}: the wavelength tensor does not match the grid sha256 recorded in {META_FILE}"
            )
        if int(grid.get("n", wavelength.size)) != wavelength.size:
            raise ModelMismatchError(f"{model_dir}: grid has {wavelength.size} px, model.json says {grid.get('n')}")
        if [int(h) for h in arch["hidden"]] != [int(W.shape[1]) for W, _ in hidden_layers]:
            raise ModelMismatchError(
                f"{model_dir}: hidden widths in {META_FILE} ({arch['hidden']}) differ from the weights "
                f"({[int(W.shape[1]) for W, _ in hidden_layers]})"
            )
        scaling = meta.get("label_scaling", {})
        if tuple(scaling.get("range", SCALE_RANGE)) != SCALE_RANGE:
            raise ModelMismatchError(f"{model_dir}: unsupported label scaling range {scaling.get('range')}")
        model = cls(
            hidden_layers=hidden_layers,
            W_out=W_out,
            b_out=b_out,
            activation=arch["activation"],
            label_names=lab["names"],
            label_units=lab.get("units"),
            bounds=np.asarray(lab["bounds"], dtype=np.float64),
            label_transforms=scaling.get("transforms"),
            wavelength=wavelength,
            emulator_error=err,
            normalisation=meta.get("normalisation"),
            meta=meta,
        )
        stored_id = meta.get("model_id")
        if stored_id and stored_id != model.model_id:
            raise ModelFileError(
                f"{model_dir}: model_id {stored_id} in {META_FILE} does not match the content ({model.model_id})"
            )
        model.sha256 = sha
        model.meta = meta
        if labels is not None:
            model.check_labels(labels)
        return model

    def __repr__(self) -> str:
        return (
            f"GSN(id={self.model_id}, labels={self.label_names}, hidden={self.hidden_widths}, "
            f"activation={self.activation}, grid={_grid_desc(self.wavelength)})"
        )


def _drop_label_record(record: Any, name: str) -> Any:
    """A ``model.json`` record with every per-label entry of ``name`` removed (nested dicts and lists)."""
    if isinstance(record, list):
        return [_drop_label_record(v, name) for v in record]
    if not isinstance(record, Mapping):
        return record
    return {k: _drop_label_record(v, name) for k, v in record.items() if k != name}


def fix_label(model: GSN, name: str, value: float) -> GSN:
    """The GSN with input label ``name`` held at ``value`` (its unit): the label's first-layer
    weights times its scaled value move into the first layer's bias, so the result is exact and has
    one label fewer (same cost per evaluation). Per-label ``model.json`` records (label
    systematics) drop the label; ``meta["fixed_labels"]`` records it. A new model id."""
    names = list(model.label_names)
    if name not in names:
        raise ModelMismatchError(f"model {model.model_id} has no label {name!r} (it has {names})")
    if len(names) < 2:
        raise ValueError("cannot fix the only label of a model")
    j = names.index(name)
    lo, hi = model.bounds[j]
    if not lo <= value <= hi:
        raise ValueError(f"{name} = {value} is outside the model's training range {lo:g}..{hi:g}")
    row = model.bounds[:, 0].copy()
    row[j] = value
    x_j = np.float64(model.scale(row[None, :])[0, j])
    (W1, b1), rest = model.hidden_layers[0], list(model.hidden_layers[1:])
    keep = [i for i in range(len(names)) if i != j]
    b_new = (np.asarray(b1, np.float64) + x_j * np.asarray(W1[j], np.float64)).astype(np.asarray(b1).dtype)
    meta = {k: _drop_label_record(v, name) if k == "label_systematics" else v
            for k, v in model.meta.items() if k not in ("weights", "model_id")}
    meta["fixed_labels"] = {**dict(model.meta.get("fixed_labels") or {}), name: float(value)}
    return GSN(
        hidden_layers=[(np.ascontiguousarray(W1[keep]), b_new), *rest], W_out=model.W_out, b_out=model.b_out,
        activation=model.activation, label_names=[names[i] for i in keep], bounds=model.bounds[keep],
        wavelength=model.wavelength, emulator_error=model.emulator_error,
        label_units=[model.label_units[i] for i in keep], label_transforms=[model.label_transforms[i] for i in keep],
        normalisation=model.normalisation, meta=meta,
    )


def load_model(model_dir: str | Path, *, labels: Sequence[str] | None = None) -> GSN:
    """Load a trained GSN from a model directory (see :meth:`GSN.load`)."""
    return GSN.load(model_dir, labels=labels)


def default_normalisation(attrs: Mapping[str, Any] | None = None) -> dict:
    """The normalisation recipe for a model trained on a cube with ``attrs``: the cube's
    ``normalisation`` attr (JSON string or dict) if present, else
    :data:`gsn_dask.grid.prepare.DEFAULT_NORMALISATION` (the recipe the grid builder applies)."""
    rec = (attrs or {}).get("normalisation")
    if isinstance(rec, str) and rec.strip():
        try:
            return json.loads(rec)
        except json.JSONDecodeError:
            return {"description": rec}
    if isinstance(rec, Mapping):
        return dict(rec)
    from .grid.prepare import DEFAULT_NORMALISATION

    return dict(DEFAULT_NORMALISATION)


__all__ = [
    "ACTIVATIONS",
    "GSN",
    "LABEL_TRANSFORMS",
    "MODEL_SCHEMA",
    "ModelFileError",
    "ModelMismatchError",
    "fix_label",
    "SCALE_RANGE",
    "default_normalisation",
    "file_sha256",
    "load_model",
    "wavelength_sha256",
]
