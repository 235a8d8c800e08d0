from gsn_dask.fit.threads import blas_threads, current_blas_threads


def test_blas_threads_limited_and_restored():
    before = current_blas_threads()
    assert before, "no OpenBLAS library found: blas_threads would silently do nothing"
    with blas_threads(1):
        inside = current_blas_threads()
        assert inside == [1] * len(before)
    assert current_blas_threads() == before
    with blas_threads(None):
        assert current_blas_threads() == before
