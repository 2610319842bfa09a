"""The streaming analysis engine (noisyfr.analysis.engine, DuckDB) against independent
references: numpy medians and quantiles, scikit-learn's AUC, the trainer's own health metrics;
its bad-input errors; and the read-only SQL views of ``noisyfr query``."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fabricate import make_synthetic_run, make_synthetic_sweep
from sklearn.metrics import roc_auc_score

from noisyfr.analysis import engine, stats
from noisyfr.cli import main
from noisyfr.train.angles import HEALTH_COLUMNS, health_metrics


def _frame(seed=0, n=3000, epochs=2, ties=False):
    rng = np.random.default_rng(seed)
    frames = []
    for e in range(1, epochs + 1):
        noise = rng.choice(["clean", "closed", "open", "split"], n, p=[0.6, 0.2, 0.1, 0.1])
        label = rng.integers(0, 20, n)
        orig = np.where(noise == "closed", (label + 1) % 20, np.where(noise == "open", -1, label))
        theta = rng.uniform(0.05, 3.0, n)
        if ties:  # few distinct values: many pairs share a bin
            theta = np.round(theta, 1)
        near = rng.uniform(0.05, 3.0, n)
        nearest = np.where(noise == "closed", orig, (label + 2) % 20)
        w = rng.exponential(1.0, n)
        frames.append(pd.DataFrame({
            "run": "r", "epoch": e, "sample_index": np.arange(n), "label": label, "label_used": label,
            "orig_label": orig, "noise": noise, "is_noisy": noise != "clean", "theta_y": theta,
            "theta_nearest": near, "nearest_label": nearest, "theta_dominant": theta, "weight": w,
            "weight_theta": w * np.sin(theta), "grad_norm": rng.exponential(2.0, n),
            "unit_pull": rng.exponential(2.0, n)}))
    return pd.concat(frames, ignore_index=True)


@pytest.mark.parametrize("ties", [False, True])
def test_streamed_statistics_match_numpy_sklearn_and_the_trainer(ties):
    a = _frame(ties=ties)
    ep = stats.epoch_stats(a)
    for epoch, g in a.groupby("epoch"):
        row = ep[ep["epoch"] == epoch].iloc[0]
        clean, noisy = g[~g["is_noisy"]], g[g["is_noisy"]]
        # medians: exact (the rows of the median's bin are fetched), not interpolated
        assert row["theta_clean_median"] == pytest.approx(np.median(clean["theta_y"]), abs=1e-12)
        assert row["theta_noisy_median"] == pytest.approx(np.median(noisy["theta_y"]), abs=1e-12)
        # health: the SQL of the engine equals the trainer's numpy definition
        want = health_metrics(g)
        for col in HEALTH_COLUMNS:
            assert row[col] == pytest.approx(want[col], abs=1e-12), col
        # AUC within its stated bound of scikit-learn's; the bound is small unless values tie
        exact = roc_auc_score(g["is_noisy"], g["theta_y"])
        assert abs(row["auc"] - exact) <= row["auc_bound"] + 1e-12
        if not ties:
            assert row["auc_bound"] < 1e-3
        else:  # exact ties count 1/2 in both: the histogram gives the exact AUC
            assert row["auc"] == pytest.approx(exact, abs=1e-12)
        for kind in ("closed", "open", "split"):
            sel = g[(g["noise"] == kind) | ~g["is_noisy"]]
            assert abs(row[f"auc_{kind}"] - roc_auc_score(sel["noise"] == kind, sel["theta_y"])) <= 1e-3
        assert row["disagreement_rate"] == pytest.approx((g["theta_nearest"] < g["theta_y"]).mean())


def test_quantile_regions_are_exact():
    a = _frame(seed=3)
    reg = stats.region_stats(a, quantile=0.73, method="quantile", weight="weight")
    for epoch, g in a.groupby("epoch"):
        t = np.quantile(g.loc[~g["is_noisy"], "theta_y"], 0.73)
        rr = reg[reg["epoch"] == epoch].set_index("region")
        assert rr.loc["centre", "threshold_deg"] == pytest.approx(math.degrees(t), abs=1e-9)
        inside = g["theta_y"] <= t
        assert rr.loc["centre", "n"] == int(inside.sum())
        assert rr.loc["centre", "weight_share"] == pytest.approx(g.loc[inside, "weight"].sum() / g["weight"].sum())


def test_mixture_reference_is_fitted_to_every_angle_of_small_runs():
    a = _frame(seed=4, n=800, epochs=1)
    est = stats.noise_rate_estimates(a)
    direct = stats.bimodal_noise_rate(a.sort_values("sample_index")["theta_y"].to_numpy(), seed=0)
    assert est["gmm_rate"].iloc[0] == pytest.approx(direct["estimate"])


def test_aggregates_do_not_grow_with_the_samples(tmp_path):
    """The per-run aggregates of the streaming pass are bounded by bins, not by samples."""
    small = stats.parts_of(_frame(n=2000, epochs=1))
    large = stats.parts_of(_frame(n=40000, epochs=1))
    assert len(large.cells) == len(small.cells)
    assert len(large.hist) <= engine.FINE_BINS * 4
    assert len(large.sample) <= engine.SAMPLE_ROWS + 1000
    assert len(large.rows) < 0.05 * 40000


def _cli_fails(args, capsys, *, names: str):
    """One stderr line naming ``names``, exit 2."""
    code = main(args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and names in err[0], err
    return err[0]


def _analyze_fails(run: Path, tmp_path, capsys, names: str) -> str:
    out = tmp_path / "report"
    line = _cli_fails(["analyze", str(run), "--out", str(out), "--no-figures"], capsys, names=names)
    assert not out.exists()
    return line


def test_bad_angle_logs_get_one_line_naming_the_file(tmp_path, capsys):
    run = make_synthetic_run(tmp_path / "run", epochs=3)
    f2 = run / "angles" / "epoch_2.parquet"
    good = f2.read_bytes()
    # truncated
    f2.write_bytes(good[: len(good) // 2])
    assert "cannot read angle log" in _analyze_fails(run, tmp_path, capsys, str(f2))
    # corrupt in the middle (footer intact)
    bad = bytearray(good)
    bad[200:1200] = bytes(1000)
    f2.write_bytes(bytes(bad))
    _analyze_fails(run, tmp_path, capsys, "epoch_2.parquet")
    # a schema that does not match
    df = pd.read_parquet(pd.io.common.BytesIO(good))
    df.assign(theta_y=df["theta_y"].astype(str)).to_parquet(f2)
    assert "theta_y" in _analyze_fails(run, tmp_path, capsys, str(f2))
    # rows of another epoch in the file
    df.assign(epoch=7).to_parquet(f2)
    assert "epoch" in _analyze_fails(run, tmp_path, capsys, str(f2))
    # a missing epoch
    f2.unlink()
    assert "missing" in _analyze_fails(run, tmp_path, capsys, "epoch_2.parquet")
    f2.write_bytes(good)
    assert main(["analyze", str(run), "--out", str(tmp_path / "report"), "--no-figures"]) == 0


def test_logging_every_nth_epoch_is_not_a_missing_epoch(tmp_path):
    run = make_synthetic_run(tmp_path / "run", epochs=5)
    cfg = (run / "config.yaml").read_text() + "track:\n  angles_every: 2\noptim:\n  epochs: 5\n"
    (run / "config.yaml").write_text(cfg)
    for e in (1, 3):
        (run / "angles" / f"epoch_{e}.parquet").unlink()
    from noisyfr.analysis.load import scan_run

    assert scan_run(run).epochs == [2, 4, 5]
    (run / "angles" / "epoch_4.parquet").unlink()
    with pytest.raises(Exception, match="epoch_4.parquet: missing"):
        scan_run(run)


def test_older_logs_stream_like_new_ones(tmp_path):
    run = make_synthetic_run(tmp_path / "run", epochs=2)
    write_a = tmp_path / "a"
    from noisyfr.analysis.report import write_report

    write_report(run, write_a, figures=False)
    for f in (run / "angles").glob("*.parquet"):  # an older log: int64 and no newer columns
        df = pd.read_parquet(f).drop(columns=["grad_norm", "unit_pull", "feat_norm", "theta_used",
                                              "label_used", "theta_dominant", "weight_theta"])
        df.astype({c: "int64" for c in ("sample_index", "epoch", "label", "nearest_label")}).to_parquet(f)
    write_report(run, tmp_path / "b", figures=False, weight="weight")
    a = pd.read_csv(write_a / "tables" / "epoch_stats.csv")
    b = pd.read_csv(tmp_path / "b" / "tables" / "epoch_stats.csv")
    for col in ("n", "theta_clean_median_deg", "auc", "clean_true_accuracy", "noisy_fit_given"):
        assert np.allclose(a[col], b[col]), col
    assert b["noisy_unit_pull_share"].isna().all()


# --------------------------------------------------------------------------- query and views
@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    return make_synthetic_sweep(tmp_path_factory.mktemp("q") / "sweep", closed_rates=(0.0, 0.4), seeds=(0,))


def test_views_hold_what_the_docs_say(sweep):
    from noisyfr.analysis.views import VIEWS, list_views
    from noisyfr.analysis.views import open as open_views

    con = open_views(sweep)
    assert list_views(con) == list(VIEWS)
    n = con.sql("SELECT count(*) FROM angles").fetchall()[0][0]
    files = list(sweep.glob("trials/*/angles/*.parquet"))
    assert n == sum(pq.ParquetFile(f).metadata.num_rows for f in files)
    cols = {r[0] for r in con.sql("DESCRIBE angles").fetchall()}
    assert {"run", "epoch", "sample_index", "theta_y", "noise", "orig_label", "is_noisy"} <= cols
    runs = con.sql("SELECT * FROM runs").df()
    assert {"loss", "loss_name", "loss_s", "loss_m", "condition", "seed", "noise_rate", "learned"} <= set(runs)
    assert len(runs) == 4
    # the true noisy fraction per run, from the angles, equals the runs view's
    frac = con.sql("SELECT run, avg(is_noisy::INT) AS f FROM angles WHERE epoch = 1 GROUP BY run").df()
    merged = frac.merge(runs[["run", "noise_rate"]], on="run")
    assert np.allclose(merged["f"], merged["noise_rate"])
    assert con.sql("SELECT count(*) FROM results").fetchall()[0][0] == 4
    assert con.sql("SELECT count(*) FROM epochs").fetchall()[0][0] == 4 * 3


def test_query_prints_and_writes(sweep, tmp_path, capsys):
    assert main(["query", str(sweep), "SELECT loss, count(*) AS n FROM runs GROUP BY loss ORDER BY loss"]) == 0
    out = capsys.readouterr().out
    assert "arcface" in out and "expface" in out
    for name in ("t.csv", "t.parquet"):
        assert main(["query", str(sweep), "SELECT run, epoch, noise, count(*) AS n FROM angles GROUP BY ALL",
                     "--out", str(tmp_path / name)]) == 0
        got = pd.read_csv(tmp_path / name) if name.endswith(".csv") else pd.read_parquet(tmp_path / name)
        assert got["n"].sum() == 4 * 3 * 200


@pytest.mark.parametrize("sql, words", [
    ("SELEKT 1", "not SQL"),
    ("DROP VIEW angles", "only a SELECT"),
    ("CREATE TABLE t AS SELECT 1", "only a SELECT"),
    ("COPY (SELECT 1) TO 'x.csv'", "only a SELECT"),
    ("ATTACH 'x.db'", "only a SELECT"),
    ("SELECT 1; SELECT 2", "exactly one statement"),
    ("SELECT * FROM nope", "names no view nope"),
    ("SELECT * FROM read_csv('/etc/passwd')", "outside the run or sweep directory"),
])
def test_query_refuses_what_is_not_a_read_of_the_views(sweep, tmp_path, capsys, sql, words):
    before = sorted(p.relative_to(sweep) for p in sweep.rglob("*"))
    _cli_fails(["query", str(sweep), sql], capsys, names=words)
    assert sorted(p.relative_to(sweep) for p in sweep.rglob("*")) == before
    assert not (Path.cwd() / "x.csv").exists() and not (Path.cwd() / "x.db").exists()


def test_query_out_inside_the_input_is_refused(sweep, capsys):
    _cli_fails(["query", str(sweep), "SELECT 1", "--out", str(sweep / "x.csv")], capsys, names="inside the input")
    assert not (sweep / "x.csv").exists()


def test_epoch_chunks_give_the_same_tables(tmp_path, monkeypatch):
    """The report aggregates a run a few epochs at a time; the chunking changes no number."""
    from noisyfr.analysis import report

    run = make_synthetic_run(tmp_path / "run", epochs=5, rates={"closed": 0.3, "open": 0.1})
    whole = report.tables(run, figures=False)
    monkeypatch.setattr(report, "EPOCH_CHUNK", 2)
    chunked = report.tables(run, figures=False)
    for name in ("epoch_stats.csv", "regions.csv", "noise_types.csv", "weight_by_theta.csv",
                 "noise_rate_estimates.csv", "run_values.csv", "summary.csv"):
        pd.testing.assert_frame_equal(whole[name].reset_index(drop=True), chunked[name].reset_index(drop=True),
                                      check_dtype=False, obj=name)
