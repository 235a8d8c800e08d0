"""The batched sampler (gsn_dask.fit.batched and gsn_dask.fit.torch): random numbers, emulator
and log-prob agreement with the numpy posterior, quadratic form, autocorrelation, MAP, agreement
with emcee, injection-recovery coverage, determinism independent of the batch, bad stars,
fit_block."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from gsn_dask.cube import log_lambda_grid
from gsn_dask.fit import batched as B
from gsn_dask.fit.config import ConfigError, FitConfig
from gsn_dask.fit.torch import rng as R
from gsn_dask.fit.torch.chains import autocorr_time
from gsn_dask.fit.torch.emulator import TorchEmulator
from gsn_dask.fit.torch.posterior import BatchedPosterior, SpectraStack
from gsn_dask.fit.torch.quadratic import QuadraticChi2
from gsn_dask.fit.torch.start import batched_map
from gsn_dask.fit.posterior import SpectrumPosterior
from gsn_dask.fit.testing import noisy_spectrum, toy_model
from gsn_dask.flags import Flag


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread, as the fits run (config.blas_threads); OpenMP spinning on a busy machine
    makes small ops very slow otherwise."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def small():
    """A small analytic GSN (3 x 32 SiLU, 4500-5600 A, 949 px): fast enough for hundreds of fits."""
    return toy_model(("teff", "logg", "feh"), hidden=(32, 32, 32), wavelength=log_lambda_grid(4500.0, 5600.0),
                     n_train=800, seed=0)


@pytest.fixture(scope="module")
def cfg():
    return FitConfig(min_good_pixels=100, n_coarse=256, max_steps=600)


def _spectra(model, n, *, seed, snr=30.0, rv=None, continuum=None, box=(0.15, 0.85)):
    rng = np.random.default_rng(seed)
    lo, hi = model.bounds[:, 0], model.bounds[:, 1]
    truth = lo + (box[0] + (box[1] - box[0]) * rng.random((n, lo.size))) * (hi - lo)
    rvs = rng.uniform(-200, 200, n) if rv is None else np.broadcast_to(rv, (n,)).astype(float)
    snrs = np.broadcast_to(snr, (n,))
    F, I = zip(*[noisy_spectrum(model, truth[i], snr=float(snrs[i]), rv=float(rvs[i]), rng=rng, continuum=continuum)
                 for i in range(n)])
    return np.array(F), np.array(I), truth, rvs


def _sigma(r):
    return 0.5 * (np.r_[r.p84, r.rv + r.rv_err] - np.r_[r.p16, r.rv - r.rv_err])


# ---------------------------------------------------------------- random numbers
def test_philox_known_answers_and_uniforms():
    for mul in (R._mulhilo32_limbs, R._mulhilo32_wrap):
        ctr = torch.tensor([k[0] for k in R.PHILOX_KAT])
        key = torch.tensor([k[1] for k in R.PHILOX_KAT])
        out = R._philox(ctr, key, 10, mul)
        assert out.tolist() == [list(k[2]) for k in R.PHILOX_KAT]
    keys = R.seed_keys([2**62 + 12345, 7])
    u = R.uniforms(keys, torch.tensor([0, 0]), 40000, R.STREAM_MCMC)
    assert u.shape == (2, 40000) and float(u.min()) > 0 and float(u.max()) < 1
    assert abs(float(u.mean()) - 0.5) < 0.005 and abs(float(u.var()) - 1 / 12) < 0.002
    assert abs(float(np.corrcoef(u[0].numpy(), u[1].numpy())[0, 1])) < 0.02
    # a star's numbers depend only on (seed, step, stream), not on the other rows
    alone = R.uniforms(R.seed_keys([7]), torch.tensor([0]), 40000, R.STREAM_MCMC)
    assert torch.equal(alone[0], u[1])
    assert not torch.equal(R.uniforms(keys, 1, 100, R.STREAM_MCMC), u[:, :100])
    assert not torch.equal(R.uniforms(keys, 0, 100, R.STREAM_INIT), u[:, :100])
    z = R.normals(u[:, :20000]).numpy().ravel()
    assert abs(z.mean()) < 0.02 and abs(z.std() - 1) < 0.02


# ---------------------------------------------------------------- posterior
def test_torch_emulator_matches_numpy(small):
    from gsn_dask.emulator import GSN

    lab = small.bounds[:, 0] + np.random.default_rng(0).random((7, 3)) * np.ptp(small.bounds, axis=1)
    emu = TorchEmulator(small, "cpu")
    np.testing.assert_allclose(emu.predict(torch.as_tensor(lab)).numpy(), small.predict(lab), atol=2e-6)
    # log10 label transform (teff), as GSN.scale
    g = GSN(hidden_layers=small.hidden_layers, W_out=small.W_out, b_out=small.b_out, activation="silu",
            label_names=small.label_names, bounds=small.bounds, wavelength=small.wavelength,
            label_transforms=["log10", "identity", "identity"])
    e2 = TorchEmulator(g, "cpu")
    np.testing.assert_allclose(e2.scale(torch.as_tensor(lab)).numpy(), g.scale(lab), atol=1e-7)
    np.testing.assert_allclose(e2.predict(torch.as_tensor(lab)).numpy(), g.predict(lab), atol=2e-6)


def test_log_prob_matches_spectrum_posterior(small, cfg):
    F, I, truth, rvs = _spectra(small, 4, seed=1, snr=60.0, continuum=[1.0, 0.1, -0.05])
    I[1, 100:160] = 0.0  # masked pixels
    F[2, 300] = np.nan
    priors = [None, {"feh": (-0.5, 0.2)}, None, {"teff": (5000.0, 300.0), "logg": (3.0, 0.5)}]
    posts = [SpectrumPosterior(small, F[i], I[i], cfg.replace(priors={"logg": (2.5, 1.0)}), priors=priors[i])
             for i in range(4)]
    rng = np.random.default_rng(2)
    lo, hi = posts[0].lower, posts[0].upper
    th = lo + (-0.05 + 1.1 * rng.random((4, 9, 4))) * (hi - lo)  # some rows out of bounds
    th[:, 0, :3], th[:, 0, 3] = truth, rvs  # the truth
    th[0, 1, 3] = 599.99  # rv near the bound
    th[1, 2, 0] = np.nan
    ref = np.stack([p.log_prob(th[i]) for i, p in enumerate(posts)])
    emu = TorchEmulator(small, "cpu")
    for tile in (64, 5):
        bp = BatchedPosterior(emu, posts)
        bp.row_tile = tile
        lp = bp.log_prob(torch.as_tensor(th)).numpy()
        fin = np.isfinite(ref)
        assert 5 < fin.sum() < ref.size and np.array_equal(np.isfinite(lp), fin)
        np.testing.assert_allclose(lp[fin], ref[fin], rtol=1e-6, atol=2e-3)  # float32 sums of ~3000 px
    # residuals: sum r^2 = chi2 - 2 log prior
    r = bp.residuals(torch.as_tensor(th[:, :1])).numpy()
    np.testing.assert_allclose(-0.5 * (r**2).sum(-1)[:, 0], ref[:, 0], rtol=1e-6)


def test_stack_matches_spectrum_posterior(small, cfg):
    """SpectraStack (vectorised setup) holds exactly SpectrumPosterior's arrays."""
    F, I, _, _ = _spectra(small, 4, seed=13, snr=20.0)
    I[0, :200] = 0.0
    F[1, 10:30] = np.nan
    I[2, 700:] = np.inf * 0  # NaN ivar
    priors = [None, {"feh": (0.0, 0.3)}, None, None]
    c = cfg.replace(priors={"logg": (3.0, 1.0)})
    st = SpectraStack(small, F, I, c, priors)
    with pytest.raises(ValueError, match="nope"):  # fit_block only passes the model's labels
        SpectraStack(small, F, I, c, priors[:3] + [{"nope": (1.0, 1.0)}])
    for i in range(4):
        p = SpectrumPosterior(small, F[i], I[i], c, priors=priors[i])
        np.testing.assert_array_equal(st.w[i], p.w)
        np.testing.assert_array_equal(st.f[i], p.f)
        assert st.n_good[i] == p.n_good and st.dof[i] == p.dof
        assert st.wff[i] == pytest.approx(p._wff, rel=1e-13) and st.snr_median[i] == pytest.approx(p.snr_median)
        bp1 = BatchedPosterior(TorchEmulator(small), st, idx=[i])
        bp2 = BatchedPosterior(TorchEmulator(small), [p])
        for k in ("prior_mu", "prior_isig", "w", "f"):
            assert torch.equal(getattr(bp1, k), getattr(bp2, k)), k


