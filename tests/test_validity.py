"""Valid measurements: training health and the learned flag, the per-sample weight columns read
where the loss really trains (BoundaryFace corrections, sub-centres, negatives and norm terms),
loss labels that carry every setting, comparable regions, and positive controls where the right
answer is known."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from conftest import boundaryface_batch, exit_status

from noisyfr.analysis import stats, write_report
from noisyfr.analysis.load import load_runs, long_angles
from noisyfr.errors import NoisyFRError
from noisyfr.losses import LOSSES, MarginHead, MarginLoss, build_loss, loss_label, loss_settings, register_loss
from noisyfr.train import load_config, train
from noisyfr.train.angles import batch_rows, health_metrics, learned
from noisyfr.train.step import Stepper


# ----------------------------------------------------------------------------- health
def test_health_metrics_by_hand():
    # 6 rows: prediction = label when theta_y <= theta_nearest, else nearest_label
    frame = pd.DataFrame({
        "label":         [0, 1, 2, 3, 4, 5],
        "theta_y":       [0.5, 1.5, 0.4, 1.4, 1.2, 0.9],
        "theta_nearest": [1.0, 1.0, 1.0, 1.0, 1.3, 1.0],
        "nearest_label": [1, 7, 9, 8, 2, 3],
        "noise":         ["clean", "clean", "closed", "closed", "closed", "open"],
        "orig_label":    [0, 1, 5, 8, 9, -1],
    })
    h = health_metrics(frame)
    assert h["clean_true_accuracy"] == 0.5                 # row 0 right, row 1 predicted 7
    assert h["noisy_fit_given"] == pytest.approx(2 / 3)    # rows 2 and 4 predicted as the given label
    assert h["noisy_fit_true"] == pytest.approx(1 / 3)     # row 3 predicted as its true label 8
    assert h["theta_clean_median"] == pytest.approx(1.0)
    assert h["theta_noisy_median"] == pytest.approx(np.median([0.4, 1.4, 1.2, 0.9]))
    only_clean = health_metrics(frame.drop(columns=["noise", "orig_label"]))
    assert only_clean["clean_true_accuracy"] == pytest.approx(4 / 6)  # rows 0, 2, 4, 5
    assert math.isnan(only_clean["noisy_fit_given"]) and math.isnan(only_clean["theta_noisy_median"])
    assert learned(0.8) and not learned(0.79) and not learned(float("nan"))
    assert learned(0.5, threshold=0.5)


def _tiny(out: Path, **over) -> dict:
    cfg = {"data": {"train": "synthetic:ids=6,per_id=10,size=32,seed=0", "image_size": 32,
                    "noise": {"closed": 0.4, "seed": 0}},
           "model": {"backbone": "small_cnn", "embedding_dim": 16, "width": 0.5},
           "loss": {"name": "arcface", "s": 16.0, "m": 0.3},
           "optim": {"epochs": 2, "batch_size": 20, "lr": 0.05},
           "seed": 1, "device": "cpu", "output_dir": str(out)}
    return load_config(cfg, list(over.items()))


def test_trainer_records_health_and_learned_flag_per_epoch(tmp_path):
    cfg = _tiny(tmp_path / "run", **{"health.learned_accuracy": 0.0})
    last = train(cfg)
    metrics = pd.read_csv(tmp_path / "run" / "metrics.csv")
    for col in ("clean_true_accuracy", "noisy_fit_given", "noisy_fit_true", "theta_clean_median",
                "theta_noisy_median", "learned", "n_corrected"):
        assert col in metrics.columns
    assert metrics["learned"].all() and last["learned"]  # threshold 0: every epoch counts as learned
    # the recorded health equals the health recomputed from the written angle log + manifest
    man = pd.read_parquet(tmp_path / "run" / "manifest.parquet")
    for epoch in (1, 2):
        log = pd.read_parquet(tmp_path / "run" / "angles" / f"epoch_{epoch}.parquet")
        log = log.merge(man[["index", "noise", "orig_label"]], left_on="sample_index", right_on="index")
        ref = health_metrics(log)
        row = metrics[metrics["epoch"] == epoch].iloc[0]
        for k, v in ref.items():
            assert row[k] == pytest.approx(v, rel=1e-6, nan_ok=True)
    strict = train(_tiny(tmp_path / "run2", **{"health.learned_accuracy": 1.0}))
    assert strict["learned"] == (strict["clean_true_accuracy"] >= 1.0)
    for bad in (-0.1, 1.5, "nan"):
        with pytest.raises(NoisyFRError, match="health.learned_accuracy"):
            _tiny(tmp_path / "x", **{"health.learned_accuracy": bad})


# ----------------------------------------------------------------------------- weights
def _per_sample_reference(head, feats, labels, used):
    """Each sample alone through the head (eval mode: no running-state update): its
    |dL/dcos[used]| and ||dL/df||."""
    w, g = [], []
    for i in range(len(labels)):
        fi = feats[i:i + 1].detach().clone().requires_grad_(True)
        li, _, ci = head(fi, labels[i:i + 1])
        ci.retain_grad()
        li.backward()
        w.append(abs(float(ci.grad[0, used[i]])))
        g.append(float(fi.grad.norm()))
    return np.array(w), np.array(g)


@pytest.mark.parametrize("name", ["arcface", "curricularface", "magface", "adaface", "softmax",
                                  "subcenter_arcface", "expface"])
@pytest.mark.parametrize("mode", ["exact", "detached"])
def test_grad_norm_is_the_per_sample_embedding_gradient(name, mode):
    """grad_norm includes negatives (CurricularFace's hard ones) and feature-norm terms (MagFace's
    margin and regulariser, AdaFace): checked against each sample's own backward pass."""
    torch.manual_seed(0)
    params = {} if name == "softmax" else {"s": 16.0}
    head = MarginHead(8, 5, build_loss(name, grad_mode=mode, **params)).double().eval()
    if name == "curricularface":
        head.loss.t.fill_(0.3)  # a non-zero hard-negative coefficient
    feats = (torch.randn(7, 8, dtype=torch.float64) * 5).requires_grad_(True)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    loss, _, cos = head(feats, labels)
    cos.retain_grad()
    loss.backward()
    rows = batch_rows(cos, labels, head.last_labels, labels, grad_cos=cos.grad,
                      grad_feat=feats.grad).numpy()
    w_ref, g_ref = _per_sample_reference(head, feats, labels, head.last_labels)
    np.testing.assert_allclose(rows[:, 5], w_ref, rtol=1e-4)
    np.testing.assert_allclose(rows[:, 7], g_ref, rtol=1e-4)
    assert (rows[:, 7] > 0).all()


