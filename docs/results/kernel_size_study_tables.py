"""Print the tables of docs/results/kernel_size_study.md from the study's long-form CSV.

    .venv/bin/python docs/results/kernel_size_study_tables.py docs/results/kernel_size_study.csv \
        [--runs runs/kernel_size_study] [--figure docs/images/kernel_size_study.png] \
        [--page docs/results/kernel_size_study.md] [--update-csv [--width64 RUN]]

The CSV is what ``niff-analyze sweep ... --table`` writes (docs/results/kernel_size_study.sh);
``--update-csv`` first rewrites the CSV from the runs finished so far (``--runs``), as the sweep
does when it ends, and beside it the scale (``<csv>_scale.csv``: the white-noise and delta
references on the study's maps and each arm's integrated MLP decay, which the sweep's table does
not hold), and with ``--width64`` the full-width run beside the bundled default
(``<csv>_width64.csv``); without ``--runs`` the scale, and without ``--width64`` the full-width
table, are read from those files. ``--runs`` also adds each run's
training seconds, read from its metrics.csv. ``--page`` writes the tables into the results page
between its two markers instead of printing them; ``--figure`` draws the per-stage statistics of
every arm there and, beside it (``<figure>_decay.png``), the statistics against the decay. Every
number is a mean over the seeds that finished,
with its 95 % t-interval over seeds (no interval for one seed).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from niff_analysis.analysis.uncertainty import interval_text
from niff_analysis.train.sweep import INIT_ARM, compare_arms, seed_summary

STAGES = ["layer1", "layer2", "layer3", "layer4"]
# The falsification pairs: the same recipe on content shown at half the size (same canvas, maps,
# initial kernels). If the kernels are learned from the images, their size should about halve.
PAIRS = [("content_scale=0.5", "spec"), ("mlp_weight_decay=0.1_content_scale=0.5", "mlp_weight_decay=0.1")]


def fmt(row: pd.Series, decimals: int = 3, value: str = "mean") -> str:
    """``mean [lo, hi]`` over seeds (the mean alone for one seed)."""
    if row["n_seeds"] > 1:
        return interval_text(row[value], row["lo"], row["hi"], decimals=decimals)
    return interval_text(row[value], decimals=decimals)


def arm_order(final: pd.DataFrame) -> list[str]:
    arms = list(dict.fromkeys(final["arm"]))
    first = [a for a in ("delta", "white noise", INIT_ARM) if a in arms]
    return first + [a for a in arms if a not in first]


def accuracy_table(final: pd.DataFrame, seconds: pd.DataFrame | None) -> str:
    summ = seed_summary(final)
    lines = ["| arm | seeds | test accuracy (%) | epochs | training seconds per run |", "|---|---|---|---|---|"]
    for arm in arm_order(final):
        if arm in (INIT_ARM, "delta", "white noise"):
            continue
        r = summ[(summ["arm"] == arm) & (summ["stat"] == "test_acc")].iloc[0]
        acc = r.copy()
        for k in ("mean", "lo", "hi"):
            acc[k] = 100 * r[k]
        epochs = ", ".join(str(e) for e in sorted(final[final["arm"] == arm]["epoch"].unique()))
        secs = ""
        if seconds is not None and arm in seconds.index:
            secs = ", ".join(f"{s:.0f}" for s in seconds.loc[[arm], "seconds"])
        lines.append(f"| {arm} | {int(r['n_seeds'])} | {fmt(acc, 2)} | {epochs} | {secs} |")
    return "\n".join(lines)


def stage_table(final: pd.DataFrame, measure: str) -> str:
    summ = seed_summary(final)
    summ = summ[summ["measure"] == measure]
    stats = [
        ("mass1_mean", "centre pixel", 3),
        ("mass3_mean", "mass 3×3", 3),
        ("mass9_mean", "mass 9×9", 3),
        ("k50_mean", "k50 (px)", 1),
        ("k90_mean", "k90 (px)", 1),
    ]
    lines = ["| arm | stage | seeds | " + " | ".join(s[1] for s in stats) + " |", "|---|---|---|" + "---|" * len(stats)]
    for arm in arm_order(final):
        for stage in STAGES:
            part = summ[(summ["arm"] == arm) & (summ["stage"] == stage)].set_index("stat")
            if part.empty:
                continue
            cells = [fmt(part.loc[s], d) if s in part.index else "" for s, _, d in stats]
            seeds = "–" if arm in ("delta", "white noise") else str(int(part["n_seeds"].iloc[0]))
            lines.append(f"| {arm} | {stage} | {seeds} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def falsification_table(final: pd.DataFrame) -> str:
    lines = ["| arm / reference | measure | stage | seeds | k50 ratio | k90 ratio |", "|---|---|---|---|---|---|"]
    arms = set(final["arm"])
    for arm, ref in PAIRS:
        if arm not in arms or ref not in arms:
            continue
        cmp = compare_arms(final, arm, ref)
        for measure in ("l1", "energy"):
            for stage in STAGES:
                part = cmp[(cmp["measure"] == measure) & (cmp["stage"] == stage)].set_index("stat")
                if part.empty:
                    continue
                cells = []
                for stat in ("k50_mean", "k90_mean"):
                    cells.append(fmt(part.loc[stat], 2, value="ratio"))
                lines.append(
                    f"| {arm} / {ref} | {measure} | {stage} | {int(part['n_seeds'].iloc[0])} | "
                    + " | ".join(cells)
                    + " |"
                )
    return "\n".join(lines)


def paired_accuracy(final: pd.DataFrame, arm: str, reference: str) -> pd.Series:
    """Test accuracy of ``arm`` minus ``reference``, seed by seed, in percentage points: mean and
    95 % t-interval over the seeds both finished (``ratio``, ``lo``, ``hi``, ``n_seeds``, so
    :func:`fmt` prints it)."""
    from niff_analysis.analysis.uncertainty import seed_interval

    acc = final.drop_duplicates(["arm", "seed"]).set_index(["arm", "seed"])["test_acc"]
    both = pd.concat(dict(arm=acc.loc[arm], ref=acc.loc[reference]), axis=1).dropna()
    diff = 100 * (both["arm"] - both["ref"])
    mean, lo, hi = seed_interval(diff)
    return pd.Series(dict(ratio=mean, lo=lo, hi=hi, n_seeds=len(diff)))


def paired_table(final: pd.DataFrame, reference: str = "spec") -> str:
    """Every arm against ``reference`` seed by seed (the same seed: the same initial weights and
    data order): the accuracy difference, and the ratio arm/reference of layer1's centre-pixel
    share and k90 under |k|, each with its 95 % t-interval over seeds."""
    cols = [("mass1_mean", "layer1 centre pixel, ratio"), ("k90_mean", "layer1 k90, ratio")]
    lines = [
        f"| arm / {reference} | seeds | Δ test accuracy (pp) | " + " | ".join(c for _, c in cols) + " |",
        "|---|---|---|" + "---|" * len(cols),
    ]
    for arm in arm_order(final):
        if arm in (INIT_ARM, "delta", "white noise", reference):
            continue
        cmp = compare_arms(final, arm, reference)
        cmp = cmp[(cmp["measure"] == "l1") & (cmp["stage"] == "layer1")].set_index("stat")
        if cmp.empty:
            continue
        cells = [fmt(cmp.loc[stat], 2, value="ratio") if stat in cmp.index else "" for stat, _ in cols]
        acc = paired_accuracy(final, arm, reference)
        lines.append(f"| {arm} | {int(acc['n_seeds'])} | {fmt(acc, 2, value='ratio')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def falsification_summary(final: pd.DataFrame) -> str:
    """The falsification test's outcome in one sentence per pair: the range of the per-seed
    half-size/full-size ratios of k50 and k90 over stages 1-4, with the widest 95 % interval
    bounds, under each measure."""
    arms, out = set(final["arm"]), []
    for arm, ref in PAIRS:
        if arm not in arms or ref not in arms:
            continue
        cmp = compare_arms(final, arm, ref)
        cmp = cmp[cmp["stat"].isin(["k50_mean", "k90_mean"]) & cmp["stage"].isin(STAGES)]
        if cmp.empty:
            continue
        n = int(cmp["n_seeds"].min())
        parts = []
        for measure, name in (("l1", "|k|"), ("energy", "k²")):
            c = cmp[cmp["measure"] == measure]
            text = f"{c['ratio'].min():.2f}–{c['ratio'].max():.2f} under {name}"
            if n > 1:
                text += f" (95 % t-intervals within {c['lo'].min():.2f}–{c['hi'].max():.2f})"
            parts.append(text)
        seeds = f"{n} seed{'s' if n > 1 else ''} both arms finished" + ("" if n > 1 else ", no interval")
        out.append(
            f"`{arm}` against `{ref}` ({seeds}): the per-seed ratio of k50 and k90, stages 1–4, was "
            + " and ".join(parts)
            + "; kernels that follow the data would give about 0.5."
        )
    return "\n\n".join(out)


def reference_rows(root: Path) -> pd.DataFrame:
    """White-noise and delta kernels on the study's maps, in the CSV's long form (seed -1), from the
    first finished run's layers (every arm has the same maps)."""
    from niff_analysis.analysis.kernels import extract_kernels
    from niff_analysis.analysis.references import reference_layers
    from niff_analysis.analysis.stats import stage_stats
    from niff_analysis.checkpoint import load_checkpoint

    folder = next(p.parent for p in sorted(root.glob("*/seed=*/model.safetensors")))
    kernels = extract_kernels(load_checkpoint(folder))
    frames = []
    for kind, name in (("noise", "white noise"), ("delta", "delta")):
        st = stage_stats(reference_layers(kernels, kind))
        frames.append(st.assign(arm=name, seed=-1, epoch=0, test_acc=float("nan")))
    return pd.concat(frames, ignore_index=True)


