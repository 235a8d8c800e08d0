"""Generate the notebooks in notebooks/ (the .ipynb files are committed; rerun after editing:
``python notebooks/make_notebooks.py``; needs nbformat)."""
import nbformat as nbf
from pathlib import Path

out = Path(__file__).resolve().parent
out.mkdir(exist_ok=True)

def nb(cells):
    n = nbf.v4.new_notebook()
    n.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    n.cells = [nbf.v4.new_markdown_cell(c[1:]) if c.startswith("#") and c[1] == "#" else nbf.v4.new_code_cell(c) for c in cells]
    for i, cell in enumerate(n.cells):  # fixed ids: regenerating an unchanged notebook changes nothing
        cell.id = f"cell-{i:02d}"
    return n

quick = [
"## gsn-dask quickstart: the demo's results with xarray\n\nRun `gsn-dask demo` first (or set `GSN_DEMO_DIR` to another demo output folder). "
"This notebook opens the results cube, draws a Kiel diagram, looks at posterior widths against S/N, "
"plots one spectrum with its best-fit model, and a corner plot of one star's posterior draws.",
"""%matplotlib inline
import os
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import xarray as xr

import gsn_dask as gd

demo = Path(os.environ.get("GSN_DEMO_DIR", "gsn-dask-demo"))
res = gd.open_results(demo / "miles_holdout_results.zarr").load()
obs = gd.open_spectra(demo / "miles_holdout_obs.zarr")
res""",
"## Results align with the input cube on `star`",
"""ds = xr.merge([res[["median", "p16", "p84", "rv", "flag", "status"]],
               obs[["snr", "rv_catalog"] + [v for v in obs.data_vars if str(v).startswith("label_")]]],
              join="inner").load()
ok = ds.status == "ok"
print(f"{int(ok.sum())} of {ds.sizes['star']} stars fitted; flags: {np.unique(ds.flag.values)}")
ds["median"].sel(label="teff").to_series().describe()""",
"## Kiel diagram: ours vs the literature",
"""fig, axes = plt.subplots(1, 2, figsize=(10, 4), sharex=True, sharey=True)
good = ds.isel(star=np.flatnonzero(ok.values))
for ax, (t, g, f, title) in zip(axes, [
        (good["median"].sel(label="teff"), good["median"].sel(label="logg"), good["median"].sel(label="feh"), "gsn-dask"),
        (good.label_teff, good.label_logg, good.label_feh, "literature")]):
    sc = ax.scatter(t, g, c=f, s=12, cmap="viridis", vmin=-2, vmax=0.5)
    ax.set_title(title); ax.set_xlabel("Teff [K]")
axes[0].set_ylabel("log g [dex]"); axes[0].invert_xaxis(); axes[0].invert_yaxis()
fig.colorbar(sc, ax=axes, label="[Fe/H]")""",
"## Posterior widths against S/N\n\nThe 68% intervals include each label's systematic error, measured in the model's "
"training cross-validation (`res.attrs['label_systematics']`), added in quadrature; so they level off at high S/N "
"instead of shrinking to the noise-only width (`stat`: the statistical part alone).",
"""print("systematics folded into p16/p84:", res.attrs.get("label_systematics"))
width = (good["p84"] - good["p16"]) / 2
sig = gd.label_systematics(res).sel(star=good.star)
stat = np.sqrt((width**2 - sig**2).clip(min=0))
fig, axes = plt.subplots(1, width.sizes["label"], figsize=(4 * width.sizes["label"], 3))
for ax, lab in zip(np.atleast_1d(axes), width.label.values):
    ax.scatter(good.snr, width.sel(label=lab), s=10)
    ax.set_xscale("log"); ax.set_xlabel("S/N"); ax.set_ylabel(f"sigma({lab})")
fig.tight_layout()
bins = [0, 10, 30, 50, 100, 1e4]
xr.Dataset({"total": width, "stat": stat}).groupby_bins(good.snr, bins=bins).median().to_dataframe()""",
"## One spectrum with its best-fit model and residuals",
"""model = gd.load_model(demo / "model")
star = str(good.star.values[0])
one = gd.best_fit(obs.sel(star=[star]).load(), res.sel(star=[star]), model).sel(star=star)
fn, best = one.flux.where(one.ivar > 0), one.model_flux
fig, (a1, a2) = plt.subplots(2, 1, figsize=(11, 5), sharex=True, height_ratios=[3, 1])
a1.plot(one.wavelength, fn, lw=0.6, label="observed (normalised)")
a1.plot(one.wavelength, best, lw=0.8, label="GSN best fit")
a1.legend(); a1.set_title(star)
a2.plot(one.wavelength, fn - best, lw=0.5)
a2.set_xlabel("vacuum wavelength [A]"); a2.set_ylabel("residual")""",
"## Corner plot of one star's posterior draws",
"""import corner

if "samples" in res:
    draws = res.samples.sel(star=star).values
    draws = draws[np.all(np.isfinite(draws), axis=1)]
    fig = corner.corner(draws, labels=list(res.label.values),
                        truths=[float(obs[f"label_{l}"].sel(star=star)) for l in res.label.values])
else:
    print("no posterior draws stored (run the fit with --draws N)")""",
]

dash = [
"## An interactive Dask run: dashboard and progress\n\nStarts a LocalCluster, prints the dashboard link "
"(open it to watch the task stream: one task per zarr chunk), and fits a spectra cube chunk by chunk. "
"Set `GSN_DEMO_DIR` to a demo output folder (default `gsn-dask-demo`).",
"""import os
from pathlib import Path

from distributed import Client, LocalCluster

import gsn_dask as gd

demo = Path(os.environ.get("GSN_DEMO_DIR", "gsn-dask-demo"))
cube_path = demo / "miles_holdout_obs.zarr"
cube = gd.open_spectra(cube_path)
print(cube.sizes, "chunks along star:", cube.flux.chunks[0])""",
"""cluster = LocalCluster(n_workers=int(os.environ.get("GSN_NB_WORKERS", 2)), threads_per_worker=1,
                       dashboard_address="127.0.0.1:0")
client = Client(cluster)
print("dashboard:", client.dashboard_link)""",
"""import json

# default settings; GSN_NB_CONFIG (JSON) overrides some, e.g. short chains in the tests
config = gd.FitConfig.from_dict(json.loads(os.environ.get("GSN_NB_CONFIG", "{}")))
results = gd.fit_store(cube_path, demo / "model", demo / "notebook_results.zarr", config=config,
                       client=client, chunk_size=int(os.environ.get("GSN_NB_CHUNK", 32)), overwrite=True)
results""",
"""results = results.load()
print(int((results.status == "ok").sum()), "ok of", results.sizes["star"])
results["median"].to_pandas().head()""",
"""client.close(); cluster.close()""",
]

nbf.write(nb(quick), out / "01_quickstart.ipynb")
nbf.write(nb(dash), out / "02_dask_dashboard.ipynb")
print("written")
