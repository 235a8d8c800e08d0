"""Entry script for ``spark-submit`` (which needs a file, not ``-m``)::

    spark-submit --master spark://host:7077 /path/to/spark_compat/submit.py \\
        fit cube.zarr --model model_dir --out results.zarr

The master comes from spark-submit (do not pass ``--master`` again). gsn_dask and spark_compat
must be importable by the driver and the executors: installed on every node
(``pip install gsn-dask``), or shipped with ``--py-files gsn_dask.zip`` (pure-python code only;
numpy, xarray, zarr, emcee... must be installed on the nodes).
"""
from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    # running as a file puts spark_compat/ first on sys.path; make the package importable instead
    here = os.path.dirname(os.path.abspath(__file__))
    if sys.path and os.path.abspath(sys.path[0]) == here:
        sys.path[0] = os.path.dirname(here)
    from spark_compat.__main__ import main

    sys.exit(main())
