"""The ``niff-analyze`` command line. Each command group lives in its own module."""

from __future__ import annotations

import os
import sys

import click

from .. import __version__
from ..errors import NiffError


class _Group(click.Group):
    """Turn every error into one line on stderr and a non-zero exit (no tracebacks).

    Set ``NIFF_DEBUG=1`` to see the traceback of an unexpected error.
    """

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.exceptions.Exit, click.exceptions.Abort, click.ClickException):
            raise
        except KeyboardInterrupt:
            click.echo("error: interrupted", err=True)
            sys.exit(130)
        except (NiffError, ValueError, OSError, RuntimeError) as exc:
            if os.environ.get("NIFF_DEBUG"):
                raise
            msg = " ".join(str(exc).split()) or type(exc).__name__
            click.echo(f"error: {msg}", err=True)
            sys.exit(2 if isinstance(exc, NiffError) else 1)
        except Exception as exc:  # noqa: BLE001 - last resort, still one line
            if os.environ.get("NIFF_DEBUG"):
                raise
            click.echo(f"error: unexpected {type(exc).__name__}: {' '.join(str(exc).split())} "
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