def run_seconds(root: Path) -> pd.DataFrame:
    rows = []
    for metrics in sorted(root.glob("*/seed=*/metrics.csv")):
        if not (metrics.parent / "model.safetensors").is_file():
            continue  # not finished
        m = pd.read_csv(metrics)
        rows.append((metrics.parent.parent.name, int(metrics.parent.name.split("=")[1]), float(m["seconds"].sum())))
    return pd.DataFrame(rows, columns=["arm", "seed", "seconds"]).sort_values(["arm", "seed"]).set_index("arm")


def convergence_table(root: Path, order: list[str], back: int = 2, stages: list[str] = STAGES) -> str:
    """How far each finished run's kernels still moved over its last ``back`` epochs, from the
    statistics the trainer recorded (kernel_stats.csv, |k|): per arm and stage, the largest
    change over its seeds of the stage's mean k90 (px) and mass inside 9×9."""
    rows = []
    for stats in sorted(root.glob("*/seed=*/kernel_stats.csv")):
        if not (stats.parent / "model.safetensors").is_file():
            continue  # not finished
        df = pd.read_csv(stats)
        if "measure" in df.columns:
            df = df[df["measure"] == "l1"]
        df = df[df["stat"].isin(["k90_mean", "mass9_mean"])]
        last = int(df["epoch"].max())
        at = df[df["epoch"].isin([last - back, last])]
        stage = at.groupby(["epoch", "stage", "stat"])["value"].mean().unstack("epoch")
        if last - back not in stage.columns:
            continue
        change = (stage[last] - stage[last - back]).rename("change").reset_index()
        rows.append(change.assign(arm=stats.parent.parent.name, seed=stats.parent.name, last=last))
    if not rows:
        return "No finished run recorded its kernel statistics."
    df = pd.concat(rows, ignore_index=True)
    df["abs"] = df["change"].abs()
    lines = [
        "| arm | seeds | epochs | largest change of k90 (px), layer1–4 | largest change of mass 9×9, layer1–4 |",
        "|---|---|---|---|---|",
    ]
    for arm in [a for a in order if a in set(df["arm"])]:
        a = df[df["arm"] == arm]
        # the signed change of the seed with the largest |change| in each stage
        worst = a.loc[a.groupby(["stage", "stat"])["abs"].idxmax()].set_index(["stat", "stage"])["change"]
        k90 = ", ".join(f"{worst[('k90_mean', st)]:+.2f}" for st in stages)
        m9 = ", ".join(f"{worst[('mass9_mean', st)]:+.3f}" for st in stages)
        last = int(a["last"].iloc[0])
        lines.append(f"| {arm} | {a['seed'].nunique()} | {last - back} → {last} | {k90} | {m9} |")
    return "\n".join(lines)


