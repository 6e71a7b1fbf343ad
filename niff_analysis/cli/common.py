"""Options and output helpers shared by the CLI commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..errors import NiffError

if TYPE_CHECKING:
    import pandas as pd

    from ..pipeline import Found

FORMATS = ("table", "csv", "json")
MEASURES = ("l1", "energy")  # niff_analysis.analysis.mass.MEASURES, without importing torch
BOOTSTRAP = 1000  # niff_analysis.analysis.uncertainty.RESAMPLES (tests/test_uncertainty.py checks)

# What the options and `niff-analyze models` list, written out so that the command line and every
# --help start without importing torch, pandas or matplotlib (the modules that define them do);
# tests/test_cli_small_things.py checks each against its source.
#: niff_analysis.models.list_models(), each with its parse_name() (architecture, variant).
MODELS = {
    f"{arch}{sfx}": (arch, sfx.lstrip("_") or "baseline")
    for arch, sfxs in [
        ("convnext_tiny", ("", "_niff")),
        ("densenet121", ("", "_niff", "_niff_full", "_sep")),
        ("mobilenet_v2", ("", "_niff")),
        ("mobilenet_v3_small", ("", "_niff")),
        ("resnet101", ("", "_niff", "_niff_full", "_sep")),
        ("resnet18", ("", "_niff", "_niff_full", "_sep")),
        ("resnet50", ("", "_niff", "_niff_full", "_sep")),
    ]
    for sfx in sfxs
}
STEMS = ("imagenet", "cifar")  #: niff_analysis.models.registry.STEMS
CONV_MODES = ("circular", "linear", "pad-zero", "pad-reflect", "pad-circular")  #: niff_analysis.layers.CONV_MODES
MODE_DEFAULT = "circular"  #: create_model's default mode
DATASETS = ("fashion-mnist", "cifar10", "imagefolder")  #: niff_analysis.train.DATASETS
PRECISIONS = ("auto", "fp32", "bf16")  #: niff_analysis.train.precision.PRECISIONS
FIGURE_FORMATS = ("pdf", "png", "svg")  #: niff_analysis.plotting.report.FORMATS
COST_SIZES = (7, 14, 28, 56, 112)  #: niff_analysis.pipeline.COST_SIZES
ERF_PROTOCOLS = ("luo", "replknet")  #: niff_analysis.analysis.erf.PROTOCOLS


def measure_option(both: bool = True, default: str = "l1", what: str = ""):
    """``--measure``: what a pixel's mass is, in the mass ratio and the sizes derived from it."""
    choices = list(MEASURES) + (["both"] if both else [])
    return click.option(
        "--measure",
        type=click.Choice(choices),
        default=default,
        show_default=True,
        help="What a pixel's mass is: l1 = |k| (Eq. 6 as the paper's code computes it), energy = k² "
        "(a faint tail counts by its square)"
        + (", both = one block per measure" if both else "")
        + f"; every output names it.{what}",
    )


def bootstrap_option():
    """``--bootstrap N``: resamples of the 95 % interval of every printed mean and median."""
    return click.option(
        "--bootstrap",
        "resamples",
        type=int,
        default=BOOTSTRAP,
        show_default=True,
        callback=non_negative_int,
        metavar="N",
        help="Seeded (seed 0) percentile-bootstrap 95 % interval over kernels of every "
        "per-layer (per-stage) mean and median, from N resamples of the kernels; "
        "0: no intervals. Columns <stat>_lo/<stat>_hi; tables show 'value [lo, hi]'.",
    )


def format_option(default: str = "table", choices=FORMATS):
    return click.option(
        "--format", "fmt", type=click.Choice(choices), default=default, show_default=True, help="Output format."
    )


def device_option():
    return click.option(
        "--device",
        type=click.Choice(["auto", "cpu", "cuda", "mps"]),
        default="auto",
        show_default=True,
        help="Where to run.",
    )


def _store_factory(ctx, param, value):
    ctx.meta["niff_factory"] = value
    return value


def factory_option():
    """``--factory MODULE:FN``: allow a checkpoint's user factory to run (stored on the context)."""
    return click.option(
        "--factory",
        metavar="MODULE:FN",
        expose_value=False,
        callback=_store_factory,
        help="Allow this user factory (package.module:function) to build a checkpoint's "
        "model; nothing a checkpoint names runs otherwise.",
    )


def _store_strict(ctx, param, value):
    ctx.meta["niff_strict"] = value
    return value


def strict_option():
    """``--strict``: stop at the first checkpoint of a folder that cannot be analysed (stored on
    the context; by default it is skipped with a warning)."""
    return click.option(
        "--strict",
        is_flag=True,
        expose_value=False,
        callback=_store_strict,
        help="Of a folder of checkpoints, stop at the first one that cannot be analysed "
        "(default: skip it with a warning).",
    )


