"""Similarity / gradient curves: values against closed forms and the CLI outputs."""
from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from noisyfr.cli import main
from noisyfr.errors import NoisyFRError
from noisyfr.losses.curves import COLUMNS, curves, loss_curves


@pytest.fixture(scope="module")
def df():
    return curves(["arcface", "cosface", "sphereface", "expface", "magface", "softmax"],
                  points=181, num_classes=50, neg_cos=0.1)


def test_columns_and_shape(df):
    assert list(df.columns) == COLUMNS
    assert len(df) == 6 * 181
    th = df[df.loss == "arcface"].theta.to_numpy()
    assert th[0] == 0.0 and th[-1] == pytest.approx(math.pi)


def test_target_curve_closed_forms(df):
    a = df[df.loss == "arcface"]
    th = a.theta.to_numpy()
    expected = np.where(th <= math.pi - 0.5, np.cos(th + 0.5), np.cos(th) - 0.5 * math.sin(0.5))
    np.testing.assert_allclose(a.target_logit, expected, atol=1e-12)
    e = df[df.loss == "expface"]
    np.testing.assert_allclose(e.target_logit, np.cos(math.pi * (th / math.pi) ** 0.7), atol=1e-12)
    c = df[df.loss == "cosface"]
    np.testing.assert_allclose(c.dT_dtheta, -np.sin(np.clip(th, 1e-6, math.pi - 1e-6)), atol=1e-12)


def test_derivative_matches_finite_differences(df):
    """dT/dtheta (autograd) against central differences (h=1e-6) of closed forms."""
    import torch

    from noisyfr.losses import build_loss

    sph = build_loss("sphereface").double()
    sph.set_iteration(10 ** 12)  # the curves show the annealed state, lambda = 5
    forms = {
        "arcface": lambda t: np.where(t <= math.pi - 0.5, np.cos(t + 0.5),
                                      np.cos(t) - 0.5 * math.sin(0.5)),
        "expface": lambda t: np.cos(math.pi * (t / math.pi) ** 0.7),
        "sphereface": lambda t: sph.target_logit(torch.from_numpy(t)).numpy(),
    }
    h = 1e-6
    for name, T in forms.items():
        d = df[df.loss == name].iloc[1:-1]
        th = d.theta.to_numpy()
        keep = np.abs(th - (math.pi - 0.5)) > 1e-3 if name == "arcface" else slice(None)
        fd = (T(th + h) - T(th - h)) / (2 * h)
        np.testing.assert_allclose(d.dT_dtheta.to_numpy()[keep], fd[keep], atol=1e-5)  # 1e-5: FD error at psi kinks
    assert sph.lambda_ == 5.0


def test_gradient_weights_closed_form(df):
    """|dL/dcos_y| = s(1 - p_y) * dT/dcos (exact) and s(1 - p_y) (detached)."""
    for name in ("arcface", "cosface", "expface", "magface"):
        d = df[df.loss == name].iloc[1:-1]
        s = 64.0
        t = d.target_logit.to_numpy()
        p = np.exp(s * t) / (np.exp(s * t) + 49 * np.exp(s * 0.1))
        np.testing.assert_allclose(d.p_y, p, rtol=1e-9, atol=1e-300)
        np.testing.assert_allclose(d.weight_detached, s * (1 - p), rtol=1e-6, atol=1e-12)
        dtdc = -d.dT_dtheta.to_numpy() / np.sin(d.theta.to_numpy())
        np.testing.assert_allclose(d.weight_exact, s * (1 - p) * dtdc, rtol=1e-6, atol=1e-9)
    soft = df[df.loss == "softmax"]
    assert (soft.s == 1.0).all()


def test_magface_curve_uses_mid_margin(df):
    m = 0.5 * (0.45 + 0.8)
    d = df[df.loss == "magface"]
    th = d.theta.to_numpy()
    keep = th < math.pi / 2                     # easy margin (MagFace's default): cos(theta) beyond 90
    np.testing.assert_allclose(d.target_logit[keep], np.cos(th[keep] + m), atol=1e-12)
    np.testing.assert_allclose(d.target_logit[~keep], np.cos(th[~keep]), atol=1e-12)


