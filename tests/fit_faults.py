"""Faults and delays for runner tests, injected through the runners' public ``fit_fn`` parameter.

Each helper is a callable with the signature of :func:`gsn_dask.fit.block.fit_block`. Dask and
Spark workers cannot import this test module, so the ``fault_fns`` fixture (``tests/conftest.py``)
registers it with ``cloudpickle.register_pickle_by_value`` (and pyspark's copy of cloudpickle):
the helpers then travel to the workers by value.
"""
from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import xarray as xr


def _fit_block(block: xr.Dataset, model: Any, **kwargs: Any) -> xr.Dataset:
    from gsn_dask.fit.block import fit_block

    return fit_block(block, model, **kwargs)


@dataclass(frozen=True)
class SlowFit:
    """``fit_block`` after sleeping ``delay_s`` seconds per block (slow tasks on demand)."""

    delay_s: float = 1.0

    def __call__(self, block: xr.Dataset, model: Any, **kwargs: Any) -> xr.Dataset:
        time.sleep(float(self.delay_s))
        return _fit_block(block, model, **kwargs)


@dataclass(frozen=True)
class FailingFit:
    """Raises ``ValueError(message)`` for every block (a chunk task that always fails)."""

    message: str = "injected failure"

    def __call__(self, block: xr.Dataset, model: Any, **kwargs: Any) -> xr.Dataset:
        raise ValueError(self.message)


@dataclass(frozen=True)
class FailAfterWriteOnce:
    """On a Spark task's first attempt for the chunks starting at the stars in ``starts``
    (first star id -> start row): fit, write wrong rows (``median`` + 1000) into the chunk's
    region of ``out`` and then die, i.e. between the row write and the completion record.
    The retried attempt must rewrite the region."""

    out: str
    starts: Mapping[str, int] = field(default_factory=dict)

    def __call__(self, block: xr.Dataset, model: Any, **kwargs: Any) -> xr.Dataset:
        from pyspark import TaskContext

        from gsn_dask import results_store as rs

        rows = _fit_block(block, model, **kwargs)
        first = str(block["star"].values[0])
        ctx = TaskContext.get()
        if first in self.starts and ctx is not None and ctx.attemptNumber() == 0:
            wrong = rows.copy(deep=True)
            wrong["median"] = wrong["median"] + 1000.0
            rs.write_rows(self.out, wrong, int(self.starts[first]))
            raise RuntimeError(f"injected failure after writing the chunk of {first}")
        return rows


def alloc_page_faults(n: int = 200, size: int = 200_000) -> int:
    """Minor page faults of this process while it makes ``n`` temporary float64 arrays of
    ``size`` elements (1.6 MB each): a few hundred when freed heap pages are reused, ~400 per
    array when each one is mmap-ed and unmapped again."""
    import resource

    import numpy as np

    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(n):
        a = np.ones(size)
        a *= 2.0
        del a
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