def test_boundaryface_weight_is_read_at_the_corrected_label():
    """A sample labelled 0 that sits next to class 2's centre is corrected to 2: label_used = 2 and
    its weight is |dL/dcos| at column 2, where it trains at full strength (column 0 is a negative)."""
    head, feats, labels = boundaryface_batch(requires_grad=True)
    loss, _, cos = head(feats, labels)
    cos.retain_grad()
    loss.backward()
    used = head.last_labels
    assert used.tolist() == [2, 0, 1]
    rows = batch_rows(cos, labels, used, labels, grad_cos=cos.grad, grad_feat=feats.grad).numpy()
    assert rows[0, 5] == pytest.approx(abs(float(cos.grad[0, 2])) * 3)
    assert rows[0, 5] > 10 * abs(float(cos.grad[0, 0])) * 3  # the old reading would say "about 0"
    assert rows[0, 0] == pytest.approx(math.acos(float(cos.detach()[0, 0])), abs=1e-6)  # given label


def test_subcenter_theta_dominant_is_the_angle_to_the_dominant_subcentre():
    torch.manual_seed(0)
    head = MarginHead(6, 4, build_loss("subcenter_arcface", s=16.0, K=3)).double()
    stepper = Stepper(torch.nn.Linear(6, 6).double(), head, torch.optim.SGD(head.parameters(), lr=0.0))
    with torch.no_grad():
        head.subcentre_counts.zero_()
        head.subcentre_counts[:, 1] = 5  # sub-centre 1 dominates every class
    feats = torch.randn(5, 6, dtype=torch.float64)
    labels = torch.tensor([0, 1, 2, 3, 0])
    got = stepper._theta_dominant(feats, labels).numpy()
    w = F.normalize(head.weight.detach(), dim=1).view(4, 3, 6)
    x = F.normalize(feats, dim=1)
    for i, y in enumerate(labels.tolist()):
        assert got[i] == pytest.approx(math.acos(float(x[i] @ w[y, 1])), abs=1e-6)
    single = Stepper(torch.nn.Linear(6, 6), MarginHead(6, 4, "arcface"),
                     torch.optim.SGD(head.parameters(), lr=0.0))
    assert single._theta_dominant(feats.float(), labels) is None  # theta_dominant = theta_y then


def test_boundaryface_run_logs_label_used_and_counts_corrections(tmp_path):
    cfg = _tiny(tmp_path / "bf", **{"loss": {"name": "boundaryface", "s": 16.0, "start_epoch": 1},
                                    "optim.epochs": 3})
    train(cfg)
    metrics = pd.read_csv(tmp_path / "bf" / "metrics.csv")
    for epoch in (1, 2, 3):
        log = pd.read_parquet(tmp_path / "bf" / "angles" / f"epoch_{epoch}.parquet")
        n = int((log["label_used"] != log["label"]).sum())
        assert metrics.loc[metrics["epoch"] == epoch, "n_corrected"].iloc[0] == n
        if epoch == 1:
            assert n == 0  # correction starts after start_epoch
    run = load_runs(tmp_path / "bf")[0]
    ep = stats.epoch_stats(long_angles([run]), weight="weight")
    assert ep["n_corrected"].tolist() == metrics["n_corrected"].tolist()


