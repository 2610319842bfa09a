"""The names of the cleaning scores and epoch rules, and the angle scores' ranges: what
``noisyfr clean --help`` lists, without numpy or pandas (:mod:`noisyfr.cleaning.scores` re-exports
them)."""
from __future__ import annotations

#: Scores read from the angle logs.
ANGLE_SCORES = ("theta", "margin", "aum", "subcentre")
#: Every score :func:`noisyfr.cleaning.scores.run_scores` gives, controls last; ``cleanlab`` (the reference from a
#: well-kept library, :func:`noisyfr.cleaning.scores.cleanlab_scores`) is added on demand.
SCORES = (*ANGLE_SCORES, "weight", "cleanlab", "truth", "random")
#: Scores whose threshold is an angle in degrees (``--max-deg``), and its range.
DEG_RANGE = {"theta": (0.0, 180.0), "subcentre": (0.0, 180.0), "margin": (-180.0, 180.0),
             "aum": (-180.0, 180.0)}
#: Epoch rules of :func:`noisyfr.cleaning.scores.choose_epoch`.
EPOCH_RULES = ("last", "heldout")
