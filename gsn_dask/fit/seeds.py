"""Per-star random seeds that do not depend on the engine, chunking, order or machine."""
from __future__ import annotations

import hashlib

import numpy as np


def star_seed(run_seed: int, star_id: str) -> int:
    """A 63-bit seed from sha256(f"gsn-dask/{run_seed}/{star_id}") (stable across machines,
    Python versions and processes, unlike ``hash()``)."""
    digest = hashlib.sha256(f"gsn-dask/{int(run_seed)}/{star_id}".encode("utf-8")).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def random_state(seed: int) -> np.random.RandomState:
    """A legacy ``RandomState`` (what emcee's moves call) driven by an MT19937 seeded from the
    full 63-bit ``seed`` through a SeedSequence."""
    return np.random.RandomState(np.random.MT19937(np.random.SeedSequence(int(seed))))


def generator(seed: int, stream: int = 0) -> np.random.Generator:
    """An independent ``Generator`` for auxiliary randomness (walker start ball, ...)."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), int(stream)])))


__all__ = ["generator", "random_state", "star_seed"]
