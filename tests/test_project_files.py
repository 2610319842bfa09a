"""The files people look for before adopting a research library: LICENSE, CITATION.cff, CHANGELOG."""
from __future__ import annotations

import copy
import json
import re
from pathlib import Path

import pytest
import yaml

import noisyfr

REPO = Path(__file__).resolve().parents[1]


def _pyproject_field(name: str) -> str:
    return re.search(rf'^{name} = (?:\{{ text = )?"([^"]+)"', (REPO / "pyproject.toml").read_text(), re.M).group(1)


def test_license_is_the_mit_text_pyproject_names():
    assert _pyproject_field("license") == "MIT"
    text = (REPO / "LICENSE").read_text()
    assert text.startswith("MIT License\n") and "Copyright (c) " in text and "the noisyfr authors" in text
    assert "Permission is hereby granted, free of charge" in text and 'PROVIDED "AS IS"' in text


def _cff_schema():
    """The CFF 1.2.0 JSON schema as cffconvert ships it (cffconvert: pip install cffconvert)."""
    cffconvert = pytest.importorskip("cffconvert", reason="cffconvert carries the CFF 1.2.0 schema")
    path = Path(cffconvert.__file__).parent / "schemas" / "1.2.0" / "schema.json"
    return json.loads(path.read_text())


def test_citation_cff_is_valid_cff_1_2():
    """Against the schema when cffconvert is installed (not in the dev extra: it pins jsonschema < 4,
    older than the notebooks' stack wants); ``cffconvert --validate -i CITATION.cff`` checks the same."""
    jsonschema = pytest.importorskip("jsonschema")
    schema = _cff_schema()
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    jsonschema.validate(cff, schema)
    # the control: the same validator refuses a broken citation
    bad = copy.deepcopy(cff)
    bad["references"][0]["authors"] = "Deng et al."
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(bad, schema)


def test_citation_names_the_project_and_the_two_papers():
    cff = yaml.safe_load((REPO / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software"
    assert cff["version"] == noisyfr.__version__ and cff["license"] == _pyproject_field("license")
    titles = {r["title"]: r for r in cff["references"]}
    arc = titles["ArcFace: Additive Angular Margin Loss for Deep Face Recognition"]
    assert [a["family-names"] for a in arc["authors"]] == ["Deng", "Guo", "Xue", "Zafeiriou"] and arc["year"] == 2019
    exp = titles["ExpFace: Exponential Angular Margin Loss for Deep Face Recognition"]
    assert [a["family-names"] for a in exp["authors"]] == ["Zheng", "Gong"] and exp["year"] == 2025


def test_changelog_follows_keepachangelog():
    text = (REPO / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog\n") and "keepachangelog.com" in text
    heads = re.findall(r"^## (.+)$", text, re.M)
    assert heads and heads[0] == "[Unreleased]"
    assert all(re.fullmatch(r"\[\d+\.\d+\.\d+\] - \d{4}-\d{2}-\d{2}", h) for h in heads[1:])
    kinds = set(re.findall(r"^### (.+)$", text, re.M))
    assert kinds and kinds <= {"Added", "Changed", "Deprecated", "Removed", "Fixed", "Security"}


def test_the_wheel_and_the_sdist_carry_these_files():
    manifest = (REPO / "MANIFEST.in").read_text()
    for name in ("LICENSE", "CITATION.cff", "CHANGELOG.md"):
        assert name in manifest and (REPO / name).is_file()
    assert "graft experiments/configs" in manifest and "graft experiments/notebooks" in manifest
