"""The report's fixed cleaning rules and their score from counts: what analysis needs of cleaning
(:mod:`noisyfr.cleaning.scores` re-exports both; the cleaning package sits a floor above)."""
from __future__ import annotations


def truth_from_counts(n: dict[str, int], flagged: dict[str, int]) -> dict:
    """Precision, recall, F1, the noise left and the clean samples lost of a removal rule from its
    counts per noise type (``n``: samples, ``flagged``: removed): the definitions of
    :func:`noisyfr.cleaning.scores.truth_table` without relabelling."""
    n_noisy = sum(v for k, v in n.items() if k != "clean")
    f_noisy = sum(v for k, v in flagged.items() if k != "clean")
    f_all = sum(flagged.values())
    kept = sum(n.values()) - f_all
    precision = f_noisy / f_all if f_all else float("nan")
    recall = f_noisy / n_noisy if n_noisy else float("nan")
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else float("nan")
    clean = n.get("clean", 0)
    return {"flagged": f_all, "precision": precision, "recall": recall, "f1": f1,
            "noise_left": (n_noisy - f_noisy) / kept if kept else float("nan"),
            "clean_lost": flagged.get("clean", 0) / clean if clean else float("nan")}


#: The fixed rules the report scores at each run's last epoch: name -> SQL of "flagged".
REPORT_RULES = {"theta>75": "degrees(theta_y) > 75", "subcentre>75": "degrees(theta_dominant) > 75",
                "margin>0": "theta_y > theta_nearest"}
