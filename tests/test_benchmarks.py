"""Every benchmark script imports and answers --help (a rename in the package must not break them
silently: they are run by hand, not by the tests)."""
from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(p for p in BENCH.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("script", SCRIPTS, ids=[p.stem for p in SCRIPTS])
def test_benchmark_script_imports_and_has_help(script, monkeypatch, capsys):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{script.stem}", script)
    mod = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(mod)
    except ImportError as exc:  # an optional extra (pyspark, torch) not installed here
        pytest.skip(f"{script.name}: {exc}")
    assert callable(getattr(mod, "main", None)), f"{script.name} has no main()"
    monkeypatch.setattr(sys, "argv", [script.name, "--help"])
    with pytest.raises(SystemExit) as exit_:
        mod.main(["--help"]) if mod.main.__code__.co_argcount else mod.main()
    assert exit_.value.code == 0
    assert "usage" in capsys.readouterr().out


def _module(name: str, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    spec = importlib.util.spec_from_file_location(f"bench_{name}", BENCH / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_systematics_target_variants_and_seeds_of_another_process(monkeypatch, tmp_path):
    """``--variant`` reads one rule or one per label; ``--with-results`` joins only files of the
    same variants."""
    pytest.importorskip("torch")
    st = _module("systematics_target", monkeypatch)
    assert st.parse_variant("c=target=coverage,split=logg:3.8") == ("c", {"target": "coverage", "split": ("logg", 3.8)})
    assert st.parse_variant("tl=target=teff:coverage+logg:coverage") == (
        "tl", {"target": {"teff": "coverage", "logg": "coverage"}})
    variants = dict([st.parse_variant("m=target=median"), st.parse_variant("c=target=coverage,split=logg:3.8")])
    saved = tmp_path / "other.json"
    saved.write_text(json.dumps({"variants": variants, "per_seed": {"3": {"m": {}, "c": {}}}}, default=list))
    assert st.earlier_seeds([saved], variants) == {3: {"m": {}, "c": {}}}
    with pytest.raises(SystemExit, match="differ"):
        st.earlier_seeds([saved], {"m": {"target": "median"}})


def test_systematics_target_widen_variant_is_the_package_rule(monkeypatch, tmp_path):
    """``widen=1`` is the package's ``split_rule="widen"`` (it once baked the same maximum into the
    class bins: files of that time, saying ``"widen": true``, still join a run of today's variants)."""
    pytest.importorskip("torch")
    st = _module("systematics_target", monkeypatch)
    assert st.parse_variant("w=target=median,split=logg:3.8,widen=1")[1] == {
        "target": "median", "split": ("logg", 3.8), "split_rule": "widen"}
    assert st.parse_variant("o=target=median,split=logg:3.8,widen=0")[1]["split_rule"] == "own"
    with pytest.raises(SystemExit, match="needs a split"):
        st.parse_variant("w=target=median,widen=1")
    variants = dict([st.parse_variant("m=target=median"), st.parse_variant("w=target=median,split=logg:3.8,widen=1")])
    old = tmp_path / "old.json"
    old.write_text(json.dumps({"variants": {"m": {"target": "median"},
                                            "w": {"target": "median", "split": ["logg", 3.8], "widen": True}},
                               "per_seed": {"1": {"m": {}, "w": {}}}}))
    assert st.earlier_seeds([old], variants) == {1: {"m": {}, "w": {}}}


def test_kiel_bandwidth_variants(monkeypatch):
    """``--variant``: kernel widths and floor, the package's values where not named; unknown keys refused."""
    pytest.importorskip("torch")
    kb = _module("kiel_bandwidth", monkeypatch)
    from gsn_dask.label_prior import BANDWIDTH

    assert kb.parse_variant("w=logg:0.25") == ("w", {"bandwidth": (BANDWIDTH[0], 0.25)})
    assert kb.parse_variant("f=floor:0.2,teff:0.02") == ("f", {"bandwidth": (0.02, BANDWIDTH[1]), "floor": 0.2})
    with pytest.raises(SystemExit, match="unknown key"):
        kb.parse_variant("x=sigma:1")


def test_label_ensemble_mixture_and_widening(monkeypatch):
    """The label-space mixture: mean of the members' medians, half-width from the law of total
    variance; the widened interval keeps the median and grows each side in quadrature."""
    np = pytest.importorskip("numpy")
    mod = _module("label_ensemble", monkeypatch)
    meds = np.array([[1.0, 10.0], [3.0, 10.0]])  # two members, two stars
    los, his = meds - 1.0, meds + 1.0  # half-width 1 each
    med, lo, hi = mod.mixture(meds, los, his)
    assert np.allclose(med, [2.0, 10.0])
    assert np.allclose(hi - med, [np.sqrt(1.0 + 1.0), 1.0]) and np.allclose(med - lo, hi - med)
    m, lo_w, hi_w = mod.widened(np.array([0.0]), np.array([-3.0]), np.array([1.0]), np.array([[2.0], [-2.0]]))
    assert m[0] == 0.0 and np.isclose(lo_w[0], -np.hypot(3.0, 2.0)) and np.isclose(hi_w[0], np.hypot(1.0, 2.0))


def test_label_scale_line_and_map(tmp_path, monkeypatch):
    """The cross-validation's Theil-Sen line is recovered from out-of-fold fits that follow it, and the
    map (x - a) / b undoes it for the named labels only, medians and interval ends alike."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("scipy")
    mod = _module("label_scale", monkeypatch)
    rng = np.random.default_rng(1)
    labels = np.stack([rng.uniform(4000, 6000, 300), rng.uniform(1, 5, 300), rng.uniform(-2, 0.5, 300)], axis=1)
    fit = labels.copy()
    fit[:, 2] = -0.01 + 0.95 * labels[:, 2] + rng.normal(0, 0.01, 300)
    np.savez(tmp_path / "cv.npz", fit=fit, labels=labels, fit_idx=np.arange(300))
    lines = mod.cv_lines(tmp_path / "cv.npz")
    assert lines["feh"] == pytest.approx((-0.01, 0.95), abs=0.01)
    assert lines["teff"] == pytest.approx((0.0, 1.0), abs=1e-6)
    med, lo, hi = mod.mapped(fit, fit - 0.1, fit + 0.1, lines, ["feh"])
    assert np.allclose(med[:, 2], labels[:, 2], atol=0.04) and np.array_equal(med[:, :2], fit[:, :2])
    assert np.allclose(hi[:, 2] - lo[:, 2], 0.2 / lines["feh"][1])  # the interval stretched with the scale


def test_prior_carry_regression_and_shift(tmp_path, monkeypatch):
    """The [Fe/H] residual's regression on the Teff and log g residuals is recovered (outliers clipped),
    and the prior's shift of Teff and log g moves [Fe/H] by it, interval ends alike."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("scipy")
    mod = _module("prior_carry", monkeypatch)
    rng = np.random.default_rng(2)
    n = 2000
    labels = np.stack([rng.uniform(4000, 6000, n), rng.uniform(1, 5, n), rng.uniform(-2, 0.5, n)], axis=1)
    dt, dg = rng.normal(0, 100, n), rng.normal(0, 0.2, n)
    fit = labels + np.stack([dt, dg, 0.001 * dt + 0.3 * dg + rng.normal(0, 0.02, n)], axis=1)
    fit[:20, 2] += 5.0  # gross outliers: clipped
    np.savez(tmp_path / "cv.npz", fit=fit, labels=labels, fit_idx=np.arange(n))
    b = mod.carry_coefficients(tmp_path / "cv.npz")
    assert b == pytest.approx((0.001, 0.3), rel=0.05)
    f = {"median": np.array([[5000.0, 2.5, -0.5]]), "median_none": np.array([[4900.0, 2.0, -0.5]])}
    f["p16"], f["p84"] = f["median"] - 0.1, f["median"] + 0.1
    med, lo, hi = mod.carried(f, b)
    shift = b[0] * 100.0 + b[1] * 0.5
    assert med[0, 2] == pytest.approx(-0.5 + shift) and hi[0, 2] - lo[0, 2] == pytest.approx(0.2)
    assert np.array_equal(med[:, :2], f["median"][:, :2])


def test_filing_recipe_scores_a_demo_folder_and_compares_seed_means(tmp_path, monkeypatch):
    """``filing_recipe.py`` reads a demo folder's hold-out with xarray alone (median and [p16, p84]
    against the observations' labels) and compares seed means label by label."""
    import shutil

    import numpy as np
    import xarray as xr

    fr = _module("filing_recipe", monkeypatch)
    stars = np.array([f"s{i}" for i in range(8)], dtype=object)
    ref = np.c_[np.linspace(4000, 6000, 8), np.linspace(1, 5, 8), np.linspace(-1, 0.3, 8)]
    med = ref + np.array([[100.0, 0.2, 0.1]]) * np.array([1, -1, 1, -1, 2, -2, 0, 0])[:, None]
    da = lambda a: xr.DataArray(a, dims=("star", "label"), coords={"star": stars, "label": np.array(fr.LABELS, dtype=object)})  # noqa: E731
    out = tmp_path / "seed0"
    xr.Dataset({"median": da(med), "p16": da(med - [150.0, 0.25, 0.15]), "p84": da(med + [150.0, 0.25, 0.15])}
               ).to_zarr(out / "miles_holdout_results.zarr")
    xr.Dataset({f"label_{lab}": ("star", ref[:, j]) for j, lab in enumerate(fr.LABELS)},
               coords={"star": stars}).to_zarr(out / "miles_holdout_obs.zarr")
    st = fr.holdout_stats(out)
    assert st["teff"]["in68"] == 6 / 8 and st["logg"]["bias"] == 0.0
    np.testing.assert_allclose(st["feh"]["mad_std"], 1.4826 * 0.1)
    other = {lab: {**st[lab], "mad_std": st[lab]["mad_std"] / 2, "in68": 0.5} for lab in fr.LABELS}
    c = fr.compare({0: st, 1: st}, {0: other, 1: other})
    assert c["teff"]["mad_std"] == {"filing": st["teff"]["mad_std"], "today": st["teff"]["mad_std"] / 2,
                                    "diff": -st["teff"]["mad_std"] / 2, "se": 0.0, "today_worse": False}
    assert c["logg"]["in68"]["today_worse"] and c["feh"]["in68"]["diff"] == -0.25
    obs = xr.open_zarr(out / "miles_holdout_obs.zarr").isel(star=slice(None, None, -1)).load()
    shutil.rmtree(out / "miles_holdout_obs.zarr")
    obs.to_zarr(out / "miles_holdout_obs.zarr")
    with pytest.raises(ValueError, match="different stars"):
        fr.holdout_stats(out)
