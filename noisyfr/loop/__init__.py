"""The train-clean-retrain loop (docs/cleaning.md): an orchestrator over training, cleaning and the
analysis of its gains. ``noisyfr loop`` (:mod:`~noisyfr.loop.cli`) trains on noisy labels, cleans
with each rule, retrains, and compares with the oracle (:mod:`~noisyfr.loop.run`)."""
