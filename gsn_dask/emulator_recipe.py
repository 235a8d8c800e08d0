"""The GSN training recipe: one definition of how ``gsn-dask train`` makes a model.

:data:`DEFAULT_RECIPE` holds the best-measured settings (the MILES recipe that the demo uses):
``gsn-dask train`` with no options and :func:`gsn_dask.calibration.train_and_calibrate` with no
overrides train it (:func:`gsn_dask.emulator_torch.train_gsn` alone skips the steps that need the
calibration's out-of-fold fits), and every model records the recipe it was made with in
``model.json`` (``training.recipe``; ``training.config`` what ``auto`` settings became).
Numpy only (no torch): the command line builds its options from it.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .emulator import ACTIVATIONS, LABEL_TRANSFORMS

#: Ways to make the final model after K-fold CV: retrain on all stars, or keep fold 0's model.
FINAL_MODES = ("refit", "none")
#: Label priors a model can carry: the Kiel-diagram prior of its training labels, or none.
LABEL_PRIOR_MODES = ("auto", "kiel", "none")
#: how the calibration solves a label's systematic floor (:data:`gsn_dask.calibration.SOLVERS`)
SYSTEMATICS_TARGETS = ("median", "coverage")
#: how a split's classes use their floors (:data:`gsn_dask.calibration.SPLIT_RULES`)
SPLIT_RULES = ("own", "widen")
#: the default split of the label systematics: giants and dwarfs (applied where the cube has log g)
DEFAULT_SPLIT = ("logg", 3.8)
#: Training-cube ``source`` attrs of observed-star libraries (``label_prior="auto"`` gives them a Kiel prior).
OBSERVED_SOURCES = ("MILES",)
#: ``label_noise_share="auto"``: the errors-in-variables shares (label -> share) that the default
#: training uses, for those of these labels that the cube has (measured: README, ``gsn-dask train``).
AUTO_NOISE_SHARE = {"teff": 0.5, "feh": 0.5}


def _teff_range() -> dict[str, tuple[float, float]]:
    return {"teff": (3000.0, 12000.0)}


def _teff_log10() -> dict[str, str]:
    return {"teff": "log10"}


def _values(option: float | Mapping[str, float] | str | None) -> list[float]:
    """The numbers of a per-label option (one value, or label -> value; none for a word)."""
    if isinstance(option, str):
        return []
    return list(option.values()) if isinstance(option, Mapping) else [option]


@dataclass(frozen=True)
class TrainRecipe:
    """Settings of one GSN training and its label-systematics calibration.

    Network: ``n_hidden_layers`` hidden layers of ``hidden`` units (or one width per layer),
    ``activation``; ``label_transforms`` (label -> ``log10``/``identity``, others identity)
    before the min-max scaling. Optimiser: AdamW (``lr`` peak, ``weight_decay``), ``batch_size``,
    at most ``epochs`` per fold with early stopping after ``patience`` epochs without gain,
    ``dropout``. ``folds`` >= 2: K-fold CV, else one held-out split of ``val_fraction``;
    ``final``: ``refit`` (all stars, median best epoch count) or ``none`` (fold 0's model).
    ``weight_floor`` (normalised flux) is added in quadrature to the noise in the loss weights.
    Data: ``labels`` (None: those of the cube), ``label_ranges`` (label -> (lo, hi), stars
    outside are not used; Teff in K), ``wavelength_range`` (vacuum Angstrom, None: all),
    ``mask_telluric``. ``synthetic_weight``: the loss weight of a synthetic spectrum (``source``
    a Turbospectrum grid entry or a PHOENIX file) relative to an observed one in a cube that mixes
    both; in such a cube the emulator error, the label systematics and the Kiel prior come from the
    observed stars only; ``source_input`` gives the network an extra input (1 observed, 0 synthetic)
    and keeps its observed branch: the input is held at 1 in the saved model
    (:func:`gsn_dask.emulator.fix_label`, exact), which then has the cube's labels and the usual cost,
    while the synthetic spectra still shape the shared layers. ``ensemble`` networks are averaged into one GSN. ``distil`` = M >= 2
    (with a refit and ``ensemble`` 1): M final networks (seeds as ``ensemble`` M) are averaged into a
    teacher, and the model is one network of the recipe's size trained on the teacher's spectra
    (:data:`gsn_dask.emulator_data.DISTIL_COPIES` jittered label copies besides the stars' own): the
    ensemble's lower network variance at one network's fit cost; 1 = off. ``label_systematics``:
    run the calibration step after training. ``label_prior``: ``kiel`` stores the Kiel-diagram
    prior of the training labels in the model (:mod:`gsn_dask.label_prior`; models with Teff and
    log g), ``none`` does not, ``auto`` does for a library of observed stars (cube attrs
    ``source`` in :data:`OBSERVED_SOURCES`: where its stars lie is where stars are) and not for a
    synthetic grid (whose labels are a design, not a population); a mixed cube (``MILES+synthetic``)
    counts as observed. ``label_outlier_z``: the final model is trained without the observed stars
    whose out-of-fold fit contradicts a label by more than this many sigma (statistical and
    systematic in quadrature; a mapping label -> sigma judges only those labels; None: none left out); the emulator error, label systematics and Kiel
    prior still come from every star (:func:`gsn_dask.calibration.contradicted_labels`).
    ``label_noise_share`` (errors in variables): the share of the out-of-fold fit-versus-label
    variance beyond noise (the label systematics) that is put down to the library's labels; the
    final model trains on each observed star's labels moved toward its out-of-fold fit by that
    share of the precision-weighted way (:func:`gsn_dask.calibration.refined_labels`; a mapping
    label -> share moves only those labels; None: the labels as given; ``auto``, the default:
    :data:`AUTO_NOISE_SHARE` for the labels the cube has, when it has observed stars and the recipe
    refits after K-fold CV, else None: :meth:`noise_share_for`). The emulator error, the label
    systematics, the Kiel prior and the label box still come from the given labels.
    ``label_systematics_by``: the label in whose quantile bins of the fitted value the label
    systematics are also measured (the fit uses the bin of the star's posterior median);
    ``label_systematics_split`` = (label, value), e.g. ("logg", 3.8): measured apart, with their
    own bins, for the stars fitted below and above the value (default giants and dwarfs at log g
    3.8, for a cube with log g; None: one set);
    ``label_systematics_split_rule``: ``widen`` (default: at least the floors of all stars, so the
    split widens the class that needs it and narrows nothing; measured: README, `gsn-dask train`)
    or ``own`` (a star gets its class's floors);
    ``label_systematics_target``: ``median`` (default) solves each floor so that the held-out
    training stars' median |z| is that of a unit Gaussian (0.6745; narrower than 68% coverage
    where the errors have heavy tails), ``coverage`` so that their 68% intervals cover their
    labels 68.3% of the time (measured, not the default: README, `gsn-dask train`); a mapping
    label -> target solves each label its own way (labels not named: ``median``). ``seed`` fixes folds, initialisation and batches.
    """

    labels: tuple[str, ...] | None = None
    hidden: int | tuple[int, ...] = 256
    n_hidden_layers: int = 3
    activation: str = "silu"
    label_transforms: Mapping[str, str] = field(default_factory=_teff_log10)
    epochs: int = 300
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    dropout: float = 0.0
    patience: int = 50
    folds: int = 3
    val_fraction: float = 0.1
    weight_floor: float = 0.01
    synthetic_weight: float = 1.0
    source_input: bool = False
    seed: int = 0
    wavelength_range: tuple[float, float] | None = None
    label_ranges: Mapping[str, tuple[float, float]] | None = field(default_factory=_teff_range)
    mask_telluric: bool = False
    final: str = "refit"
    ensemble: int = 1
    distil: int = 1
    label_systematics: bool = True
    label_systematics_by: str = "teff"
    label_systematics_split: tuple[str, float] | None = DEFAULT_SPLIT
    label_systematics_target: str | Mapping[str, str] = "median"
    label_systematics_split_rule: str = "widen"
    label_prior: str = "auto"
    label_outlier_z: float | Mapping[str, float] | None = None
    label_noise_share: float | Mapping[str, float] | str | None = "auto"

    def __post_init__(self) -> None:
        fix = object.__setattr__  # frozen: normalise the containers once, here
        if self.labels is not None:
            fix(self, "labels", tuple(str(n) for n in self.labels))
        if not isinstance(self.hidden, int):
            fix(self, "hidden", tuple(int(h) for h in self.hidden))
        fix(self, "label_transforms", {str(k): str(v) for k, v in dict(self.label_transforms or {}).items()})
        for name in ("label_outlier_z", "label_noise_share"):  # one value, or label -> value
            v = getattr(self, name)
            if v is not None and not isinstance(v, str):
                fix(self, name, {str(k): float(x) for k, x in v.items()} if isinstance(v, Mapping) else float(v))
        if isinstance(self.label_systematics_target, Mapping):
            fix(self, "label_systematics_target", {str(k): str(v) for k, v in self.label_systematics_target.items()})
        if self.label_systematics_split is not None:
            name, value = self.label_systematics_split
            fix(self, "label_systematics_split", (str(name), float(value)))
        if self.wavelength_range is not None:
            fix(self, "wavelength_range", tuple(float(x) for x in self.wavelength_range))
        if self.label_ranges is not None:
            fix(self, "label_ranges", {str(k): (float(lo), float(hi)) for k, (lo, hi) in dict(self.label_ranges).items()})
        self._check()

    def _check(self) -> None:
        bad = []
        if self.activation not in ACTIVATIONS:
            bad.append(f"activation {self.activation!r} (choose from {sorted(ACTIVATIONS)})")
        bad += [f"label transform {t!r} of {n}" for n, t in self.label_transforms.items() if t not in LABEL_TRANSFORMS]
        widths = (self.hidden,) if isinstance(self.hidden, int) else self.hidden
        if not widths or min(widths) < 1 or self.n_hidden_layers < 1:
            bad.append(f"hidden {self.hidden!r} x {self.n_hidden_layers} layers")
        for name in ("epochs", "batch_size", "ensemble", "distil"):
            if int(getattr(self, name)) < 1:
                bad.append(f"{name} = {getattr(self, name)!r} (must be >= 1)")
        if not (0.0 < self.val_fraction < 1.0) or not (0.0 <= self.dropout < 1.0) or self.lr <= 0:
            bad.append(f"val_fraction {self.val_fraction}, dropout {self.dropout}, lr {self.lr}")
        if not (0.0 < self.synthetic_weight < float("inf")):
            bad.append(f"synthetic_weight {self.synthetic_weight} (must be > 0)")
        if self.label_prior not in LABEL_PRIOR_MODES:
            bad.append(f"label_prior {self.label_prior!r} (use one of {LABEL_PRIOR_MODES})")
        targets = (self.label_systematics_target.values() if isinstance(self.label_systematics_target, Mapping)
                   else [self.label_systematics_target])
        if not targets or any(t not in SYSTEMATICS_TARGETS for t in targets):
            bad.append(f"label_systematics_target {self.label_systematics_target!r} (use one of {SYSTEMATICS_TARGETS})")
        if self.label_systematics_split_rule not in SPLIT_RULES:
            bad.append(f"label_systematics_split_rule {self.label_systematics_split_rule!r} (use one of {SPLIT_RULES})")
        if self.distil > 1 and not (self.refits and self.ensemble == 1):
            bad.append(f"distil {self.distil} (needs folds >= 2, final 'refit' and ensemble 1: it distils the "
                       "refit's networks into one)")
        if self.final not in FINAL_MODES:
            bad.append(f"final {self.final!r} (use one of {FINAL_MODES})")
        zs = _values(self.label_outlier_z)
        if self.label_outlier_z is not None and not (zs and min(zs) > 0 and self.refits):
            bad.append(f"label_outlier_z {self.label_outlier_z!r} (must be > 0, with folds >= 2 and final 'refit': "
                       "the out-of-fold fits decide which stars the refit leaves out)")
        shares = _values(self.label_noise_share)
        if self.label_noise_share not in (None, "auto") and not (shares and 0 < min(shares) and max(shares) <= 1 and self.refits):
            bad.append(f"label_noise_share {self.label_noise_share!r} (auto, or in (0, 1] with folds >= 2 and final "
                       "'refit': the out-of-fold fits move the labels the refit trains on)")
        bad += [f"label range {n} = ({lo}, {hi})" for n, (lo, hi) in (self.label_ranges or {}).items() if not lo <= hi]
        if self.wavelength_range is not None and not self.wavelength_range[0] < self.wavelength_range[1]:
            bad.append(f"wavelength_range {self.wavelength_range}")
        if bad:
            raise ValueError("bad training recipe: " + "; ".join(bad))

    @property
    def hidden_widths(self) -> list[int]:
        """The width of each hidden layer."""
        if isinstance(self.hidden, int):
            return [int(self.hidden)] * int(self.n_hidden_layers)
        return [int(h) for h in self.hidden]

    @property
    def refits(self) -> bool:
        """Whether the final model is retrained on all stars after K-fold CV (the step that the
        out-of-fold fits can change: ``label_outlier_z``, ``label_noise_share``)."""
        return self.folds >= 2 and self.final == "refit"

    def noise_share_for(self, labels: Sequence[str], observed: bool) -> float | dict[str, float] | None:
        """The ``label_noise_share`` a training of ``labels`` uses (``observed``: whether the cube has
        observed stars, the only ones whose labels move): the recipe's value, or for ``auto``
        :data:`AUTO_NOISE_SHARE` on the labels the cube has, when it has observed stars and the
        recipe refits after K-fold CV (else None: the labels as given)."""
        if self.label_noise_share != "auto":
            return self.label_noise_share
        share = {n: s for n, s in AUTO_NOISE_SHARE.items() if n in labels}
        return share if share and observed and self.refits else None

    def checked_noise_share(self, labels: Sequence[str], observed: bool, *, screen: bool,
                            relabel: bool) -> float | dict[str, float] | None:
        """:meth:`noise_share_for` a training of ``labels``, after refusing (``ValueError``) what it
        cannot honour: ``label_outlier_z`` or a noise share without the hook that applies it
        (``screen``, ``relabel``: given) or on labels it lacks, and a label-systematics bin, split
        or target label it lacks. ``auto`` without ``relabel`` is None (the labels as given)."""
        share = None if self.label_noise_share == "auto" and not relabel else self.noise_share_for(labels, observed)
        for name, value, hook in (("label_outlier_z", self.label_outlier_z, screen), ("label_noise_share", share, relabel)):
            if value is not None and (not hook or not set(value if isinstance(value, dict) else ()) <= set(labels)):
                raise ValueError(f"{name} {value} needs gsn_dask.calibration.train_and_calibrate and labels among {labels}")
        named = self.label_systematics_target if isinstance(self.label_systematics_target, dict) else {}
        split = self.label_systematics_split if self.label_systematics_split != DEFAULT_SPLIT else None  # default: where it can
        for name, label in (("by", self.label_systematics_by), ("split", (split or [None])[0]), *(("target", n) for n in named)):
            if self.label_systematics and label is not None and label not in labels:
                raise ValueError(f"label_systematics_{name} {label!r}: not among the labels {labels}")
        return share

    def kiel_prior_for(self, cube_attrs: Mapping[str, Any]) -> bool:
        """Whether a model trained on a cube with ``cube_attrs`` gets the Kiel prior."""
        if self.label_prior == "auto":
            return any(part in OBSERVED_SOURCES for part in str(cube_attrs.get("source", "")).split("+"))
        return self.label_prior == "kiel"

    def replace(self, **changes: Any) -> TrainRecipe:
        """A copy with ``changes``; an unknown setting is a ``ValueError`` naming the known ones."""
        unknown = sorted(set(changes) - {f.name for f in dataclasses.fields(self)})
        if unknown:
            raise ValueError(f"unknown training setting(s) {unknown}; known: {sorted(f.name for f in dataclasses.fields(self))}")
        return dataclasses.replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        """The recipe as plain JSON types (tuples become lists)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, tuple):
                v = list(v)
            elif isinstance(v, Mapping):
                v = {k: (list(x) if isinstance(x, tuple) else x) for k, x in v.items()}
            out[f.name] = v
        return out

    @classmethod
    def from_json(cls, record: Mapping[str, Any]) -> TrainRecipe:
        """The recipe of a ``model.json`` ``training.recipe`` record (:meth:`to_json`)."""
        return cls().replace(**dict(record))


#: The best-measured recipe (MILES, 3000-12000 K: see benchmarks/ and the demo).
DEFAULT_RECIPE = TrainRecipe()

__all__ = ["AUTO_NOISE_SHARE", "DEFAULT_RECIPE", "FINAL_MODES", "LABEL_PRIOR_MODES", "DEFAULT_SPLIT", "OBSERVED_SOURCES", "SPLIT_RULES", "TrainRecipe"]
