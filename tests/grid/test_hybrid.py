"""The hybrid training cube (gsn_dask.grid.hybrid, ``gsn-dask grid hybrid``): an observed library
and synthetic spectra on their common pixels; fixtures written here."""
from __future__ import annotations

import numpy as np
import pytest

from gsn_dask.cli import main
from gsn_dask.cube import log_lambda_grid, make_spectra, open_spectra, synthetic_rows, write_spectra
from gsn_dask.grid.hybrid import hybrid_cube
from gsn_dask.labels import galactic_alpha


def _cube(n: int, wmin: float, wmax: float, *, synthetic: bool, alpha: bool, seed: int):
    w = log_lambda_grid(wmin, wmax)
    rng = np.random.default_rng(seed)
    labels = {"teff": rng.uniform(4000, 7000, n), "logg": rng.uniform(1, 5, n), "feh": rng.uniform(-2, 0.4, n)}
    if alpha:
        labels["alpha_fe"] = rng.uniform(-0.2, 0.6, n)
    kind = "syn" if synthetic else "obs"
    src = [f"turbospectrum:{i:04x}" if synthetic else f"MILES:m{i:04d}" for i in range(n)]
    return make_spectra([f"{kind}{i}" for i in range(n)], w, 1 - 0.1 * rng.random((n, w.size)),
                        np.full((n, w.size), 1e4), labels=labels, source=src, normalised=True, flux_unit="normalised",
                        attrs={"source": "synthetic" if synthetic else "MILES"})


def test_hybrid_joins_on_common_pixels_with_alpha_for_the_observed_stars():
    obs = _cube(5, 4000, 4600, synthetic=False, alpha=False, seed=1)
    syn = _cube(4, 4100, 4800, synthetic=True, alpha=True, seed=2)
    hyb = hybrid_cube(obs, syn)
    w = hyb["wavelength"].values
    assert w[0] == pytest.approx(syn["wavelength"].values[0]) and w[-1] == pytest.approx(obs["wavelength"].values[-1])
    assert hyb.sizes["star"] == 9 and synthetic_rows(hyb["source"].values).tolist() == [False] * 5 + [True] * 4
    np.testing.assert_allclose(hyb["label_alpha_fe"].values[:5], galactic_alpha(obs["label_feh"].values), rtol=1e-6)
    np.testing.assert_allclose(hyb["label_alpha_fe"].values[5:], syn["label_alpha_fe"].values, rtol=1e-6)
    j = int(np.searchsorted(obs["wavelength"].values, w[0] - 1e-6))
    np.testing.assert_array_equal(hyb["flux"].values[0], obs["flux"].values[0, j:j + w.size])
    assert hyb.attrs["source"] == "MILES+synthetic"


def test_galactic_alpha_pattern():
    np.testing.assert_allclose(galactic_alpha([-2.5, -1.0, -0.5, 0.0, 0.3]), [0.3, 0.3, 0.15, 0.0, 0.0])


@pytest.mark.parametrize("what, match", [
    ("grid", "one wavelength grid"),
    ("observed synthetic", "observed cube holds synthetic"),
    ("no alpha", "no alpha_fe"),
    ("synthetic observed", "not a synthetic grid"),
])
def test_bad_pairs_are_refused(what, match):
    obs = _cube(3, 4000, 4600, synthetic=False, alpha=False, seed=1)
    syn = _cube(3, 4100, 4800, synthetic=True, alpha=True, seed=2)
    if what == "grid":
        syn = syn.assign_coords(wavelength=syn["wavelength"].values * 1.0001)
    elif what == "observed synthetic":
        obs = _cube(3, 4000, 4600, synthetic=True, alpha=False, seed=1)
    elif what == "no alpha":
        syn = syn.drop_vars("label_alpha_fe")
    else:
        syn = _cube(3, 4100, 4800, synthetic=False, alpha=True, seed=2)
    with pytest.raises(ValueError, match=match):
        hybrid_cube(obs, syn)


def test_cli_writes_the_hybrid_cube(tmp_path, capsys):
    write_spectra(_cube(6, 4000, 4600, synthetic=False, alpha=False, seed=3), tmp_path / "obs.zarr")
    write_spectra(_cube(4, 4100, 4800, synthetic=True, alpha=True, seed=4), tmp_path / "syn.zarr")
    args = ["grid", "hybrid", str(tmp_path / "obs.zarr"), str(tmp_path / "syn.zarr"), "--out", str(tmp_path / "h.zarr")]
    assert main(args) == 0
    assert "6 observed + 4 synthetic" in capsys.readouterr().err
    ds = open_spectra(tmp_path / "h.zarr")
    assert ds.sizes["star"] == 10 and "label_alpha_fe" in ds
    assert main(args) == 1 and "exists" in capsys.readouterr().err  # no silent overwrite
    assert main([*args, "--overwrite"]) == 0