def test_quadratic_form_equals_direct(small, cfg):
    F, I, truth, _ = _spectra(small, 2, seed=3, rv=30.0, continuum=[1.0, -0.1, 0.05])
    posts = [SpectrumPosterior(small, F[i], I[i], cfg) for i in range(2)]
    emu = TorchEmulator(small, "cpu", dtype=torch.float64)
    bp = BatchedPosterior(emu, posts)
    rng = np.random.default_rng(4)
    lo, hi = small.bounds[:, 0], small.bounds[:, 1]
    th = np.concatenate([lo + (0.2 + 0.6 * rng.random((2, 12, 3))) * (hi - lo), rng.uniform(-60, 130, (2, 12, 1))], -1)
    q = QuadraticChi2(bp, -1, 1)  # integer shifts -1..1 pixels: rv in about -69..+138 km/s
    cq, cd = q.chi2(torch.as_tensor(th)).numpy(), bp.chi2(torch.as_tensor(th)).numpy()
    np.testing.assert_allclose(cq, cd, rtol=1e-9)
    th[0, 0, 3] = 400.0  # outside the precomputed shifts -> NaN
    assert np.isnan(q.chi2(torch.as_tensor(th)).numpy()[0, 0])


def test_autocorr_time_matches_emcee_estimator():
    from gsn_dask.fit.diagnostics import autocorr_time as ref

    rng = np.random.default_rng(5)
    T, W, D = 300, 8, 3
    x = np.zeros((2, T, W, D))
    for t in range(1, T):  # AR(1) with rho 0.6, 0.9, 0.97
        x[:, t] = np.array([0.6, 0.9, 0.97]) * x[:, t - 1] + rng.normal(size=(2, W, D))
    x[1, :, :, 2] = 1.0  # a parameter that never moves -> inf
    got = autocorr_time(torch.as_tensor(x)).numpy()
    for s in range(2):
        np.testing.assert_allclose(got[s], ref(x[s]), rtol=1e-10)
    assert np.isinf(got[1, 2])


