"""Execute the notebooks (nbclient) on a small demo-like folder, so they cannot rot."""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.fixture(scope="module")
def demo_dir(tmp_path_factory, tiny_model_dir, tiny_cube_path, tiny_fit_config) -> Path:
    """A folder shaped like `gsn-dask demo` output: model/, miles_holdout_obs.zarr, miles_holdout_results.zarr."""
    from gsn_dask.pipeline import run_fit

    d = tmp_path_factory.mktemp("demo")
    shutil.copytree(tiny_model_dir, d / "model")
    shutil.copytree(tiny_cube_path, d / "miles_holdout_obs.zarr")
    run_fit(d / "miles_holdout_obs.zarr", d / "model", d / "miles_holdout_results.zarr",
            config=tiny_fit_config.replace(n_draws=40), engine="serial", progress=False)
    return d


def _run(nb_path: Path, env: dict[str, str]) -> list[dict]:
    import nbformat
    from nbclient import NotebookClient

    nb = nbformat.read(nb_path, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    # every code cell ran without error (nbclient raises otherwise)
    outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    return outputs


def _n_figures(outputs: list[dict]) -> int:
    return sum("image/png" in o.get("data", {}) for o in outputs)


def test_quickstart_notebook(demo_dir):
    outputs = _run(NOTEBOOKS / "01_quickstart.ipynb", {"GSN_DEMO_DIR": str(demo_dir)})
    assert _n_figures(outputs) >= 4  # Kiel diagram, widths vs S/N, spectrum + fit, corner plot


@pytest.mark.slow
def test_dask_dashboard_notebook(demo_dir, tiny_fit_config):
    cfg = json.dumps(tiny_fit_config.to_dict())
    _run(NOTEBOOKS / "02_dask_dashboard.ipynb",
         {"GSN_DEMO_DIR": str(demo_dir), "GSN_NB_WORKERS": "1", "GSN_NB_CHUNK": "8", "GSN_NB_CONFIG": cfg})


def test_notebooks_use_the_public_api_only():
    """Users learn from the notebooks: they import ``gsn_dask`` (the flat API), never its modules."""
    import re

    import nbformat

    for path in sorted(NOTEBOOKS.glob("*.ipynb")):
        code = "\n".join(c.source for c in nbformat.read(path, as_version=4).cells if c.cell_type == "code")
        assert "import gsn_dask as gd" in code, path.name
        assert not re.findall(r"(?:from|import)\s+gsn_dask\.", code), path.name
