"""Synthetic run and sweep directories with a known clean/noisy angle structure.

They follow the formats of docs/ARCHITECTURE.md (manifest + sidecar, config.yaml, metrics.csv,
angles/epoch_<E>.parquet, results.parquet/csv, trials/<trial>/) so that the analysis, its tests
and the notebooks can run without training anything. Clean samples move towards their centre
over epochs; closed-set noisy samples stay near 90 degrees; open-set samples sit far from every
centre; split samples sit near both their label's centre and another one.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from noisyfr.noise.manifest import write_manifest
from noisyfr.io import atomic_path, atomic_write


def _weights(theta_y: np.ndarray, theta_nearest: np.ndarray, num_classes: int, scale: float = 16.0,
             margin: float = 0.0) -> np.ndarray:
    # |dL/dcos theta_y| of a softmax cross-entropy with the other classes lumped at theta_nearest.
    target = scale * np.cos(theta_y + margin)
    other = scale * np.cos(theta_nearest) + np.log(max(num_classes - 1, 1))
    p = 1.0 / (1.0 + np.exp(other - target))
    return scale * (1.0 - p)


def make_synthetic_run(out_dir: str | Path, num_ids: int = 10, per_id: int = 20, epochs: int = 3,
                       rates: dict[str, float] | None = None, loss: str = "arcface", seed: int = 0,
                       manifest_path: str | Path | None = None, margin: float = 0.5,
                       rng_seed: int | None = None) -> Path:
    """Write a run directory with a known angle structure; return its path.

    ``rates`` maps noise types (closed/open/split) to the fraction of samples given that noise
    (default ``{"closed": 0.5}``). ``seed`` is the run's config seed and draws the manifest; the angles
    are drawn with ``rng_seed`` (default: ``seed``). Same arguments -> same bytes.
    """
    rates = {"closed": 0.5} if rates is None else dict(rates)
    out = Path(out_dir)
    rng = np.random.default_rng(seed)
    m = num_ids * per_id
    identity = np.repeat(np.arange(num_ids), per_id)
    label = identity.copy()
    noise = np.array(["clean"] * m, dtype=object)
    order = rng.permutation(m)
    start = 0
    for kind in ("closed", "open", "split"):
        k = int(round(rates.get(kind, 0.0) * m))
        chosen = order[start:start + k]
        start += k
        noise[chosen] = kind
        if kind == "closed":
            shift = rng.integers(1, num_ids, size=k)
            label[chosen] = (identity[chosen] + shift) % num_ids
    orig_label = np.where(noise == "open", -1, identity)
    manifest = pd.DataFrame({"index": np.arange(m), "path": [f"id{i:03d}/{j:03d}.png" for i in range(num_ids)
                                                          for j in range(per_id)],
                             "identity": [f"id{i:03d}" for i in identity], "orig_label": orig_label,
                             "label": label, "noise": noise.astype(str)})
    mpath = Path(manifest_path) if manifest_path else out / "manifest.parquet"
    counts = {k: int((noise == k).sum()) for k in ("clean", "closed", "open", "split", "merge")}
    meta = {"format": "noisyfr-manifest/1", "seed": seed, "source": "noisyfr.analysis.synthetic",
            "requested": {k: float(rates.get(k, 0.0)) for k in ("closed", "open", "split", "merge")},
            "rates": {k: v / m for k, v in counts.items()}, "counts": counts, "samples": m,
            "num_classes": num_ids, "fingerprint": {"samples": m, "sha256": "0" * 64},
            "command": "noisyfr.analysis.synthetic"}
    write_manifest(manifest, meta, mpath)

    config = {"loss": {"name": loss}, "seed": seed, "data": {"train": "synthetic", "manifest": str(mpath.resolve())},
              "train": {"epochs": epochs}, "output_dir": str(out.resolve())}
    with atomic_write(out / "config.yaml", "w") as fh:
        yaml.safe_dump(config, fh, sort_keys=True)

    rng = np.random.default_rng(seed if rng_seed is None else rng_seed)
    metrics = []
    mg = margin if loss != "softmax" else 0.0
    for e in range(1, epochs + 1):
        frac = e / epochs
        theta_y = np.empty(m)
        theta_near = np.empty(m)
        clean = noise == "clean"
        theta_y[clean] = rng.normal(1.35 - 0.75 * frac, 0.12, clean.sum())
        theta_near[clean] = rng.normal(1.45 + 0.05 * frac, 0.08, clean.sum())
        for kind, (ty, tn) in {"closed": ((1.45, 0.12), (0.9 - 0.2 * frac, 0.1)),
                               "open": ((1.5, 0.08), (1.45, 0.08)),
                               "split": ((0.95, 0.1), (0.85, 0.1))}.items():
            sel = noise == kind
            theta_y[sel] = rng.normal(ty[0], ty[1], sel.sum())
            theta_near[sel] = rng.normal(tn[0], tn[1], sel.sum())
        theta_y = np.clip(theta_y, 0.01, np.pi - 0.01)
        theta_near = np.clip(theta_near, 0.01, np.pi - 0.01)
        nearest = (label + 1 + rng.integers(0, num_ids - 1, m)) % num_ids
        nearest = np.where(nearest == label, (label + 1) % num_ids, nearest)
        nearest = np.where(noise == "closed", identity, nearest)
        theta_orig = np.where(noise == "closed", theta_near, np.where(noise == "open", np.nan, theta_y))
        weight = _weights(theta_y, theta_near, num_ids, margin=mg)
        # |dL/dtheta|; the synthetic gradient norm on the embedding is that pull alone (no negatives)
        weight_theta = weight * np.sin(theta_y)
        angles = pd.DataFrame({"sample_index": np.arange(m, dtype=np.int64), "epoch": np.int64(e),
                               "label": label.astype(np.int64), "label_used": label.astype(np.int64),
                               "theta_y": theta_y.astype(np.float32),
                               "theta_nearest": theta_near.astype(np.float32),
                               "nearest_label": nearest.astype(np.int64),
                               "theta_orig": theta_orig.astype(np.float32),
                               "theta_dominant": theta_y.astype(np.float32),
                               "weight": weight.astype(np.float32),
                               "weight_theta": weight_theta.astype(np.float32),
                               "grad_norm": weight_theta.astype(np.float32),
                               # unit features (|f| = 1): the tangential pull is that pull too
                               "unit_pull": weight_theta.astype(np.float32),
                               "feat_norm": np.ones(m, np.float32),
                               "theta_used": theta_y.astype(np.float32)})
        with atomic_path(out / "angles" / f"epoch_{e}.parquet") as tmp:
            angles.to_parquet(tmp, index=False)
        is_noisy = noise != "clean"
        metrics.append({"epoch": e, "step": e * 10, "loss": float(np.mean(weight)), "lr": 0.1, "img_per_s": 1000.0,
                        "val_accuracy": float(0.6 + 0.3 * frac - 0.3 * is_noisy.mean() + rng.normal(0, 0.01)),
                        "noisy_auc": float("nan"), "theta_clean_mean": float(theta_y[~is_noisy].mean()),
                        "theta_noisy_mean": float(theta_y[is_noisy].mean()) if is_noisy.any() else float("nan")})
    with atomic_path(out / "metrics.csv") as tmp:
        pd.DataFrame(metrics).to_csv(tmp, index=False)
    return out


def make_synthetic_sweep(out_dir: str | Path, losses=("arcface", "expface"), closed_rates=(0.0, 0.2, 0.4),
                         seeds=(0, 1), num_ids: int = 10, per_id: int = 20, epochs: int = 3) -> Path:
    """Write a sweep directory (trials/<trial>/ run dirs, manifests/, results.parquet/csv); return its path."""
    out = Path(out_dir)
    rows = []
    for li, loss in enumerate(losses):
        for rate in closed_rates:
            for seed in seeds:
                trial = f"{loss}_closed{rate:g}_seed{seed}"
                mpath = out / "manifests" / f"closed{rate:g}_seed{seed}.parquet"
                run = make_synthetic_run(out / "trials" / trial, num_ids=num_ids, per_id=per_id, epochs=epochs,
                                         rates={"closed": rate}, loss=loss, seed=seed, manifest_path=mpath,
                                         rng_seed=seed * 1000 + li * 100 + int(rate * 100))
                last = pd.read_csv(run / "metrics.csv").iloc[-1]
                rows.append({"trial": trial, "loss.name": loss, "data.noise.closed": rate, "data.noise.open": 0.0,
                             "seed": seed, "status": "completed", "epochs": epochs,
                             "final_val_accuracy": float(last["val_accuracy"]),
                             "best_val_accuracy": float(last["val_accuracy"]),
                             "output_dir": str(run), "manifest": str(mpath)})
    results = pd.DataFrame(rows)
    with atomic_path(out / "results.parquet") as tmp:
        results.to_parquet(tmp, index=False)
    with atomic_path(out / "results.csv") as tmp:
        results.to_csv(tmp, index=False)
    return out
