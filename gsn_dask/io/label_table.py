"""Reference labels from a CSV table, matched strictly to LAMOST spectra (used by the ingest)."""
from __future__ import annotations

import collections
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .lamost import LamostSpectrum


# ------------------------------------------------------------------------ labels
_LABEL_COLUMNS = {
    "teff": ("teff", "label_teff"),
    "logg": ("logg", "label_logg"),
    "feh": ("feh", "fe_h", "[fe/h]", "label_feh"),
    "alpha_fe": ("alpha_fe", "alpha_m", "[alpha/fe]", "[a/fe]", "label_alpha_fe"),
}
_CHECK_COLUMNS = ("lmjd", "planid", "spid", "fiberid")


def _norm_name(name: str) -> str:
    n = Path(str(name).strip()).name
    for suffix in (".gz", ".bz2"):
        if n.lower().endswith(suffix):
            n = n[: -len(suffix)]
    return n


class LabelTable:
    """Reference labels from a CSV, matched to spectra strictly.

    Matching: by ``obsid`` when the spectrum has an OBSID and the CSV an ``obsid`` column, else
    by file name (column ``filename``; compared without directory and ``.gz``). A matched row is
    used only if every one of the columns ``lmjd``, ``planid``, ``spid``, ``fiberid`` that the CSV
    has agrees with the spectrum's header (strict match; e.g. 117 of the 131 DR1 files named in
    the shared LASP table). Label columns (case-insensitive): ``teff``, ``logg``, ``feh`` (or
    ``fe_h``), ``alpha_fe`` (or ``alpha_m``); values <= -9990 are NaN. Unmatched -> NaN labels.
    """

    def __init__(self, df: pd.DataFrame, source: str = ""):
        self.source = source
        lower = {str(c).strip().lower(): c for c in df.columns}
        self.columns: dict[str, Any] = {}
        for label, candidates in _LABEL_COLUMNS.items():
            for cand in candidates:
                if cand in lower:
                    self.columns[label] = lower[cand]
                    break
        if not self.columns:
            raise ValueError(
                f"labels table {source} has none of the label columns teff, logg, feh, alpha_fe "
                f"(columns: {list(df.columns)[:12]}...)"
            )
        if "filename" not in lower and "obsid" not in lower:
            raise ValueError(f"labels table {source} needs a 'filename' or an 'obsid' column to match spectra")
        self.labels = list(self.columns)
        values = np.column_stack([pd.to_numeric(df[c], errors="coerce").to_numpy(np.float64) for c in self.columns.values()])
        values[~np.isfinite(values) | (values <= -9990)] = np.nan
        self.values = values.astype(np.float32)
        self.check = {c: df[lower[c]].to_numpy() for c in _CHECK_COLUMNS if c in lower}
        self.by_obsid: dict[int, int] = {}
        if "obsid" in lower:
            ob = pd.to_numeric(df[lower["obsid"]], errors="coerce").to_numpy()
            for i, o in enumerate(ob):
                if np.isfinite(o):
                    self.by_obsid.setdefault(int(o), i)
        self.by_name: dict[str, list[int]] = collections.defaultdict(list)
        if "filename" in lower:
            for i, name in enumerate(df[lower["filename"]].to_numpy()):
                if isinstance(name, str) and name.strip():
                    self.by_name[_norm_name(name)].append(i)

    @classmethod
    def from_csv(cls, path: str | Path) -> "LabelTable":
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"labels table not found: {path}")
        return cls(pd.read_csv(path, low_memory=False), str(path))

    def _agrees(self, i: int, spec: LamostSpectrum) -> bool:
        for col, vals in self.check.items():
            v = vals[i]
            if col == "planid":
                if not isinstance(v, str) or v.strip() != spec.planid:
                    return False
            else:
                mine = getattr(spec, col)
                try:
                    fv = float(v)
                except (TypeError, ValueError):
                    return False
                if not math.isfinite(fv) or int(fv) != mine:
                    return False
        return True

    def match(self, spec: LamostSpectrum) -> tuple[np.ndarray | None, str]:
        """``(labels (n_label,) float32 or None, status)``, status ``"strict"``, ``"mismatch"``
        (a row names this spectrum but is another observation) or ``"none"``."""
        candidates: list[int] = []
        if spec.obsid >= 0 and spec.obsid in self.by_obsid:
            candidates.append(self.by_obsid[spec.obsid])
        candidates += self.by_name.get(_norm_name(spec.source), [])
        if not candidates:
            return None, "none"
        for i in candidates:
            if self._agrees(i, spec):
                return self.values[i], "strict"
        return None, "mismatch"
