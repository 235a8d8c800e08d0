"""The batched sampler's torch pieces, one concern per module: :mod:`.rng` (the counter-based
random numbers), :mod:`.emulator` (the GSN's forward pass on a device), :mod:`.algebra` (small
fixed-shape linear algebra), :mod:`.posterior` (the posterior of many spectra), :mod:`.start`
(the batched MAP start), :mod:`.moves` (the emcee moves on tensors), :mod:`.chains` (tau and
percentiles) and :mod:`.pool` (continuous batching of the walkers). The strategy that
:func:`gsn_dask.fit.block.fit_block` calls is :mod:`gsn_dask.fit.batched`."""