def test_one_move_table_for_both_paths(small, cfg):
    """emcee's moves (make_moves) and the batched pool run the mixture of rules.MOVE_MIXTURES."""
    from gsn_dask.fit.rules import MOVE_MIXTURES, MOVE_PARAMS
    from gsn_dask.fit.sampler import make_moves
    from gsn_dask.fit.torch.pool import Pool

    names = {"StretchMove": "stretch", "DEMove": "de", "DESnookerMove": "snooker", "LaplaceMove": "laplace"}
    F, I, _, _ = _spectra(small, 1, seed=2)
    for kind, mixture in MOVE_MIXTURES.items():
        moves = make_moves(kind, np.zeros(4), np.eye(4))
        assert [(names[type(m).__name__], w) for m, w in moves] == list(mixture)
        for m, _ in moves:
            if names[type(m).__name__] == "laplace":
                assert (m.df, m.scale) == (MOVE_PARAMS.laplace_df, MOVE_PARAMS.laplace_scale)
        pool = Pool(TorchEmulator(small), SpectraStack(small, F, I, cfg), cfg.replace(moves=kind), 1, False)
        w = np.array([wt for _, wt in mixture])
        np.testing.assert_array_equal(pool.cdf.numpy(), np.cumsum(w) / w.sum())
        assert [k for k, _ in pool.moves] == [k for k, _ in mixture]


def test_batched_map_matches_find_map(small, cfg):
    from gsn_dask.fit.start import find_map

    F, I, truth, rvs = _spectra(small, 3, seed=6, snr=40.0)
    posts = [SpectrumPosterior(small, F[i], I[i], cfg) for i in range(3)]
    bp = BatchedPosterior(TorchEmulator(small, "cpu"), posts)
    m = batched_map(bp, n_coarse=cfg.n_coarse, n_starts=cfg.n_starts, rv_bounds=cfg.rv_bounds_kms)
    for i, p in enumerate(posts):
        ref = find_map(p, n_coarse=cfg.n_coarse, n_starts=cfg.n_starts)
        assert float(m.log_prob[i]) > ref.log_prob - 0.05, (float(m.log_prob[i]), ref.log_prob)
        sd = np.sqrt(np.diag(ref.cov))
        assert np.all(np.abs(m.theta[i].numpy() - ref.theta) < 0.2 * sd)
        np.testing.assert_allclose(np.sqrt(np.diag(m.cov[i].numpy())), sd, rtol=0.1)
        assert abs(float(m.theta[i, 3]) - rvs[i]) < 5 * sd[3]


