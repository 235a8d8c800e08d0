"""Real LAMOST DR1 spectra (shared/data, skipped if absent) through fit_block: raw flux, real ivar and
masks, normalised with the model's recipe. With the toy model the labels mean nothing, but every
row must come back with a status and finite numbers; with the MILES model (/work/cache/miles_model,
if present) the labels are compared with LASP."""
from pathlib import Path

import numpy as np
import pytest

from gsn_dask.cube import log_lambda_grid, make_spectra, validate_results
from gsn_dask.fit.block import fit_block
from gsn_dask.fit.config import FitConfig

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
DR1 = SHARED / "lamost" / "dr1"
MILES = Path("/work/cache/miles_model")


def _raw_cube(n=6):
    lamost = pytest.importorskip("gsn_dask.io.lamost")
    files = sorted(DR1.glob("*.fits"))[:n]
    grid = log_lambda_grid()
    spec = [lamost.read_lrs(f, grid) for f in files]
    return make_spectra(
        [s.star for s in spec], grid, np.stack([s.flux for s in spec]), np.stack([s.ivar for s in spec]),
        snr=np.array([s.snr_g for s in spec]), rv_catalog=np.array([s.rv_catalog for s in spec]),
        source=[s.source for s in spec], normalised=False,
    ), files


@pytest.mark.skipif(not DR1.is_dir(), reason="shared/data not available")
def test_real_spectra_with_toy_model(model):
    pytest.importorskip("gsn_dask.grid.prepare")
    ds, _ = _raw_cube()
    cfg = FitConfig(n_burn=20, n_steps=40, max_steps=40, n_coarse=256)
    res = fit_block(ds, model, config=cfg, run_seed=0)
    validate_results(res)
    st = [str(s) for s in res["status"].values]
    assert len(st) == ds.sizes["star"]
    ok = np.array([s == "ok" for s in st])
    assert ok.sum() >= 4, st
    assert np.all(np.isfinite(res["chi2_reduced"].values[ok]))
    assert np.all(np.abs(res["rv"].values[ok]) <= 600)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    med = res["median"].values[ok]
    assert np.all((med >= lo) & (med <= hi))


@pytest.mark.slow
@pytest.mark.skipif(not (DR1.is_dir() and (MILES / "model.json").exists()), reason="needs shared/data and the MILES model")
def test_real_spectra_with_miles_model():
    import pandas as pd

    from gsn_dask.emulator import load_model

    model = load_model(MILES)
    ds, files = _raw_cube(12)
    res = fit_block(ds, model, config=FitConfig(), run_seed=0)
    lab = pd.read_csv(SHARED / "lamost" / "dr1_labels_lasp.csv")
    lab = lab.set_index("filename")
    ok = [str(s) == "ok" for s in res["status"].values]
    assert sum(ok) >= 10
    rows = [(i, f.name) for i, f in enumerate(files) if ok[i] and f.name in lab.index]
    if "teff" in model.label_names and rows:
        j = model.label_names.index("teff")
        d = np.array([res["median"].values[i, j] - lab.loc[name, "teff"] for i, name in rows])
        assert np.median(np.abs(d)) < 600, d
    rvs = np.array([res["rv"].values[i] for i, _ in rows])
    cat = np.array([lab.loc[name, "rv"] for _, name in rows])
    assert np.median(np.abs(rvs - cat)) < 30, (rvs, cat)
