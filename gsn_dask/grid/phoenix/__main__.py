"""``python -m gsn_dask.grid.phoenix``: run the command line of :mod:`gsn_dask.grid.phoenix.cli`."""
from __future__ import annotations

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