def test_bad_arguments():
    with pytest.raises(NoisyFRError, match="nosuch"):
        loss_curves("nosuch")
    with pytest.raises(NoisyFRError, match="points"):
        loss_curves("arcface", points=1)


@pytest.mark.parametrize("kwargs, needle", [
    (dict(points=10**8), "curves: points: must be in [2, 100000], got 100000000"),
    (dict(points=2.5), "curves: points: expected an integer"),
    (dict(num_classes=10**7), "curves: num_classes: must be in [2, 1000000]"),
    (dict(points=100_000, num_classes=1000), "points x num_classes = 100000 x 1000"),
    (dict(neg_cos=float("nan")), "curves: neg_cos: expected a finite number"),
])
def test_reference_setting_is_bounded(kwargs, needle):
    with pytest.raises(NoisyFRError) as info:
        loss_curves("arcface", **kwargs)
    assert needle in str(info.value)


@pytest.mark.parametrize("flags, needle", [
    (["--points", "1e8"], "argument --points: expected an integer, got '1e8'"),
    (["--points", "100000000"], "argument --points: must be in [2, 100000], got 100000000"),
    (["--points", "100000", "--classes", "1000"], "--points x --classes = 100000 x 1000"),
    (["--classes=inf"], "argument --classes: expected an integer, got 'inf'"),
    (["--neg-cos=-nan"], "argument --neg-cos: expected a finite number, got '-nan'"),
])
def test_cli_points_and_classes_are_bounded(tmp_path, capsys, flags, needle):
    from conftest import exit_status

    assert exit_status(["curves", "--out", str(tmp_path / "c.png"), *flags]) == 2
    err = capsys.readouterr().err
    assert err.startswith("noisyfr curves: error: ") and needle in err and len(err.splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_writes_png_and_csv(tmp_path, capsys):
    out = tmp_path / "c" / "curves.png"
    rc = main(["curves", "--losses", "arcface,expface", "--out", str(out), "--points", "31",
               "--classes", "20"])
    assert rc == 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = pd.read_csv(out.with_suffix(".csv"))
    assert sorted(table.loss.unique()) == ["arcface", "expface"] and len(table) == 62
    ref = loss_curves("arcface", points=31, num_classes=20)
    np.testing.assert_allclose(table[table.loss == "arcface"].weight_exact, ref.weight_exact,
                               rtol=1e-8)


def test_cli_bad_loss_exits_2_without_outputs(tmp_path, capsys):
    out = tmp_path / "bad.png"
    rc = main(["curves", "--losses", "arcface,nosuchface", "--out", str(out)])
    assert rc == 2
    err = capsys.readouterr().err
    assert "nosuchface" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cli_no_csv_when_png_fails(tmp_path, monkeypatch, capsys):
    import errno

    import noisyfr.analysis.curves_cli as curves_cli

    def boom(df, path):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(curves_cli, "plot_curves", boom)
    rc = main(["curves", "--losses", "cosface", "--out", str(tmp_path / "c.png"), "--points", "5"])
    assert rc == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "c.png" in err and "No space left on device" in err
    assert list(tmp_path.iterdir()) == []


def test_cli_rejects_non_png_out(tmp_path, capsys):
    assert main(["curves", "--out", str(tmp_path / "curves.jpg")]) == 2
    assert "curves.jpg" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_figure_drawn_onto_a_given_figure():
    from matplotlib.figure import Figure

    from noisyfr.analysis.plots import loss_curves_figure

    table = curves(["arcface", "cosface"], points=7, num_classes=10)
    fig = Figure()
    assert loss_curves_figure(table, fig) is fig
    assert [ax.get_title() for ax in fig.axes][2:] == ["|dL/dcos θ_y|, exact gradient",
                                                      "|dL/dcos θ_y|, detached margin"]
    assert len(fig.axes) == 4 and "10 classes" in fig.get_suptitle()
    new = loss_curves_figure(table)
    assert isinstance(new, Figure) and new is not fig and len(new.axes) == 4
