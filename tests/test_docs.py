"""The README and docs/: links that resolve, nothing a user of the package cannot open, images
that one command regenerates, and the README's Python examples run as written."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").rglob("*.md"))
PAGES = [ROOT / "README.md", ROOT / "CHANGELOG.md", *DOCS]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
FENCE = re.compile(r"^```.*?^```", re.M | re.S)
CI_COMMAND = "make test"  # what .ci/run runs, and the README's second set-up command


def _prose(page: Path) -> str:
    """The page without its fenced code blocks (a link inside code is no link)."""
    return FENCE.sub("", page.read_text(encoding="utf-8"))


def _anchors(page: Path) -> set[str]:
    """GitHub's anchors of the page's headings: lower case, punctuation dropped, spaces → '-'."""
    headings = re.findall(r"^#+ (.+)$", _prose(page), re.M)
    return {re.sub(r"[^\w\- ]", "", h.strip().lower()).replace(" ", "-") for h in headings}


def _relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(page)) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    links = _relative_links(page)
    if page.name == "README.md":
        assert len(links) >= 10  # it links every page of docs/; an empty list would pass anything
    for target in links:
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        assert file.is_file(), f"{page.name}: {target} is no file"
        assert ROOT in file.parents, f"{page.name}: {target} leads out of the repository"
        if anchor and file.suffix == ".md":
            assert anchor in _anchors(file), f"{page.name}: {target}: no such heading in {file.name}"


def test_anchor_rule_matches_github_on_known_headings():
    page = ROOT / "docs" / "training.md"
    assert "recipe-ablations-niff-analyze-sweep" in _anchors(page)  # "## Recipe ablations (`niff-analyze sweep`)"
    assert "3-training" in _anchors(ROOT / "docs" / "design.md")  # "## 3. Training"


@pytest.mark.parametrize("page", [ROOT / "README.md", *DOCS], ids=lambda p: str(p.relative_to(ROOT)))
def test_no_issue_numbers_or_files_outside_the_repository(page):
    text = page.read_text(encoding="utf-8")
    assert not re.search(r"\bissues? \d", text, re.I), page.name
    assert "shared/" not in text and "SPEC.md" not in text, page.name


def test_readme_is_a_users_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.encode("utf-8")) < 15_000
    for section in (
        "## Installation",
        "## Set-up on a fresh machine",
        "## Quick start: the command line",
        "## Quick start: Python",
        "## Analysing your own model",
        "## The bundled checkpoints",
        "## Citing",
        "## Documentation",
    ):
        assert section in readme, section
    # The two set-up commands are the Makefile's targets, and CI runs the second.
    assert re.search(r"^make demo\s+#", readme, re.M) and re.search(r"^make test\s+#", readme, re.M)
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert re.search(rf"^{CI_COMMAND}$", ci, re.M)
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert re.search(r"^demo:", makefile, re.M) and re.search(r"^test:", makefile, re.M)


def test_bundled_card_numbers_are_the_checkpoints_own():
    """The README's card copies accuracy and parameter count from each checkpoint's config.json."""
    import json

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in ("resnet18_niff_fmnist", "resnet18_fmnist"):
        cfg = json.loads((ROOT / "niff_analysis" / "checkpoints" / name / "config.json").read_text())
        row = next(line for line in readme.splitlines() if line.startswith(f"| `{name}`"))
        assert f"{cfg['num_params']:,}" in row
        assert f"**{100 * cfg['test_acc']:.2f} %** (test loss {cfg['test_loss']:.4f})" in row


def test_documentation_images_are_in_docs_images_and_made_by_one_target():
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    made = {
        name
        for var in ("DOC_IMAGES", "STUDY_IMAGES")
        for name in re.search(rf"^{var} := (.+)$", makefile, re.M).group(1).split()
    }
    shown = {t for p in PAGES for t in _relative_links(p) if t.endswith(".png")}
    assert shown
    for target in shown:
        assert "images/" in target, target
    names = {Path(t).name for t in shown}
    # Every image the docs show is made by `make docs-images`, except the sweep's figure, which
    # needs four training runs (docs/results.md gives its command).
    assert names - made == {"mlp_decay_sweep.png"}
    assert made <= {p.name for p in (ROOT / "docs" / "images").glob("*.png")}


def test_generated_figures_are_not_tracked_and_the_tree_is_small():
    assert "/figures/" in (ROOT / ".gitignore").read_text(encoding="utf-8").split()
    res = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True, check=True)
    tracked = [f for f in res.stdout.decode().split("\0") if f]
    assert tracked and not [f for f in tracked if f.startswith("figures/")]
    size = sum((ROOT / f).stat().st_size for f in tracked if (ROOT / f).is_file())
    assert size < 60 * 2**20, f"tracked files hold {size / 2**20:.1f} MiB"  # du's MB, as `du -c` counts
    for png in (ROOT / "docs" / "images").glob("*.png"):
        assert png.stat().st_size < 500_000, png.name


@pytest.mark.slow  # loads the bundled checkpoint, converts two torchvision models in a fresh interpreter
def test_readme_python_examples_run(tmp_path):
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```python\n(.*?)^```", readme, re.M | re.S)
    assert len(blocks) == 2
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    out = []
    for code in blocks:
        res = subprocess.run(
            [sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env
        )
        assert res.returncode == 0, res.stderr
        out.append(res.stdout)
    # The quick start prints the per-window summary and every NIFF layer's median k90.
    assert "mean" in out[0] and "std" in out[0] and "Name: size_90" in out[0]
    assert all(f"layer{i}." in out[0] for i in range(1, 5))
    # The own-model example saves a checkpoint that every command takes.
    assert (tmp_path / "r34" / "config.json").is_file() and (tmp_path / "r34" / "model.safetensors").is_file()


# --------------------------------------------------------------------------- the study page
def _study_tables():
    import importlib.util

    spec = importlib.util.spec_from_file_location("study_tables", ROOT / "docs/results/kernel_size_study_tables.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_study_page_shows_the_accuracy_of_the_committed_table():
    """The page's generated accuracy rows (arm, seeds, test accuracy) are what the committed CSV
    gives now: a CSV regenerated without the page (or a hand edit) fails here."""
    import pandas as pd

    tables = _study_tables()
    final = pd.read_csv(ROOT / "docs/results/kernel_size_study.csv")
    expected = tables.accuracy_table(final, None).splitlines()[2:]
    page = (ROOT / "docs/results/kernel_size_study.md").read_text(encoding="utf-8")
    block = page.split(tables.BEGIN)[1].split(tables.END)[0]
    shown = block.split("### Accuracy")[1].split("###")[0].strip().splitlines()[2:]
    assert [r.split(" | ")[:3] for r in shown] == [r.split(" | ")[:3] for r in expected] and expected


def _quoted_intervals(text: str) -> list[str]:
    import re

    return re.findall(r"-?\d+\.\d+ (?:pp |px |% )?\[-?\d+\.\d+, -?\d+\.\d+\]", text.replace("−", "-"))


def test_every_interval_the_study_prose_quotes_is_in_the_generated_tables():
    """The hand-written findings (the page's "What is established" and the README's paragraph)
    quote "mean [lo, hi]" from the generated tables; when a new seed changes a table, a quote
    left stale fails here (a difference may be quoted with its sign turned: "0.36 pp [0.23, 0.49]
    below" for "-0.36 [-0.49, -0.23]")."""
    import re

    tables = _study_tables()
    page = (ROOT / "docs/results/kernel_size_study.md").read_text(encoding="utf-8")
    generated = page.split(tables.BEGIN)[1].split(tables.END)[0]
    prose = page.split("## What is established")[1].split("### Why the test accuracy swung")[0]
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    prose += readme.split("## What it finds so far")[1].split("## Documentation")[0]
    quotes = _quoted_intervals(prose)
    assert len(quotes) >= 10
    for quote in quotes:
        mean, lo, hi = re.findall(r"-?\d+\.\d+", quote)
        flip = lambda v: v[1:] if v.startswith("-") else "-" + v  # noqa: E731
        forms = {f"{mean} [{lo}, {hi}]", f"{flip(mean)} [{flip(hi)}, {flip(lo)}]"}
        assert any(f in generated for f in forms), f"{quote!r} is in no generated table of the study page"


def test_the_study_page_shows_the_decay_table_of_the_committed_tables():
    """The page's decay table is what the committed CSV and its scale (references, integrated
    decay) give now, so `make docs-images` and the page agree without the runs."""
    import pandas as pd

    tables = _study_tables()
    final = pd.read_csv(ROOT / "docs/results/kernel_size_study.csv")
    scale = pd.read_csv(tables.scale_path(ROOT / "docs/results/kernel_size_study.csv"))
    is_decay = scale["stat"] == tables.DECAY_STAT
    decay = scale[is_decay].set_index("arm")["value"]
    assert decay["spec"] == pytest.approx(0.02 * 0.002 * (15 * 468 + 1) / (2 * 0.1), rel=1e-6)
    expected = tables.decay_table(pd.concat([scale[~is_decay], final], ignore_index=True), decay)
    page = (ROOT / "docs/results/kernel_size_study.md").read_text(encoding="utf-8")
    assert expected in page.split(tables.BEGIN)[1].split(tables.END)[0]


@pytest.mark.slow
def test_the_study_page_shows_the_full_width_table_and_it_holds_the_bundled_default():
    """The page's full-width table is what the committed CSVs give now, and its bundled-default
    rows are the bundled default's stage statistics recomputed from its weights."""
    import pandas as pd

    from niff_analysis.analysis.kernels import extract_kernels
    from niff_analysis.analysis.stats import stage_stats
    from niff_analysis.checkpoint import load_checkpoint

    tables = _study_tables()
    csv = ROOT / "docs/results/kernel_size_study.csv"
    wide = pd.read_csv(tables.scale_path(csv, "width64"))
    page = (ROOT / "docs/results/kernel_size_study.md").read_text(encoding="utf-8")
    assert tables.width64_table(wide, pd.read_csv(csv)) in page.split(tables.BEGIN)[1].split(tables.END)[0]
    assert set(wide["arm"]) == {"init", tables.DEFAULT_ARM, "mlp_weight_decay=0.1"}
    assert set(wide.loc[wide["arm"] == "mlp_weight_decay=0.1", "epoch"]) == {15}
    shown = wide[wide["arm"] == tables.DEFAULT_ARM].set_index(["stage", "measure", "stat"])["value"]
    fresh = stage_stats(extract_kernels(load_checkpoint())).set_index(["stage", "measure", "stat"])["value"]
    assert len(shown) == len(fresh) > 40
    assert shown.sort_index().to_numpy() == pytest.approx(fresh.sort_index().to_numpy(), rel=1e-6, abs=1e-9)


def test_the_study_page_is_written_between_its_markers_only(tmp_path):
    tables = _study_tables()
    page = tmp_path / "page.md"
    page.write_text(f"head\n{tables.BEGIN}\nold\n{tables.END}\ntail\n")
    tables.write_page(page, "new")
    assert page.read_text() == f"head\n{tables.BEGIN}\n\nnew\n\n{tables.END}\ntail\n"
    page.write_text("no markers\n")
    with pytest.raises(SystemExit, match="must hold the markers"):
        tables.write_page(page, "new")
    assert page.read_text() == "no markers\n"


def test_the_decay_table_orders_arms_by_their_integrated_decay(tmp_path):
    """Σ lr·wd/(1−m) over the cosine schedule's steps has the closed form lr·wd·(T+1)/(2(1−m))
    (the cosines of the T steps sum to 1); the table orders the full-size arms by it, leaves
    the half-size (falsification) arms out and pools the seeds."""
    import json

    import pandas as pd

    tables = _study_tables()
    recipes = {"spec": (None, 1.0, 15), "mlp_weight_decay=0.1": (0.1, 1.0, 15), "content_scale=0.5": (None, 0.5, 15)}
    recipes["epochs=5_mlp_weight_decay=0.3"] = (0.3, 1.0, 5)
    rows = []
    for arm, (mlp_wd, scale, epochs) in recipes.items():
        for seed in (0, 1):
            run = tmp_path / arm / f"seed={seed}"
            run.mkdir(parents=True)
            cfg = dict(lr=0.02, momentum=0.9, weight_decay=0.002, mlp_weight_decay=mlp_wd, content_scale=scale)
            (run / "train_config.json").write_text(json.dumps(cfg))
            (run / "kernel_stats.csv").write_text(
                f"epoch,step,layer,stage,stat,value\n{epochs},{468 * epochs},a,layer1,k90_mean,1\n"
            )
            (run / "model.safetensors").write_bytes(b"")
            for stage in tables.STAGES:
                for stat, v in (("mass1_mean", 0.1 + seed / 10 + (mlp_wd or 0)), ("k90_mean", 20.0 - seed)):
                    for measure in ("l1", "energy"):
                        rows.append((arm, seed, epochs, stage, measure, stat, v, 0.9 + seed / 100))
    decay = tables.integrated_decay(tmp_path)
    assert decay["spec"] == pytest.approx(0.02 * 0.002 * (15 * 468 + 1) / (2 * 0.1), rel=1e-12)
    assert decay["mlp_weight_decay=0.1"] == pytest.approx(50 * decay["spec"], rel=1e-12)
    assert decay["epochs=5_mlp_weight_decay=0.3"] == pytest.approx(0.3 * 0.02 * (5 * 468 + 1) / 0.2, rel=1e-12)
    assert pd.isna(decay["content_scale=0.5"])
    final = pd.DataFrame(rows, columns=["arm", "seed", "epoch", "stage", "measure", "stat", "value", "test_acc"])
    body = tables.decay_table(final, decay).splitlines()[2:]
    assert [r.split(" | ")[0].lstrip("| ") for r in body] == [
        "spec",
        "mlp_weight_decay=0.1",  # 70.21
        "epochs=5_mlp_weight_decay=0.3",  # 70.23: three times the decay over a third of the steps, + 1 step each
    ]
    spec = body[0].split(" | ")
    # Σ, two seeds, accuracy 90.50 [t-interval], centre pixel mean 0.150 over seeds 0.1 and 0.2
    assert spec[1:4] == ["1.4", "2", "90.50 [84.15, 96.85]"] and spec[4].startswith("0.150 [")


def test_the_falsification_sentence_gives_the_ratio_range_and_its_intervals():
    import pandas as pd

    tables = _study_tables()
    rows = []
    for seed, factor in ((0, 0.5), (1, 0.52), (2, 0.48)):  # kernels that follow the data: about half
        for stage in tables.STAGES:
            for measure in ("l1", "energy"):
                for stat in ("k50_mean", "k90_mean"):
                    rows.append(("spec", seed, 15, stage, measure, stat, 10.0, 0.9))
                    rows.append(("content_scale=0.5", seed, 15, stage, measure, stat, 10.0 * factor, 0.9))
    final = pd.DataFrame(rows, columns=["arm", "seed", "epoch", "stage", "measure", "stat", "value", "test_acc"])
    text = tables.falsification_summary(final)
    assert text.startswith("`content_scale=0.5` against `spec` (3 seeds both arms finished): ")
    assert "was 0.50–0.50 under |k| (95 % t-intervals within 0.45–0.55) and 0.50–0.50 under k²" in text
    one = tables.falsification_summary(final[final["seed"] == 0])
    assert "(1 seed both arms finished, no interval)" in one and "t-intervals" not in one


def test_arms_are_compared_with_spec_seed_by_seed():
    import pandas as pd
    from scipy import stats

    tables = _study_tables()
    rows = []
    for seed, (acc_spec, acc_arm) in enumerate(((0.90, 0.91), (0.92, 0.92), (0.91, 0.93))):
        for arm, acc, centre in (("spec", acc_spec, 0.2), ("decay", acc_arm, 0.2 * (2 + seed))):
            for stat, value in (("mass1_mean", centre), ("k90_mean", 20.0)):
                rows.append((arm, seed, 15, "layer1", "l1", stat, value, acc))
    final = pd.DataFrame(rows, columns=["arm", "seed", "epoch", "stage", "measure", "stat", "value", "test_acc"])
    acc = tables.paired_accuracy(final, "decay", "spec")
    diffs = [1.0, 0.0, 2.0]  # percentage points, seed by seed
    half = stats.t.ppf(0.975, 2) * pd.Series(diffs).std() / 3**0.5
    assert acc["n_seeds"] == 3 and abs(acc["ratio"] - 1.0) < 1e-9 and abs(acc["hi"] - (1.0 + half)) < 1e-9
    row = tables.paired_table(final).splitlines()[2]
    assert row.startswith("| decay | 3 | 1.00 [") and "| 3.00 [" in row and row.endswith("| 1.00 [1.00, 1.00] |")


def test_the_convergence_table_reports_the_largest_change_over_the_last_two_epochs(tmp_path):
    import pandas as pd

    tables = _study_tables()
    for seed, late in ((0, 1.0), (1, -3.0)):  # seed 1 moved most, downwards
        run = tmp_path / "spec" / f"seed={seed}"
        run.mkdir(parents=True)
        rows = []
        for epoch in (12, 13, 14, 15):
            for layer, stage in (("layer1.0.conv1", "layer1"), ("layer1.0.conv2", "layer1")):
                k90 = 20.0 + (late if epoch == 15 and layer.endswith("conv1") else 0.0)
                rows += [
                    (epoch, epoch * 10, layer, stage, "k90_mean", k90),
                    (epoch, epoch * 10, layer, stage, "mass9_mean", 0.5),
                ]
        pd.DataFrame(rows, columns=["epoch", "step", "layer", "stage", "stat", "value"]).to_csv(
            run / "kernel_stats.csv", index=False
        )
        (run / "model.safetensors").write_bytes(b"")  # finished
    unfinished = tmp_path / "spec" / "seed=2"
    unfinished.mkdir()
    (unfinished / "kernel_stats.csv").write_text("epoch,step,layer,stage,stat,value\n")
    text = tables.convergence_table(tmp_path, ["spec"], stages=["layer1"])
    # the stage mean of seed 1 moved by (-3 + 0) / 2 = -1.5 px from epoch 13 to 15; seed 2 is not finished
    assert text.splitlines()[2] == "| spec | 2 | 13 → 15 | -1.50 | +0.000 |"


def test_the_batchnorm_table_gathers_epochs_and_finals_once_each(tmp_path, monkeypatch):
    import importlib.util
    import sys

    import pandas as pd

    monkeypatch.syspath_prepend(str(ROOT / "docs/results"))  # it imports the tables script beside it
    spec = importlib.util.spec_from_file_location("study_bn", ROOT / "docs/results/kernel_size_study_bn.py")
    bn = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bn)
    sys.modules.pop("kernel_size_study_tables", None)

    evals, runs = tmp_path / "evals", tmp_path / "runs"
    evals.mkdir()
    cols = ["checkpoint", "epochs", "batchnorm", "bn_images", "loss", "acc", "acc_lo", "acc_hi", "recorded_acc"]

    def rows(epochs, acc_running, acc_recal):
        out = []
        for e, a, b in zip(epochs, acc_running, acc_recal):
            out += [(f"epoch_{e:03d}", e, "running", 0, 1.0, a, a - 0.01, a + 0.01, a)]
            out += [(f"epoch_{e:03d}", e, "recalibrated", 2048, 1.0, b, b - 0.01, b + 0.01, float("nan"))]
        return pd.DataFrame(out, columns=cols)

    rows([1, 2, 3], [0.5, 0.3, 0.9], [0.8, 0.85, 0.9]).to_csv(evals / "epochs_wd_seed0.csv", index=False)
    rows([3], [0.9], [0.9]).to_csv(evals / "final_wd_seed=0.csv", index=False)  # the same checkpoint as epoch 3
    rows([3], [0.88], [0.89]).to_csv(evals / "final_spec_seed=1.csv", index=False)
    for arm, seed in (("wd", 0), ("spec", 1)):
        (runs / arm / f"seed={seed}").mkdir(parents=True)
        pd.DataFrame({"epoch": [1, 2, 3], "train_acc": [0.6, 0.7, 0.8]}).to_csv(
            runs / arm / f"seed={seed}" / "metrics.csv", index=False
        )
    df = bn.gather(evals, runs)
    assert len(df) == 2 * 3 + 2, "the final checkpoint of wd is its epoch 3: counted once"
    assert df[(df["arm"] == "wd") & (df["epoch"] == 2)]["train_acc"].tolist() == [0.7, 0.7]
    table = bn.epochs_table(df).splitlines()
    assert table[0] == "| epoch | wd seed 0: running → recomputed (train) |"
    assert table[3] == "| 2 | 30.00 → 85.00 (70.00) |"
    finals = bn.finals_table(df).splitlines()
    assert finals[2:] == ["| spec | 1 | 3 | 88.00 | 89.00 | +1.00 |", "| wd | 0 | 3 | 90.00 | 90.00 | +0.00 |"]
