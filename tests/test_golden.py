"""The bundled default checkpoint's kernel mass and size summary, pinned to a golden file.

``tests/golden/resnet18_niff_fmnist_mass.csv`` holds, per measure and layer of the bundled
default (``resnet18_niff_fmnist``), the mean mass ratio inside the centred S×S window
(``mass_w1`` … ``mass_w9``; a window at least as large as the kernel holds all of it, 1.0) and
the mean of the per-kernel smallest windows holding 50 / 90 % of the mass (``size_50``,
``size_90``), as the CLI prints them. Any change of the layers, the kernel extraction, the mass
ratio, the sizes or the checkpoint moves these numbers and fails here.

The file's comment header says which commands made it and how to regenerate it: only for an
intended change of the numbers, saying why in the commit (torchvision's expected-output files
work the same way). The header must equal what the regeneration writes, and the numbers are
checked twice: against the commands the header names and against numpy on the extracted kernels.
"""

from __future__ import annotations

import io
import os
import shlex
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from niff_analysis.cli import main

GOLDEN = Path(__file__).parent / "golden" / "resnet18_niff_fmnist_mass.csv"
REGENERATE_ENV = "NIFF_REGENERATE_GOLDEN"
REGENERATE = f"{REGENERATE_ENV}=1 python -m pytest tests/test_golden.py"
# What the file is made from: two runs of the CLI on the bundled default (no CHECKPOINT), on the
# CPU, without bootstrap intervals (they do not change the means).
COMMANDS = [
    "niff-analyze mass --measure both --view summary --bootstrap 0 --format csv --device cpu -q",
    "niff-analyze mass --measure both --view sizes --format csv --device cpu -q",
]
WINDOWS = (1, 3, 5, 7, 9)
KEYS = ["measure", "layer", "stage", "fmap_h", "fmap_w"]
COLUMNS = [*KEYS, "kernels", *(f"mass_w{s}" for s in WINDOWS), "size_50", "size_90"]
ATOL = 1e-6  # absolute, on ratios in [0, 1] and sizes in pixels
HEADER = [
    "The bundled default checkpoint (resnet18_niff_fmnist): per measure (l1 = |k|, energy = k²) and",
    "layer, the mean kernel mass ratio inside the centred S×S window (mass_wS; 1.0 where the window",
    "covers the whole kernel) and the mean per-kernel smallest window holding 50 / 90 % of the mass",
    "(size_50, size_90, pixels). Made from the output of:",
    *(f"  {c}" for c in COMMANDS),
    "(mass_wS: the summary's mean at the largest window <= S; size_q: the mean of the sizes view).",
    "Regenerate only for an intended change of these numbers, and say why in the commit:",
    f"  {REGENERATE}",
]


def _run(command: str) -> pd.DataFrame:
    """One of :data:`COMMANDS` through the CLI (in-process), its CSV output as a DataFrame."""
    args = shlex.split(command)
    assert args[0] == "niff-analyze"
    res = CliRunner().invoke(main, args[1:])
    assert res.exit_code == 0, res.output
    return pd.read_csv(io.StringIO(res.stdout))


def summary_from_cli() -> pd.DataFrame:
    """The golden table, computed now by the commands of :data:`COMMANDS`."""
    summary, sizes = (_run(c) for c in COMMANDS)
    assert set(summary.checkpoint) == set(sizes.checkpoint) == {"resnet18_niff_fmnist"}
    table = summary.groupby(KEYS, sort=False)["n"].max().rename("kernels").reset_index()
    for s in WINDOWS:
        at = summary[summary.window <= s].groupby(KEYS, sort=False).tail(1)
        table = table.merge(at[KEYS + ["mean"]].rename(columns={"mean": f"mass_w{s}"}), on=KEYS)
    means = sizes.groupby(KEYS, sort=False)[["size_50", "size_90"]].mean().reset_index()
    return table.merge(means, on=KEYS)[COLUMNS]


def read_golden() -> tuple[list[str], pd.DataFrame]:
    """The golden file's comment lines (without '# ') and its table."""
    text = GOLDEN.read_text(encoding="utf-8")
    comments = [line[2:] for line in text.splitlines() if line.startswith("#")]
    return comments, pd.read_csv(io.StringIO(text), comment="#")


