"""Tests of gsn_dask.validate, gsn_dask.plots and `gsn-dask validate` on synthetic
results/reference sets with known bias, scatter and posterior widths."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from scipy.stats import norm

from gsn_dask import cube as C
from gsn_dask.flags import Flag
from gsn_dask.io.sample import sample_labels
from gsn_dask.validate import (
    MAX_BOOT_OBJECTS,
    STELLAR_CLASSES,
    ValidationReport,
    assign_snr_bins,
    bootstrap_errors,
    canonical_ids,
    detect_columns,
    id_candidates,
    match_by_sky,
    read_reference,
    robust_std,
    scale_transfer,
    snr_bin_names,
    stellar_classes,
    validate,
    write_report,
)

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
#: LASP labels of LAMOST DR1 spectra: the shared data beside the clone, else the package's sample
LAMOST_CSV = SHARED_DATA / "lamost" / "dr1_labels_lasp.csv"
if not LAMOST_CSV.exists():
    LAMOST_CSV = sample_labels()
LABELS = ["teff", "logg", "feh"]
BIAS = np.array([200.0, -0.3, 0.15])
SIGMA = np.array([80.0, 0.15, 0.08])


def make_set(n: int = 2000, *, bias=BIAS, sigma=SIGMA, post_scale: float = 1.0, seed: int = 0,
             labels=LABELS) -> tuple[xr.Dataset, xr.Dataset, np.ndarray]:
    """(results, spectra cube, true labels): ours = ref + N(bias, sigma); p16/p84 = ours -/+ post_scale*sigma.
    The cube holds the reference labels, ra/dec and snr (log-uniform 3..300)."""
    rng = np.random.default_rng(seed)
    stars = [f"star{i:05d}" for i in range(n)]
    ref = np.column_stack([rng.uniform(4000, 7000, n), rng.uniform(1.0, 5.0, n), rng.uniform(-2.0, 0.5, n),
                           rng.uniform(-0.1, 0.4, n)])[:, : len(labels)]
    bias, sigma = np.asarray(bias)[: len(labels)], np.asarray(sigma)[: len(labels)]
    ours = ref + bias + rng.normal(size=ref.shape) * sigma
    wave = C.log_lambda_grid(5000, 5005)
    spectra = C.make_spectra(
        stars, wave, np.ones((n, wave.size)), np.ones((n, wave.size)),
        ra=rng.uniform(0, 360, n), dec=np.degrees(np.arcsin(rng.uniform(-0.95, 0.95, n))),
        snr=10 ** rng.uniform(np.log10(3), np.log10(300), n),
        labels={lab: ref[:, j] for j, lab in enumerate(labels)},
    )
    res = C.empty_results(stars, labels)
    res["median"][:] = ours
    res["map"][:] = ours
    res["p16"][:] = ours - post_scale * sigma
    res["p84"][:] = ours + post_scale * sigma
    res["flag"][:] = 0
    res["status"][:] = "ok"
    return res, spectra, ref


def frame_from(spectra: xr.Dataset, labels=LABELS, names=None) -> pd.DataFrame:
    names = names or {lab: lab for lab in labels}
    d = {"star": [str(s) for s in spectra["star"].values], "ra": spectra["ra"].values, "dec": spectra["dec"].values,
         "snr": spectra["snr"].values}
    for lab in labels:
        d[names[lab]] = spectra[f"label_{lab}"].values.astype(np.float64)
    return pd.DataFrame(d)


def row(report: ValidationReport, label: str, snr_bin: str = "all") -> pd.Series:
    s = report.stats
    return s[(s["label"] == label) & (s["snr_bin"] == snr_bin)].iloc[0]


# ------------------------------------------------------------------------ statistics
def test_bias_and_scatter_recovered_from_cube_reference():
    res, spectra, _ = make_set()
    rep = validate(res, spectra, cube=spectra)
    assert rep.settings["match"] == "id" and rep.settings["n_matched"] == 2000
    assert rep.labels == LABELS
    assert list(rep.matched["ours"].dims) == ["star", "label"]
    for j, lab in enumerate(LABELS):
        r = row(rep, lab)
        assert r["n"] == 2000
        assert r["bias"] == pytest.approx(BIAS[j], rel=0.05)
        assert r["mad_std"] == pytest.approx(SIGMA[j], rel=0.05)
        assert r["std"] == pytest.approx(SIGMA[j], rel=0.05)
        thr = {"teff": 500.0, "logg": 0.5, "feh": 0.3}[lab]
        expect = norm.sf(thr, BIAS[j], SIGMA[j]) + norm.cdf(-thr, BIAS[j], SIGMA[j])
        assert r["outlier_frac"] == pytest.approx(expect, abs=0.015)
    # diff is ours - ref (sign convention)
    np.testing.assert_allclose(rep.matched["diff"], rep.matched["ours"] - rep.matched["ref"])
    assert rep.settings["snr_source"] == "cube"


def test_outliers_and_robust_scatter():
    res, spectra, _ = make_set(bias=[0, 0, 0], seed=3)
    med = res["median"].values
    bad = np.arange(0, 2000, 25)  # 4 % catastrophic teff outliers
    med[bad, 0] += 2000.0
    rep = validate(res, spectra)
    r = row(rep, "teff")
    assert r["outlier_frac"] == pytest.approx(len(bad) / 2000, abs=0.003)
    assert r["mad_std"] == pytest.approx(SIGMA[0], rel=0.08)  # robust to the outliers
    assert r["std"] > 3 * r["mad_std"]
    rep2 = validate(res, spectra, thresholds={"teff": 5000})
    assert row(rep2, "teff")["outlier_frac"] == 0.0


def test_snr_bins_and_flag_filter():
    res, spectra, _ = make_set(n=400)
    snr = np.tile([5.0, 15.0, 50.0, 150.0], 100)
    spectra["snr"][:] = snr
    flags = np.zeros(400, np.int32)
    flags[:40] = int(Flag.NOT_FITTED)
    flags[40:100] = int(Flag.POOR_FIT)
    res["flag"][:] = flags
    res["median"][:40] = np.nan
    rep = validate(res, spectra, cube=spectra)
    st = rep.stats[rep.stats["label"] == "teff"].set_index("snr_bin")
    assert list(st.index) == ["<10", "10-30", "30-100", ">100", "all"]
    assert st.loc["all", "n"] == 360
    assert st.loc[["<10", "10-30", "30-100", ">100"], "n"].sum() == 360
    assert st.loc["<10", "n"] == 90
    good = validate(res, spectra, cube=spectra, good_only=True)
    assert row(good, "teff")["n"] == 300
    assert int(good.matched["selected"].sum()) == 300
    # custom bins, and an explicit S/N array in results order
    rep3 = validate(res, spectra, snr=np.full(400, 20.0), snr_bins=[25])
    assert set(rep3.stats["snr_bin"]) == {"<25", ">25", "all"}
    assert row(rep3, "teff", "<25")["n"] == 360
    assert snr_bin_names([10, 30, 100]) == ["<10", "10-30", "30-100", ">100"]
    assert list(assign_snr_bins(np.array([1, 10, 29.9, 100, np.nan]), [10, 30, 100])) == [
        "<10", "10-30", "10-30", ">100", ""]


def test_estimate_map_and_label_subset():
    res, spectra, _ = make_set(n=300)
    res["map"][:] = res["median"].values + np.array([1000.0, 0, 0])
    rep = validate(res, spectra, estimate="map", labels=["teff"])
    assert rep.labels == ["teff"]
    assert row(rep, "teff")["bias"] == pytest.approx(1200, abs=20)
    with pytest.raises(ValueError, match="not in the results"):
        validate(res, spectra, labels=["alpha_fe"])


def test_robust_std():
    x = np.random.default_rng(1).normal(0, 2.0, 20000)
    assert robust_std(x) == pytest.approx(2.0, rel=0.03)
    assert np.isnan(robust_std(np.array([np.nan])))


# ------------------------------------------------------------------------ calibration
@pytest.mark.parametrize("scale, frac, zstd", [(1.0, 0.683, 1.0), (0.5, 0.383, 2.0)])
def test_calibration_fraction(scale, frac, zstd):
    res, spectra, _ = make_set(bias=[0, 0, 0], post_scale=scale, seed=5)
    rep = validate(res, spectra)
    for lab in LABELS:
        c = rep.calibration.set_index("label").loc[lab]
        assert c["frac_in_68"] == pytest.approx(frac, abs=0.03)
        assert c["z_robust_std"] == pytest.approx(zstd, rel=0.07)
        assert c["n_ref_err"] == 0 and np.isnan(c["z_tot_robust_std"])
        assert row(rep, lab)["frac_in_68"] == pytest.approx(c["frac_in_68"])
    # the floor that would make the intervals cover the reference: sigma * sqrt(1 - scale^2)
    extra = rep.calibration.set_index("label")["extra_sigma"].to_numpy()
    want = SIGMA * np.sqrt(max(0.0, 1 - scale**2))  # near 0 the sqrt amplifies the sampling noise
    assert np.all(np.abs(extra - want) < (0.35 if scale == 1.0 else 0.1) * SIGMA), extra


def test_bootstrap_errors_match_the_binomial_and_count_objects_not_rows():
    rng = np.random.default_rng(3)
    n, sigma = 400, 2.0
    diff = rng.normal(0.0, sigma, n)
    ref = np.zeros(n)
    p16, p84 = ref + diff - sigma, ref + diff + sigma  # a calibrated interval: covers 68%
    one = bootstrap_errors(diff, ref, p16, p84, np.arange(n))
    inside = np.mean(np.abs(diff) <= sigma)
    assert one["n_objects"] == n
    assert one["frac_in_68_se"] == pytest.approx(np.sqrt(inside * (1 - inside) / n), rel=0.2)
    assert one["mad_std_se"] == pytest.approx(1.17 * sigma / np.sqrt(n), rel=0.3)  # MAD: 37% efficient
    assert one["bias_se"] == pytest.approx(1.25 * sigma / np.sqrt(n), rel=0.3)  # median: sqrt(pi/2)
    # every object observed twice with the same errors: the same information, so the same errors
    # when the observations are grouped by object, sqrt(2) too small when each row counts as an object
    twice = [np.r_[a, a] for a in (diff, ref, p16, p84)]
    grouped = bootstrap_errors(*twice, np.r_[np.arange(n), np.arange(n)])
    rows = bootstrap_errors(*twice, np.arange(2 * n))
    assert grouped["n_objects"] == n and rows["n_objects"] == 2 * n
    for k in ("frac_in_68_se", "mad_std_se"):
        assert grouped[k] == pytest.approx(one[k], rel=0.2)
        assert grouped[k] / rows[k] == pytest.approx(np.sqrt(2), rel=0.2)
    assert bootstrap_errors(*twice, np.r_[np.arange(n), np.arange(n)]) == grouped  # fixed seed: the same table
    # many objects: a subset of MAX_BOOT_OBJECTS, its errors scaled to all of them
    big = 3 * MAX_BOOT_OBJECTS
    db = rng.normal(0.0, sigma, big)
    many = bootstrap_errors(db, np.zeros(big), db - sigma, db + sigma, np.arange(big))
    assert many["n_objects"] == big
    assert many["frac_in_68_se"] == pytest.approx(np.sqrt(0.683 * 0.317 / big), rel=0.2)
    assert many["mad_std_se"] == pytest.approx(1.17 * sigma / np.sqrt(big), rel=0.3)
    few = bootstrap_errors(diff[:8], ref[:8], p16[:8], p84[:8], np.arange(8) % 4)
    assert few["n_objects"] == 4 and np.isnan(few["frac_in_68_se"])


def test_bootstrap_errors_use_the_rows_of_the_statistic_they_belong_to():
    rng = np.random.default_rng(4)
    n, sigma = 400, 2.0
    diff = rng.normal(0.0, sigma, n)
    ref = np.zeros(n)
    p16, p84 = diff - sigma, diff + sigma
    base = bootstrap_errors(diff, ref, p16, p84, np.arange(n))
    # no interval (p16 NaN) or a zero-width one (z not finite): out of the coverage sample, as in the
    # calibration table's frac_in_68, but still in the bias and MAD sample, as in its mad_std
    lo, hi, z = p16.copy(), p84.copy(), diff / sigma
    lo[:100] = np.nan
    lo[100:200] = hi[100:200] = diff[100:200]
    z[100:200] = np.inf
    cut = bootstrap_errors(diff, ref, lo, hi, np.arange(n), z=z)
    assert cut["n_objects"] == n
    assert (cut["bias_se"], cut["mad_std_se"]) == (base["bias_se"], base["mad_std_se"])  # the same draws
    inside = np.mean(np.abs(diff[200:]) <= sigma)
    assert cut["frac_in_68_se"] == pytest.approx(np.sqrt(inside * (1 - inside) / 200), rel=0.25)
    assert cut["frac_in_68_se"] > 1.2 * base["frac_in_68_se"]  # 200 rows, not 400


def test_calibration_table_carries_bootstrap_errors_by_object():
    res, spectra, _ = make_set(n=300, bias=[0, 0, 0], seed=5)
    rep = validate(res, spectra)
    c = rep.calibration.set_index("label")
    assert (c["n_objects"] == 300).all()
    assert np.allclose(c["frac_in_68_se"], np.sqrt(0.683 * 0.317 / 300), rtol=0.3)
    assert np.allclose(c["mad_std"].to_numpy(), [row(rep, lab)["mad_std"] for lab in LABELS])
    assert "±" in rep.table()
    stars = [str(s) for s in res["star"].values]
    pairs = validate(res, spectra, groups=[s[:-1] for s in stars])  # star00010..star00019 -> one object
    assert (pairs.calibration["n_objects"] == 30).all()  # independent stars: about the same errors
    assert np.allclose(pairs.calibration["frac_in_68_se"], c["frac_in_68_se"], rtol=0.5)
    with pytest.raises(ValueError, match="groups: 3 values for 300 results stars"):
        validate(res, spectra, groups=stars[:3])


def test_calibration_with_reference_errors():
    rng = np.random.default_rng(7)
    n = 3000
    res, spectra, ref_true = make_set(n=n, bias=[0, 0, 0], seed=7)
    s_ref = SIGMA * 0.75  # reference has its own noise, reported in *_err columns
    df = frame_from(spectra)
    df[LABELS] = ref_true + rng.normal(size=ref_true.shape) * s_ref
    for j, lab in enumerate(LABELS):
        df[f"{lab}_err"] = s_ref[j]
    rep = validate(res, df)
    assert rep.settings["columns"]["teff_err"] == "teff_err"
    expect = np.sqrt(1 + 0.75**2)  # diff has sigma sqrt(s_post^2 + s_ref^2)
    for lab in LABELS:
        c = rep.calibration.set_index("label").loc[lab]
        assert c["z_robust_std"] == pytest.approx(expect, rel=0.07)
        assert c["z_tot_robust_std"] == pytest.approx(1.0, rel=0.07)
        assert c["frac_in_68_tot"] == pytest.approx(0.683, abs=0.03)
        assert c["frac_in_68"] < 0.6
    off = validate(res, df, use_ref_errors=False)
    assert off.calibration["n_ref_err"].eq(0).all()


# ------------------------------------------------------------------------ matching
def test_sky_crossmatch_idless_table():
    n = 600
    res, spectra, _ = make_set(n=n, seed=11)
    df = frame_from(spectra).drop(columns=["star"])
    shift = np.where(np.arange(n) < n // 2, 1.0, 10.0)  # arcsec: first half within 3", second half beyond
    df["dec"] = df["dec"] + shift / 3600.0
    df = df.rename(columns={"ra": "RAJ2000", "dec": "DEJ2000"}).sample(frac=1.0, random_state=1)  # shuffled rows
    with pytest.raises(ValueError, match="cube"):
        validate(res, df)  # no ids, and results carry no ra/dec
    rep = validate(res, df, cube=spectra)
    assert rep.settings["match"] == "sky"
    matched = set(map(str, rep.matched["star"].values))
    assert matched == {f"star{i:05d}" for i in range(n // 2)}
    np.testing.assert_allclose(rep.matched["sep_arcsec"], 1.0, atol=1e-3)
    assert row(rep, "teff")["bias"] == pytest.approx(BIAS[0], rel=0.1)
    wide = validate(res, df, cube=spectra, match="sky", radius_arcsec=15)
    assert wide.settings["n_matched"] == n
    # nearest neighbour with NaN positions
    idx, sep = match_by_sky(np.array([10.0, np.nan]), np.array([20.0, 0.0]), np.array([10.0, 11.0]),
                            np.array([20.0 + 2 / 3600, 20.0]), 3.0)
    assert idx.tolist() == [0, -1] and sep[0] == pytest.approx(2.0, abs=1e-3)


def test_id_match_with_numeric_ids_and_duplicates():
    res, spectra, _ = make_set(n=50)
    res = res.assign_coords(star=np.array([str(600000 + i) for i in range(50)], dtype=object))
    df = frame_from(spectra).drop(columns=["star", "ra", "dec"])
    df.insert(0, "obsid", np.arange(600000, 600050).astype(np.int64))
    df = pd.concat([df, df.iloc[:5].assign(teff=1.0)], ignore_index=True)  # duplicate ids: first row wins
    rep = validate(res, df, id_column="obsid", match="id")
    assert rep.settings["n_matched"] == 50 and rep.settings["id_column"] == "obsid"
    assert float(rep.matched["ref"].sel(label="teff").min()) > 3000
    auto = validate(res, df)  # obsid detected automatically
    assert auto.settings["id_column"] == "obsid"
    assert canonical_ids(pd.Series([1.0, np.nan, 5813498451230011392])).tolist()[:2] == ["1", ""]
    assert canonical_ids(pd.Series([5813498451230011392], dtype=np.int64)).tolist() == ["5813498451230011392"]
    assert canonical_ids(np.array(["spec-1.fits.gz", " spec-2.fits ", "x"])).tolist() == ["spec-1", "spec-2", "x"]
    with pytest.raises(ValueError, match="no result star matched"):
        validate(res, df.assign(obsid=df["obsid"] + 10**6), id_column="obsid", match="id")


def test_reference_results_cube_compares_two_runs():
    res, spectra, _ = make_set(n=200)
    other = res.copy(deep=True)
    other["median"][:] = res["median"].values - np.array([10.0, 0.01, 0.02])
    rep = validate(res, other)
    assert row(rep, "teff")["bias"] == pytest.approx(10.0)
    assert row(rep, "feh")["mad_std"] == pytest.approx(0.0, abs=1e-5)
    assert rep.calibration["n_ref_err"].eq(200).all()


# ------------------------------------------------------------------------ columns / reading
def test_column_autodetection():
    apogee = ["APOGEE_ID", "RA", "DEC", "SNR", "TEFF", "TEFF_ERR", "LOGG", "LOGG_ERR", "M_H", "M_H_ERR", "FE_H",
              "FE_H_ERR", "ALPHA_M", "ALPHA_M_ERR"]
    c = detect_columns(apogee, ["teff", "logg", "feh", "alpha_fe"])
    assert c == {"teff": "TEFF", "logg": "LOGG", "feh": "FE_H", "alpha_fe": "ALPHA_M", "teff_err": "TEFF_ERR",
                 "logg_err": "LOGG_ERR", "feh_err": "FE_H_ERR", "alpha_fe_err": "ALPHA_M_ERR", "ra": "RA",
                 "dec": "DEC", "snr": "SNR"}
    assert id_candidates(apogee) == ["APOGEE_ID"]
    pastel = ["Name", "RAJ2000", "DEJ2000", "Teff", "e_Teff", "logg", "[Fe/H]", "[alpha/Fe]"]
    c = detect_columns(pastel, ["teff", "logg", "feh", "alpha_fe"])
    assert c == {"teff": "Teff", "logg": "logg", "feh": "[Fe/H]", "alpha_fe": "[alpha/Fe]",
                 "teff_err": "e_Teff", "ra": "RAJ2000", "dec": "DEJ2000"}
    only_mh = detect_columns(["TEFF", "M_H"], ["teff", "feh"])
    assert only_mh["feh"] == "M_H"
    explicit = detect_columns(apogee, ["teff", "feh"], mapping={"feh": "M_H", "snr": "SNR"}, id_column="APOGEE_ID")
    assert explicit["feh"] == "M_H" and explicit["feh_err"] == "M_H_ERR" and explicit["id"] == "APOGEE_ID"
    with pytest.raises(ValueError, match="NOPE"):
        detect_columns(apogee, ["teff"], mapping={"teff": "NOPE"})


def test_explicit_columns_and_no_label_error():
    res, spectra, _ = make_set(n=100)
    df = frame_from(spectra, names={"teff": "T", "logg": "G", "feh": "Z"})
    with pytest.raises(ValueError, match="no reference column"):
        validate(res, df)
    rep = validate(res, df, columns="teff=T,logg=G,feh=Z")
    assert rep.labels == LABELS and row(rep, "logg")["bias"] == pytest.approx(BIAS[1], abs=0.05)
    # a label column without any value is skipped when labels are automatic
    df2 = frame_from(spectra).assign(feh=-9999.0)
    assert validate(res, df2).labels == ["teff", "logg"]


def _table_for_files(n=300):
    from astropy.table import Table

    res, spectra, _ = make_set(n=n, seed=2)
    df = frame_from(spectra, names={"teff": "TEFF", "logg": "LOGG", "feh": "FE_H"}).rename(columns={"star": "ID"})
    df["TEFF_ERR"] = 50.0
    df.loc[:9, "TEFF"] = -9999.0  # sentinel: unknown
    return res, spectra, df, Table.from_pandas(df)


@pytest.mark.parametrize("fmt", ["csv", "ecsv", "fits", "parquet"])
def test_read_reference_formats(tmp_path, fmt):
    res, _, df, table = _table_for_files()
    path = tmp_path / f"ref.{fmt}"
    if fmt == "csv":
        df.to_csv(path)  # with the unnamed pandas index, like the LAMOST csv
    elif fmt == "parquet":
        df.to_parquet(path)
    elif fmt == "fits":
        table["SPEC"] = np.zeros((len(table), 4))  # a multi-dimensional column (dropped)
        table.write(path, format="fits")
    else:
        table.write(path, format="ascii.ecsv")
    ref = read_reference(path)
    assert isinstance(ref, pd.DataFrame) and len(ref) == 300
    rep = validate(res, ref, id_column="ID")
    assert rep.settings["n_matched"] == 300
    r = row(rep, "teff")
    assert r["n"] == 290  # -9999 treated as unknown
    assert r["bias"] == pytest.approx(BIAS[0], rel=0.1)
    assert rep.calibration.set_index("label").loc["teff", "n_ref_err"] == 290


def test_read_reference_cube(tmp_path):
    res, spectra, _ = make_set(n=100)
    C.write_spectra(spectra, tmp_path / "ref.zarr")
    ref = read_reference(tmp_path / "ref.zarr")
    assert isinstance(ref, xr.Dataset)
    rep = validate(res, ref)
    assert rep.settings["match"] == "id" and rep.settings["n_matched"] == 100
    with pytest.raises(FileNotFoundError):
        read_reference(tmp_path / "missing.csv")


# ------------------------------------------------------------------------ report / figures / CLI
def _check_png(p: Path, min_bytes: int = 20_000) -> None:
    data = p.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", p
    assert len(data) > min_bytes, (p, len(data))


# ------------------------------------------------------------------------ classes and scales
def test_stellar_classes_split_the_kiel_diagram():
    teff = np.array([9000.0, 6000.0, 4500.0, 4500.0, 6999.0, 3500.0, np.nan])
    logg = np.array([4.0, 4.3, 4.6, 2.5, 3.79, 5.0, 4.0])
    cls = stellar_classes(teff, logg)
    assert list(cls) == [c[0] for c in STELLAR_CLASSES]
    got = [next((name for name, m in cls.items() if m[i]), None) for i in range(teff.size)]
    hot, fg, km, giants = list(cls)
    assert got == [hot, fg, km, giants, giants, km, None]
    assert np.sum([m for m in cls.values()], axis=0).max() == 1  # no star in two classes


def test_class_table_finds_an_offset_confined_to_one_class():
    """K/M dwarfs 200 K hot, every other class unbiased: the class table shows it, the overall bias hides it."""
    res, spectra, ref = make_set(n=3000, bias=[0.0, 0.0, 0.0])
    km = stellar_classes(ref[:, 0], ref[:, 1])["K/M dwarfs (< 5300 K, log g >= 3.8)"]
    for q in ("median", "p16", "p84"):  # the fit's whole posterior 200 K hot
        res[q][:, 0] = res[q].values[:, 0] + 200.0 * km
    rep = validate(res, spectra, cube=spectra)
    c = rep.classes[(rep.classes["snr_set"] == "all") & (rep.classes["label"] == "teff")].set_index("stellar_class")
    assert c.loc["K/M dwarfs (< 5300 K, log g >= 3.8)", "bias"] == pytest.approx(200.0, abs=15.0)
    assert c.loc["K/M dwarfs (< 5300 K, log g >= 3.8)", "n"] == km.sum()
    assert c.loc["F/G dwarfs (5300-7000 K, log g >= 3.8)", "bias"] == pytest.approx(0.0, abs=15.0)
    assert c.loc["K/M dwarfs (< 5300 K, log g >= 3.8)", "frac_in_68"] < 0.2  # 200 K off with 80 K intervals
    hi = rep.classes[rep.classes["snr_set"] == "S/N >= 30"]
    assert 0 < hi["n"].max() < c["n"].max()


def test_scale_transfer_separates_a_linear_scale_from_the_scatter():
    rng = np.random.default_rng(3)
    ref = rng.uniform(4000, 7000, 4000)
    ours = (ref - 300.0) / 1.1 + rng.normal(0, 50.0, ref.size)  # another scale, 50 K scatter
    st = scale_transfer(ours, ref)
    assert st["slope"] == pytest.approx(1.1, abs=0.01) and st["intercept"] == pytest.approx(300.0, abs=40.0)
    assert st["mad_std_cv"] == pytest.approx(55.0, rel=0.06)  # 1.1 x 50 K, in the reference's units
    assert abs(st["bias_cv"]) < 5.0
    assert robust_std(ours - ref) > 1.7 * st["mad_std_cv"]  # most of the raw scatter is the scale
    assert np.isnan(scale_transfer(ours[:5], ref[:5])["slope"])  # too few stars: NaN, no error


def test_write_report_files(tmp_path):
    res, spectra, _ = make_set(n=500)
    rep = validate(res, spectra, cube=spectra)
    paths = write_report(rep, tmp_path / "rep")
    names = {p.name for p in paths}
    for stem in ("one_to_one", "kiel", "residuals_snr", "calibration"):
        assert f"{stem}.png" in names and f"{stem}.pdf" in names
        _check_png(tmp_path / "rep" / f"{stem}.png")
        assert (tmp_path / "rep" / f"{stem}.pdf").read_bytes()[:4] == b"%PDF"
    for name in ("stats.csv", "stats.ecsv", "calibration.csv", "calibration.ecsv", "classes.csv", "scale.csv",
                 "matched.csv", "report.md"):
        assert name in names
    stats = pd.read_csv(tmp_path / "rep" / "stats.csv")
    assert len(stats) == 15 and stats["n"].iloc[-1] == 500
    from astropy.table import Table

    t = Table.read(tmp_path / "rep" / "stats.ecsv", format="ascii.ecsv")
    assert t.meta["diff"] == "ours - reference"
    np.testing.assert_allclose(np.asarray(t["bias"], float), stats["bias"].to_numpy(), rtol=1e-9)
    md = (tmp_path / "rep" / "report.md").read_text()
    assert "![one_to_one](one_to_one.png)" in md and "| teff [K] | all | 500 |" in md
    assert "## By stellar class" in md and "## Scale offset and scatter" in md
    scale = pd.read_csv(tmp_path / "rep" / "scale.csv")
    assert set(scale["snr_set"]) == {"all", "S/N >= 30"} and scale["slope"].notna().all()
    matched = pd.read_csv(tmp_path / "rep" / "matched.csv")
    assert len(matched) == 500 and "diff_teff" in matched.columns


def test_alpha_plane_when_the_reference_has_no_alpha(tmp_path):
    """A four-label fit against a three-label reference (LASP, MILES): [alpha/Fe] is not compared
    but kept per matched star and drawn against the reference [Fe/H]."""
    four = LABELS + ["alpha_fe"]
    res, spectra, ref = make_set(n=300, labels=four, bias=list(BIAS) + [0.05], sigma=list(SIGMA) + [0.05])
    spectra = spectra.drop_vars("label_alpha_fe")
    rep = validate(res, spectra, cube=spectra)
    assert rep.labels == LABELS
    sel = np.asarray(rep.matched["ref_row"].values)
    np.testing.assert_allclose(rep.matched["alpha_fe"].values, res["median"].values[sel, 3])
    paths = write_report(rep, tmp_path / "rep", formats=("png",))
    assert "alpha_plane.png" in {p.name for p in paths}
    _check_png(tmp_path / "rep" / "alpha_plane.png")
    assert "![alpha_plane](alpha_plane.png)" in (tmp_path / "rep" / "report.md").read_text()
    matched = pd.read_csv(tmp_path / "rep" / "matched.csv")
    np.testing.assert_allclose(matched["ours_alpha_fe"], res["median"].values[sel, 3], rtol=1e-6)
    # three labels fitted: no alpha figure
    res3, spectra3, _ = make_set(n=50)
    names3 = {p.name for p in write_report(validate(res3, spectra3), tmp_path / "rep3", formats=("png",))}
    assert "alpha_plane.png" not in names3


def test_figures_without_snr_or_kiel_labels(tmp_path):
    res, spectra, _ = make_set(n=50, labels=["feh"])
    spectra["snr"][:] = np.nan
    rep = validate(res, spectra)
    paths = write_report(rep, tmp_path, formats=("png",))
    names = {p.name for p in paths}
    assert "one_to_one.png" in names and "kiel.png" not in names and "residuals_snr.png" not in names


def test_cli_end_to_end(tmp_path, capsys):
    from gsn_dask.cli import main

    res, spectra, _ = make_set(n=500)
    res["flag"][:10] = int(Flag.NOT_FITTED)
    C.write_spectra(spectra, tmp_path / "cube.zarr")
    res.to_zarr(tmp_path / "res.zarr", zarr_format=3, consolidated=False)
    df = frame_from(spectra, names={"teff": "TEFF", "logg": "logg_spec", "feh": "FE_H"}).drop(columns=["star", "snr"])
    df.to_csv(tmp_path / "ref.csv", index=False)
    rc = main(["validate", str(tmp_path / "res.zarr"), "--reference", str(tmp_path / "ref.csv"),
               "--cube", str(tmp_path / "cube.zarr"), "--out", str(tmp_path / "out"), "--match", "sky",
               "--columns", "logg=logg_spec", "--snr-bins", "20", "50", "--formats", "png"])
    out = capsys.readouterr().out
    assert rc == 0
    assert "matched 500 of 500" in out and "490 selected" in out and "S/N from cube" in out
    assert "20-50" in out and "teff [K]" in out
    stats = pd.read_csv(tmp_path / "out" / "stats.csv")
    s = stats[(stats["label"] == "logg") & (stats["snr_bin"] == "all")].iloc[0]
    assert s["n"] == 490 and s["bias"] == pytest.approx(BIAS[1], rel=0.1)
    _check_png(tmp_path / "out" / "one_to_one.png")
    assert not (tmp_path / "out" / "one_to_one.pdf").exists()
    # the fitted cube as its own reference, good stars only, no figures
    rc = main(["validate", str(tmp_path / "res.zarr"), "--cube", str(tmp_path / "cube.zarr"),
               "--out", str(tmp_path / "out2"), "--good-only", "--no-figures", "--thresholds", "teff=100"])
    assert rc == 0 and (tmp_path / "out2" / "report.md").exists()
    assert not (tmp_path / "out2" / "kiel.png").exists()
    s2 = pd.read_csv(tmp_path / "out2" / "stats.csv").iloc[4]
    assert s2["snr_bin"] == "all" and s2["outlier_frac"] > 0.5  # bias 200 K > 100 K
    # a clear error, not a traceback
    rc = main(["validate", str(tmp_path / "res.zarr")])
    assert rc == 1 and "--reference" in capsys.readouterr().err


def test_cli_help(capsys):
    from gsn_dask.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["validate", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for opt in ("--reference", "--cube", "--match", "--id-column", "--radius-arcsec", "--columns", "--snr-bins",
                "--good-only", "examples:"):
        assert opt in text


# ------------------------------------------------------------------------ real LAMOST label table
def test_lamost_dr1_label_table():
    ref = read_reference(LAMOST_CSV)
    cols = detect_columns(list(ref.columns), ["teff", "logg", "feh"])
    assert {k: cols[k] for k in ("teff", "logg", "feh", "ra", "dec", "snr")} == {
        "teff": "teff", "logg": "logg", "feh": "feh", "ra": "ra", "dec": "dec", "snr": "snrg"}
    assert cols["teff_err"] == "teff_err" and cols["feh_err"] == "feh_err"
    assert "obsid" in id_candidates(list(ref.columns))
    # synthetic results for (up to) 300 of its stars, ids = obsid: auto id match, S/N from snrg (-9999 -> NaN)
    sub = ref.iloc[:300]
    n = len(sub)
    rng = np.random.default_rng(0)
    truth = sub[["teff", "logg", "feh"]].to_numpy(float)
    ours = truth + np.array([100.0, 0.1, -0.05]) + rng.normal(size=truth.shape) * SIGMA
    res = C.empty_results([str(x) for x in sub["obsid"]], LABELS)
    res["median"][:] = ours
    res["p16"][:] = ours - SIGMA
    res["p84"][:] = ours + SIGMA
    res["flag"][:] = 0
    rep = validate(res, ref)
    assert rep.settings["match"] == "id" and rep.settings["id_column"] == "obsid"
    assert rep.settings["n_matched"] == n and rep.settings["snr_source"] == "reference column 'snrg'"
    assert np.nanmin(rep.matched["snr"].values) >= 0
    assert row(rep, "teff")["bias"] == pytest.approx(100, abs=15)
    assert rep.calibration.set_index("label").loc["teff", "n_ref_err"] == n
    # and by sky position from a cube carrying the catalogue's ra/dec
    wave = C.log_lambda_grid(5000, 5005)
    spectra = C.make_spectra([f"s{i}" for i in range(n)], wave, np.ones((n, wave.size)),
                             np.ones((n, wave.size)), ra=sub["ra"], dec=sub["dec"])
    res_sky = res.assign_coords(star=np.array([f"s{i}" for i in range(n)], dtype=object))
    rep_sky = validate(res_sky, ref, cube=spectra)
    assert rep_sky.settings["match"] == "sky" and rep_sky.settings["n_matched"] == n
    assert row(rep_sky, "teff")["bias"] == pytest.approx(100, abs=15)


def test_report_states_label_systematics():
    import json

    from gsn_dask.validate.report import _systematics_lines

    assert "statistical only" in _systematics_lines("null")[0]
    assert "statistical only" in _systematics_lines(None)[0]
    rec = {"sigma": {"teff": 120.0, "logg": 0.3},
           "binned": {"by": "teff", "edges": [3000.0, 5000.0, 9000.0],
                      "sigma": {"teff": [150.0, 90.0], "logg": [0.4, 0.2]}}}
    lines = _systematics_lines(json.dumps(rec))
    assert "teff 120" in lines[0] and "logg 0.3" in lines[0]
    table = lines[-1]
    assert "| 3000 - 5000 | 150 | 0.4 |" in table and "| 5000 - 9000 | 90 | 0.2 |" in table


def test_public_validate_is_callable_whichever_import_came_first():
    """``gd.validate(...)`` works although importing the package binds ``gsn_dask.validate`` to it."""
    import sys

    import gsn_dask as gd

    res, cube, _ = make_set(200)
    for fn in (gd.validate, sys.modules["gsn_dask.validate"]):
        rep = fn(res, cube, cube=cube)
        assert isinstance(rep, ValidationReport) and rep.settings["n_matched"] == 200
