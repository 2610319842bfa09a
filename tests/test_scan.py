"""Many runs read in one pass (noisyfr.analysis.scan) give the numbers of reading them one at a
time: the same aggregates and the same report tables per run and epoch, on small fabricated runs
of different sizes, manifests (one run without any) and logged columns; a batch with a bad input
falls back to the one-run path, whose error names the run."""
from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from fabricate import make_synthetic_run

from noisyfr.analysis import engine, load, scan, stats
from noisyfr.cli import main

TABLES = ("cells", "hist", "wbins", "rows", "sample")


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> Path:
    """Six runs under ``trials/``: different sizes (two above the mixture's sample of 2,048 an
    epoch, so the sample takes every k-th index, k per run), noise rates and manifests (two share
    one), one without a manifest, one with an older log (no ``theta_used``, ``feat_norm``: a batch of its
    own)."""
    root = tmp_path_factory.mktemp("scan") / "sweep"
    specs = [("a", 10, 20, {"closed": 0.3}, "m0"), ("b", 10, 20, {"closed": 0.3}, "m0"),
             ("c", 30, 150, {"closed": 0.2, "open": 0.1}, "m1"), ("d", 12, 25, {"closed": 0.0}, None),
             ("e", 40, 130, {"closed": 0.4}, "m2"), ("f", 8, 30, {"closed": 0.5}, "m3")]
    for i, (name, ids, per, rates, man) in enumerate(specs):
        run = make_synthetic_run(root / "trials" / name, num_ids=ids, per_id=per, epochs=3, rates=rates,
                                 loss=("arcface", "expface")[i % 2], seed=i if man != "m0" else 0,
                                 manifest_path=None if man is None else root / "manifests" / f"{man}.parquet",
                                 rng_seed=100 + i)
        if man is None:  # no manifest: every sample clean
            import yaml

            cfg = yaml.safe_load((run / "config.yaml").read_text())
            cfg.setdefault("data", {}).pop("manifest", None)
            (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    for f in sorted((root / "trials" / "f" / "angles").glob("epoch_*.parquet")):
        t = pq.read_table(f)
        pq.write_table(t.drop_columns(["theta_used", "feat_norm"]), f)
    return root


def _one_at_a_time(con, r, o=("grad_norm", 60.0, 36, 0.9)) -> engine.Parts:
    """One run's Parts over all its epochs, by the one-run path of the report."""
    table = engine.run_manifest(con, r, {}, prefix="one_" + r.name.replace("/", "_"))
    files = [r.files[e] for e in sorted(r.files)]
    return engine.aggregate(con, engine.run_source(files, r.columns, table), [], *o,
                            raw=engine.run_source(files, r.columns, None), manifest=table)


def _sorted(df: pd.DataFrame | None) -> pd.DataFrame | None:
    if df is None:
        return None
    return df.sort_values(list(df.columns), kind="stable").reset_index(drop=True)


def test_batches_keep_order_columns_and_limits(sweep):
    runs = load.scan_runs(sweep)
    assert [r.name for r in runs] == [f"trials/{c}" for c in "abcdef"]
    assert all(scan.run_rows(r) == sum(pq.ParquetFile(f).metadata.num_rows for f in r.files.values())
               for r in runs)
    got = scan.batches(runs)
    assert [[r.name[-1] for r in b] for b in got] == [list("abcde"), ["f"]]  # f logs other columns
    small = scan.batches(runs, max_rows=scan.run_rows(runs[0]) * 2, max_runs=10)
    assert small[0] == runs[:2] and sum(map(len, small)) == len(runs)
    assert all(sum(map(scan.run_rows, b)) <= scan.run_rows(runs[0]) * 2 or len(b) == 1 for b in small)
    assert [len(b) for b in scan.batches(runs, max_runs=2)] == [2, 2, 1, 1]


def test_batched_parts_equal_one_run_at_a_time(sweep):
    runs = load.scan_runs(sweep)
    batch = runs[:5]
    con = engine.connect()
    try:
        got = scan.aggregate_batch(con, batch, scan.BatchManifests(con))
        assert got is not None and len(got) == len(batch)
        for r, parts in zip(batch, got):
            want = _one_at_a_time(con, r)
            assert parts.keys == want.keys == []
            for name in TABLES:
                a, b = _sorted(getattr(parts, name)), _sorted(getattr(want, name))
                assert list(a.columns) == list(b.columns), (r.name, name)
                assert len(a) == len(b) > 0, (r.name, name)
                pd.testing.assert_frame_equal(a, b, check_dtype=False, rtol=1e-12, obj=f"{r.name} {name}")
            assert (parts.dominant is None) == (want.dominant is None)
            # the report's per-run, per-epoch tables from either
            keys = {"run": r.name}
            for fn in (lambda p: stats.epoch_stats(p), lambda p: stats.noise_type_stats(p),
                       lambda p: stats.noise_rate_estimates(p, seed=0),
                       lambda p: stats.region_stats(p, 0.9, "quantile", 60.0),
                       lambda p: stats.binned_weight(p, bins=36)):
                pd.testing.assert_frame_equal(fn(parts.with_keys(keys)), fn(want.with_keys(keys)),
                                              check_dtype=False, rtol=1e-9)
    finally:
        con.close()


def test_the_sample_step_is_each_runs_own(sweep):
    runs = load.scan_runs(sweep)
    con = engine.connect()
    try:
        got = scan.aggregate_batch(con, runs[:5], scan.BatchManifests(con))
    finally:
        con.close()
    by_name = dict(zip([r.name for r in runs[:5]], got))
    # c has 4,500 samples an epoch (every 3rd index), e 5,200 (every 3rd), a 200 (all of them)
    assert len(by_name["trials/a"].sample) == 3 * 200
    for name, n in (("trials/c", 4500), ("trials/e", 5200)):
        s = by_name[name].sample
        step = -(-n // engine.SAMPLE_ROWS)
        assert step == 3 and len(s) == 3 * len(range(0, n, step))


def test_the_report_is_the_same_batched_or_one_run_at_a_time(sweep, tmp_path, monkeypatch):
    assert main(["analyze", str(sweep), "--out", str(tmp_path / "batched"), "--no-figures"]) == 0
    monkeypatch.setattr(scan, "BATCH_RUNS", 1)
    assert all(len(b) == 1 for b in scan.batches(load.scan_runs(sweep)))
    assert main(["analyze", str(sweep), "--out", str(tmp_path / "single"), "--no-figures"]) == 0
    names = sorted(p.name for p in (tmp_path / "single" / "tables").glob("*.csv"))
    assert "epoch_stats.csv" in names and "noise_rate_estimates.csv" in names
    assert names == sorted(p.name for p in (tmp_path / "batched" / "tables").glob("*.csv"))
    for name in names:
        texts = [(tmp_path / d / "tables" / name).read_text().strip() for d in ("batched", "single")]
        if "" in texts:  # an empty table (no row to write) is empty either way
            assert texts == ["", ""], name
            continue
        a = pd.read_csv(tmp_path / "batched" / "tables" / name)
        b = pd.read_csv(tmp_path / "single" / "tables" / name)
        pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-9, obj=name)


def test_a_bad_run_in_a_batch_is_named(sweep, tmp_path, capsys):
    bad = tmp_path / "sweep"
    shutil.copytree(sweep, bad)
    f = bad / "trials" / "c" / "angles" / "epoch_2.parquet"
    t = pq.read_table(f).to_pandas()
    t.loc[5, "sample_index"] = 10 ** 6  # not in the manifest
    t.to_parquet(f, index=False)
    runs = load.scan_runs(bad)
    con = engine.connect()
    try:
        assert scan.aggregate_batch(con, runs[:5], scan.BatchManifests(con)) is None
    finally:
        con.close()
    assert main(["analyze", str(bad), "--out", str(tmp_path / "out"), "--no-figures"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert str(bad / "trials" / "c" / "angles") in err and "sample_index 1000000 is not in manifest" in err
    assert not (tmp_path / "out").exists()
    assert np.isfinite(scan.run_rows(runs[2]))


def test_counterfactual_batched_equals_one_run_at_a_time(tmp_path_factory):
    from fabricate import fabricate_sweep

    from noisyfr.analysis import counterfactual

    root = fabricate_sweep(tmp_path_factory.mktemp("cf") / "sweep", 4, 2, 400, 20, noise=0.25, seed=5)
    runs = load.scan_runs(root)
    assert len(scan.batches(runs)) == 1 and "lse_neg" in runs[0].columns
    sections = counterfactual.loss_sections(runs)
    con = engine.connect()
    try:
        got = counterfactual.batch_tables(con, runs, sections, scan.BatchManifests(con))
        for r, frame in zip(runs, got):
            want = counterfactual.run_table(con, r, sections, engine.run_manifest(con, r, {}, "one"))
            assert len(frame) == 2 * len(sections) and frame["available"].all()
            pd.testing.assert_frame_equal(frame, want, check_exact=False, rtol=1e-12, obj=r.name)
    finally:
        con.close()
    pd.testing.assert_frame_equal(counterfactual.table(runs), pd.concat(got, ignore_index=True),
                                  check_exact=False, rtol=1e-12)


def test_order_bins_equal_the_per_group_rank_bins():
    """The vectorised order bins against a loop over groups with the one-group helpers."""
    from noisyfr.analysis import order

    def reference(hist, keys, q):
        out = []
        for key, h in hist.groupby(keys + ["epoch"], sort=True, dropna=False):
            key = key if isinstance(key, tuple) else (key,)
            clean = order.group_counts(h, "clean")
            for group, qq in (("clean", 0.5), ("noisy", 0.5), ("clean" if clean.sum() > 0 else "all", q)):
                found = [b for b, _ in order.rank_bins(order.group_counts(h, group), qq)]
                out += [(*key, b) for b in range(min(found, default=0), max(found, default=-1) + 1)]
        return pd.DataFrame(out, columns=keys + ["epoch", "yb"]).drop_duplicates()

    rng = np.random.default_rng(7)
    for trial in range(60):
        m = int(rng.integers(1, 200))
        hist = pd.DataFrame({"run": rng.choice(["a", "b", None], m), "epoch": rng.integers(1, 4, m),
                             "noise": rng.choice(["clean", "closed", "open"], m, p=rng.dirichlet([1, 1, 1])),
                             "yb": rng.integers(0, int(rng.choice([3, 60, 16384])), m),
                             "n": rng.integers(0 if trial % 4 == 0 else 1, 6, m)})
        hist = hist.groupby(["run", "epoch", "noise", "yb"], dropna=False, as_index=False)["n"].sum()
        for keys in (["run"], []):
            h = hist if keys else hist[hist["run"] == "a"].drop(columns="run")
            q = float(rng.choice([0.0, 0.1, 0.5, 0.9, 1.0]))
            got, want = order.order_bins(h, keys, q), reference(h, keys, q)
            cols = keys + ["epoch", "yb"]
            assert len(got) == len(want)
            if len(want):
                pd.testing.assert_frame_equal(got.sort_values(cols).reset_index(drop=True),
                                              want.sort_values(cols).reset_index(drop=True), check_dtype=False)


def test_the_angles_view_reads_the_batches_row_for_row(sweep):
    """``noisyfr query``'s angles view (one scan a batch) holds each run's rows as its own relation."""
    from noisyfr.analysis import views

    runs = load.scan_runs(sweep)
    con = views.open(sweep)
    try:
        got = con.sql("SELECT * FROM angles").df()
    finally:
        con.close()
    assert set(got["run"]) == {r.name for r in runs}
    one = engine.connect()
    try:
        for r in runs:
            table = engine.run_manifest(one, r, {}, prefix="v_" + r.name.replace("/", "_"))
            want = one.sql(f"SELECT * EXCLUDE (manifest_index, manifest_label, noise_code) FROM "
                           f"({engine.run_source(list(r.files.values()), r.columns, table)})").df()
            mine = got[got["run"] == r.name].drop(columns="run")
            assert list(mine.columns) == list(want.columns)
            pd.testing.assert_frame_equal(_sorted(mine), _sorted(want), check_dtype=False, obj=r.name)
    finally:
        one.close()
