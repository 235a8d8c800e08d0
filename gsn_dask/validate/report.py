"""The validation report: its tables as text and markdown, and the files written for it
(CSV/ECSV tables, ``matched.csv``, figures, ``report.md``)."""
from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from .reference import _str_values
from .stats import N_BOOT


@dataclass
class ValidationReport:
    """The outcome of :func:`validate`.

    ``matched``: xarray Dataset over (star, label) of every cross-matched result star with
    ``ours``, ``ref``, ``ref_err``, ``p16``, ``p84``, ``sigma_post``, ``diff``, ``z``, ``z_tot``,
    ``in68`` and per star ``snr``, ``flag``, ``status``, ``ref_id``, ``sep_arcsec``, ``selected``
    (passes the flag filter). ``stats``: one row per (label, snr_bin) incl. ``all``.
    ``calibration``: one row per label over all selected stars. ``classes``: bias, scatter and
    coverage per stellar class of the reference (:func:`~gsn_dask.validate.stats.class_stats`);
    ``scale``: the scatter left after a straight-line scale transfer to the reference
    (:func:`~gsn_dask.validate.stats.scale_stats`).
    """

    matched: xr.Dataset
    stats: pd.DataFrame
    calibration: pd.DataFrame
    labels: list[str]
    snr_bins: tuple[float, ...]
    settings: dict[str, Any] = field(default_factory=dict)
    classes: pd.DataFrame | None = None
    scale: pd.DataFrame | None = None

    def table(self) -> str:
        """The statistics as fixed-width text tables."""
        return format_stats(self.stats, self.calibration, classes=self.classes, scale=self.scale)

    def extra_tables(self) -> dict[str, pd.DataFrame]:
        """The class and scale tables that are there and not empty, by file stem."""
        return {n: t for n, t in (("classes", self.classes), ("scale", self.scale)) if t is not None and len(t)}

    def __str__(self) -> str:  # pragma: no cover - convenience
        return self.table()


def _fmt(x: float, lab: str, kind: str = "value") -> str:
    if x is None or not np.isfinite(x):
        return "-"
    if kind == "frac":
        return f"{100 * x:.1f}%"
    if kind == "z":
        return f"{x:.2f}"
    return f"{x:.0f}" if lab == "teff" else f"{x:.3f}"