# ---------------------------------------------------------------- sampling
def test_agrees_with_emcee_path(small, cfg):
    """Medians and 16/84 percentiles of the batched sampler (its default moves and the stretch
    move) agree with fit_spectrum's within Monte-Carlo error."""
    from gsn_dask.fit.sampler import fit_spectrum

    c = cfg.replace(n_steps=400, max_steps=1500)
    F, I, truth, rvs = _spectra(small, 3, seed=7, snr=25.0, continuum=[1.0, 0.05, 0.0])
    ref = [fit_spectrum(small, F[i], I[i], config=c, seed=100 + i) for i in range(3)]
    for moves in ("laplace-de", "stretch"):
        cc = c.replace(moves=moves, n_steps=400 if moves != "stretch" else 1500)
        res = B.fit_spectra_batched(small, F, I, config=cc, seeds=[100, 101, 102])
        for r, e in zip(res, ref):
            assert r.status == "ok" and r.n_eff_min > 150, (moves, r.n_eff_min)
            s = _sigma(e)
            for key in ("median", "p16", "p84"):
                a = np.asarray(getattr(r, key))
                b = np.asarray(getattr(e, key))
                assert np.all(np.abs(a - b) < 0.3 * s[:3]), (moves, key, a, b, s)
            assert abs(r.rv - e.rv) < 0.3 * s[3]
            np.testing.assert_allclose(_sigma(r), s, rtol=0.25)
            assert abs(r.chi2_reduced - e.chi2_reduced) < 0.01
            conv_bit = int(Flag.NOT_CONVERGED) if moves == "stretch" else 0  # stretch: tau ~ 40, 50 tau > max_steps
            assert r.flag & ~conv_bit == e.flag & ~conv_bit
        if moves == "laplace-de":
            assert abs(np.mean([r.acceptance for r in res]) - np.mean([e.acceptance for e in ref])) < 0.15


@pytest.mark.slow
def test_injection_recovery_coverage(small, cfg):
    """200 spectra with labels and rv drawn from the prior, S/N 10/30/100: the 16-84% interval
    covers the truth in 68% +- 7% of the cases (pooled over labels and rv; +-10% each)."""
    rng = np.random.default_rng(11)
    n = 200
    lo, hi = small.bounds[:, 0], small.bounds[:, 1]
    truth = lo + rng.random((n, 3)) * (hi - lo)
    rv = rng.uniform(-500, 500, n)
    snr = np.array([10.0, 30.0, 100.0])[np.arange(n) % 3]
    F, I = zip(*[noisy_spectrum(small, truth[i], snr=snr[i], rv=rv[i], rng=rng) for i in range(n)])
    res = B.fit_spectra_batched(small, np.array(F), np.array(I), config=cfg, seeds=list(range(n)))
    assert all(r.status == "ok" for r in res)
    p16 = np.array([np.r_[r.p16, r.rv - r.rv_err] for r in res])
    p84 = np.array([np.r_[r.p84, r.rv + r.rv_err] for r in res])
    tr = np.column_stack([truth, rv])
    hits = (p16 <= tr) & (tr <= p84)
    assert abs(hits.mean() - 0.68) < 0.07, hits.mean(0)
    assert np.all(np.abs(hits.mean(0) - 0.68) < 0.1), hits.mean(0)
    assert np.mean([not (r.flag & Flag.NOT_CONVERGED) for r in res]) > 0.9


def test_results_do_not_depend_on_the_batch(small, cfg):
    """A star's chain is driven by its own random stream: alone, in a pool of 2 or 5, or with other
    neighbours, it is the same chain (up to the last-bit rounding of BLAS/reduction kernels whose
    code path depends on the batch shape, ~1e-13 relative)."""
    c = cfg.replace(n_draws=5, max_steps=300)
    F, I, _, _ = _spectra(small, 5, seed=8)
    seeds = [11, 22, 33, 44, 55]
    full = B.fit_spectra_batched(small, F, I, config=c.replace(batch_size=5), seeds=seeds, return_chain=True)
    pool2 = B.fit_spectra_batched(small, F, I, config=c.replace(batch_size=2), seeds=seeds, return_chain=True)
    order = [3, 0, 4]
    other = B.fit_spectra_batched(small, F[order], I[order], config=c, seeds=[seeds[i] for i in order],
                                  return_chain=True)
    alone = B.fit_spectra_batched(small, F[3:4], I[3:4], config=c, seeds=[seeds[3]], return_chain=True)
    pairs = [(full[i], pool2[i]) for i in range(5)] + [(full[3], alone[0]), (full[3], other[0]), (full[0], other[1]),
                                                      (full[4], other[2])]
    for a, b in pairs:
        assert a.n_steps == b.n_steps and a.flag == b.flag
        np.testing.assert_allclose(a.chain, b.chain, rtol=1e-7, atol=1e-9)
        for k in ("median", "p16", "p84", "map", "samples", "rv", "tau_max", "acceptance"):
            np.testing.assert_allclose(np.asarray(getattr(a, k)), np.asarray(getattr(b, k)), rtol=1e-7, atol=1e-9)
    assert full[3].samples.shape == (5, 3)
    # another seed: another chain, the same posterior
    d = B.fit_spectra_batched(small, F[3:4], I[3:4], config=c, seeds=[99])[0]
    assert np.max(np.abs(d.median - alone[0].median) / _sigma(d)[:3]) > 1e-4
    assert np.all(np.abs(d.median - alone[0].median) < 0.5 * _sigma(d)[:3])


