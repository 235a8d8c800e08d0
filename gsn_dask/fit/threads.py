"""Limit BLAS threads while fitting (one fit per core: the runners parallelise over stars).

Uses ``threadpoolctl`` when it is installed; otherwise calls the ``*_set_num_threads`` entry point
of every OpenBLAS library already loaded in the process (numpy's and scipy's wheels bundle
``scipy_openblas``). A no-op where neither works (e.g. MKL without threadpoolctl).
"""
from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

_SETTERS = (
    ("scipy_openblas_set_num_threads64_", "scipy_openblas_get_num_threads64_"),
    ("scipy_openblas_set_num_threads", "scipy_openblas_get_num_threads"),
    ("openblas_set_num_threads64_", "openblas_get_num_threads64_"),
    ("openblas_set_num_threads", "openblas_get_num_threads"),
)
_LIBS: list[tuple[object, object]] | None = None


def _openblas_handles() -> list[tuple[object, object]]:
    global _LIBS
    if _LIBS is not None:
        return _LIBS
    import numpy  # noqa: F401  (make sure numpy's BLAS is loaded)

    found: list[tuple[object, object]] = []
    paths: set[str] = set()
    try:
        with open("/proc/self/maps") as fh:
            for line in fh:
                p = line.split()[-1] if line.strip() else ""
                base = os.path.basename(p).lower()
                if "openblas" in base and ".so" in base:
                    paths.add(p)
    except OSError:
        paths = set()
    for p in sorted(paths):
        try:
            lib = ctypes.CDLL(p)
        except OSError:
            continue
        for set_name, get_name in _SETTERS:
            if hasattr(lib, set_name) and hasattr(lib, get_name):
                found.append((getattr(lib, set_name), getattr(lib, get_name)))
                break
    _LIBS = found
    return found


@contextlib.contextmanager
def blas_threads(n: int | None) -> Iterator[None]:
    """Context manager: at most ``n`` BLAS threads inside (None: unchanged); restored on exit."""
    if n is None:
        yield
        return
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-not-found]
    except ImportError:
        threadpool_limits = None
    if threadpool_limits is not None:
        with threadpool_limits(limits=int(n), user_api="blas"):
            yield
        return
    handles = _openblas_handles()
    old = []
    for setter, getter in handles:
        try:
            old.append(int(getter()))
            setter(int(n))
        except Exception:  # noqa: BLE001 - best effort
            old.append(None)
    try:
        yield
    finally:
        for (setter, _), o in zip(handles, old):
            if o is not None:
                try:
                    setter(int(o))
                except Exception:  # noqa: BLE001
                    pass


def current_blas_threads() -> list[int]:
    """Thread counts of the OpenBLAS libraries found (for tests and logs)."""
    out = []
    for _, getter in _openblas_handles():
        try:
            out.append(int(getter()))
        except Exception:  # noqa: BLE001
            pass
    return out


__all__ = ["blas_threads", "current_blas_threads"]