def _stats_rows(stats: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["label", "S/N", "N", "bias", "std", "MAD std", "outliers", "in 68%", "z rstd"]
    body = []
    for r in stats.itertuples(index=False):
        lab = str(r.label)
        body.append([
            f"{lab} [{r.unit}]" if r.unit else lab, str(r.snr_bin), str(int(r.n)),
            _fmt(r.bias, lab), _fmt(r.std, lab), _fmt(r.mad_std, lab),
            _fmt(r.outlier_frac, lab, "frac"), _fmt(r.frac_in_68, lab, "frac"), _fmt(r.z_robust_std, lab, "z"),
        ])
    return head, body


def _pm(x: float, se: float, lab: str, kind: str = "value") -> str:
    """``x ± se`` (the bootstrap standard error; only x where it is unknown)."""
    return _fmt(x, lab, kind) + (f" ± {_fmt(se, lab, kind)}" if se is not None and np.isfinite(se) else "")


def _calib_rows(calibration: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["label", "N", "objects", "in 68%", "MAD std", "z median", "z std", "z rstd", "N ref err", "in 68% (tot)",
            "z_tot rstd", "extra sigma"]
    body = []
    for r in calibration.itertuples(index=False):
        lab = str(r.label)
        get = lambda name: getattr(r, name, np.nan)  # noqa: E731 - tables written before these columns
        body.append([lab, str(int(r.n_calib)), str(int(get("n_objects"))) if np.isfinite(get("n_objects")) else "-",
                     _pm(r.frac_in_68, get("frac_in_68_se"), lab, "frac"), _pm(get("mad_std"), get("mad_std_se"), lab),
                     _fmt(r.z_median, lab, "z"), _fmt(r.z_std, lab, "z"), _fmt(r.z_robust_std, lab, "z"),
                     str(int(r.n_ref_err)), _fmt(r.frac_in_68_tot, lab, "frac"), _fmt(r.z_tot_robust_std, lab, "z"),
                     _fmt(get("extra_sigma"), lab)])
    return head, body


def _class_rows(classes: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["S/N", "class (reference labels)", "label", "N", "bias", "MAD std", "in 68%"]
    body = [[str(r.snr_set), str(r.stellar_class), str(r.label), str(int(r.n)), _fmt(r.bias, str(r.label)),
             _fmt(r.mad_std, str(r.label)), _fmt(r.frac_in_68, str(r.label), "frac")]
            for r in classes.itertuples(index=False) if r.n > 0]
    return head, body


def _scale_rows(scale: pd.DataFrame) -> tuple[list[str], list[list[str]]]:
    head = ["S/N", "label", "N", "bias", "MAD std", "slope", "intercept", "bias (CV)", "MAD std (CV)"]
    body = [[str(r.snr_set), str(r.label), str(int(r.n)), _fmt(r.bias, str(r.label)), _fmt(r.mad_std, str(r.label)),
             "-" if not np.isfinite(r.slope) else f"{r.slope:.3f}", _fmt(r.intercept, str(r.label)),
             _fmt(r.bias_cv, str(r.label)), _fmt(r.mad_std_cv, str(r.label))]
            for r in scale.itertuples(index=False) if r.n > 0]
    return head, body


#: What the scale table means (text and markdown).
SCALE_NOTE = ("Scale: a straight line reference = intercept + slope x ours (3-sigma clipped least squares) "
              "takes out a linear scale difference between the two catalogues; bias and MAD std (CV) are those "
              "of the transferred labels on alternate stars, the line fitted on the others (2-fold).")
#: What the class table means.
CLASS_NOTE = ("By stellar class of the reference labels: where two catalogues' scales part, they part by "
              "class (e.g. hot stars, K dwarfs), which one bias and one scatter hide.")


def _text_table(head: list[str], body: list[list[str]]) -> str:
    widths = [max(len(h), *(len(b[i]) for b in body)) if body else len(h) for i, h in enumerate(head)]
    line = "  ".join(h.rjust(w) if i > 1 else h.ljust(w) for i, (h, w) in enumerate(zip(head, widths)))
    out = [line, "-" * len(line)]
    for b in body:
        out.append("  ".join(c.rjust(w) if i > 1 else c.ljust(w) for i, (c, w) in enumerate(zip(b, widths))))
    return "\n".join(out)


def _md_table(head: list[str], body: list[list[str]]) -> str:
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" if i < 2 else "---:" for i in range(len(head))) + "|"]
    out += ["| " + " | ".join(b) + " |" for b in body]
    return "\n".join(out)


def format_stats(stats: pd.DataFrame, calibration: pd.DataFrame | None = None, *,
                 classes: pd.DataFrame | None = None, scale: pd.DataFrame | None = None) -> str:
    """The statistics (and calibration, class and scale tables) as fixed-width text tables
    (diff = ours - reference)."""
    text = "Bias = median(ours - ref), std, MAD std = 1.4826 MAD; outliers: |diff| > threshold\n"
    text += _text_table(*_stats_rows(stats))
    if calibration is not None and len(calibration):
        text += "\n\nPosterior calibration (all S/N): fraction of reference values inside [p16, p84],\n"
        text += "z = diff / sigma_post (sigma_post = (p84-p16)/2), z_tot includes the reference uncertainty;\n"
        text += "extra sigma: the floor that, refitting with --set extra_systematics='{\"label\": sigma}', makes\n"
        text += "median |z| = 0.6745 (68% coverage of this reference); ± = bootstrap standard error over objects\n"
        text += _text_table(*_calib_rows(calibration))
    if classes is not None and len(classes):
        text += "\n\n" + CLASS_NOTE + "\n" + _text_table(*_class_rows(classes))
    if scale is not None and len(scale):
        text += "\n\n" + SCALE_NOTE + "\n" + _text_table(*_scale_rows(scale))
    return text


def _matched_frame(matched: xr.Dataset) -> pd.DataFrame:
    """One row per matched star, one column per (quantity, label)."""
    cols: dict[str, Any] = {"star": _str_values(matched["star"].values)}
    for v in ("ref_id", "sep_arcsec", "snr", "snr_bin", "flag", "status", "selected"):
        cols[v] = np.asarray(matched[v].values)
    labels = _str_values(matched["label"].values)
    for v in ("ours", "ref", "ref_err", "p16", "p84", "diff", "z"):
        for j, lab in enumerate(labels):
            cols[f"{v}_{lab}"] = np.asarray(matched[v].values[:, j])
    for v in ("alpha_fe", "alpha_fe_p16", "alpha_fe_p84"):  # ours only, where the reference has none
        if v in matched:
            cols[f"ours_{v}" if v == "alpha_fe" else v] = np.asarray(matched[v].values)
    return pd.DataFrame(cols)


def _write_table(df: pd.DataFrame, stem: Path, meta: Mapping[str, Any]) -> list[Path]:
    from astropy.table import Table

    csv = stem.with_suffix(".csv")
    df.to_csv(csv, index=False)
    ecsv = stem.with_suffix(".ecsv")
    clean = df.copy()
    for c in clean.columns:
        if clean[c].dtype == object or str(clean[c].dtype) in ("str", "string"):
            clean[c] = clean[c].astype(str)
    t = Table.from_pandas(clean)
    t.meta.update({k: (v if isinstance(v, (int, float, str, bool, dict, list, type(None))) else str(v))
                   for k, v in meta.items()})
    t.write(ecsv, format="ascii.ecsv", overwrite=True)
    return [csv, ecsv]


def write_report(report: ValidationReport, out_dir: str | Path, *, figures: bool = True,
                 formats: Sequence[str] = ("png", "pdf")) -> list[Path]:
    """Write the report to ``out_dir``: ``stats.csv/.ecsv``, ``calibration.csv/.ecsv``,
    ``matched.csv`` (one row per matched star), figures (``one_to_one``, ``kiel``,
    ``residuals_snr``, ``calibration``, ``alpha_plane`` when we fit [alpha/Fe]; PNG and PDF) and ``report.md``. Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    meta = {"diff": "ours - reference", **report.settings}
    written: list[Path] = []
    written += _write_table(report.stats, out / "stats", meta)
    written += _write_table(report.calibration, out / "calibration", meta)
    for name, table in report.extra_tables().items():
        written += _write_table(table, out / name, meta)
    mpath = out / "matched.csv"
    _matched_frame(report.matched).to_csv(mpath, index=False)
    written.append(mpath)
    fig_paths: dict[str, list[Path]] = {}
    if figures:
        from .. import plots

        fig_paths = plots.save_all(report.matched, out, stats=report.stats, calibration=report.calibration,
                                   snr_bins=report.snr_bins, formats=formats)
        for paths in fig_paths.values():
            written += paths
    md = out / "report.md"
    md.write_text(report_markdown(report, fig_paths, out))
    written.append(md)
    return written


def _systematics_lines(text: str | None) -> list[str]:
    """Markdown lines describing the per-label systematics the fit folded into [p16, p84]
    (results attrs ``label_systematics``, JSON)."""
    try:
        rec = json.loads(text) if text else None
    except (TypeError, json.JSONDecodeError):
        rec = None
    if not rec or not rec.get("sigma"):
        return ["The intervals are statistical only (no label systematics in the model, or switched off)."]
    sig = rec["sigma"]
    lines = ["The fit folded each label's systematic error, measured in the model's training cross-validation, "
             "into [p16, p84] in quadrature; overall: "
             + ", ".join(f"{k} {v:.3g}" for k, v in sig.items()) + "."]
    lines += _binned_lines(rec.get("binned"))
    c = rec.get("classes")
    if c:
        if c.get("rule") == "widen":
            lines += ["", "Each class below was measured apart; a star got the larger of its class's value and the "
                          "value of all stars above (the split widens an interval, never narrows it)."]
        for g, (lo, hi) in zip(c["groups"], zip([None, *c["at"]], [*c["at"], None])):
            where = " and ".join(x for x in (lo is not None and f"{c['by']} >= {lo:g}", hi is not None and f"{c['by']} < {hi:g}") if x)
            lines += ["", f"Stars fitted at {where}: " + ", ".join(f"{k} {v:.3g}" for k, v in g["sigma"].items()) + "."]
            lines += _binned_lines(g.get("binned"))
    return lines


def _binned_lines(b: Mapping[str, Any] | None) -> list[str]:
    """A markdown table of binned systematics (a record's ``binned``), or nothing."""
    if not b:
        return []
    names = list(b["sigma"])
    e = b["edges"]
    head = [f"{b['by']} bin (fit)", *names]
    body = [[f"{e[i]:.0f} - {e[i + 1]:.0f}", *(f"{b['sigma'][n][i]:.3g}" for n in names)] for i in range(len(e) - 1)]
    return ["", _md_table(head, body)]


def _class_scale_lines(report: ValidationReport) -> list[str]:
    """The markdown sections of the class and scale tables (none where they are empty)."""
    tables = report.extra_tables()
    lines: list[str] = []
    if "classes" in tables:
        lines += ["## By stellar class", "", CLASS_NOTE, "", _md_table(*_class_rows(tables["classes"])), ""]
    if "scale" in tables:
        lines += ["## Scale offset and scatter", "", SCALE_NOTE, "", _md_table(*_scale_rows(tables["scale"])), ""]
    return lines


def report_markdown(report: ValidationReport, fig_paths: Mapping[str, Sequence[Path]] | None = None,
                    out_dir: Path | None = None) -> str:
    """The markdown summary: settings, the statistics and calibration tables, figure links."""
    s = report.settings
    lines = ["# gsn-dask validation report", ""]
    how = (f"by id (reference column `{s.get('id_column')}`)" if s.get("match") == "id"
           else f"by sky position within {s.get('radius_arcsec')} arcsec")
    flt = "flag == 0" if s.get("good_only") else f"flag & {s.get('exclude_flags')} == 0 (NOT_FITTED excluded)"
    lines += [
        f"- results: {s.get('n_results')} stars; reference: {s.get('n_reference')} rows",
        f"- matched {how}: {s.get('n_matched')} stars; selected ({flt}): {s.get('n_selected')}",
        f"- ours = posterior {s.get('estimate')}; diff = ours - reference; S/N from {s.get('snr_source')}",
        f"- labels: {', '.join(report.labels)}; reference columns: "
        + ", ".join(f"{k}=`{v}`" for k, v in (s.get("columns") or {}).items()),
        "- outlier thresholds: " + ", ".join(f"{k} {v:g}" for k, v in (s.get("thresholds") or {}).items()),
        "",
        "## Bias and scatter",
        "",
        "bias = median(diff); std; MAD std = 1.4826 x median |diff - median|; outliers = |diff| > threshold; "
        "in 68% = reference inside [p16, p84]; z rstd = robust std of diff / ((p84-p16)/2).",
        "",
        _md_table(*_stats_rows(report.stats)),
        "",
        "## Posterior calibration (all S/N)",
        "",
        "A calibrated posterior has about 68% of the reference values inside [p16, p84] and a robust "
        "std of z near 1 (z_tot also includes the reference uncertainty, where the reference has one). "
        "extra sigma: the floor that, added in quadrature to every interval (refit with "
        "`--set extra_systematics='{\"teff\": ..., ...}'`), makes these reference values fall inside "
        "the 68% intervals 68% of the time (median |z| = 0.6745); 0 where the intervals already cover them. "
        "± is the bootstrap standard error over the objects (every observation of a drawn object comes along; "
        f"{N_BOOT} draws): how much the number would move on another sample of as many objects. Two models "
        "fitted to the same stars share that sample, so compare them star by star, not by these errors.",
        *_systematics_lines(s.get("label_systematics")),
        "",
        _md_table(*_calib_rows(report.calibration)),
        "",
        *_class_scale_lines(report),
        "Tables: [stats.csv](stats.csv), [stats.ecsv](stats.ecsv), [calibration.csv](calibration.csv), "
        "[calibration.ecsv](calibration.ecsv), [matched.csv](matched.csv)"
        + "".join(f", [{n}.csv]({n}.csv)" for n in report.extra_tables()),
    ]
    if fig_paths:
        lines += ["", "## Figures", ""]
        titles = {"one_to_one": "One-to-one and residuals", "kiel": "Kiel diagram (reference | ours)",
                  "residuals_snr": "Residuals vs S/N", "calibration": "Posterior calibration (z)",
                  "alpha_plane": "[alpha/Fe] against [Fe/H] (ours; the Galactic pattern for orientation)"}
        for key, paths in fig_paths.items():
            if not paths:
                continue
            rel = [p.relative_to(out_dir) if out_dir is not None else p for p in paths]
            png = next((r for r in rel if str(r).endswith(".png")), rel[0])
            others = ", ".join(f"[{Path(r).suffix[1:].upper()}]({r})" for r in rel)
            lines += [f"### {titles.get(key, key)}", "", f"![{key}]({png})", "", others, ""]
    return "\n".join(lines) + "\n"
