"""The README's two fresh-machine entry points install what each needs (issue 14)."""

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def dry_run(target: str, tmp_path: Path) -> str:
    """The commands `make TARGET` would run on a machine without a virtualenv (make -n)."""
    res = subprocess.run(
        ["make", "-n", "-C", str(ROOT), target, f"VENV={tmp_path / 'venv'}"], capture_output=True, text=True, check=True
    )
    return res.stdout


def test_demo_installs_the_package_without_the_test_extras(tmp_path):
    cmds = dry_run("demo", tmp_path)
    assert "pip install -q -e ." in cmds and "niff-analyze figures" in cmds
    assert "[test]" not in cmds and "foolbox" not in cmds and "-m pytest" not in cmds


def test_test_target_installs_the_test_extras_and_runs_pytest(tmp_path):
    cmds = dry_run("test", tmp_path)
    assert "'.[test]'" in cmds and "foolbox==3.3.4" in cmds and "-m pytest -q" in cmds


def test_test_runs_ruff_and_mypy_before_pytest(tmp_path):
    cmds = dry_run("test", tmp_path)
    pytest_at = cmds.index("-m pytest")
    for tool in (
        "bin/ruff check niff_analysis tests benchmarks",
        "bin/ruff format --check niff_analysis tests benchmarks",
        "bin/mypy",
    ):
        assert tool in cmds and cmds.index(tool) < pytest_at, tool
    # The linters come with the test extras, pinned, so a fresh CI machine installs them.
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    assert '"ruff==' in pyproject and '"mypy==' in pyproject


def test_test_targets_check_the_import_contract_before_pytest(tmp_path):
    for target in ("test", "test-fast"):
        cmds = dry_run(target, tmp_path)
        assert "bin/lint-imports" in cmds and cmds.index("bin/lint-imports") < cmds.index("-m pytest"), target
