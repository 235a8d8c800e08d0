"""Per-process model cache and thread settings for fitting workers.

Tasks receive the model *directory* and the weights' sha256, never the model itself;
:func:`get_model` loads it once per process (Dask worker, Spark Python worker, or the
driver for the serial engine) and returns the cached :class:`~gsn_dask.emulator.GSN`
afterwards. The cache key includes the sha256, so a model directory that changes during a
run is detected instead of silently mixed.

:class:`ModelCachePlugin` (a ``distributed.WorkerPlugin``, created lazily so that importing
this module does not import ``distributed``) preloads the model on every worker when it
is registered and whenever a worker (re)starts, and caps the worker's native thread pools.
"""
from __future__ import annotations

import logging
import os
import sys
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    from .emulator import GSN

log = logging.getLogger(__name__)

#: environment variables that cap native (OpenMP / BLAS) thread pools
THREAD_ENV_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")

_CACHE: dict[tuple[str, str], GSN] = {}
_LOCK = threading.Lock()
_MAX_MODELS = 4
#: models loaded from disk by this process (reported by :func:`stats`: once per worker and model)
load_count = 0
_threadpool_limiter: Any = None


def _key_dir(model_dir: str | Path) -> str:
    return str(Path(model_dir).expanduser().resolve())


def get_model(model_dir: str | Path, sha256: str | None = None) -> GSN:
    """The model in ``model_dir``, loaded once per process and cached by (dir, sha256).

    With ``sha256`` (of ``weights.safetensors``, as recorded by the driver) a cached model
    is returned without touching the disk; a freshly loaded model whose weights differ
    raises :class:`~gsn_dask.emulator.ModelFileError`. Without it, the key is the file's
    current sha256-free identity (size, mtime), checked on every call.
    """
    from .emulator import ModelFileError, WEIGHTS_FILE, load_model

    global load_count
    d = _key_dir(model_dir)
    if sha256:
        key = (d, sha256)
    else:
        st = (Path(d) / WEIGHTS_FILE).stat()
        key = (d, f"stat:{st.st_size}:{st.st_mtime_ns}")
    model = _CACHE.get(key)
    if model is not None:
        return model
    with _LOCK:
        model = _CACHE.get(key)
        if model is not None:
            return model
        model = load_model(d)
        load_count += 1
        if sha256 and model.sha256 != sha256:
            raise ModelFileError(
                f"the model in {d} changed during the run: weights sha256 {model.sha256[:16]}... "
                f"is not the {sha256[:16]}... the run started with"
            )
        if len(_CACHE) >= _MAX_MODELS:
            _CACHE.pop(next(iter(_CACHE)))
        _CACHE[key] = model
        log.debug("loaded model %s from %s (pid %d)", model.model_id, d, os.getpid())
        return model


def drop_model(model_dir: str | Path, sha256: str | None = None) -> None:
    """Forget a cached model (all versions of ``model_dir`` when ``sha256`` is None)."""
    d = _key_dir(model_dir)
    with _LOCK:
        for key in [k for k in _CACHE if k[0] == d and (sha256 is None or k[1] == sha256)]:
            _CACHE.pop(key, None)


def clear_cache() -> None:
    """Forget every cached model."""
    with _LOCK:
        _CACHE.clear()


def cached_models() -> list[tuple[str, str]]:
    """Keys (model dir, sha256) of the models cached in this process."""
    return list(_CACHE)


def stats() -> dict[str, Any]:
    """This process's cache state: ``pid``, ``loads`` (models loaded so far), ``cached`` keys."""
    return {"pid": os.getpid(), "loads": load_count, "cached": cached_models()}


def configure_threads(n_threads: int = 1) -> dict[str, Any]:
    """Cap this process's native thread pools at ``n_threads``: the OpenMP/BLAS env vars
    (for libraries not loaded yet), ``threadpoolctl`` limits if it is installed (for those
    already loaded) and ``torch.set_num_threads`` if torch is imported. Returns what was done."""
    global _threadpool_limiter
    n = max(1, int(n_threads))
    done: dict[str, Any] = {"n_threads": n}
    for var in THREAD_ENV_VARS:
        os.environ[var] = str(n)
    done["env"] = list(THREAD_ENV_VARS)
    try:
        from threadpoolctl import threadpool_limits  # type: ignore[import-not-found]

        _threadpool_limiter = threadpool_limits(limits=n)
        done["threadpoolctl"] = True
    except ImportError:
        done["threadpoolctl"] = False
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)
        done["torch"] = True
    return done