def integrated_decay(root: Path) -> pd.Series:
    """Per arm, the integrated decay on the frequency MLPs' weights, Σ over the run's steps of
    lr·wd/(1−m) with the trainer's per-step cosine lr (an MLP weight no gradient supports shrinks
    by exp(−Σ)), from seed 0's train_config.json and the last step its kernel_stats.csv recorded;
    NaN for an arm whose content is not shown at full size (the falsification arms)."""
    import math

    from niff_analysis.runs import read_train_config

    out = {}
    for stats in sorted(root.glob("*/seed=*/kernel_stats.csv")):
        arm = stats.parent.parent.name
        cfg = read_train_config(stats.parent)
        if arm in out or cfg is None or not (stats.parent / "model.safetensors").is_file():
            continue
        total = int(pd.read_csv(stats, usecols=["step"])["step"].max())
        wd = cfg["weight_decay"] if cfg.get("mlp_weight_decay") is None else cfg["mlp_weight_decay"]
        lr = sum(0.5 * cfg["lr"] * (1 + math.cos(math.pi * s / total)) for s in range(total))
        out[arm] = lr * wd / (1 - cfg["momentum"]) if cfg.get("content_scale", 1.0) == 1.0 else math.nan
    return pd.Series(out, dtype=float)


DECAY_STAT = "integrated_mlp_decay"


