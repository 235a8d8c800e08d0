"""Stellar label names and their units: the one definition every layer imports.

Label names of the cubes, models and results: ``teff`` (K), ``logg`` (dex, cgs), ``feh``
(dex), ``alpha_fe`` (dex). Other names are allowed; their unit is ``""``.
"""
from __future__ import annotations

from collections.abc import Iterable

import numpy as np

#: Known labels and their units, in the canonical order (Teff first).
LABEL_UNITS: dict[str, str] = {"teff": "K", "logg": "dex", "feh": "dex", "alpha_fe": "dex"}

#: The known label names in the canonical order.
KNOWN_LABELS: tuple[str, ...] = tuple(LABEL_UNITS)


def label_unit(name: str) -> str:
    """The unit of label ``name`` (``""`` for a label this package does not know)."""
    return LABEL_UNITS.get(str(name), "")


def canonical_order(names: Iterable[str]) -> list[str]:
    """``names`` sorted: the known labels in :data:`KNOWN_LABELS` order, then the others by name."""
    return sorted((str(n) for n in names),
                  key=lambda n: (KNOWN_LABELS.index(n) if n in KNOWN_LABELS else len(KNOWN_LABELS), n))


#: the Galactic [alpha/Fe]-[Fe/H] pattern, schematic: (feh, alpha_fe) vertices, dex. Alpha-enhanced
#: (+0.3) below [Fe/H] = -1, falling to 0 at solar (plots show it for orientation; a hybrid training
#: cube gives it to observed stars without an [alpha/Fe]).
GALACTIC_ALPHA_PATTERN = ((-3.0, -1.0, 0.0, 0.6), (0.3, 0.3, 0.0, 0.0))


def galactic_alpha(feh: np.ndarray) -> np.ndarray:
    """[alpha/Fe] (dex) of the schematic Galactic pattern at ``feh`` (dex; flat beyond its ends)."""
    return np.interp(np.asarray(feh, np.float64), *GALACTIC_ALPHA_PATTERN)


__all__ = ["GALACTIC_ALPHA_PATTERN", "KNOWN_LABELS", "LABEL_UNITS", "canonical_order", "galactic_alpha", "label_unit"]