# ----------------------------------------------------------------------------- labels, regions
def test_loss_label_carries_scale_margin_and_grad_mode():
    assert loss_label({"name": "arcface", "s": 32, "m": 0.5, "grad_mode": "detached"}) == \
        "arcface s=32 m=0.5 detached"
    assert loss_label({"name": "expface"}) == "expface s=64 m=0.7 exact"   # defaults filled in
    assert loss_label({"name": "softmax"}) == "softmax exact"
    assert loss_label({"name": "magface", "easy_margin": False}).endswith("easy_margin=False exact")
    assert loss_settings({"name": "cosface", "grad_mode": "detached"}) == \
        {"name": "cosface", "m": 0.35, "s": 64.0, "grad_mode": "detached"}


def test_fixed_and_2d_regions_by_hand():
    deg = np.radians
    a = pd.DataFrame({"run": "r", "loss": "l", "condition": "c", "seed": 0, "noise_rate": 0.5, "epoch": 1,
                      "theta_y": deg([30, 30, 80, 80, 50, 100]), "theta_nearest": deg([80, 40, 80, 40, 90, 30]),
                      "is_noisy": [False, False, True, True, False, True],
                      "grad_norm": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    fixed = stats.region_stats(a, method="fixed", threshold_deg=60).set_index("region")
    assert fixed.loc["centre", "n"] == 3 and fixed.loc["periphery", "n"] == 3
    assert fixed.loc["periphery", "weight_share"] == pytest.approx(13 / 21)
    two = stats.region_stats(a, method="2d", threshold_deg=60).set_index("region")
    assert two["n"].to_dict() == {"centre": 2, "far_from_all": 1, "near_both": 1, "nearer_other": 2}
    assert two.loc["nearer_other", "share_of_noisy"] == pytest.approx(2 / 3)
    assert two["weight_share"].sum() == pytest.approx(1.0)
    ratio = stats.periphery_ratio(two.reset_index())
    assert ratio["periphery_to_centre_weight"].iloc[0] == pytest.approx(((2 + 3 + 4 + 6) / 4) / 3.0)
    for bad in (0, 180, -5, 200):
        with pytest.raises(NoisyFRError, match="region threshold"):
            stats.region_stats(a, method="fixed", threshold_deg=bad)
    with pytest.raises(NoisyFRError, match="weight 'nope'"):
        stats.epoch_stats(a, weight="nope")


# ----------------------------------------------------------------------------- positive controls
class _Cutoff(MarginLoss):
    """Test-only loss: CosFace-like, but from epoch ``start`` on the target is flat beyond
    ``cut_deg``, so a sample there gets exactly zero target weight |dL/dcos_y|."""

    def __init__(self, s: float = 16.0, cut_deg: float = 70.0, start: int = 4, grad_mode: str = "exact"):
        super().__init__(s=s, grad_mode=grad_mode)
        self.cut = math.radians(cut_deg)
        self.cut_deg, self.start = cut_deg, start

    def target_logit(self, theta, norms=None):
        if self.epoch < self.start:
            return torch.cos(theta) - 0.2
        return torch.cos(torch.clamp(theta, max=self.cut)) - 0.2


CUT, EPOCHS = 75.0, 10


@pytest.fixture(scope="module")
def control_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("control")
    register_loss("test_cutoff")(_Cutoff)
    for name in ("a", "b"):  # two runs, identical loss and seeds
        cfg = {"data": {"train": "synthetic:ids=10,per_id=48,size=32,seed=0", "image_size": 32,
                        "noise": {"closed": 0.2, "seed": 0}},
               "model": {"backbone": "small_cnn", "embedding_dim": 32, "width": 0.5},
               "loss": {"name": "test_cutoff", "s": 16.0, "cut_deg": CUT, "start": 9},
               "optim": {"epochs": EPOCHS, "batch_size": 32, "lr": 0.1, "warmup_epochs": 1},
               "seed": 0, "device": "cpu", "output_dir": str(root / "trials" / name)}
        train(load_config(cfg))
    yield root
    LOSSES.pop("test_cutoff", None)


def test_positive_control_zero_weight_beyond_the_cut_is_recovered(control_runs, tmp_path):
    """Trained with a loss whose target weight is exactly zero beyond CUT degrees (from epoch 9),
    the noisy samples, which sit beyond it, carry almost no weight: the analysis must say so."""
    out = tmp_path / "rep"
    write_report(control_runs, out, weight="weight", region_deg=CUT, learned_threshold=0.0,
                 figures=False)
    ep = pd.read_csv(out / "tables" / "epoch_stats.csv")
    log = pd.read_parquet(control_runs / "trials" / "a" / "angles" / f"epoch_{EPOCHS}.parquet")
    beyond = (log["theta_y"] > math.radians(CUT)).to_numpy()
    assert (log.loc[beyond, "weight"] == 0).all() and (log.loc[~beyond, "weight"] > 0).all()
    man = pd.read_parquet(control_runs / "trials" / "a" / "manifest.parquet")
    noisy = man.set_index("index").loc[log["sample_index"], "noise"].to_numpy() != "clean"
    assert beyond[noisy].mean() > 0.8            # most noisy samples sit beyond the cut
    assert beyond[~noisy].mean() < 0.2           # most clean samples inside it
    # the analysis recovers it: the noisy share is far below the noisy fraction (0.2) and equals the
    # share of the few noisy samples inside the cut
    expect = log.loc[noisy & ~beyond, "weight"].sum() / log["weight"].sum()
    row = ep[(ep["run"] == "trials/a") & (ep["epoch"] == EPOCHS)].iloc[0]
    assert row["noisy_fraction"] == pytest.approx(0.2, abs=0.01)
    assert row["noisy_weight_share"] == pytest.approx(expect, rel=1e-5)
    assert row["noisy_weight_share"] < 0.1       # vs a noisy fraction of 0.2
    before = ep[(ep["run"] == "trials/a") & (ep["epoch"] == 8)].iloc[0]
    assert before["noisy_weight_share"] > 0.1    # before the cut, noisy samples pulled their share
    reg = pd.read_csv(out / "tables" / "regions.csv")
    per = reg[(reg["method"] == "fixed") & (reg["epoch"] == EPOCHS) & (reg["region"] == "periphery")]
    assert len(per) == 2 and (per["weight_share"] == 0).all()   # nothing beyond the fixed cut


def test_positive_control_identical_runs_give_identical_shares(control_runs, tmp_path):
    write_report(control_runs, tmp_path / "rep", weight="grad_norm", learned_threshold=0.0, figures=False)
    ep = pd.read_csv(tmp_path / "rep" / "tables" / "epoch_stats.csv")
    a = ep[ep["run"] == "trials/a"].drop(columns=["run"]).reset_index(drop=True)
    b = ep[ep["run"] == "trials/b"].drop(columns=["run"]).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)
    for epoch in range(1, EPOCHS + 1):
        fa = control_runs / "trials" / "a" / "angles" / f"epoch_{epoch}.parquet"
        fb = control_runs / "trials" / "b" / "angles" / f"epoch_{epoch}.parquet"
        pd.testing.assert_frame_equal(pd.read_parquet(fa), pd.read_parquet(fb))


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("flags, needle", [
    (["--weight", "nope"], "weight 'nope'"),
    (["--region-deg", "0"], "argument --region-deg: must be in (0, 180), got 0"),
    (["--region-deg", "180"], "argument --region-deg: must be in (0, 180), got 180"),
    (["--region-deg", "nan"], "argument --region-deg: expected a finite number"),
    (["--learned-threshold", "1.2"], "argument --learned-threshold: must be in [0, 1]"),
    (["--learned-threshold", "-0.5"], "argument --learned-threshold: must be in [0, 1]"),
])
def test_analyze_bad_options_exit_2_one_line_no_report(control_runs, tmp_path, capsys, flags, needle):
    out = tmp_path / "rep"
    code = exit_status(["analyze", str(control_runs), "--out", str(out), *flags])
    err = capsys.readouterr().err.strip()
    assert code == 2 and needle in err and len(err.splitlines()) == 1
    assert not out.exists()


def test_periphery_ratio_has_one_row_per_run_epoch_and_method():
    """Two runs of different losses and seeds: one row per (run, epoch, method) present in the
    regions, not one per combination of the key columns' values (the control: the cross product
    would have 2 x 2 x 2 x 2 = 16 rows per method and epoch, each NaN but the two real ones)."""
    rows = []
    for run, loss, seed, w in (("a", "arcface", 0, 2.0), ("b", "cosface", 1, 3.0)):
        for region, n, mean in (("centre", 4, 1.0), ("periphery", 2, w)):
            rows.append({"run": run, "loss": loss, "condition": "c", "seed": seed, "epoch": 1,
                         "method": "fixed", "region": region, "n": n, "weight_mean": mean})
    ratio = stats.periphery_ratio(pd.DataFrame(rows))
    assert ratio[["run", "loss", "seed"]].values.tolist() == [["a", "arcface", 0], ["b", "cosface", 1]]
    assert ratio["periphery_to_centre_weight"].tolist() == pytest.approx([2.0, 3.0])