def scale_path(csv: Path, part: str = "scale") -> Path:
    return Path(csv).with_name(f"{Path(csv).stem}_{part}.csv")


def scale_rows(root: Path) -> pd.DataFrame:
    """What the page and the figures need beside the sweep's table, in its long form: the
    white-noise and delta references on the study's maps, and each full-size arm's integrated
    MLP decay (stage and measure ``any``, statistic ``integrated_mlp_decay``, seed -1)."""
    decay = integrated_decay(root).dropna()
    rows = pd.DataFrame(
        dict(arm=decay.index, seed=-1, epoch=0, stage="any", measure="any", stat=DECAY_STAT, value=decay.to_numpy())
    )
    both = pd.concat([reference_rows(root), rows.assign(test_acc=float("nan"))], ignore_index=True)
    return both[["arm", "seed", "epoch", "stage", "measure", "stat", "value", "test_acc"]]


def decay_table(final: pd.DataFrame, decay: pd.Series) -> str:
    """The study's answer in one table: the arms at full-size content ordered by their integrated
    MLP decay, with the scale's ends (a delta, white noise, the initialisation) above them: test
    accuracy, layer1's centre-pixel share and k90 under |k|, its k90 under k², and the most
    spread of stages 2-4 (the smallest centre-pixel share of the stage means) under |k|."""
    summ = seed_summary(final).set_index(["arm", "stage", "measure", "stat"])

    def cell(arm: str, stage: str, measure: str, stat: str, decimals: int) -> str:
        key = (arm, stage, measure, stat)
        return fmt(summ.loc[key], decimals) if key in summ.index else ""

    arms = [a for a in decay.dropna().sort_values(kind="stable").index if a in set(final["arm"])]
    refs = [a for a in ("delta", "white noise", INIT_ARM) if a in set(final["arm"])]
    lines = [
        "| arm | Σ lr·wd/(1−m), MLP weights | seeds | test accuracy (%) | layer1 centre pixel, l1 "
        "| layer1 k90 (px), l1 | layer1 k90 (px), energy | stages 2–4, smallest centre pixel, l1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in refs + arms:
        l1 = summ.xs((arm, "l1", "mass1_mean"), level=["arm", "measure", "stat"])
        inner = l1[l1.index.isin(STAGES[1:])]
        spread = f"{inner['mean'].idxmin()} {fmt(inner.loc[inner['mean'].idxmin()], 3)}" if len(inner) else ""
        if arm in refs:
            sigma, seeds, acc = "–", "–" if arm != INIT_ARM else str(int(l1["n_seeds"].iloc[0])), "–"
        else:
            r = summ.loc[(arm, "any", "any", "test_acc")].copy()
            for k in ("mean", "lo", "hi"):
                r[k] = 100 * r[k]
            sigma, seeds, acc = f"{decay[arm]:.1f}", str(int(r["n_seeds"])), fmt(r, 2)
        lines.append(
            f"| {arm} | {sigma} | {seeds} | {acc} | {cell(arm, 'layer1', 'l1', 'mass1_mean', 3)} | "
            f"{cell(arm, 'layer1', 'l1', 'k90_mean', 1)} | {cell(arm, 'layer1', 'energy', 'k90_mean', 1)} | {spread} |"
        )
    return "\n".join(lines)


BEGIN = "<!-- tables: generated by docs/results/kernel_size_study_tables.py --page; do not edit by hand -->"
END = "<!-- tables: end -->"


DEFAULT_ARM = "spec (bundled default)"
# the full-width table's cells: (measure, statistic, decimals); the first two also from width 16
CELLS = [("l1", "mass1_mean", 3), ("l1", "k90_mean", 1), ("energy", "k90_mean", 1)]


def width64_rows(run: Path) -> pd.DataFrame:
    """The full-width confirmation in the CSV's long form: the finished width-64 run ``run`` (its
    folder's name is its arm), its initialisation (``init``) and the bundled default, the same
    recipe and initial weights at the recipe's MLP decay (``spec (bundled default)``)."""
    from niff_analysis.train.sweep import checkpoint_rows, final_table

    run = Path(run)
    rows = final_table(str(run.parent), [run.name])
    if run.name not in set(rows["arm"]):
        raise SystemExit(f"error: {run} has not finished")
    return pd.concat([rows, checkpoint_rows(None, DEFAULT_ARM, 0)], ignore_index=True)  # None: the bundled default


def width64_table(wide: pd.DataFrame, final: pd.DataFrame) -> str:
    """Per stage, the width-64 run beside the bundled default (its spec twin) and their shared
    initialisation, one seed each, with the width-16 study's 3-seed means of the same arms."""
    arms = [INIT_ARM, DEFAULT_ARM] + [a for a in wide["arm"].unique() if a not in (INIT_ARM, DEFAULT_ARM)]
    narrow = seed_summary(final).set_index(["arm", "stage", "measure", "stat"])
    one = wide.set_index(["arm", "stage", "measure", "stat"])["value"]
    twin = {INIT_ARM: INIT_ARM, DEFAULT_ARM: "spec"}
    acc = wide.drop_duplicates("arm").set_index("arm")["test_acc"]
    lines = [
        "| arm (width 64, seed 0) | test accuracy (%) | stage | centre pixel, l1 | k90 (px), l1 | k90 (px), energy "
        "| width 16: centre pixel, l1 | width 16: k90 (px), l1 |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for arm in arms:
        small = twin.get(arm, arm)
        for i, stage in enumerate(STAGES):
            cells = [f"{one[(arm, stage, m, s)]:.{d}f}" for m, s, d in CELLS]
            ref = [
                fmt(narrow.loc[(small, stage, "l1", s)], d) if (small, stage, "l1", s) in narrow.index else ""
                for _, s, d in CELLS[:2]
            ]
            a = "" if i or pd.isna(acc[arm]) else f"{100 * acc[arm]:.2f}"
            lines.append(f"| {arm if i == 0 else ''} | {a} | {stage} | " + " | ".join(cells + ref) + " |")
    return "\n".join(lines)


def tables_text(
    final: pd.DataFrame,
    seconds: pd.DataFrame | None,
    root: Path | None = None,
    decay: pd.Series | None = None,
    wide: pd.DataFrame | None = None,
) -> str:
    """Every table of the page, as markdown under ``###`` headings (the decay table with
    ``decay``, the convergence table with the runs' folder ``root``, the full-width table with
    :func:`width64_rows`' ``wide``)."""
    runs = final[~final["arm"].isin([INIT_ARM, "delta", "white noise"])].drop_duplicates(["arm", "seed"])
    lead = (
        f"Final checkpoints of {len(runs)} runs ({runs['arm'].nunique()} arms; the seeds column says how many "
        "seeds each number pools, as mean [95 % t-interval over seeds], no interval for one seed) from "
        "`docs/results/kernel_size_study.csv`; test accuracy on the 10,000 test images after the last epoch; "
        "the statistics are stage means over every kernel of the stage's layers."
    )
    if (runs.groupby("arm")["seed"].nunique() == 2).any():
        lead += (
            " An interval over two seeds (t = 12.7 with one degree of freedom) is wide and may cross a share's "
            "bounds 0 and 1; it is reported as computed, not clipped."
        )
    parts = [lead]
    if decay is not None:
        parts.append(
            "### Kernel size against the decay on the frequency MLPs\n\n"
            "The arms at full-size content, ordered by the integrated decay on their MLP weights (Σ over the "
            "run's steps of lr·wd/(1−m), from each arm's recipe), below the scale's ends: a delta (a kernel that "
            "is one pixel), white noise on the same maps (a kernel that uses its whole map) and the "
            "initialisation. Measures: l1 (|k|) and energy (k²). Centre pixel: the share of a kernel's mass in "
            "its centre pixel (1 for a delta); "
            "the last column names the stage of 2–4 whose kernels are the least collapsed.\n\n"
            + decay_table(final, decay)
        )
    parts.append("### Accuracy\n\n" + accuracy_table(final, seconds))
    parts.append("### Each arm against spec, seed by seed\n\n" + paired_table(final))
    for measure in ("l1", "energy"):
        parts.append(f"### Per stage, measure {measure}\n\n" + stage_table(final, measure))
    parts.append(
        "### Falsification: content at half the size, per-seed ratio of kernel size\n\n"
        + falsification_summary(final)
        + "\n\n"
        + falsification_table(final)
    )
    if wide is not None:
        parts.append(
            "### Full width (64): the strongest decay against the bundled default\n\n"
            "One seed each (no interval): the width-64 run and the bundled default start from bit-identical "
            "weights (their shared initialisation is the `init` row) and differ in the decay on the MLP weights. "
            "Stage means of every kernel of the stage's layers; the last two columns are the width-16 study's "
            "mean [95 % t-interval over seeds] of the same arm (`spec` for the bundled default), from "
            "`docs/results/kernel_size_study.csv`; `docs/results/kernel_size_study_width64.csv` holds every "
            "statistic.\n\n" + width64_table(wide, final)
        )
    if root is not None:
        parts.append(
            "### Did the kernels stop moving?\n\n"
            "From the statistics each finished run's trainer recorded (`kernel_stats.csv`, |k|, every NIFF layer "
            "of the stage): the change of the stage's mean k90 and mass inside 9×9 over the run's last two "
            "epochs, for the seed that changed most (signed).\n\n" + convergence_table(root, arm_order(final))
        )
    return "\n\n".join(parts)


def write_page(page: Path, text: str, begin: str = BEGIN, end: str = END) -> None:
    """Replace what lies between the page's two markers with ``text`` (atomically)."""
    from niff_analysis.io import atomic_write

    old = page.read_text()
    if old.count(begin) != 1 or old.count(end) != 1 or old.index(begin) > old.index(end):
        raise SystemExit(f"error: {page} must hold the markers {begin!r} and {end!r} once each, in that order")
    head, rest = old.split(begin)
    _, tail = rest.split(end)
    atomic_write(page, f"{head}{begin}\n\n{text}\n\n{end}{tail}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("csv")
    ap.add_argument("--runs", type=Path, help="the study folder, for each run's training seconds")
    ap.add_argument("--figure", type=Path, help="also draw the per-stage statistics of every arm (a PNG)")
    ap.add_argument("--page", type=Path, help="write the tables into this page, between its markers")
    ap.add_argument(
        "--width64", type=Path, help="with --update-csv: the finished full-width run (its table is kept beside CSV)"
    )
    ap.add_argument(
        "--update-csv",
        action="store_true",
        help="first rewrite CSV from the runs of --runs finished so far (what the sweep's --table writes at its end; "
        "safe while the sweep trains)",
    )
    args = ap.parse_args()
    scale_csv = scale_path(args.csv)
    if args.update_csv and not args.runs:
        raise SystemExit("error: --update-csv needs --runs (the study folder)")
    from niff_analysis.io import atomic_write
    from niff_analysis.train.sweep import arm_changes, final_csv, final_table

    # the references load a checkpoint and extract its kernels: once per call
    scale = scale_rows(args.runs) if args.runs else pd.read_csv(scale_csv) if scale_csv.is_file() else None
    if args.update_csv:
        atomic_write(args.csv, final_csv(final_table(str(args.runs))))
        atomic_write(scale_csv, scale.to_csv(index=False, float_format="%.10g"))
    wide_csv = scale_path(args.csv, "width64")
    wide = None
    if args.update_csv and args.width64:
        wide = width64_rows(args.width64)
        atomic_write(wide_csv, final_csv(wide))
    elif wide_csv.is_file():
        wide = pd.read_csv(wide_csv)
    final = pd.read_csv(args.csv)
    decay = None
    if scale is not None:
        is_decay = scale["stat"] == DECAY_STAT
        decay = scale[is_decay].set_index("arm")["value"]
        final = pd.concat([scale[~is_decay][final.columns], final], ignore_index=True)
    if args.figure:
        from niff_analysis.plotting import plot_decay_response, plot_study
        from niff_analysis.plotting.style import save_figure

        studied = final[~final["arm"].isin(["delta", "white noise"])]
        save_figure(plot_study(seed_summary(studied))[0], args.figure.with_suffix(""), ("png",))
        if decay is not None:
            # the arms that change the MLP-weight decay alone; the bias-decay and matched-budget arms sit
            # at the same Σ as mlp_weight_decay=0.1 and are read in the tables
            alone = decay[[a for a in decay.index if set(arm_changes(a)) <= {"mlp_weight_decay"}]]
            fig = plot_decay_response(
                final, alone, twins={arm: ref for arm, ref in PAIRS}, twin_label="half-size content"
            )[0]
            save_figure(fig, args.figure.with_name(args.figure.stem + "_decay"), ("png",))
    seconds = run_seconds(args.runs) if args.runs else None
    text = tables_text(final, seconds, args.runs, decay, wide)
    if args.page:
        write_page(args.page, text)
    else:
        print(text)


if __name__ == "__main__":
    main()
