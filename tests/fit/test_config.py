import copy
import json

import pytest

from gsn_dask.fit.config import ConfigError, FitConfig, check_config
from gsn_dask.fit.seeds import generator, random_state, star_seed


def test_roundtrip_json():
    c = FitConfig(n_walkers=14, priors={"feh": (-0.5, 0.2)}, rv_bounds_kms=(-300, 400), n_draws=5)
    d = c.to_dict()
    text = json.dumps(d)
    back = FitConfig.from_dict(json.loads(text))
    assert back == c
    assert FitConfig.from_dict(c.to_json()) == c
    assert d["rv_bounds_kms"] == [-300.0, 400.0] and d["priors"] == {"feh": [-0.5, 0.2]}


@pytest.mark.parametrize(
    "kw",
    [{"n_walkers": 2}, {"moves": "nope"}, {"rv_bounds_kms": (10, -10)}, {"priors": {"teff": (5000, 0)}},
     {"thin": 0}, {"cheb_degree": -1}, {"n_steps": 3}, {"device": "gpu"}, {"device": "cuda:x"},
     {"batch_size": 0}, {"batch_size": 2.5}],
)
def test_invalid(kw):
    with pytest.raises(ValueError, match="FitConfig"):
        FitConfig(**kw)


def test_unknown_key():
    with pytest.raises(ValueError, match="unknown settings"):
        FitConfig.from_dict({"n_walker": 10})


def test_star_seed_stable_and_distinct():
    # fixed values: the seed must never change across machines / versions (reproducible runs)
    assert star_seed(0, "a") == 3146342068921925222
    assert star_seed(42, "spec-55862-B6212_sp06-003") == 8313512369569545453
    seeds = {star_seed(1, f"star{i}") for i in range(1000)}
    assert len(seeds) == 1000
    assert star_seed(1, "x") != star_seed(2, "x")
    assert 0 <= star_seed(123, "y") < 2**63


def test_random_streams_reproducible():
    a, b = random_state(5), random_state(5)
    assert (a.rand(10) == b.rand(10)).all()
    assert (generator(5, 1).random(4) == generator(5, 1).random(4)).all()
    assert not (generator(5, 1).random(4) == generator(5, 2).random(4)).any()


def test_batched_settings_round_trip():
    c = FitConfig(device="cuda:1", batch_size=64)
    assert FitConfig.from_dict(c.to_json()) == c
    assert FitConfig(device="cpu").device == "cpu" and FitConfig().batch_size is None


@pytest.mark.parametrize("sampler", ["emcee", "batched"])
def test_check_config_rv_bounds_against_the_model_grid(model, sampler):
    """rv bounds must leave pixels to fit and span the coarse search's three whole-pixel shifts
    (one LAMOST pixel is 69 km/s)."""
    check_config(FitConfig(rv_bounds_kms=(-10.0, 10.0)), model, sampler)  # shifts -1, 0, 1
    for rv in ((0.0, 0.001), (0.001, 10.0)):
        with pytest.raises(ConfigError, match="whole-pixel shifts"):
            check_config(FitConfig(rv_bounds_kms=rv), model, sampler)
    tiny = copy.copy(model)  # 60 pixels: +-5000 km/s (+-72 pixels) leaves none
    tiny.wavelength = model.wavelength[:60]
    with pytest.raises(ConfigError, match="pixels of the model"):
        check_config(FitConfig(rv_bounds_kms=(-5000.0, 5000.0)), tiny, sampler)


def test_check_config_cuda_device_without_cuda(model):
    import torch

    if torch.cuda.is_available():
        check_config(FitConfig(device="cuda"), model, "batched")
    else:
        with pytest.raises(ConfigError, match="no CUDA device"):
            check_config(FitConfig(device="cuda"), model, "batched")
    check_config(FitConfig(device="cuda"), model, "emcee")  # the emcee path ignores the device


def test_check_config_batched_without_torch(model, monkeypatch):
    """Without torch the batched sampler is refused up front, with the extra to install."""
    import sys

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch -> ImportError
    with pytest.raises(ConfigError, match=r"gsn-dask\[torch\]"):
        check_config(FitConfig(), model, "batched")
    check_config(FitConfig(), model, "emcee")
