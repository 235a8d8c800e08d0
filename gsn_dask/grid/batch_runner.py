"""Run a preparation function over batches as ``dask.delayed`` tasks and yield the results in
input order (synchronous, threads, a LocalCluster or an existing distributed scheduler), with a
bounded number of tasks in flight."""
from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any


def iter_batches(items: Iterable[Any], size: int) -> Iterator[list[Any]]:
    """Lists of ``size`` consecutive items (the last may be shorter); consumes ``items`` lazily."""
    batch: list[Any] = []
    for it in items:
        batch.append(it)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def run_batches(
    fn: Callable[..., dict[str, Any]],
    batches: Iterable[list[Any]],
    args: tuple[Any, ...],
    *,
    scheduler: str | None = None,
    n_workers: int | None = None,
    total: int | None = None,
    progress: bool = True,
    desc: str = "preparing",
) -> Iterator[dict[str, Any]]:
    """Run ``fn(batch, *args)`` as ``dask.delayed`` tasks and yield the results in input order.

    ``scheduler``: None/"synchronous" (default when ``n_workers`` <= 1), "threads", or a
    distributed scheduler address ("tcp://host:8786"); ``n_workers`` > 1 without an address
    starts a ``LocalCluster`` of that many single-threaded processes. At most ~2 tasks per
    worker are in flight, so a streaming input is never held whole in memory.
    A tqdm bar counts spectra (``total`` if known).
    """
    import dask
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc=desc, unit="spec", disable=not progress, smoothing=0.1)
    delayed_fn = dask.delayed(fn, pure=False)
    try:
        distributed = bool(scheduler and "://" in scheduler) or (scheduler is None and (n_workers or 1) > 1)
        if not distributed:
            sched = scheduler or "synchronous"
            window = 1 if sched in ("synchronous", "sync", "single-threaded") else max(2 * (n_workers or 2), 2)
            pending: list[Any] = []
            for batch in batches:
                pending.append(delayed_fn(batch, *args))
                if len(pending) >= window:
                    for res in dask.compute(*pending, scheduler=sched):
                        bar.update(res["n_in"])
                        yield res
                    pending = []
            if pending:
                for res in dask.compute(*pending, scheduler=sched):
                    bar.update(res["n_in"])
                    yield res
            return
        yield from _run_distributed(delayed_fn, batches, args, scheduler, n_workers, bar)
    finally:
        bar.close()


def _run_distributed(
    delayed_fn: Callable[..., Any],
    batches: Iterable[list[Any]],
    args: tuple[Any, ...],
    scheduler: str | None,
    n_workers: int | None,
    bar: Any,
) -> Iterator[dict[str, Any]]:
    """The distributed branch of :func:`run_batches`: a Client on ``scheduler`` or a LocalCluster
    of ``n_workers`` processes, ~2 tasks per worker thread in flight, results in input order."""
    from distributed import Client, LocalCluster, wait

    cluster = None
    if scheduler and "://" in scheduler:
        client = Client(scheduler)
    else:
        cluster = LocalCluster(
            n_workers=int(n_workers or 2), threads_per_worker=1, processes=True, dashboard_address=":0"
        )
        client = Client(cluster)
    try:
        n_slots = max(sum(client.nthreads().values()), 1)
        window = 2 * n_slots
        it = iter(batches)
        in_flight: dict[int, Any] = {}
        done: dict[int, dict[str, Any]] = {}
        next_submit = next_yield = 0
        exhausted = False
        while True:
            while not exhausted and len(in_flight) + len(done) < window:
                try:
                    batch = next(it)
                except StopIteration:
                    exhausted = True
                    break
                in_flight[next_submit] = client.compute(delayed_fn(batch, *args))
                next_submit += 1
            if not in_flight and not done:
                break
            if next_yield in in_flight:
                wait([in_flight[next_yield]], return_when="FIRST_COMPLETED")
            for k in [k for k, fut in in_flight.items() if fut.done()]:
                res = in_flight.pop(k).result()
                bar.update(res["n_in"])
                done[k] = res
            while next_yield in done:
                yield done.pop(next_yield)
                next_yield += 1
    finally:
        client.close()
        if cluster is not None:
            cluster.close()