def current_factory() -> str | None:
    """The ``--factory`` of the running command, if any."""
    ctx = click.get_current_context(silent=True)
    return None if ctx is None else ctx.meta.get("niff_factory")


def positive_int(ctx, param, value):
    """Click callback: reject zero and negative counts with a clear message."""
    if value is not None and value < 1:
        raise click.BadParameter(f"must be a positive integer, got {value}")
    return value


def non_negative_int(ctx, param, value):
    """Click callback: reject negative counts with a clear message."""
    if value is not None and value < 0:
        raise click.BadParameter(f"must be zero or a positive integer, got {value}")
    return value


def render_frame(df: pd.DataFrame, fmt: str) -> str:
    """A DataFrame as table text, CSV, or a JSON array of row objects."""
    import pandas as pd

    if fmt == "csv":
        return df.to_csv(index=False)
    if fmt == "json":
        return json.dumps(json.loads(df.to_json(orient="records", double_precision=10)), indent=1) + "\n"
    with pd.option_context("display.max_rows", 200, "display.width", 200, "display.max_columns", 50):
        return df.to_string(index=False) + "\n"


def result_options(table_help: str = "table: for people; csv/json: the long form."):
    """``--format``, ``--output``, ``--device``, ``--factory`` and ``--quiet`` of a command that
    loads checkpoints and prints one table."""

    def deco(f):
        for d in reversed(
            [
                click.option(
                    "--format",
                    "fmt",
                    type=click.Choice(list(FORMATS)),
                    default="table",
                    show_default=True,
                    help=table_help,
                ),
                click.option(
                    "--output",
                    "-o",
                    type=click.Path(dir_okay=False),
                    help="Write here instead of stdout (format from the suffix), with meta.json beside it.",
                ),
                device_option(),
                factory_option(),
                click.option("--quiet", "-q", is_flag=True, help="No logs on stderr."),
                strict_option(),
            ]
        ):
            f = d(f)
        return f

    return deco


# --------------------------------------------------------------------------- one command's I/O
SUFFIX_FORMATS = {".csv": "csv", ".json": "json", ".txt": "table", ".npz": "npz"}


def output_format(ctx: click.Context, fmt: str, output: str | None, allowed: tuple[str, ...]) -> str:
    """The format of a command's result: ``--format``, or with ``--output`` its suffix (which
    ``--format``, if given, must agree with); an ``--output`` that cannot be written is refused
    here, before any work."""
    from pathlib import Path

    from ..io import check_writable

    if not output:
        return fmt
    parent = Path(output).parent
    if parent.exists() and not parent.is_dir():
        raise NiffError(f"--output {output}: {parent} exists and is not a directory")
    if Path(output).is_dir():
        raise NiffError(f"--output {output}: is a directory; name a file in it")
    suffix = Path(output).suffix.lower()
    if suffix not in SUFFIX_FORMATS or SUFFIX_FORMATS[suffix] not in allowed:
        ok = ", ".join(s for s, f in SUFFIX_FORMATS.items() if f in allowed)
        raise click.UsageError(f"cannot tell the format of --output {output}; use a suffix of {ok}")
    chosen = SUFFIX_FORMATS[suffix]
    if ctx.get_parameter_source("fmt") == click.core.ParameterSource.COMMANDLINE and fmt != chosen:
        raise click.UsageError(f"--format {fmt} disagrees with the suffix of --output {output}")
    try:  # before any analysis: an unwritable target fails in a second, not after minutes
        check_writable(parent)
    except OSError as exc:
        raise NiffError(f"--output {output}: cannot write there ({exc.strerror or exc})") from None
    return chosen