def write_golden(table: pd.DataFrame, path: Path) -> None:
    body = table.to_csv(index=False, float_format="%.10g", lineterminator="\n")
    path.write_text("".join(f"# {line}\n" for line in HEADER) + body, encoding="utf-8")


def by_hand() -> pd.DataFrame:
    """The same table with numpy alone, from the kernels the library extracts."""
    from niff_analysis.analysis import extract_kernels
    from niff_analysis.checkpoint import load_checkpoint

    rows = []
    for measure in ("l1", "energy"):
        for lk in extract_kernels(load_checkpoint()):
            k = lk.flat.double().numpy()
            a = np.abs(k) if measure == "l1" else k**2
            n, h, w = a.shape
            total = a.sum(axis=(1, 2))

            # mass inside the centred s×s window (clipped to the kernel); this layer's arrays bound now
            def inside(s, a=a, h=h, w=w, total=total):
                if s >= max(h, w):  # covers the whole kernel (an even size is the full window)
                    return total
                r = (s - 1) // 2
                return a[:, max(h // 2 - r, 0) : h // 2 + r + 1, max(w // 2 - r, 0) : w // 2 + r + 1].sum(axis=(1, 2))

            # Windows: the odd sizes below the kernel's size, then the whole kernel.
            windows = [s for s in range(1, max(h, w), 2)] + [max(h, w)]
            ratios = np.stack([inside(s) / total for s in windows], axis=1)
            row = dict(measure=measure, layer=lk.name, stage=lk.stage, fmap_h=h, fmap_w=w, kernels=n)
            for s in WINDOWS:
                row[f"mass_w{s}"] = (inside(s) / total).mean()
            for q in (50, 90):
                first = np.argmax(ratios >= q / 100 - 1e-12, axis=1)  # the full window always reaches q
                row[f"size_{q}"] = np.asarray(windows, dtype=float)[first].mean()
            rows.append(row)
    return pd.DataFrame(rows)[COLUMNS]


def _compare(got: pd.DataFrame, want: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(
        got[KEYS + ["kernels"]].reset_index(drop=True),
        want[KEYS + ["kernels"]].reset_index(drop=True),
        check_dtype=False,
    )
    numeric = COLUMNS[len(KEYS) + 1 :]
    np.testing.assert_allclose(got[numeric].to_numpy(float), want[numeric].to_numpy(float), rtol=0, atol=ATOL)


def test_bundled_default_mass_and_sizes_equal_the_golden_file():
    now = summary_from_cli()
    if os.environ.get(REGENERATE_ENV) == "1":
        write_golden(now, GOLDEN)
    _, golden = read_golden()
    assert list(golden.columns) == COLUMNS
    assert len(golden) == 26 and set(golden.measure) == {"l1", "energy"}  # 13 NIFF layers, both measures
    _compare(now, golden)


def test_golden_file_says_how_it_was_made(tmp_path):
    """Its header names the commands that made it and the regeneration command, exactly as the
    regeneration writes them, so the file cannot drift from its stated provenance."""
    comments, golden = read_golden()
    assert comments == HEADER
    assert all(f"  {c}" in comments for c in COMMANDS) and f"  {REGENERATE}" in comments
    rewritten = tmp_path / GOLDEN.name
    write_golden(golden, rewritten)  # the same table through the writer: byte for byte the file
    assert rewritten.read_bytes() == GOLDEN.read_bytes()


def test_golden_numbers_agree_with_numpy_on_the_extracted_kernels():
    _, golden = read_golden()
    _compare(by_hand(), golden)
    # Known answers inside the file: the whole kernel holds all of its mass, a 4×4 kernel fits a
    # 5×5 window, and no size exceeds the map.
    small = golden[golden.fmap_h <= 8]
    assert (small.mass_w9 == 1).all() and (golden[golden.fmap_h == 4].mass_w5 == 1).all()
    assert (golden.size_90 <= golden.fmap_h).all() and (golden.size_50 <= golden.size_90).all()


@pytest.mark.parametrize("column", ["mass_w9", "size_90"])
def test_a_changed_number_fails(column):
    """The comparison is tight enough to see a change the size of the tolerance's tenfold."""
    _, golden = read_golden()
    moved = golden.copy()
    moved.loc[0, column] += 10 * ATOL
    with pytest.raises(AssertionError):
        _compare(moved, golden)
