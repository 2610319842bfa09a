"""Synthetic run and sweep directories with a known clean/noisy angle structure: the tests' and
benchmarks' fabricators, not part of the package (``from fabricate import ...`` in tests,
``from tests.fabricate import ...`` from the repository root).

They follow the formats of docs/ARCHITECTURE.md (manifest + sidecar, config.yaml, metrics.csv,
angles/epoch_<E>.parquet, results.parquet/csv, trials/<trial>/) so that the analysis, its tests
and the notebooks can run without training anything. Clean samples move towards their centre
over epochs; closed-set noisy samples stay near 90 degrees; open-set samples sit far from every
centre; split samples sit near both their label's centre and another one.

:func:`fabricate_sweep` writes benchmark-scale sweeps (hundreds of thousands of samples per run,
vectorised) through the trainer's own angle-log, config and manifest writers; see
``benchmarks/bench_analysis.py``.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import yaml

from noisyfr.io import atomic_path, atomic_write
from noisyfr.noise.manifest import write_manifest
from noisyfr.outputs import csv_safe


def _weights(theta_y: np.ndarray, theta_nearest: np.ndarray, num_classes: int, scale: float = 16.0,
             margin: float = 0.0) -> np.ndarray:
    # |dL/dcos theta_y| of a softmax cross-entropy with the other classes lumped at theta_nearest.
    target = scale * np.cos(theta_y + margin)
    other = scale * np.cos(theta_nearest) + np.log(max(num_classes - 1, 1))
    p = 1.0 / (1.0 + np.exp(other - target))
    return scale * (1.0 - p)


def _write_metrics(run_dir: Path, rows: list[dict]) -> None:
    """``run_dir/metrics.csv``: one row per epoch, as the trainer writes it."""
    with atomic_path(run_dir / "metrics.csv") as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def _write_results(sweep_dir: Path, rows: list[dict]) -> None:
    """``sweep_dir/results.parquet`` and ``results.csv``: one row per trial."""
    results = pd.DataFrame(rows)
    with atomic_path(sweep_dir / "results.parquet") as tmp:
        results.to_parquet(tmp, index=False)
    with atomic_path(sweep_dir / "results.csv") as tmp:
        csv_safe(results).to_csv(tmp, index=False)


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
    _write_metrics(out, metrics)
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
    _write_results(out, rows)
    return out


# ----------------------------------------------------------------------------- fabricated sweeps
#: Losses the trials of :func:`fabricate_sweep` cycle over (their default settings).
FABRICATED_LOSSES = ("arcface", "cosface", "expface")
#: Last-epoch centre (degrees) of the clean samples' theta_y per loss; every loss starts at
#: :data:`_CLEAN_START_DEG` at epoch 0 and moves linearly towards it.
_CLEAN_END_DEG = {"arcface": 34.0, "cosface": 38.0, "expface": 32.0}
_CLEAN_START_DEG = 75.0
#: Fraction of the clean samples that are hard (theta_y 25 degrees above the clean centre).
_HARD_CLEAN = 0.08
#: Samples per optimiser step assumed for the ``step`` column of metrics.csv.
_FABRICATED_BATCH = 128


def _target_slope(loss: dict, theta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(T(theta), |dT/dcos theta|)`` of the target logit of the loss section ``loss``
    (arcface, cosface, expface: the closed forms of :mod:`noisyfr.losses.margins`)."""
    name, m = loss["name"], float(loss["m"])
    if name == "cosface":
        return np.cos(theta) - m, np.ones_like(theta)
    if name == "arcface":
        inside = theta <= np.pi - m
        target = np.where(inside, np.cos(theta + m), np.cos(theta) - m * np.sin(m))
        return target, np.where(inside, np.sin(theta + m) / np.sin(theta), 1.0)
    if name == "expface":
        u = theta / np.pi
        return np.cos(np.pi * u ** m), m * u ** (m - 1.0) * np.sin(np.pi * u ** m) / np.sin(theta)
    raise ValueError(f"fabricate_sweep: no closed form for loss {name!r}")