class Command:
    """One analysis command around :func:`~niff_analysis.pipeline.run`: its logs on stderr
    (``--quiet`` silences them), its warnings (always printed), the checkpoints of its command
    line found once (an ``--output`` inside any input refused before any work), and its result
    printed or written to ``--output`` with the provenance of what it read.

    Args:
        name: the command (recorded in ``meta.json``).
        checkpoints: the CHECKPOINT arguments.
        params: the command's settings (recorded in ``meta.json``, with ``device``,
            ``--max-kernels`` and, for a command that selects kernels, ``layers`` and
            ``include_conv``).
        layers: the ``--layers`` comma list of fnmatch patterns of a command that selects kernels
            (``None``: it selects none; every layer goes to the analysis, nothing is recorded).
        include_conv: its ``--include-conv`` (``None`` likewise).
    """

    def __init__(
        self,
        name: str,
        checkpoints,
        params: dict,
        output: str | None = None,
        quiet: bool = False,
        device: str = "cpu",
        layers: str | None = None,
        include_conv: bool | None = None,
    ):
        from ..device import resolve_device

        self.name, self.checkpoints, self.output, self.quiet = name, checkpoints, output, quiet
        self.layers = [p.strip() for p in (layers or "").split(",") if p.strip()] or ["*"]
        self.include_conv = bool(include_conv)
        self.device = resolve_device(device)
        # Only what the command took is provenance: a default it never read would mislead.
        selection = {k: v for k, v in dict(layers=layers, include_conv=include_conv).items() if v is not None}
        self.params = dict(params, **selection, device=device)
        meta = click.get_current_context().meta
        self.strict = bool(meta.get("niff_strict"))
        self.max_kernels = meta.get("niff_max_kernels")
        self.provenance: list[dict] = []
        self._found: Found | None = None
        self._warned_skipped = False

    def log(self, msg: str) -> None:
        if not self.quiet:
            click.echo(msg, err=True)

    def warn(self, msg: str) -> None:
        """A warning: printed even with ``--quiet`` (results that hold NaN are never silent)."""
        click.echo(f"warning: {msg}", err=True)

    def found(self, runs_in_progress: bool = False, warn_skipped: bool = True) -> Found:
        """The checkpoints of the command line (:func:`~niff_analysis.pipeline.discover`), found
        once; an ``--output`` inside any input is refused, and what was skipped is warned about
        once (not yet with ``warn_skipped=False``: a caller that may refuse the whole selection
        first)."""
        from ..pipeline import discover, refuse_output_in_inputs

        if self._found is None:
            self._found = discover(tuple(self.checkpoints), runs_in_progress=runs_in_progress)
            if self.output:
                refuse_output_in_inputs(self.output, self._found.inputs)
        if warn_skipped and not self._warned_skipped:
            self._warned_skipped = True
            for line in self._found.skipped_lines():
                self.warn(line)
        return self._found

    def run(self, analysis, progress: bool = False, log_selection: bool = True, non_finite=None):
        """:func:`~niff_analysis.pipeline.run` of ``analysis`` on the command's checkpoints
        (``progress``: a progress bar over several checkpoints; ``log_selection``: log which
        kernels were selected; ``non_finite``: as the runner's); the provenance of what it read is
        kept for :meth:`finish`.

        Raises:
            NiffError: no checkpoint could be analysed.
        """
        from ..errors import NiffError
        from ..pipeline import run

        if self.max_kernels and analysis.needs == "kernels":
            self.params["max_kernels"] = self.max_kernels
        found = self.found(runs_in_progress=analysis.needs == "history")
        res = run(
            analyses=analysis,
            found=found,
            layers=self.layers,
            include_conv=self.include_conv,
            max_kernels=self.max_kernels,
            device=self.device,
            factory=current_factory(),
            strict=self.strict,
            log=self.log,
            warn=self.warn,
            log_selection=log_selection,
            non_finite=non_finite,
            wrap=self._bar if progress else None,
        )
        self.provenance = res.provenance
        if not res.labels:
            raise NiffError(f"no checkpoint could be analysed (skipped: {', '.join(res.skipped)})")
        return res[analysis]

    def _bar(self, items, n: int):
        import sys

        from tqdm import tqdm

        return tqdm(items, desc="checkpoints", unit="ckpt", file=sys.stderr, disable=self.quiet or n < 2, leave=False)

    def finish(self, content, rows: int) -> None:
        """Print ``content`` (text), or write it (text, or a function writing the file) to
        ``--output`` with its meta.json entry."""
        from ..provenance import META_NAME, write_output

        if not self.output:
            click.echo(content, nl=False)
            return
        path = write_output(self.output, content, self.name, self.params, self.provenance, rows)
        self.log(f"wrote {path} and {path.parent / META_NAME}")

    def write_npz(self, arrays: dict) -> None:
        """Write ``arrays`` to ``--output`` as one .npz file (with its meta.json entry)."""
        import numpy as np

        def save(tmp) -> None:
            with open(tmp, "wb") as f:  # a file object: np.savez would append ".npz" to a name
                np.savez(f, **arrays)

        self.finish(save, len(arrays))


def out_folder(out: str) -> None:
    """Refuse an ``--out`` folder that exists as a file, before any work is done."""
    if Path(out).exists() and not Path(out).is_dir():
        raise NiffError(f"--out {out}: exists and is not a directory")


def model_kwargs(num_classes, in_chans, input_size, stem, mlp) -> dict:
    kwargs = {
        k: v
        for k, v in dict(num_classes=num_classes, in_chans=in_chans, input_size=input_size, stem=stem).items()
        if v is not None
    }
    if mlp:
        try:
            kwargs["mlp"] = [int(h) for h in mlp.split(",")] if mlp[0].isdigit() else mlp
        except ValueError:
            raise NiffError(f"--mlp: expected a preset name or sizes like 16,64, got {mlp!r}") from None
    return kwargs
