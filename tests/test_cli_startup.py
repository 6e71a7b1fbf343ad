"""The command line starts without torch: ``import niff_analysis.cli``, ``--help``, every
command's ``--help``, ``--version`` and ``models`` import no heavy module (torch, torchvision,
pandas, matplotlib, scipy, numba), and the summaries ``--help`` shows are the commands' own."""

from __future__ import annotations

import subprocess
import sys

import click
import pytest
from click.testing import CliRunner

from niff_analysis.cli import COMMANDS, main

pytestmark = pytest.mark.slow  # fresh interpreters: not in `make test-fast`

HEAVY = ("torch", "torchvision", "pandas", "matplotlib", "scipy", "numba")
PROBE = (
    "HEAVY = "
    + repr(HEAVY)
    + """
import sys
from niff_analysis.cli import main
try:
    main([{args}], prog_name="niff-analyze")
except SystemExit:
    pass
print("LOADED", *sorted(m for m in HEAVY if m in sys.modules))
"""
)


def _loaded(*args: str) -> list[str]:
    code = PROBE.format(args=", ".join(repr(a) for a in args))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    line = next(line for line in out.splitlines() if line.startswith("LOADED"))
    return line.split()[1:]


def test_help_and_version_import_nothing_heavy():
    assert _loaded("--help") == []
    assert _loaded("--version") == []


def test_every_commands_help_imports_nothing_heavy():
    """A command's module is imported for its --help; the engine it runs is imported only when
    it runs (the options' choices come from niff_analysis.cli.common, checked against their
    sources in tests/test_cli_small_things.py)."""
    for name in COMMANDS:
        assert _loaded(name, "--help") == [], name


def test_models_imports_nothing_heavy_and_the_cli_module_neither():
    assert _loaded("models") == []
    assert _loaded("models", "resnet*", "--format", "json") == []
    code = f"import sys, niff_analysis.cli; print('LOADED', *[m for m in {HEAVY!r} if m in sys.modules])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    assert out.split() == ["LOADED"]


def test_a_command_that_runs_still_imports_its_engine():
    """The probe can see a heavy import: running a command (not its help) loads torch."""
    assert "torch" in _loaded("describe", "resnet18")


def test_every_command_resolves_and_its_summary_is_its_docstring():
    ctx = click.Context(main)
    for name, (module, summary) in COMMANDS.items():
        cmd = main.get_command(ctx, name)
        assert cmd is not None and cmd.callback.__module__ == f"niff_analysis.cli.{module}", name
        first = " ".join((cmd.help or "").split("\n\n")[0].split())
        if summary is None:
            assert cmd.hidden, name
        else:
            assert summary == first, name
    assert set(main.commands) == set(COMMANDS)  # nothing registered that the table does not list
    text = CliRunner().invoke(main, ["--help"]).output
    assert "(Eq. 6): share of |k| inside centred odd windows 1, 3, 5, … (full last)." in " ".join(text.split())
    assert "import-reference" not in text
