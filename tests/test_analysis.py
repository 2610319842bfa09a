"""Tests of noisyfr.analysis: statistics against independent references, and a report on run
directories with a known structure (a cosine classifier trained here with half its labels flipped,
and the synthetic sweep of tests/fabricate.py)."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
import yaml
from fabricate import make_synthetic_run, make_synthetic_sweep
from PIL import Image
from scipy.stats import mannwhitneyu

from noisyfr.analysis import plots, stats, write_report
from noisyfr.analysis.document import markdown_table
from noisyfr.analysis.load import load_run, long_angles
from noisyfr.analysis.report import analytic_curves
from noisyfr.cli import main
from noisyfr.errors import NoisyFRError
from noisyfr.noise.manifest import write_manifest


# ----------------------------------------------------------------------------- helpers
def _train_cosine_run(out: Path, flip: float = 0.5, classes: int = 10, per_class: int = 30, epochs: int = 5,
                      seed: int = 0) -> Path:
    """Train the class centres of an ArcFace head (noisyfr.losses) on fixed Gaussian-cluster features
    with ``flip`` of the labels flipped to another class; log per-sample angles and |dL/dcos_y| per
    epoch like the trainer does. Nothing here is copied from the analysis code."""
    from noisyfr.losses import build_loss

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    dim = 16
    centres = torch.randn(classes, dim) * 2.5
    true = np.repeat(np.arange(classes), per_class)
    feats = F.normalize(centres[torch.as_tensor(true)] + torch.randn(len(true), dim))
    m = len(true)
    noisy = np.zeros(m, dtype=bool)
    noisy[rng.permutation(m)[: int(round(flip * m))]] = True
    labels = true.copy()
    labels[noisy] = (labels[noisy] + rng.integers(1, classes, noisy.sum())) % classes
    manifest = pd.DataFrame({"index": np.arange(m), "path": [f"s{i}.png" for i in range(m)],
                             "identity": [f"id{t}" for t in true], "orig_label": true, "label": labels,
                             "noise": np.where(noisy, "closed", "clean")})
    meta = {"seed": seed, "num_classes": classes, "fingerprint": {"samples": m, "sha256": "0" * 64},
            "requested": {"closed": flip}, "rates": {"noisy": float(noisy.mean())}, "samples": m}
    write_manifest(manifest, meta, out / "manifest.parquet")
    (out / "config.yaml").write_text(yaml.safe_dump({"loss": {"name": "arcface", "s": 16.0, "m": 0.5},
                                                     "seed": seed, "data": {"manifest": "manifest.parquet"}}))
    loss_fn = build_loss("arcface", s=16.0, m=0.5)
    w = torch.nn.Parameter(torch.randn(classes, dim))
    opt = torch.optim.SGD([w], lr=2.0)
    y = torch.as_tensor(labels)
    rows = []
    idx = torch.arange(m)
    for epoch in range(1, epochs + 1):
        for _ in range(6):
            cos = feats @ F.normalize(w).T
            cos.retain_grad()
            loss = F.cross_entropy(loss_fn(cos, y), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        c = cos.detach().clamp(-1, 1)
        other = c.clone()
        other[idx, y] = -2.0
        near_val, near_idx = other.max(1)
        weight = cos.grad[idx, y].abs() * m  # per-sample |dL_i/dcos_y| from the mean loss
        (out / "angles").mkdir(parents=True, exist_ok=True)
        pd.DataFrame({"sample_index": np.arange(m), "epoch": epoch, "label": labels,
                      "theta_y": torch.arccos(c[idx, y]).numpy(), "theta_nearest": torch.arccos(near_val).numpy(),
                      "nearest_label": near_idx.numpy(),
                      "theta_orig": torch.arccos(c[idx, torch.as_tensor(true)]).numpy(),
                      "weight": weight.numpy()}).to_parquet(out / "angles" / f"epoch_{epoch}.parquet")
        rows.append({"epoch": epoch, "loss": float(loss.detach()), "val_accuracy": float("nan")})
    pd.DataFrame(rows).to_csv(out / "metrics.csv", index=False)
    return out


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    return _train_cosine_run(tmp_path_factory.mktemp("cosrun") / "run")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    return make_synthetic_sweep(tmp_path_factory.mktemp("sweep") / "sw", losses=("arcface", "mystery"),
                                closed_rates=(0.0, 0.4), seeds=(0, 1), num_ids=6, per_id=20, epochs=2)


# ----------------------------------------------------------------------------- statistics
def test_detection_auc_matches_mann_whitney_and_extremes():
    rng = np.random.default_rng(1)
    clean, noisy = rng.normal(0.8, 0.2, 300), rng.normal(1.0, 0.2, 100)
    theta = np.concatenate([clean, noisy])
    is_noisy = np.r_[np.zeros(300, bool), np.ones(100, bool)]
    u = mannwhitneyu(noisy, clean).statistic  # AUC = U / (n_noisy * n_clean)
    assert stats.detection_auc(theta, is_noisy) == pytest.approx(u / (100 * 300), abs=1e-12)
    perfect = np.r_[np.linspace(0.1, 0.5, 50), np.linspace(1.0, 1.5, 20)]
    lab = np.r_[np.zeros(50, bool), np.ones(20, bool)]
    assert stats.detection_auc(perfect, lab) == 1.0
    assert stats.detection_auc(-perfect, lab) == 0.0
    assert math.isnan(stats.detection_auc(perfect, np.zeros(70, bool)))
    with pytest.raises(NoisyFRError):
        stats.detection_auc(perfect, lab[:-1])


@pytest.mark.parametrize("rate", [0.1, 0.3, 0.5])
def test_bimodal_estimate_within_tolerance_of_known_mixture(rate):
    # Well-separated modes (6 sd apart), n = 2000: documented tolerance 0.05.
    rng = np.random.default_rng(int(rate * 100))
    n = 2000
    k = int(rate * n)
    theta = np.r_[rng.normal(0.6, 0.1, n - k), rng.normal(1.4, 0.15, k)]
    est = stats.bimodal_noise_rate(theta, seed=0)
    assert abs(est["estimate"] - rate) < 0.05
    assert est["mean_low"] == pytest.approx(0.6, abs=0.03) and est["mean_high"] == pytest.approx(1.4, abs=0.03)
    assert est["bimodal"] and est == stats.bimodal_noise_rate(theta, seed=0)  # seeded -> same result


def test_bimodal_estimate_is_zero_for_a_single_mode():
    theta = np.random.default_rng(3).normal(0.7, 0.1, 2000)
    est = stats.bimodal_noise_rate(theta, seed=0)
    assert not est["bimodal"] and est["estimate"] == 0.0


@pytest.mark.parametrize("shape", ["normal", "bimodal", "tight"])
def test_closed_form_one_gaussian_bic_matches_scikit_learn(shape):
    """``gaussian_bic`` replaces ``GaussianMixture(n_components=1)``'s fit in the mixture
    reference: the same BIC (to 1e-9 relative) on three samples, and a control that could fail
    (a second mean or a variance off by 1 % changes it by far more than the tolerance)."""
    from sklearn.mixture import GaussianMixture

    from noisyfr.analysis.detection import gaussian_bic

    rng = np.random.default_rng({"normal": 0, "bimodal": 1, "tight": 2}[shape])
    x = {"normal": rng.normal(0.7, 0.1, 3000),
         "bimodal": np.r_[rng.normal(0.6, 0.1, 700), rng.normal(1.4, 0.2, 300)],
         "tight": rng.normal(1.2, 1e-3, 50)}[shape]
    ref = GaussianMixture(n_components=1, random_state=0, reg_covar=1e-6).fit(x[:, None]).bic(x[:, None])
    got = gaussian_bic(x, reg_covar=1e-6)
    assert got == pytest.approx(ref, rel=1e-9, abs=1e-6)
    n, mu, var = len(x), x.mean(), x.var() * 1.01 + 1e-6  # the control: a 1 % wider Gaussian
    worse = -2 * np.sum(-0.5 * np.log(2 * np.pi * var) - (x - mu) ** 2 / (2 * var)) + 2 * np.log(n)
    assert worse - got > 1e-6 * abs(got) + 1e-4


@pytest.mark.parametrize("shape", ["normal", "bimodal", "overlap", "tiny", "ties", "uniform"])
@pytest.mark.parametrize("seed", [0, 7])
@pytest.mark.filterwarnings("ignore::sklearn.exceptions.ConvergenceWarning")
def test_two_gaussians_is_scikit_learns_mixture(shape, seed):
    """``two_gaussians`` runs scikit-learn's GaussianMixture(n_components=2, n_init=3) fit with
    its EM written in 1-D: the same weights, means, variances and BIC (to 1e-9 relative) on
    samples that converge in a few iterations or in many (overlapping modes), tiny ones, ties and
    a flat one; and a control that could fail (one EM iteration fewer moves the fit by far more)."""
    from sklearn.mixture import GaussianMixture

    from noisyfr.analysis import detection

    rng = np.random.default_rng({"normal": 0, "bimodal": 1, "overlap": 2, "tiny": 3, "ties": 4, "uniform": 5}[shape])
    x = {"normal": rng.normal(0.7, 0.1, 3000),
         "bimodal": np.r_[rng.normal(0.6, 0.1, 2400), rng.normal(1.4, 0.2, 600)],
         "overlap": np.r_[rng.normal(0.8, 0.15, 700), rng.normal(1.0, 0.15, 300)],
         "tiny": rng.normal(1.0, 0.3, 5),
         "ties": np.round(rng.normal(1.0, 0.3, 400), 1),
         "uniform": rng.uniform(0.2, 2.5, 2000)}[shape]
    gm = GaussianMixture(n_components=2, n_init=3, random_state=seed, reg_covar=1e-6).fit(x[:, None])
    means, sds, weights, bic = detection.two_gaussians(x, seed)
    np.testing.assert_allclose(means, gm.means_.ravel(), rtol=1e-9)
    np.testing.assert_allclose(sds ** 2, gm.covariances_.ravel(), rtol=1e-9)
    np.testing.assert_allclose(weights, gm.weights_, rtol=1e-9)
    assert bic == pytest.approx(gm.bic(x[:, None]), rel=1e-9)
    if shape == "overlap":  # the control: stopping one iteration early is visible
        short = GaussianMixture(n_components=2, n_init=3, random_state=seed, reg_covar=1e-6,
                                max_iter=max(1, gm.n_iter_ - 1)).fit(x[:, None])
        assert np.abs(short.means_.ravel() - means).max() > 1e-6


def test_kmeans_labels_are_scikit_learns_on_many_samples():
    """``_kmeans_labels`` draws from the RandomState as scikit-learn's KMeans(n_clusters=2,
    n_init=1) does and ends with the same labels: 200 samples of every shape the mixture meets
    (sizes 4 to 5,000, one or two modes, ties, outliers), three fits each from one generator, as
    GaussianMixture makes them; and the generators are left in the same state."""
    from sklearn.cluster import KMeans

    from noisyfr.analysis.detection import _kmeans_labels

    rng = np.random.default_rng(11)
    for case in range(200):
        n = int(rng.choice([4, 9, 50, 400, 3000, 5000]))
        k = case % 4
        x = (rng.normal(1.0, 0.3, n) if k == 0 else
             np.r_[rng.normal(0.7, 0.1, n - n // 4), rng.normal(1.5, 0.2, n // 4)] if k == 1 else
             np.round(rng.uniform(0.2, 2.8, n), 1) if k == 2 else
             np.r_[rng.normal(1.0, 0.05, n - 1), [3.0]])
        ours, theirs = np.random.RandomState(case), np.random.RandomState(case)
        for _ in range(3):
            got = _kmeans_labels(x, ours)
            want = KMeans(n_clusters=2, n_init=1, random_state=theirs).fit(x[:, None]).labels_
            if got is None:  # an emptied cluster: two_gaussians hands it to scikit-learn
                continue
            assert np.array_equal(got, want), (case, n, k)
        assert ours.uniform() == theirs.uniform()
    # one value repeated: both seeds land on it and a cluster is empty, which is left to scikit-learn
    assert _kmeans_labels(np.full(6, 0.5), np.random.RandomState(0)) is None


def _random_angles(seed=0, runs=2, epochs=2, n=200):
    rng = np.random.default_rng(seed)
    frames = []
    for r in range(runs):
        for e in range(1, epochs + 1):
            noise = rng.choice(["clean", "closed", "open"], n, p=[0.6, 0.3, 0.1])
            label = rng.integers(0, 10, n)
            theta_y = rng.uniform(0.1, 3.0, n)
            weight = rng.exponential(1.0, n)
            frames.append(pd.DataFrame({"run": f"r{r}", "loss": "arcface", "condition": "c", "seed": r,
                                        "noise_rate": 0.4, "epoch": e, "sample_index": np.arange(n),
                                        "label": label, "label_used": label, "orig_label": label,
                                        "theta_y": theta_y, "theta_nearest": rng.uniform(0.1, 3, n),
                                        "nearest_label": (label + 1) % 10, "theta_dominant": theta_y,
                                        "weight": weight, "weight_theta": weight * np.sin(theta_y),
                                        "grad_norm": rng.exponential(2.0, n), "noise": noise,
                                        "is_noisy": noise != "clean"}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("weight", ["weight", "weight_theta", "grad_norm"])
def test_weight_shares_sum_to_one_and_match_direct_sums(weight):
    a = _random_angles()
    types = stats.noise_type_stats(a, weight=weight)
    assert np.allclose(types.groupby(["run", "epoch"])["weight_share"].sum(), 1.0)
    reg = stats.region_stats(a, quantile=0.8, weight=weight)
    assert np.allclose(reg.groupby(["run", "epoch"])["weight_share"].sum(), 1.0)
    ep = stats.epoch_stats(a, weight=weight)
    assert set(ep["weight_column"]) == {weight}
    for (run, epoch), g in a.groupby(["run", "epoch"]):
        direct = g.loc[g["is_noisy"], weight].sum() / g[weight].sum()
        row = ep[(ep["run"] == run) & (ep["epoch"] == epoch)].iloc[0]
        assert row["noisy_weight_share"] == pytest.approx(direct)
        assert row["theta_noisy_mean_deg"] == pytest.approx(np.degrees(g.loc[g["is_noisy"], "theta_y"]).mean())
        # the centre holds the stated quantile of the clean samples
        t = np.quantile(g.loc[~g["is_noisy"], "theta_y"], 0.8)
        rr = reg[(reg["run"] == run) & (reg["epoch"] == epoch)].set_index("region")
        assert rr.loc["centre", "threshold_deg"] == pytest.approx(np.degrees(t))
        assert (g.loc[~g["is_noisy"], "theta_y"] <= t).mean() == pytest.approx(0.8, abs=0.01)
        share_noisy = ((g["theta_y"] > t) & g["is_noisy"]).sum() / g["is_noisy"].sum()
        assert rr.loc["periphery", "share_of_noisy"] == pytest.approx(share_noisy)
    # binned weight: per-bin sums add up to the total weight of the last epoch
    b = stats.binned_weight(a, bins=12, weight=weight)
    last = a[a["epoch"] == 2]
    assert b.groupby("run")["weight_sum"].sum().to_numpy() == pytest.approx(
        last.groupby("run")[weight].sum().to_numpy(), rel=1e-9)
    with pytest.raises(NoisyFRError):
        stats.region_stats(a, quantile=1.5)


def test_accuracy_table_mean_and_sample_sd_over_seeds(sweep):
    from noisyfr.analysis.load import load_runs
    from noisyfr.losses import loss_label

    res = pd.read_csv(sweep / "results.csv")
    rtab = stats.runs_table(load_runs(sweep))
    pts = stats.accuracy_points(res, rtab)
    assert pts["learned"].all()                     # the synthetic runs' clean samples are all fitted
    tab = stats.accuracy_table(pts)
    assert set(tab["n_seeds"]) == {2} and set(tab["n_not_learned"]) == {0}
    for loss, rate in [("arcface", 0.4), ("mystery", 0.0)]:
        vals = res[(res["loss.name"] == loss) & (res["data.noise.closed"] == rate)]["final_val_accuracy"]
        label = loss_label({"name": loss})
        row = tab[(tab["loss"] == label) & (tab["noise_rate"].round(6) == rate)].iloc[0]
        assert row["accuracy_mean"] == pytest.approx(vals.mean())
        assert row["accuracy_std"] == pytest.approx(np.std(vals, ddof=1))
    # a run that did not learn is left out of the means and counted
    one = pts.index[(pts["loss"] == loss_label({"name": "arcface"})) & (pts["noise_rate"].round(6) == 0.4)][0]
    pts2 = pts.copy()
    pts2.loc[one, "learned"] = False
    row = stats.accuracy_table(pts2).set_index(["loss", "condition"]).loc[(pts.loc[one, "loss"], "closed=0.4")]
    assert row["n_seeds"] == 1 and row["n_not_learned"] == 1
    others = pts2[(pts2["loss"] == pts.loc[one, "loss"]) & (pts2["condition"] == "closed=0.4") & pts2["learned"]]
    assert row["accuracy_mean"] == pytest.approx(others["accuracy"].mean())
    with pytest.raises(NoisyFRError):
        stats.accuracy_points(res.drop(columns=["final_val_accuracy", "best_val_accuracy"]))


def test_analytic_curve_matches_arcface_closed_form():
    s, m, c = 16.0, 0.3, 10
    cur = analytic_curves({"arcface": {"s": s, "m": m}, "no_such_loss": {}}, num_classes=c)
    assert set(cur["loss"]) == {"arcface"}  # unknown loss degrades to no curve
    th = np.radians(cur["theta_deg"].to_numpy())
    keep = (th + m < math.pi) & (th > 0.01)
    th = np.where(keep, th, 1.0)
    t = np.cos(th + m)
    p = 1 / (1 + (c - 1) * np.exp(-s * t))
    expected = s * (1 - p) * np.sin(th + m) / np.sin(th)  # |d cos(theta+m) / d cos theta| = sin(theta+m)/sin(theta)
    assert cur["gradient"].to_numpy()[keep] == pytest.approx(expected[keep], rel=1e-5)
    assert cur["gradient_theta"].to_numpy()[keep] == pytest.approx((expected * np.sin(th))[keep], rel=1e-5)


def test_markdown_table_renders_rows():
    md = markdown_table(pd.DataFrame({"a": [1.23456, float("nan")], "b": ["x|y", "z"]}))
    lines = md.splitlines()
    assert lines[0] == "| a | b |" and len(lines) == 4
    assert "1.235" in lines[2] and "x/y" in lines[2] and "| - |" in lines[3]


# ----------------------------------------------------------------------------- recovery on runs
def test_trained_run_noisy_samples_sit_further_and_are_separable(trained_run, tmp_path):
    run = load_run(trained_run)
    assert run.condition == "closed=0.5" and run.noise_rate == pytest.approx(0.5)
    a = long_angles([run])
    ep = stats.epoch_stats(a, weight="weight")
    last = ep[ep["epoch"] == ep["epoch"].max()].iloc[0]
    assert last["noisy_fraction"] == pytest.approx(0.5)
    assert last["theta_noisy_mean_deg"] > last["theta_clean_mean_deg"] + 10
    assert last["auc"] > 0.75
    assert last["theta_gap_deg"] > ep.iloc[0]["theta_gap_deg"]  # the gap opens up during training
    out = tmp_path / "rep"
    path = write_report(trained_run, out, weight="weight", learned_threshold=0.0)
    summary = pd.read_csv(out / "tables" / "summary.csv")
    assert summary.loc[0, "theta_gap_deg"] == pytest.approx(last["theta_gap_deg"], rel=1e-4)
    assert 0.0 <= summary.loc[0, "noisy_weight_share"] <= 1.0
    assert path == out / "report.md" and (out / "report.html").is_file()


def test_report_on_sweep_is_complete_deterministic_and_degrades_for_unknown_loss(sweep, tmp_path):
    out1, out2 = tmp_path / "r1", tmp_path / "r2"
    assert main(["analyze", str(sweep), "--out", str(out1), "--weight", "weight"]) == 0
    write_report(sweep, out2, figures=False, weight="weight")  # same tables and text, no redrawing
    md = (out1 / "report.md").read_text()
    html = (out1 / "report.html").read_text()
    pngs = sorted(p.name for p in (out1 / "figures").glob("*.png"))
    assert "accuracy.png" in pngs and "noisy_weight_share.png" in pngs and "health.png" in pngs
    assert len(pngs) == 10   # no noise-rate figure: the fabricated runs have no held-out images
    for name in pngs:
        assert f"figures/{name}" in md and f'<img src="figures/{name}"' in html
        with Image.open(out1 / "figures" / name) as im:
            assert im.size[0] > 100 and im.size[1] > 100
    assert not (out2 / "figures").exists()
    assert (out2 / "report.md").read_text() == md
    for csv in (out1 / "tables").glob("*.csv"):
        assert csv.read_bytes() == (out2 / "tables" / csv.name).read_bytes()
    pts = pd.read_csv(out1 / "tables" / "accuracy_points.csv")
    plots.save_figure(plots.accuracy(pts), tmp_path / "a1.png")
    plots.save_figure(plots.accuracy(pts), tmp_path / "a2.png")
    assert (tmp_path / "a1.png").read_bytes() == (tmp_path / "a2.png").read_bytes()
    assert "<script" not in html and "http" not in html
    assert "no analytic curve for mystery" in md
    summary = pd.read_csv(out1 / "tables" / "summary.csv")
    assert set(summary["condition"]) == {"clean", "closed=0.4"} and set(summary["n_learned"]) == {2}
    assert "Weight used for shares: **`weight`**" in md and "8 of 8 runs learned" in md
    noisy = summary[summary["condition"] == "closed=0.4"]
    assert (noisy["theta_gap_deg"] > 20).all() and (noisy["auc"] > 0.95).all()
    est = stats.last_epoch(pd.read_csv(out1 / "tables" / "noise_rate_estimates.csv"))
    assert (est.loc[est["true_rate"] > 0, "disagreement_rate"] - 0.4).abs().max() < 0.1
    assert not list(out1.rglob("*.tmp*"))  # atomic writes leave no temporaries


# ----------------------------------------------------------------------------- bad input
def _err(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    return code, err


def test_cli_bad_inputs_exit_2_with_one_line_and_no_report(tmp_path, capsys):
    out = tmp_path / "rep"
    code, err = _err(capsys, ["analyze", str(tmp_path / "nope"), "--out", str(out)])
    assert code == 2 and "nope" in err and "no such" in err and len(err.splitlines()) == 1
    (tmp_path / "empty").mkdir()
    code, err = _err(capsys, ["analyze", str(tmp_path / "empty"), "--out", str(out)])
    assert code == 2 and "no run directories" in err
    run = make_synthetic_run(tmp_path / "run", num_ids=4, per_id=5, epochs=1)
    f = run / "angles" / "epoch_1.parquet"
    pd.read_parquet(f).drop(columns=["weight"]).to_parquet(f)
    code, err = _err(capsys, ["analyze", str(run), "--out", str(out)])
    assert code == 2 and "weight" in err and "epoch_1.parquet" in err
    run2 = make_synthetic_run(tmp_path / "run2", num_ids=4, per_id=5, epochs=1)
    cfg = yaml.safe_load((run2 / "config.yaml").read_text())
    cfg["data"]["manifest"] = str(tmp_path / "missing.parquet")
    (run2 / "config.yaml").write_text(yaml.safe_dump(cfg))
    code, err = _err(capsys, ["analyze", str(run2), "--out", str(out)])
    assert code == 2 and "missing.parquet" in err
    run3 = make_synthetic_run(tmp_path / "run3", num_ids=4, per_id=5, epochs=1)
    a = pd.read_parquet(run3 / "angles" / "epoch_1.parquet")
    a.loc[0, "theta_y"] = 200.0  # degrees instead of radians
    a.to_parquet(run3 / "angles" / "epoch_1.parquet")
    code, err = _err(capsys, ["analyze", str(run3), "--out", str(out)])
    assert code == 2 and "radians" in err
    assert not out.exists()


@pytest.mark.parametrize("metric, problem", [("NOSUCHCOLUMN", "no such column"),
                                             ("loss.name", "not a numeric column")])
def test_metric_must_name_a_numeric_results_column(sweep, tmp_path, capsys, metric, problem):
    out = tmp_path / "rep"
    code, err = _err(capsys, ["analyze", str(sweep), "--out", str(out), "--metric", metric])
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"noisyfr analyze: error: --metric '{metric}': {problem} of {sweep / 'results.parquet'}")
    numeric = "data.noise.closed, data.noise.open, seed, epochs, final_val_accuracy, best_val_accuracy"
    assert err.endswith(f"(numeric columns: {numeric})")
    assert not out.exists()
    # a column that exists is used, and the report says which
    assert main(["analyze", str(sweep), "--out", str(out), "--metric", "best_val_accuracy",
                 "--no-figures"]) == 0
    assert "column `best_val_accuracy`" in (out / "report.md").read_text()


def test_metric_on_a_run_directory_is_refused(tmp_path, capsys):
    run = make_synthetic_run(tmp_path / "run", num_ids=4, per_id=5, epochs=1)
    out = tmp_path / "rep"
    code, err = _err(capsys, ["analyze", str(run), "--out", str(out), "--metric", "val_accuracy"])
    assert code == 2 and len(err.splitlines()) == 1
    assert f"--metric 'val_accuracy': {run} has no sweep results table" in err
    assert not out.exists()


def test_condition_label_from_sidecar():
    from noisyfr.analysis.load import condition_from_meta

    meta = {"requested": {"closed": 0.4, "closed_mode": "pairwise", "open": 0.1, "split": 0, "merge": 2}}
    assert condition_from_meta(meta) == ("closed_pairwise=0.4,merge=2,open=0.1",
                                         {"closed": 0.4, "open": 0.1, "merge": 2.0})
    assert condition_from_meta({"requested": {"closed": 0.0, "closed_mode": "symmetric"}}) == ("clean", {})
    assert condition_from_meta({"seed": 1}) is None
