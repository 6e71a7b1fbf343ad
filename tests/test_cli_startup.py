"""The command line starts without torch: ``--help`` and ``--version`` import no heavy module,
``models`` imports no torchvision, and the summaries ``--help`` shows are the commands' own."""

from __future__ import annotations

import pytest
import subprocess
import sys

import click
from click.testing import CliRunner

from niff_analysis.cli import COMMANDS, main

pytestmark = pytest.mark.slow  # fresh interpreters: not in `make test-fast`

PROBE = """
import sys
from niff_analysis.cli import main
try:
    main([{args}], prog_name="niff-analyze")
except SystemExit:
    pass
print("LOADED", *sorted(m for m in ("torch", "torchvision", "pandas", "matplotlib") if m in sys.modules))
"""


def _loaded(*args: str) -> list[str]:
    code = PROBE.format(args=", ".join(repr(a) for a in args))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120).stdout
    line = next(line for line in out.splitlines() if line.startswith("LOADED"))
    return line.split()[1:]


def test_help_and_version_import_nothing_heavy():
    assert _loaded("--help") == []
    assert _loaded("--version") == []
    assert _loaded("mass", "--help") != []  # a command's own help loads its module (and torch)


def test_models_needs_no_torchvision():
    assert "torchvision" not in _loaded("models")


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
