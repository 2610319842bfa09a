"""Cleaning a noisy training set from its run's angles (docs/cleaning.md): per-sample noise scores
and their rules (:mod:`~noisyfr.cleaning.scores`, the ``cleanlab`` reference among them), the
cleaned manifest and the ``noisyfr clean`` command (:mod:`~noisyfr.cleaning.cli`), the contact
sheet of the flagged images (:mod:`~noisyfr.cleaning.sheet`)."""
