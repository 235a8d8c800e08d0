"""numpy GSN: scaling, I/O (no pickle), grid/label checks, damaged files. No torch needed."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from gsn_dask.cube import log_lambda_grid
from gsn_dask.emulator import (
    ACTIVATIONS,
    GSN,
    MODEL_SCHEMA,
    ModelFileError,
    ModelMismatchError,
    fix_label,
    load_model,
    wavelength_sha256,
)

LABELS = ["teff", "logg", "feh"]
BOUNDS = [[3500.0, 8000.0], [0.0, 5.0], [-2.5, 0.5]]


def random_model(wave=None, hidden=16, activation="silu", seed=0, transforms=("log10", "identity", "identity")) -> GSN:
    rng = np.random.default_rng(seed)
    wave = log_lambda_grid(4000, 4600) if wave is None else wave
    sizes = [3, hidden, hidden, hidden]
    layers = [(rng.normal(size=(a, b)) / np.sqrt(a), rng.normal(size=b) * 0.1) for a, b in zip(sizes[:-1], sizes[1:])]
    return GSN(
        hidden_layers=layers,
        W_out=rng.normal(size=(hidden, wave.size)) * 0.05,
        b_out=np.ones(wave.size),
        activation=activation,
        label_names=LABELS,
        bounds=BOUNDS,
        wavelength=wave,
        emulator_error=np.full(wave.size, 0.003),
        label_transforms=list(transforms),
        normalisation={"method": "test"},
    )


def some_labels(n=50, seed=1):
    rng = np.random.default_rng(seed)
    b = np.asarray(BOUNDS)
    return b[:, 0] + rng.uniform(size=(n, 3)) * (b[:, 1] - b[:, 0])


def test_scale_round_trip_and_range():
    m = random_model()
    lab = some_labels()
    x = m.scale(lab)
    assert x.dtype == np.float32 and x.shape == (50, 3)
    assert x.min() >= -0.5 - 1e-6 and x.max() <= 0.5 + 1e-6
    np.testing.assert_allclose(m.scale(np.asarray(BOUNDS).T), [[-0.5] * 3, [0.5] * 3], atol=1e-7)
    back = m.unscale(x)
    np.testing.assert_allclose(back, lab, rtol=1e-6, atol=1e-6)
    # log10 teff: the geometric mean of the bounds maps to 0
    assert abs(m.scale([[np.sqrt(3500 * 8000), 2.5, -1.0]])[0, 0]) < 1e-6


def test_predict_is_hidden_times_wout():
    m = random_model()
    lab = some_labels(7)
    h = m.hidden(lab)
    assert h.shape == (7, 16) and h.dtype == np.float32
    p = m.predict(lab)
    assert p.shape == (7, m.n_pix) and p.dtype == np.float32
    # float32 BLAS may round the last bit differently with the batch's shape (seen on AMD EPYC)
    np.testing.assert_allclose(p, h @ m.W_out + m.b_out, rtol=1e-6, atol=1e-6)
    # a single label vector works too
    np.testing.assert_allclose(m.predict(lab[0]), p[:1], rtol=1e-6, atol=1e-6)
    assert m.flops_per_spectrum() == 2 * (3 * 16 + 16 * 16 * 2 + 16 * m.n_pix)


@pytest.mark.parametrize("name", sorted(ACTIVATIONS))
def test_activations_match_reference(name):
    x = np.linspace(-30, 30, 2001, dtype=np.float32)
    ref = {
        "silu": x / (1 + np.exp(-x.astype(np.float64))),
        "tanh": np.tanh(x.astype(np.float64)),
        "leaky_relu": np.where(x >= 0, x, 0.01 * x),
        "relu": np.maximum(x, 0),
        "softplus": np.log1p(np.exp(x.astype(np.float64))),
        "sigmoid": 1 / (1 + np.exp(-x.astype(np.float64))),
    }[name]
    np.testing.assert_allclose(ACTIVATIONS[name](x), ref, rtol=2e-6, atol=1e-6)


def test_save_load_bitwise(tmp_path):
    m = random_model()
    lab = some_labels()
    before = m.predict(lab)
    m.meta["training"] = {"n_star": 5}
    m.save(tmp_path / "model")
    files = sorted(p.name for p in (tmp_path / "model").iterdir())
    assert files == ["model.json", "weights.safetensors"]
    m2 = load_model(tmp_path / "model")
    np.testing.assert_array_equal(m2.predict(lab), before)
    assert m2.model_id == m.model_id and len(m.model_id) == 12
    assert m2.sha256 == m.sha256 and len(m2.sha256) == 64
    assert m2.label_names == LABELS and m2.label_units == ["K", "dex", "dex"]
    np.testing.assert_array_equal(m2.bounds, np.asarray(BOUNDS))
    np.testing.assert_array_equal(m2.wavelength, m.wavelength)
    np.testing.assert_array_equal(m2.emulator_error, m.emulator_error)
    assert m2.normalisation == {"method": "test"}
    meta = json.loads((tmp_path / "model" / "model.json").read_text())
    assert meta["schema"] == MODEL_SCHEMA
    assert meta["wavelength"]["sha256"] == wavelength_sha256(m.wavelength)
    assert meta["wavelength"]["n"] == m.n_pix
    assert meta["label_scaling"]["transforms"] == ["log10", "identity", "identity"]
    assert meta["architecture"]["hidden"] == [16, 16, 16]
    assert meta["training"] == {"n_star": 5}
    # saving again gives the same tensors (the safetensors header's key order is not
    # deterministic across processes, so compare contents, not file bytes)
    from safetensors.numpy import load as st_load

    m2.save(tmp_path / "again")
    a = st_load((tmp_path / "model" / "weights.safetensors").read_bytes())
    b = st_load((tmp_path / "again" / "weights.safetensors").read_bytes())
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype
        np.testing.assert_array_equal(a[k], b[k])


def test_load_never_unpickles(tmp_path, monkeypatch):
    m = random_model()
    m.save(tmp_path)
    import pickle

    def boom(*a, **k):
        raise AssertionError("pickle used")

    monkeypatch.setattr(pickle, "load", boom)
    monkeypatch.setattr(pickle, "loads", boom)
    monkeypatch.setattr(pickle, "Unpickler", boom)
    m2 = GSN.load(tmp_path)
    np.testing.assert_array_equal(m2.predict(some_labels(3)), m.predict(some_labels(3)))


def test_import_without_torch():
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "import gsn_dask.emulator as e\n"
        "assert 'torch' not in [k for k, v in sys.modules.items() if v is not None]\n"
        "print('ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_check_labels():
    m = random_model()
    m.check_labels(["teff", "logg", "feh"])
    with pytest.raises(ModelMismatchError, match="alpha_fe"):
        m.check_labels(["teff", "logg", "feh", "alpha_fe"])
    with pytest.raises(ModelMismatchError):
        m.check_labels(["logg", "teff", "feh"])


def test_load_checks_labels(tmp_path):
    random_model().save(tmp_path)
    load_model(tmp_path, labels=LABELS)
    with pytest.raises(ModelMismatchError, match="trained on labels"):
        load_model(tmp_path, labels=["teff", "logg"])


def test_pixel_slice():
    cube = log_lambda_grid()  # 3700-9100, LAMOST
    m = random_model(wave=log_lambda_grid(4000, 4600))
    sl = m.pixel_slice(cube)
    np.testing.assert_allclose(cube[sl], m.wavelength, rtol=1e-12)
    assert sl.stop - sl.start == m.n_pix
    # identical grid
    assert m.pixel_slice(m.wavelength) == slice(0, m.n_pix)


def test_pixel_slice_refuses_mismatch():
    m = random_model(wave=log_lambda_grid(4000, 4600))
    # half-pixel shift
    shifted = 10 ** (np.log10(log_lambda_grid()) + 0.5e-4)
    with pytest.raises(ModelMismatchError, match="misaligned"):
        m.pixel_slice(shifted)
    # different step
    with pytest.raises(ModelMismatchError, match="steps differ"):
        m.pixel_slice(log_lambda_grid(log10_step=2e-4))
    # cube too short
    with pytest.raises(ModelMismatchError, match="beyond"):
        m.pixel_slice(log_lambda_grid(4100, 9000))
    # linear grid
    with pytest.raises(ModelMismatchError, match="not log-linear"):
        m.pixel_slice(np.linspace(3700, 9100, 4000))
    # the message names both grids
    try:
        m.pixel_slice(log_lambda_grid(log10_step=2e-4))
    except ModelMismatchError as exc:
        assert "4000.369" in str(exc) and "3699.985" in str(exc) and "0.0002" in str(exc)


def test_damaged_weights(tmp_path):
    m = random_model()
    m.save(tmp_path)
    w = tmp_path / "weights.safetensors"
    raw = w.read_bytes()
    w.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(ModelFileError, match="weights.safetensors"):
        load_model(tmp_path)
    # truncated AND sha check off: safetensors parse error still names the file
    with pytest.raises(ModelFileError, match="weights.safetensors"):
        GSN.load(tmp_path, verify_sha256=False)
    # flipped byte inside the data: detected by the sha256
    bad = bytearray(raw)
    bad[-5] ^= 0xFF
    w.write_bytes(bytes(bad))
    with pytest.raises(ModelFileError, match="damaged"):
        load_model(tmp_path)
    w.unlink()
    with pytest.raises(ModelFileError, match="missing"):
        load_model(tmp_path)


def test_schema_and_shape_checks(tmp_path):
    m = random_model()
    m.save(tmp_path)
    meta_path = tmp_path / "model.json"
    meta = json.loads(meta_path.read_text())
    meta["schema"] = "gsn-dask/model/0"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelMismatchError, match="schema"):
        load_model(tmp_path)
    meta["schema"] = MODEL_SCHEMA
    meta["architecture"]["hidden"] = [16, 16]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises((ModelMismatchError, ModelFileError)):
        load_model(tmp_path)
    meta["architecture"]["hidden"] = [16, 16, 16]
    meta["wavelength"]["sha256"] = "0" * 64
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(ModelMismatchError, match="sha256"):
        load_model(tmp_path)
    meta_path.write_text("{not json")
    with pytest.raises(ModelFileError, match="model.json"):
        load_model(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "nope")


def test_constructor_shape_errors():
    m = random_model()
    with pytest.raises(ModelMismatchError):
        GSN(
            hidden_layers=m.hidden_layers,
            W_out=m.W_out[:, :-1],
            b_out=m.b_out,
            activation="silu",
            label_names=LABELS,
            bounds=BOUNDS,
            wavelength=m.wavelength,
        )
    with pytest.raises(ModelMismatchError, match=r"\(N, 3\)"):
        m.predict(np.zeros((4, 2)))


def test_block_diagonal_layers_are_multiplied_by_blocks():
    """An ensemble's merged deeper layers are block-diagonal: the GSN finds the blocks and its
    output equals the dense product; a dense layer (any ordinary GSN) has no blocks."""
    from gsn_dask.emulator import block_matmul, diagonal_blocks
    from gsn_dask.emulator import _find_blocks

    rng = np.random.default_rng(0)
    blocks = rng.normal(size=(3, 4, 5)).astype(np.float32)
    W = np.zeros((12, 15), np.float32)
    for k in range(3):
        W[4 * k:4 * k + 4, 5 * k:5 * k + 5] = blocks[k]
    np.testing.assert_array_equal(diagonal_blocks(W, 3), blocks)
    assert diagonal_blocks(W, 2) is None
    np.testing.assert_array_equal(_find_blocks(W), blocks)
    x = rng.normal(size=(7, 12)).astype(np.float32)
    np.testing.assert_allclose(block_matmul(x, blocks), x @ W, rtol=1e-5, atol=1e-6)
    W[0, 14] = 1e-3  # one off-block entry: dense
    assert _find_blocks(W) is None and diagonal_blocks(W, 3) is None


def test_label_units_are_defined_once():
    import gsn_dask.cube
    import gsn_dask.grid.phoenix
    from gsn_dask.labels import LABEL_UNITS, canonical_order, label_unit

    assert gsn_dask.cube.LABEL_UNITS is LABEL_UNITS and gsn_dask.grid.phoenix.LABEL_UNITS is LABEL_UNITS
    assert random_model().label_units == ["K", "dex", "dex"]
    assert label_unit("vsini") == "" and label_unit("teff") == "K"
    assert canonical_order(["zeta", "feh", "alpha_fe", "teff", "a"]) == ["teff", "feh", "alpha_fe", "a", "zeta"]


def test_default_normalisation_is_the_cube_record_or_the_grid_recipe():
    from gsn_dask.emulator import default_normalisation
    from gsn_dask.grid.prepare import DEFAULT_NORMALISATION

    assert default_normalisation({}) == DEFAULT_NORMALISATION
    assert default_normalisation(None) is not DEFAULT_NORMALISATION  # a copy, safe to change
    assert default_normalisation({"normalisation": '{"method": "x"}'}) == {"method": "x"}
    assert default_normalisation({"normalisation": "by hand"}) == {"description": "by hand"}


def test_emulator_modules_import_neither_torch_nor_the_fitter():
    """The numpy GSN and the training recipe load without torch, the fitter or the calibration."""
    code = (
        "import sys, gsn_dask\n"
        "before = set(sys.modules)\n"  # what the package itself loads (its lazy API)
        "import gsn_dask.emulator, gsn_dask.emulator_recipe, gsn_dask.labels\n"
        "new = set(sys.modules) - before\n"
        "bad = sorted(m for m in new if m == 'torch' or m.startswith(('gsn_dask.fit', 'gsn_dask.calibration')))\n"
        "print(bad); sys.exit(1 if bad else 0)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_saving_the_same_model_gives_the_same_bytes(tmp_path):
    """The weights file (and so the sha256 runs record) depends only on the model."""
    m = random_model()
    for i in range(6):
        m.save(tmp_path / f"m{i}")
    first = (tmp_path / "m0" / "weights.safetensors").read_bytes()
    assert all((tmp_path / f"m{i}" / "weights.safetensors").read_bytes() == first for i in range(1, 6))
    assert load_model(tmp_path / "m3").sha256 == m.sha256


def test_fix_label_is_exact_and_drops_the_label(tmp_path):
    m = random_model(transforms=("log10", "identity", "identity"))
    m.meta["label_systematics"] = {"sigma": {"teff": 90.0, "logg": 0.2, "feh": 0.1}, "n_star": 5}
    lab = some_labels(20)
    f = fix_label(m, "logg", 4.4)
    full = np.c_[lab[:, :1], np.full(20, 4.4), lab[:, 2:]]
    np.testing.assert_allclose(f.predict(lab[:, [0, 2]]), m.predict(full), rtol=0, atol=2e-6)
    assert f.label_names == ["teff", "feh"] and f.label_transforms == ["log10", "identity"]
    assert f.meta["fixed_labels"] == {"logg": 4.4} and f.meta["label_systematics"]["sigma"] == {"teff": 90.0, "feh": 0.1}
    assert f.model_id != m.model_id
    f.save(tmp_path / "m")
    assert load_model(tmp_path / "m").meta["fixed_labels"] == {"logg": 4.4}
    with pytest.raises(ValueError, match="outside"):
        fix_label(m, "logg", 7.0)
    with pytest.raises(ModelMismatchError, match="no label"):
        fix_label(m, "alpha_fe", 0.0)
