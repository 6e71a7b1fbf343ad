"""What a maintained package carries: one version, a licence, type information, a changelog."""

from __future__ import annotations

import importlib.metadata
import re
from pathlib import Path

from click.testing import CliRunner

import niff_analysis
from niff_analysis.cli import main

ROOT = Path(__file__).resolve().parents[1]


def test_the_version_is_written_once_and_is_the_installed_one():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    project = pyproject.split("[project]", 1)[1].split("\n[", 1)[0]
    assert re.search(r'^dynamic = \["version"\]', project, re.M)
    assert not re.search(r"^version\s*=", project, re.M)  # not written a second time
    assert re.search(r'^version = \{attr = "niff_analysis.__version__"\}', pyproject, re.M)
    assert re.fullmatch(r"\d+\.\d+\.\d+", niff_analysis.__version__)
    assert niff_analysis.__version__ == importlib.metadata.version("niff-analysis")
    res = CliRunner().invoke(main, ["--version"])
    assert res.exit_code == 0 and res.output == f"niff-analyze, version {niff_analysis.__version__}\n"


def test_licence_type_marker_and_changelog():
    licence = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert licence.startswith("MIT License") and "the niff-analysis authors" in licence
    assert re.search(r'^license = "MIT"', (ROOT / "pyproject.toml").read_text(encoding="utf-8"), re.M)
    package = Path(niff_analysis.__file__).parent
    assert (package / "py.typed").is_file()
    assert '"py.typed"' in (ROOT / "pyproject.toml").read_text(encoding="utf-8")  # shipped in the wheel
    changelog = (ROOT / "CHANGELOG.md").read_text(encoding="utf-8")
    sections = re.findall(r"^## \[([^\]]+)\]", changelog, re.M)
    assert sections and sections[0] == "Unreleased"  # Keep a Changelog: newest first
    assert all(re.fullmatch(r"Unreleased|\d+\.\d+\.\d+", s) for s in sections)
    assert set(re.findall(r"^### (\w+)", changelog, re.M)) <= {
        "Added",
        "Changed",
        "Deprecated",
        "Removed",
        "Fixed",
        "Security",
    }