#: glibc ``mallopt`` settings of fitting workers (bytes): allocations below 32 MiB come from the
#: heap and up to 64 MiB of free heap is kept, so a fit's short-lived arrays reuse pages
MALLOC_SETTINGS = {"M_MMAP_THRESHOLD": 32 * 2**20, "M_TRIM_THRESHOLD": 64 * 2**20}
_MALLOPT_PARAM = {"M_TRIM_THRESHOLD": -1, "M_MMAP_THRESHOLD": -3}


def configure_malloc(settings: dict[str, int] | None = None) -> dict[str, bool]:
    """Set glibc's malloc thresholds in this process (``MALLOC_SETTINGS`` by default); returns
    {setting: applied}, all False where the C library is not glibc.

    Dask starts its workers with ``MALLOC_TRIM_THRESHOLD_=65536``, which also switches off
    glibc's adaptive mmap threshold: every array above 128 kB is then mmap-ed and unmapped again,
    and a ``map`` fit in a Dask worker spent ~25% more CPU than the same fit in a plain process
    (4 million page faults per 2000 stars; ``benchmarks/survey_scale.py``)."""
    import ctypes
    import ctypes.util

    settings = dict(MALLOC_SETTINGS if settings is None else settings)
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # not glibc (macOS, musl without mallopt)
        return {k: False for k in settings}
    return {k: bool(mallopt(_MALLOPT_PARAM[k], int(v))) for k, v in settings.items()}


def _make_plugin_class() -> type:
    from distributed import WorkerPlugin

    class ModelCachePlugin(WorkerPlugin):
        """Dask worker plugin: on each worker (and each restarted worker) optionally ignore SIGINT
        (``ignore_sigint``, for a LocalCluster owned by the driver), import the ``preload``
        modules, cap native threads (OpenMP/BLAS, torch) at ``n_threads``, undo Dask's malloc
        trim setting (:func:`configure_malloc`) and load the model
        into this module's cache, so tasks only look it up. ``teardown`` (on unregister /
        worker close) drops it from the cache."""

        def __init__(
            self, model_dir: str, sha256: str, n_threads: int = 1, preload: tuple[str, ...] = (),
            ignore_sigint: bool = False,
        ) -> None:
            self.model_dir = str(model_dir)
            self.sha256 = str(sha256)
            self.n_threads = int(n_threads)
            self.preload = tuple(preload)
            self.ignore_sigint = bool(ignore_sigint)
            self.name = f"gsn-dask-model-{self.sha256[:16]}"

        def setup(self, worker: Any) -> None:
            import importlib

            if self.ignore_sigint:
                # workers of the runner's own LocalCluster: a terminal Ctrl-C is for the driver,
                # which then shuts the cluster down (instead of every worker dying with a traceback)
                import signal

                if threading.current_thread() is threading.main_thread():
                    signal.signal(signal.SIGINT, signal.SIG_IGN)

            for mod in self.preload:  # e.g. the fit modules (torch for the batched sampler) ...
                try:
                    importlib.import_module(mod)
                except ImportError as exc:  # the task will report it
                    log.warning("worker could not import %s: %s", mod, exc)
            configure_threads(self.n_threads)  # ... so that torch, if imported, gets its threads set
            configure_malloc()
            get_model(self.model_dir, self.sha256)

        def teardown(self, worker: Any) -> None:
            drop_model(self.model_dir, self.sha256)

    ModelCachePlugin.__module__ = __name__
    ModelCachePlugin.__qualname__ = "ModelCachePlugin"
    return ModelCachePlugin


_PLUGIN_CLASS: type | None = None


def __getattr__(name: str) -> Any:
    """Create ``ModelCachePlugin`` on first use (imports ``distributed`` only then)."""
    global _PLUGIN_CLASS
    if name == "ModelCachePlugin":
        if _PLUGIN_CLASS is None:
            _PLUGIN_CLASS = _make_plugin_class()
        return _PLUGIN_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ModelCachePlugin",
    "THREAD_ENV_VARS",
    "cached_models",
    "clear_cache",
    "configure_malloc",
    "configure_threads",
    "drop_model",
    "get_model",
    "stats",
]