def _fabricated_arrays(rng: np.random.Generator, loss: dict, label: np.ndarray, orig: np.ndarray,
                       closed: np.ndarray, classes: int, frac: float) -> tuple[dict, np.ndarray]:
    """One epoch's tracker arrays (the input of :func:`noisyfr.train.angles.rows_frame`) at
    training progress ``frac`` in (0, 1], and each sample's cross-entropy."""
    from noisyfr.train.angles import _FLOATS

    m = len(label)
    rad = np.pi / 180.0
    centre = _CLEAN_START_DEG + (_CLEAN_END_DEG[loss["name"]] - _CLEAN_START_DEG) * frac
    # clean: near their centre (a tail of hard ones 25 deg further), the nearest other centre near
    # 80 deg; closed-set noisy: near 85 deg from their given (wrong) centre, nearest to their true
    # identity's centre, which comes closer
    hard = rng.random(m) < _HARD_CLEAN
    clean_theta = rng.normal(centre, 7.0, m) + np.where(hard, 25.0, 0.0)
    theta_y = np.where(closed, rng.normal(85.0 - 2.0 * frac, 3.5, m), clean_theta) * rad
    theta_near = np.where(closed, rng.normal(70.0 - 12.0 * frac, 6.0, m),
                          rng.normal(81.0 - 1.0 * frac, 4.0, m)) * rad
    lo, hi = 0.01, np.pi - 0.01
    theta_y, theta_near = np.clip(theta_y, lo, hi), np.clip(theta_near, lo, hi)
    other = (label + rng.integers(1, classes, m)) % classes  # != label
    nearest = np.where(closed, orig, other)
    theta_orig = np.where(closed, theta_near, theta_y)
    # softmax over the labelled class, the nearest other class and the remaining C - 2 near 90 deg
    s = float(loss["s"])
    target, slope = _target_slope(loss, theta_y)
    rest = np.log(classes - 2) if classes > 2 else -np.inf
    log_others = np.logaddexp(s * np.cos(theta_near), rest)
    z = log_others - s * target
    one_minus_p = 0.5 * (1.0 + np.tanh(0.5 * z))  # sigmoid(z), without overflow
    weight = s * one_minus_p * slope
    weight_theta = weight * np.sin(theta_y)
    # the tangential pull: the label's pull and the nearest negative's push (unit embedding), and
    # the embedding's gradient, the pull divided by the feature norm (a normalised loss)
    push = s * one_minus_p * np.sin(theta_near)
    unit_pull = np.hypot(weight_theta, push)
    feat_norm = np.maximum(np.where(closed, rng.normal(13.0 + 2.0 * frac, 2.5, m),
                                    rng.normal(18.0 + 6.0 * frac, 2.5, m)), 1.0)
    values = {"theta_y": theta_y, "theta_nearest": theta_near, "nearest_label": nearest,
              "theta_orig": theta_orig, "theta_dominant": theta_y, "weight": weight,
              "weight_theta": weight_theta, "grad_norm": unit_pull / feat_norm,
              "unit_pull": unit_pull, "feat_norm": feat_norm, "theta_used": theta_y,
              "lse_neg": log_others}
    arrays = {"sample_index": np.arange(m, dtype=np.int64), "label": label, "label_used": label,
              "values": np.stack([values[k] for k in _FLOATS], axis=1).astype(np.float32)}
    return arrays, np.logaddexp(0.0, z)  # -log p


def _fabricated_manifest(samples: int, classes: int, noise: float, seed: int):
    """The :func:`noisyfr.noise.inject` manifest of symmetric closed-set noise ``noise`` over a
    label-only index of ``samples`` samples in ``classes`` near-equal identities."""
    from noisyfr.data.index import FaceIndex
    from noisyfr.noise import NoiseSpec
    from noisyfr.noise.inject import inject

    index = FaceIndex()
    index.labels = (np.arange(samples, dtype=np.int64) * classes) // samples
    index.identities = [f"id{k:06d}" for k in range(classes)]
    index.paths = [f"id{k:06d}/{i:08d}.png" for i, k in enumerate(index.labels.tolist())]
    index.source = f"fabricated:samples={samples},classes={classes}"
    spec = NoiseSpec(closed=noise, seed=seed)
    return inject(index, spec), spec