def test_bad_stars_and_errors_are_rows_not_exceptions(small, cfg, monkeypatch):
    F, I, _, _ = _spectra(small, 3, seed=9)
    I[1, 50:] = 0.0  # 50 usable pixels < 100
    res = B.fit_spectra_batched(small, F, I, config=cfg.replace(max_steps=200), seeds=range(3))
    assert [r.status for r in res][::2] == ["ok", "ok"] and res[1].status.startswith("few good pixels: ")
    assert res[1].flag == Flag.NOT_FITTED | Flag.FEW_PIXELS
    # a failure inside the sampler hits only the star that causes it (the batch is split)
    real = B.run_pool

    def flaky(emu, stack, rows, seeds, *a, **k):
        if 13 in seeds:
            raise RuntimeError("boom")
        return real(emu, stack, rows, seeds, *a, **k)

    monkeypatch.setattr(B, "run_pool", flaky)
    F2, I2, _, _ = _spectra(small, 3, seed=10)
    res = B.fit_spectra_batched(small, F2, I2, config=cfg.replace(max_steps=200), seeds=[12, 13, 14])
    assert [r.status for r in res] == ["ok", "error: RuntimeError: boom", "ok"]
    assert res[1].flag == Flag.NOT_FITTED and np.isnan(res[1].median).all()
    with pytest.raises(ConfigError, match="n_walkers"):
        B.fit_spectra_batched(small, F2, I2, config=cfg.replace(n_walkers=6), seeds=[1, 2, 3])


def test_fit_block_batched_sampler(small, cfg):
    """fit_block(..., sampler="batched"): same rows and schema as the emcee path."""
    from gsn_dask.cube import make_spectra, validate_results
    from gsn_dask.fit.block import fit_block

    c = cfg.replace(max_steps=300, n_draws=3)
    F, I, truth, _ = _spectra(small, 4, seed=12, snr=40.0)
    pad = 6
    lw = np.log10(small.wavelength)
    step = np.median(np.diff(lw))
    wave = 10.0 ** (lw[0] + np.arange(-pad, small.wavelength.size + pad) * step)
    flux = np.ones((4, wave.size), np.float32)
    ivar = np.full((4, wave.size), 1600.0, np.float32)
    flux[:, pad:-pad], ivar[:, pad:-pad] = F, I
    flux[2] = np.nan
    ds = make_spectra([f"b{i}" for i in range(4)], wave, flux, ivar, snr=np.full(4, 40.0), normalised=True)
    ds["prior_feh_mu"] = ("star", np.array([np.nan, np.nan, np.nan, -0.5], np.float32))
    ds["prior_feh_sigma"] = ("star", np.array([np.nan, np.nan, np.nan, 0.01], np.float32))
    res = fit_block(ds, small, config=c, run_seed=3, sampler="batched")
    validate_results(res)
    assert list(res["star"].values) == list(ds["star"].values) and res.attrs["sampler"] == "batched"
    st = [str(s) for s in res["status"].values]
    assert st[0] == st[1] == st[3] == "ok" and "no finite flux" in st[2]
    ref = fit_block(ds, small, config=c, run_seed=3, sampler="emcee")
    sig = 0.5 * (ref["p84"].values - ref["p16"].values)
    ok = [0, 1, 3]
    assert np.all(np.abs(res["median"].values[ok] - ref["median"].values[ok]) < 0.4 * sig[ok])
    assert abs(float(res["median"].values[3, 2]) + 0.5) < 0.03  # the per-star prior was used
    assert np.isfinite(res["samples"].values[0]).all()
    # per-star seeds: the same star in another block gives the same numbers
    res2 = fit_block(ds.isel(star=[3, 0]), small, config=c, run_seed=3, sampler="batched")
    np.testing.assert_array_equal(res2["median"].values[1], res["median"].values[0])


def test_auto_batch_size(small, cfg):
    emu = TorchEmulator(small, "cpu")
    n = B.auto_batch_size(emu, cfg, "cpu")
    assert 1 <= n <= 128
    assert B.bytes_per_star(4000, 256, cfg, 5) > B.bytes_per_star(1000, 256, cfg, 5)
    assert B.auto_batch_size(emu, cfg, "cpu", cpu_cap=3) == 3
