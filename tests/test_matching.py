"""Margin-matched comparators (noisyfr.losses.matching) and ``noisyfr curves --match``."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from conftest import exit_status

from noisyfr.errors import NoisyFRError
from noisyfr.losses import build_loss
from noisyfr.losses.matching import differing_band, matched_margin, matching_table, parse_loss_spec


@pytest.mark.parametrize("deg", [30.0, 45.0, 60.0, 80.0])
def test_matched_margins_give_equal_target_logits(deg):
    theta0 = math.radians(deg)
    exp = build_loss("expface", m=0.7)
    t0 = float(exp.target_logit(torch.tensor([theta0], dtype=torch.float64)))
    t_exp = math.cos(math.pi * (theta0 / math.pi) ** 0.7)  # the closed form, independently
    assert t0 == pytest.approx(t_exp, rel=1e-12)
    m_arc = matched_margin("expface", theta0, "arcface", {"m": 0.7})
    m_cos = matched_margin("expface", theta0, "cosface", {"m": 0.7})
    assert math.cos(theta0 + m_arc) == pytest.approx(t_exp, abs=1e-12)
    assert math.cos(theta0) - m_cos == pytest.approx(t_exp, abs=1e-12)
    # the comparator's own target logit there, through its loss
    arc = build_loss("arcface", m=m_arc)
    assert float(arc.target_logit(torch.tensor([theta0], dtype=torch.float64))) == pytest.approx(t_exp, abs=1e-12)


def test_expface_07_at_45_degrees_matches_arcface_040():
    assert matched_margin("expface", math.radians(45), params={"m": 0.7}) == pytest.approx(0.405, abs=0.001)
    # ArcFace matched to itself gives its own margin back, at any angle
    for deg in (20, 50, 100):
        assert matched_margin("arcface", math.radians(deg), params={"m": 0.5}) == pytest.approx(0.5, abs=1e-9)


def test_band_excludes_the_matching_angle_and_finds_the_differences():
    m = matched_margin("expface", math.radians(45), params={"m": 0.7})
    bands = differing_band("expface", m, params={"m": 0.7}, tol=0.01)
    assert bands and all(not (a <= 45.0 <= b) for a, b in bands)
    # check every grid angle against the closed forms
    deg = np.arange(0.0, 180.0001, 0.05)
    th = np.radians(deg)
    arc = np.where(th + m <= math.pi, np.cos(th + m), np.cos(th) - m * math.sin(m))
    apart = np.abs(np.cos(math.pi * (th / math.pi) ** 0.7) - arc) > 0.01
    inside = np.zeros_like(apart)
    for a, b in bands:
        inside |= (deg >= a - 1e-9) & (deg <= b + 1e-9)
    np.testing.assert_array_equal(inside, apart)
    # unmatched ArcFace 0.5 is stronger at every angle but 0 and 180: it differs almost everywhere
    assert differing_band("expface", 0.5, params={"m": 0.7}) != bands
    assert differing_band("arcface", 0.5, params={"m": 0.5}) == []


def test_no_match_and_bad_specs():
    # ExpFace with m > 1 lies above cos(theta): only a negative margin would match it
    with pytest.raises(NoisyFRError, match="no arcface margin matches expface"):
        matched_margin("expface", math.radians(45), "arcface", {"m": 1.5})
    with pytest.raises(NoisyFRError, match="no cosface margin matches expface"):
        matched_margin("expface", math.radians(45), "cosface", {"m": 1.5})
    assert matched_margin("normface", math.radians(45)) == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(NoisyFRError, match="family"):
        matched_margin("expface", 0.5, "sphereface")
    with pytest.raises(NoisyFRError, match="--match 'expface:m'"):
        parse_loss_spec("expface:m")
    with pytest.raises(NoisyFRError, match="unknown loss"):
        parse_loss_spec("nosuchloss:m=1")
    assert parse_loss_spec("expface:m=0.7, s=64") == ("expface", {"m": 0.7, "s": 64})


def test_table_and_command(capsys):
    t = matching_table([("expface", {"m": 0.7})], [30, 45, 60, 80])
    assert list(t["theta0_deg"]) == [30, 45, 60, 80] and t["arcface_m"].between(0.3, 0.45).all()
    assert exit_status(["curves", "--match", "expface:m=0.7", "--at", "45"]) == 0
    out = capsys.readouterr().out
    assert "arcface m = 0.4050 rad" in out and "cosface m = 0.3359" in out
    assert exit_status(["curves", "--match", "expface:m=0.7", "--at", "190"]) == 2
    assert "--at" in capsys.readouterr().err
