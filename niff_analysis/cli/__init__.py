"""The ``niff-analyze`` command line. Each command group lives in its own module."""

from __future__ import annotations

import errno
import importlib
import os
import sys

import click

from .. import __version__
from ..errors import NiffError


def _one_line(exc: BaseException) -> str:
    """The message of ``exc`` on one line, without any traceback text it carries.

    An error raised in a DataLoader worker reaches us re-raised with the worker's whole
    traceback in its message; its last line (``Type: message``) is the error itself.
    """
    text = str(exc)
    if "Traceback (most recent call last)" in text:
        lines = [line for line in text.splitlines() if line.strip()]
        text = lines[-1] if lines else ""
        own = f"{type(exc).__module__}.{type(exc).__qualname__}: "
        if isinstance(exc, NiffError) and text.startswith(own):
            text = text[len(own) :]  # our own errors read the same from a worker as in-process
    return " ".join(text.split()) or type(exc).__name__


def _os_error(exc: OSError) -> str:
    """An OSError in plain words: a full disk says so, and names the file it was writing."""
    if exc.errno == errno.ENOSPC:
        where = f" writing {exc.filename}" if exc.filename else ""
        return f"disk full{where}: {exc.strerror or 'No space left on device'}"
    return _one_line(exc)


#: command → (module of ``niff_analysis.cli`` that defines it, its one-line summary). The group
#: imports a command's module only when that command runs, so ``--help`` and ``--version`` never
#: import torch; tests/test_cli_startup.py checks each summary against the command's docstring.
COMMANDS = {
    "models": ("models", "List registered models (PATTERN: fnmatch wildcard, e.g. 'resnet*_niff')."),
    "describe": ("models", "Structure of TARGET: a registered model name or a checkpoint (default: bundled)."),
    "train": (
        "train",
        "Train a registered model; writes a checkpoint, metrics.csv, kernel_stats.csv, "
        "init/ and train_config.json to OUT.",
    ),
    "sweep": ("train", "Train arms x seeds of one recipe and compare what they learn."),
    "import": (
        "imports",
        "Import the weights of a model trained elsewhere (PATH: .pt/.pth/.bin/.safetensors state dict).",
    ),
    "import-reference": ("imports", None),  # hidden: kept for old scripts
    "kernels": ("analysis", "Spatial kernels of every NIFF layer on the feature-map size it runs at."),
    "mass": ("analysis", "Kernel mass ratio (Eq. 6): share of |k| inside centred odd windows 1, 3, 5, … (full last)."),
    "pca": ("analysis", "PCA eigenkernels per layer: exact SVD, deterministic signs, explained-variance ratios."),
    "gaussian": ("analysis", "2-D Gaussian fit to |k| of every kernel (Levenberg–Marquardt, moment start)."),
    "history": ("analysis", "Kernel statistics recorded during training (the run's kernel_stats.csv), per epoch."),
    "erf": ("erf", "Effective receptive field per stage: gradient of the output's central pixel w.r.t. the input."),
    "evaluate": (
        "evaluate",
        "Accuracy of CHECKPOINT(s) on their dataset, as recorded or with BatchNorm statistics recomputed.",
    ),
    "claims": ("claims", "The paper's claims about learned kernel sizes (§5, Fig. 7, App. A), measured."),
    "figures": ("figures", "Write every figure of CHECKPOINT(s) as PDF/PNG, plus the CSV tables they were drawn from."),
}


class _Group(click.Group):
    """Commands imported on first use (see :data:`COMMANDS`); every error becomes one line on
    stderr and a non-zero exit (no tracebacks).

    Set ``NIFF_DEBUG=1`` to see the traceback of an unexpected error.
    """

    def list_commands(self, ctx):
        return [n for n in COMMANDS if COMMANDS[n][1] is not None]

    def get_command(self, ctx, name):
        if name not in self.commands and name in COMMANDS:
            importlib.import_module(f".{COMMANDS[name][0]}", __name__)  # registers its commands
        return self.commands.get(name)

    def format_commands(self, ctx, formatter):
        rows = [(n, COMMANDS[n][1]) for n in self.list_commands(ctx)]
        with formatter.section("Commands"):
            formatter.write_dl(rows)

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:
            # Output piped into e.g. `head`, which closed early: not an error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt as exc:
            click.echo("error: interrupted", err=True)
            sys.exit(128 + getattr(exc, "signum", 2))  # 130 for SIGINT, 143 for SIGTERM
        except (NiffError, ValueError, OSError, RuntimeError) as exc:
            if os.environ.get("NIFF_DEBUG"):
                raise
            click.echo(f"error: {_os_error(exc) if isinstance(exc, OSError) else _one_line(exc)}", err=True)
            sys.exit(2 if isinstance(exc, NiffError) else 1)
        except Exception as exc:  # noqa: BLE001 - last resort, still one line
            if os.environ.get("NIFF_DEBUG"):
                raise
            click.echo(
                f"error: unexpected {type(exc).__name__}: {_one_line(exc)} (set NIFF_DEBUG=1 for a traceback)", err=True
            )
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="niff-analyze")
def main() -> None:
    """Train NIFF CNNs and measure how large the kernels they learn really are."""
