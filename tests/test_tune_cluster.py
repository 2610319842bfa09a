"""A local 2-node Ray cluster (ray.cluster_utils.Cluster, 1 CPU per node): trials run on both nodes,
joined through ``address=`` like ``noisyfr sweep --address``; a diverging trial fails alone."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def two_node_cluster():
    pytest.importorskip("ray")
    from noisyfr.tune.run import quiet_ray_env
    quiet_ray_env()
    from ray.cluster_utils import Cluster

    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([str(HERE)] + ([old] if old else []))
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    cluster.add_node(num_cpus=1)
    cluster.wait_for_nodes()
    yield cluster
    import ray
    ray.shutdown()
    cluster.shutdown()
    if old is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = old


@pytest.mark.slow
def test_trials_spread_over_two_nodes_and_divergence_fails_alone(two_node_cluster, tmp_path):
    import ray

    from noisyfr.tune import load_sweep, run_sweep

    assert not ray.is_initialized()
    log = tmp_path / "events.jsonl"
    cfg = {"name": "cluster", "trainer": "test_tune_sweep:fake_train", "loss": {"name": "arcface"},
           "optim": {"epochs": 3}, "fake": {"log": str(log), "sleep": 0.5, "barrier": 2},
           "grid": {"loss.name": ["arcface", "sphereface", "cosface", "expface"]},
           "resources": {"cpu": 1}, "max_failures": 2}
    df = run_sweep(load_sweep(cfg, sweep_dir=tmp_path / "sw"), address=two_node_cluster.address,
                   echo=None)
    df = df.set_index("loss.name")
    # 1 CPU per node and 1 CPU per trial: two trials at a time (the first two wait for each other:
    # Tune reuses a finished trial's worker, so short trials could all run on the first node),
    # necessarily on different nodes
    node_ids = {n.node_id for n in two_node_cluster.list_all_nodes()}
    assert len(node_ids) == 2
    assert set(df["node_id"]) == node_ids, df[["node_id", "status"]]
    # the driver-side Ray session was started by run_sweep and closed again
    assert not ray.is_initialized()
    # a diverging trial fails alone, with its reason, and is not retried (deterministic failure)
    assert df.loc["sphereface", "status"] == "failed"
    assert "non-finite loss" in df.loc["sphereface", "error"]
    assert df.loc["sphereface", "epochs"] == 1
    ok = df.drop(index="sphereface")
    assert (ok["status"] == "completed").all()
    assert ok["final_loss"].tolist() == pytest.approx([1 / 3] * 3)
    assert ok["best_val_accuracy"].tolist() == pytest.approx([0.8] * 3)
    starts = [json.loads(x) for x in log.read_text().splitlines()]
    assert sum(1 for e in starts if e["event"] == "start" and "sphereface" in e["trial"]) == 1
    assert "non-finite loss" in (tmp_path / "sw" / "summary.md").read_text()
