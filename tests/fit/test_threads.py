from gsn_dask.fit.threads import blas_threads, current_blas_threads


def test_blas_threads_limited_and_restored():
    before = current_blas_threads()
    with blas_threads(1):
        inside = current_blas_threads()
        assert all(n == 1 for n in inside)
    assert current_blas_threads() == before
    with blas_threads(None):
        assert current_blas_threads() == before