def fabricate_sweep(out_dir: str | Path, trials: int, epochs: int, samples: int, classes: int,
                    noise: float = 0.2, seed: int = 0) -> Path:
    """Write a sweep directory of ``trials`` fabricated runs at benchmark scale; return its path.

    Vectorised (numpy per epoch, no per-sample Python): 12 trials x 5 epochs x 100,000 samples
    take seconds. Trial ``t`` trains loss ``FABRICATED_LOSSES[t % 3]`` (default settings) with
    seed ``seed + t // 3``; the trials of one seed share the manifest
    ``manifests/closed<noise>_seed<seed>.parquet``, made by :func:`noisyfr.noise.inject` (symmetric
    closed-set noise, exactly ``round(noise * samples)`` samples) over ``samples`` samples in
    ``classes`` near-equal identities. Each run directory ``trials/<loss>_closed<noise>_seed<s>/``
    holds the resolved ``config.yaml`` (:func:`noisyfr.train.config.load_config`), one
    ``angles/epoch_<E>.parquet`` per epoch written by the trainer's own
    :func:`~noisyfr.train.angles.rows_frame` and :func:`~noisyfr.train.angles.write_angles`, and
    ``metrics.csv`` with the trainer's columns (the angle summary of
    :func:`~noisyfr.train.angles.epoch_summary`, held-out accuracies whose last epoch makes the
    run learned, the ``learned`` rule of :mod:`noisyfr.train.heldout`). ``results.parquet`` /
    ``results.csv`` hold one row per trial (:func:`noisyfr.tune.results.summarize_trial`).

    Angles: clean samples' theta_y around a centre moving from 75 degrees to 32-38 (per loss) over
    the epochs (8 % of them, the hard ones, 25 degrees further), their nearest other centre near
    80; closed-set noisy samples near 85 degrees from their given centre, nearest to their true
    identity's centre (``theta_orig``). Weights from the loss's target logit in a softmax over the
    label, the nearest class and C - 2 classes at 90 degrees; ``grad_norm = unit_pull /
    feat_norm`` (a normalised loss). The held-out accuracies follow symmetric flips, so the
    report's held-out noise-rate estimate finds ``noise``. Same arguments -> same bytes (the files
    naming paths, config.yaml and results.*, name ``out_dir``'s absolute path).
    """
    from noisyfr import numeric
    from noisyfr.losses import loss_label, loss_settings
    from noisyfr.train import angles as angles_mod
    from noisyfr.train.config import dump_config, load_config
    from noisyfr.train.heldout import learned_from
    from noisyfr.tune.results import summarize_trial

    trials = numeric.integer(trials, "trials", lo=1)
    epochs = numeric.integer(epochs, "epochs", lo=1)
    classes = numeric.integer(classes, "classes", lo=2)
    samples = numeric.integer(samples, "samples", lo=classes)
    noise = numeric.real(noise, "noise", lo=0.0, hi=1.0, hi_open=True)
    seed = numeric.integer(seed, "seed", lo=0)
    out = Path(out_dir).resolve()
    manifests: dict[int, tuple[Path, object, dict]] = {}
    rows = []
    for t in range(trials):
        loss_name, run_seed = FABRICATED_LOSSES[t % len(FABRICATED_LOSSES)], seed + t // len(FABRICATED_LOSSES)
        if run_seed not in manifests:
            manifest, spec = _fabricated_manifest(samples, classes, noise, run_seed)
            mpath = manifest.write(out / "manifests" / f"closed{noise:g}_seed{run_seed}.parquet")
            manifests[run_seed] = (mpath, manifest, spec.to_dict())
        mpath, manifest, spec = manifests[run_seed]
        label = manifest.table["label"].to_numpy()
        orig = manifest.table["orig_label"].to_numpy()
        closed = orig != label  # closed-set noise is the only noise here
        noise_types = np.where(closed, "closed", "clean")
        trial = f"{loss_name}_closed{noise:g}_seed{run_seed}"
        run = out / "trials" / trial
        cfg = load_config({"name": trial, "seed": run_seed, "output_dir": str(run),
                           "data": {"train": manifest.meta["source"], "manifest": str(mpath)},
                           "loss": {"name": loss_name}, "optim": {"epochs": epochs}})
        with atomic_write(run / "config.yaml", "w", encoding="utf-8") as fh:
            fh.write(dump_config(cfg))
        section = loss_settings(cfg["loss"])
        history: list[dict] = []
        steps = -(-samples // _FABRICATED_BATCH)
        for e in range(1, epochs + 1):
            frac = e / epochs
            rng = np.random.default_rng([seed, t, e])
            arrays, ce = _fabricated_arrays(rng, section, label, orig, closed, classes, frac)
            frame = angles_mod.rows_frame(arrays, e)
            angles_mod.write_angles(frame, run, e)
            values = arrays["values"]
            theta, near = values[:, 0], values[:, 1]
            lr = 0.1 * 0.5 * (1.0 + np.cos(np.pi * e / epochs))
            metrics = {"epoch": e, "step": e * steps, "loss": float(ce.mean()),
                       "train_accuracy": float(np.mean(theta <= near)), "lr": float(lr),
                       "img_per_s": 1000.0, "epoch_time_s": samples / 1000.0}
            metrics.update(angles_mod.epoch_summary(frame, noise_types, orig))
            jitter = rng.normal(0.0, 0.003, 2)
            held = float(np.clip(0.60 + 0.30 * frac - 0.15 * noise + jitter[0], 0.0, 1.0))
            rate = float(closed.mean())
            metrics["val_accuracy"] = float(np.clip(0.70 + 0.22 * frac - 0.25 * noise + jitter[1], 0.0, 1.0))
            metrics["heldout_accuracy"] = held
            # the agreement with the given labels that symmetric flips at ``rate`` give
            metrics["heldout_given_accuracy"] = (1.0 - rate) * held + rate * (1.0 - held) / (classes - 1)
            metrics["best_val_accuracy"] = max([h["val_accuracy"] for h in history] + [metrics["val_accuracy"]])
            ok, on = learned_from(metrics, cfg["health"])
            metrics.update(learned=ok, learned_on=on)
            history.append(metrics)
        _write_metrics(run, history)
        row = {"trial": trial, **{f"loss.{k}": v for k, v in section.items()},
               "loss.label": loss_label(cfg["loss"]), **{f"data.noise.{k}": v for k, v in spec.items()},
               "seed": run_seed, "learned_threshold": float(cfg["health"]["learned_accuracy"]),
               "learned_heldout_threshold": float(cfg["health"]["learned_heldout_accuracy"]),
               **summarize_trial(pd.DataFrame(history), None)}
        row.update(output_dir=str(run), manifest=str(mpath))
        rows.append(row)
    _write_results(out, rows)
    return out
