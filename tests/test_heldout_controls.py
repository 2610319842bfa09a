"""Controls of the held-out noise-rate estimate that can fail
(:func:`noisyfr.train.heldout.heldout_noise_rate`, the estimate of the summaries and of
``noisyfr loop``'s ``fraction: heldout``).

"Exactly 0 on clean data" is no control: with clean labels the given label is the true one, so
the estimate is 0 by identity. These are:

- **shuffled labels**: a trained run's real held-out predictions, scored against the held-out
  labels shuffled (a seeded permutation). The true rate is then about 1 - 1/C; an estimator whose
  formula or assumptions were wrong (errors of the model tied to the labels, the chance term)
  would miss it;
- **injected rates never used while the estimator was built** (it was developed at 0, 0.2 and
  0.4): closed-set noise at 0.1 and 0.3 in real training runs, each estimate against the true
  noisy fraction of that run's held-out images, within the estimator's sampling error;
- **a shuffled-label training run** (symmetric flips at (C - 1) / C: every label uniform over
  the C classes, true rate about 1 - 1/C): the model learns nothing about identity, so the
  held-out images carry no evidence and the estimate must be undefined (NaN) or near the true
  rate, never a confident wrong one.

Small synthetic runs (8 identities x 48 images, half held out, 5 epochs): about 15 s each on one
busy core, four runs.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from noisyfr.train import load_config, train
from noisyfr.train.data import split_identities
from noisyfr.train.heldout import heldout_noise_rate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

C, PER_ID, HOLDOUT, SEED = 8, 48, 0.5, 0
DATA = f"synthetic:ids={C},per_id={PER_ID},size=32,seed=0"


def _run(out: Path, rate: float) -> Path:
    cfg = {"data": {"train": DATA, "image_size": 32, "holdout": HOLDOUT},
           "model": {"backbone": "small_cnn", "embedding_dim": 32, "width": 0.5},
           "loss": {"name": "arcface", "s": 16.0, "m": 0.3},
           "optim": {"epochs": 5, "batch_size": 16, "lr": 0.1},
           "seed": SEED, "device": "cpu", "output_dir": str(out)}
    if rate > 0:
        cfg["data"]["noise"] = {"closed": rate}
    train(load_config(cfg, []))
    return out


def _held_rows(run: Path) -> tuple[np.ndarray, pd.DataFrame]:
    """The run's held-out rows and its labels (``orig_label``, ``label``): the manifest's, or
    the dataset's own for a clean run."""
    if (run / "manifest.parquet").is_file():
        man = pd.read_parquet(run / "manifest.parquet")
    else:
        from noisyfr.data import open_index

        labels = np.asarray(open_index(DATA).labels)
        man = pd.DataFrame({"orig_label": labels, "label": labels})
    _, held = split_identities(man["orig_label"].to_numpy(), None, HOLDOUT, SEED)
    return held, man


def _estimate(run: Path) -> tuple[float, float, float]:
    """The estimate from the run's own last-epoch metrics, its held-out accuracy and the true
    noisy fraction of its held-out images."""
    m = pd.read_csv(run / "metrics.csv").iloc[-1]
    held, man = _held_rows(run)
    true = float((man["label"].to_numpy()[held] != man["orig_label"].to_numpy()[held]).mean())
    return heldout_noise_rate(m["heldout_accuracy"], m["heldout_given_accuracy"], C), \
        float(m["heldout_accuracy"]), true


def _tolerance(a: float, n_noisy: float, n: int) -> float:
    """4 standard errors of the estimate: (a - g) is a mean over the noisy held-out images of
    1(pred = true) - 1(pred = given), each with variance at most a (1 - a) + (1 - a) / (C - 1),
    divided by a - (1 - a) / (C - 1)."""
    denom = a - (1 - a) / (C - 1)
    return 4.0 * np.sqrt(max(n_noisy, 1.0) * (a * (1 - a) + (1 - a) / (C - 1))) / n / denom


class _Runs(dict):
    """Each run trained the first time a test asks for it (one run per test, about 15 s)."""

    def __init__(self, root: Path):
        super().__init__()
        self.root = root

    def __missing__(self, rate: float) -> Path:
        self[rate] = _run(self.root / f"r{rate:g}", rate)
        return self[rate]


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    return _Runs(tmp_path_factory.mktemp("heldout_controls"))


def test_shuffled_held_out_labels_give_about_one_minus_one_over_c(runs):
    from noisyfr.data import open_index
    from noisyfr.data.transforms import face_transform
    from noisyfr.io import load_checkpoint
    from noisyfr.models import create_backbone

    run = runs[0.0]
    state = load_checkpoint(run / "checkpoints" / "last.pt", map_location="cpu")
    model = create_backbone("small_cnn", embedding_dim=32, image_size=32, dropout=0.0, width=0.5)
    model.load_state_dict(state["model"])
    model.eval()
    held, man = _held_rows(run)
    index = open_index(DATA)
    tf = face_transform(32, 1.0, train=False)
    x = torch.stack([tf(index.load_image(int(i))) for i in held])
    with torch.no_grad():
        f = torch.nn.functional.normalize(model(x) + model(torch.flip(x, dims=[3])), dim=1)
    w = torch.nn.functional.normalize(state["head"]["weight"], dim=1)
    pred = (f @ w.t()).argmax(1).numpy()
    true = man["orig_label"].to_numpy()[held]
    a = float(np.mean(pred == true))
    # the recomputed predictions are the run's own: its recorded held-out accuracy
    assert a == pytest.approx(pd.read_csv(run / "metrics.csv")["heldout_accuracy"].iloc[-1], abs=1e-9)
    assert a > 0.6, "the run must have learned for the control to say anything"
    rng = np.random.default_rng(0)
    errors, rates = [], []
    for _ in range(50):
        given = rng.permutation(true)
        rate = float(np.mean(given != true))
        est = heldout_noise_rate(a, float(np.mean(pred == given)), C)
        assert abs(est - rate) <= _tolerance(a, rate * len(held), len(held)), (est, rate)
        errors.append(est - rate)
        rates.append(rate)
    assert np.mean(rates) == pytest.approx(1 - 1 / C, abs=0.03)
    # no bias: the mean error over 50 shuffles is within 4 of its standard errors of 0
    assert abs(np.mean(errors)) <= 4 * np.std(errors, ddof=1) / np.sqrt(len(errors)) + 1e-3


@pytest.mark.parametrize("rate", [0.1, 0.3])
def test_injected_rates_never_used_in_development_are_recovered(runs, rate):
    est, a, true = _estimate(runs[rate])
    held, _ = _held_rows(runs[rate])
    assert a > 0.5, "the run must have learned for the control to say anything"
    assert abs(true - rate) < 0.1                       # the draw hit its rate
    assert abs(est - true) <= _tolerance(a, true * len(held), len(held)), (est, true, a)


def test_the_estimate_tells_the_two_unseen_rates_apart(runs):
    low, _, _ = _estimate(runs[0.1])
    high, _, _ = _estimate(runs[0.3])
    assert high - low > 0.1


def test_a_shuffled_label_run_gives_no_confident_wrong_rate(runs):
    est, a, true = _estimate(runs[(C - 1) / C])
    assert abs(true - (1 - 1 / C)) < 0.06
    assert a < 2 / C                                   # at chance: nothing learned about identity
    held, _ = _held_rows(runs[(C - 1) / C])
    assert np.isnan(est) or abs(est - true) <= _tolerance(max(a, 0.5), true * len(held), len(held))
