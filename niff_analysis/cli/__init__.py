"""The ``niff-analyze`` command line. Each command group lives in its own module."""

from __future__ import annotations

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
            text = text[len(own):]  # our own errors read the same from a worker as in-process
    return " ".join(text.split()) or type(exc).__name__


class _Group(click.Group):
    """Turn every error into one line on stderr and a non-zero exit (no tracebacks).

    Set ``NIFF_DEBUG=1`` to see the traceback of an unexpected error.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except BrokenPipeError:
            # Output piped into e.g. `head`, which closed early: not an error.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(0)
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except (NiffError, ValueError, OSError, RuntimeError) as exc:
            if os.environ.get("NIFF_DEBUG"):
                raise
            click.echo(f"error: {_one_line(exc)}", err=True)
            sys.exit(2 if isinstance(exc, NiffError) else 1)
        except Exception as exc:  # noqa: BLE001 - last resort, still one line
            if os.environ.get("NIFF_DEBUG"):
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {_one_line(exc)} "
                       "(set NIFF_DEBUG=1 for a traceback)", err=True)
            sys.exit(1)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="niff-analyze")
def main() -> None:
    """Train NIFF CNNs and measure how large the kernels they learn really are."""


from . import models as _models  # noqa: E402,F401  (registers commands)
from . import train as _train  # noqa: E402,F401

try:  # analysis and figure commands register themselves when present
    from . import analysis as _analysis  # noqa: E402,F401
except ImportError as _exc:  # pragma: no cover
    if "analysis" not in str(_exc):
        raise
try:
    from . import figures as _figures  # noqa: E402,F401
except ImportError as _exc:  # pragma: no cover
    if "figures" not in str(_exc):
        raise
