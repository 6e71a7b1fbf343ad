"""Controlled studies: arms × seeds of one recipe, trained here or on a cluster, then compared.

An *arm* is the base :class:`~niff_analysis.train.TrainConfig` with a few settings changed,
written ``key=value,key=value`` (``spec``: no change). Every arm trains once per seed, into
``OUT/<arm>/seed=<n>/`` with kernel statistics on; the same seed gives every arm the same
initialisation and data order. A finished run is skipped and an interrupted one resumed, so
rerunning the same command continues a study.

Runs are jobs of submitit (the convention of vision labs: ConvNeXt's and DeiT's
``run_with_submitit.py``): ``executor="local"`` runs them as subprocesses of this machine,
``parallel`` at a time, and ``executor="slurm"`` submits them as one SLURM job array. Both go
through the same job function, :func:`run_job`; the results are gathered from the runs' folders
either way (:func:`collect` for the history, :func:`final_table` for the finished runs under
both measures, :func:`seed_summary` for mean and 95 % interval over seeds).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, cast

import pandas as pd

from .._types import PathLike
from ..analysis.stats import FILE_NAME as STATS_NAME
from ..analysis.stats import read_kernel_stats
from ..checkpoint import CONFIG_NAME, CheckpointConfig
from ..errors import NiffError
from ..io import atomic_write
from ..runs import run_lock
from .trainer import INIT_DIR, STATE_NAME, TrainConfig, train

if TYPE_CHECKING:  # imported where jobs are made: a sweep that only reads results needs no submitit
    import submitit


def _flag(value: str) -> bool:
    v = value.strip().lower()
    if v in ("1", "true", "on", "yes"):
        return True
    if v in ("0", "false", "off", "no"):
        return False
    raise ValueError(value)


#: Settings an arm may change, with their parsers.
ARM_KEYS: dict[str, Callable[[str], object]] = {
    "mlp_weight_decay": float,
    "mlp_lr_scale": float,
    "mlp_bias_decay": _flag,
    "content_scale": float,
    "weight_decay": float,
    "lr": float,
    "label_smoothing": float,
    "momentum": float,
    "epochs": int,
}
SWEEP_FILE = "sweep.json"
SEED_PREFIX = "seed="
JOBS_DIR = "_jobs"  # submitit's logs and pickles


def parse_arm(text: str) -> tuple[str, dict]:
    """``"mlp_weight_decay=0.05,mlp_lr_scale=0.1"`` → (folder name, changes); ``"spec"`` → no change.

    Raises:
        NiffError: an unknown key, a key given twice, or a value of the wrong type.
    """
    text = text.strip()
    if text in ("spec", ""):
        return "spec", {}
    changes: dict = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or key not in ARM_KEYS:
            raise NiffError(
                f"--arm {text!r}: expected key=value pairs with keys from {', '.join(ARM_KEYS)} (or 'spec')"
            )
        if key in changes:
            raise NiffError(f"--arm {text!r}: {key} is given twice")
        try:
            changes[key] = ARM_KEYS[key](value)
        except ValueError:
            kind = {float: "a number", int: "an integer", _flag: "on or off"}[ARM_KEYS[key]]
            raise NiffError(f"--arm {text!r}: {key} takes {kind}, got {value!r}") from None
    name = "_".join(f"{k}={int(v) if isinstance(v, bool) else v:g}" for k, v in changes.items())
    return re.sub(r"[^A-Za-z0-9_.=-]", "_", name), changes


def arm_changes(name: str) -> dict:
    """The changes an arm's folder name stands for: the inverse of :func:`parse_arm`'s name
    (``"mlp_weight_decay=0.1_mlp_bias_decay=1"`` → ``{"mlp_weight_decay": 0.1, "mlp_bias_decay": True}``).

    Raises:
        NiffError: a name :func:`parse_arm` does not make.
    """
    if name == "spec":
        return {}
    keys = "|".join(sorted(ARM_KEYS, key=len, reverse=True))  # mlp_weight_decay before weight_decay
    pairs = re.findall(rf"({keys})=([^_]+)(?:_|$)", name)
    try:
        changes = {k: ARM_KEYS[k](v) for k, v in pairs}
    except ValueError:
        changes = {}
    if not changes or parse_arm(",".join(f"{k}={v}" for k, v in pairs))[0] != name:
        raise NiffError(f"{name!r} is not the folder name of a sweep arm")
    return changes


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` → [0, 1, 2].

    Raises:
        NiffError: not integers, or a seed given twice.
    """
    seeds: list[int] = []
    try:
        for part in text.split(","):
            lo, dash, hi = part.strip().partition("-")
            seeds += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
    except ValueError:
        raise NiffError(f"--seeds {text!r}: expected integers like 0,1,2 or 0-2") from None
    if not seeds or len(set(seeds)) < len(seeds) or min(seeds) < 0:
        raise NiffError(f"--seeds {text!r}: expected distinct non-negative seeds")
    return seeds


def is_finished(folder: Path) -> bool:
    """Whether a run folder holds a finished run (the trainer writes ``config.json`` last)."""
    return (Path(folder) / CONFIG_NAME).is_file()


def run_job(cfg: TrainConfig) -> str:
    """Train one run of a study: skip it when finished, resume it when interrupted, train it
    otherwise. Returns the run folder.

    SIGINT (Ctrl-C in the sweep's terminal reaches its jobs too) stops the run after the current
    step with its state saved, as for ``niff-analyze train``; the job then fails with one line
    saying so, and the same sweep command resumes it. (SIGTERM is left to submitit, which on a
    cluster turns preemption into a requeue through :meth:`TrainJob.checkpoint`.)
    """
    from .trainer import Interrupted, interrupted_message, stop_on_signals

    folder = Path(cfg.out)
    if not is_finished(folder):
        try:
            with stop_on_signals((signal.SIGINT,)):
                train(cfg, resume=(folder / STATE_NAME).is_file())
        except Interrupted as exc:
            go_on = "the same sweep command resumes it"
            raise NiffError(interrupted_message(exc, folder / STATE_NAME, go_on)) from None
    return str(folder)


class TrainJob:
    """:func:`run_job` as a submitit job that a cluster may stop and requeue: at a time limit or
    preemption submitit calls :meth:`checkpoint`, which resubmits the same job, and the run
    resumes from its last saved state (``save_every_steps`` sets how much can be lost)."""

    def __call__(self, cfg: TrainConfig) -> str:
        return run_job(cfg)

    def checkpoint(self, cfg: TrainConfig):
        import submitit

        return submitit.helpers.DelayedSubmission(TrainJob(), cfg)


@dataclass
class Executor:
    """Where a study's runs train.

    Attributes:
        kind: ``"local"`` (subprocesses of this machine) or ``"slurm"`` (a SLURM job array).
        parallel: runs at once (local), or the array's parallelism (slurm; 0: no limit).
        wait: wait for the runs (local always waits); a SLURM study is gathered by running the
            same command again once its jobs have finished.
        timeout_min: a job's time limit in minutes.
        slurm: further SLURM parameters in submitit's names (``slurm_partition``,
            ``gpus_per_node``, ``cpus_per_task``, ``mem_gb``, ``slurm_account``, ...).
    """

    kind: str = "local"
    parallel: int = 1
    wait: bool = True
    timeout_min: int = 24 * 60
    slurm: dict = field(default_factory=dict)
    #: submitit's cluster behind ``kind="slurm"`` ("slurm"; the tests run the SLURM path on
    #: submitit's "local" cluster, which ignores the slurm_* parameters).
    cluster: str = "slurm"

    def make(self, folder: Path):
        import submitit

        ex: submitit.Executor
        if self.kind == "local":
            ex = submitit.LocalExecutor(folder=folder)
            ex.update_parameters(timeout_min=self.timeout_min)
        elif self.kind == "slurm":
            try:
                ex = submitit.AutoExecutor(folder=folder, cluster=self.cluster)
            except RuntimeError as exc:  # no srun: not on a SLURM cluster
                raise NiffError(f"--executor slurm: {exc}") from None
            ex.update_parameters(
                name="niff-sweep",
                timeout_min=self.timeout_min,
                slurm_array_parallelism=self.parallel or 10_000,
                **self.slurm,
            )
        else:
            raise NiffError(f"unknown executor {self.kind!r}; choose local or slurm")
        return ex


@dataclass
class Job:
    arm: str
    seed: int
    cfg: TrainConfig


def plan(base: TrainConfig, arms: Sequence[str], seeds: Sequence[int], out: str) -> list[Job]:
    """The runs of a study, checked before anything trains or is written."""
    parsed = [parse_arm(a) for a in arms]
    names = [n for n, _ in parsed]
    if not parsed:
        raise NiffError("a sweep needs at least one --arm")
    if len(set(names)) < len(names):
        raise NiffError(f"two arms have the same settings: {', '.join(names)}")
    root = Path(out)
    if root.exists() and not root.is_dir():
        raise NiffError(f"--out {out}: exists and is not a directory")
    jobs = []
    for seed in seeds:  # seed-major: an interrupted study has every arm at its first seeds
        for name, changes in parsed:
            cfg = dataclasses.replace(
                base, out=str(root / name / f"{SEED_PREFIX}{seed}"), seed=seed, kernel_stats=True, **changes
            )
            cfg.validate()
            jobs.append(Job(name, seed, cfg))
    return jobs


def run_sweep(
    base: TrainConfig,
    arms: Sequence[str],
    out: str,
    seeds: Sequence[int] | None = None,
    executor: Executor | None = None,
    echo: Callable[[str], None] = lambda s: None,
) -> list[str]:
    """Train every run of a study that is not finished; returns the messages of failed runs.

    Args:
        base: the shared recipe; its ``out`` is ignored (and its seed, when ``seeds`` is given).
        arms: arm specifications (see :func:`parse_arm`).
        out: the study folder.
        seeds: the seeds of every arm (default: the base recipe's seed).
        executor: where the runs train (default: one at a time on this machine).
        echo: receives one line per submitted, finished or failed run.
    """
    executor = executor or Executor()
    seeds = list(seeds) if seeds is not None else [base.seed]
    jobs = plan(base, arms, seeds, out)
    root = Path(out)
    # One sweep per study folder at a time: a second one would start the same runs' neighbours
    # twice as many at once and race the first for the queue (each run has its own lock too).
    with run_lock(root, command="niff-analyze sweep"):
        return _run_sweep(base, jobs, seeds, root, executor, echo)


def _run_sweep(base, jobs, seeds, root: Path, executor: Executor, echo) -> list[str]:
    _write_sweep_file(root, base, jobs, seeds)
    todo = [j for j in jobs if not is_finished(Path(j.cfg.out))]
    if not todo:
        return []
    ex = executor.make(root / JOBS_DIR)
    label = {id(j): f"{j.arm} seed {j.seed}" for j in todo}
    if executor.kind == "slurm":
        submitted = ex.map_array(TrainJob(), [j.cfg for j in todo])
        for j, s in zip(todo, submitted):
            echo(f"submitted {label[id(j)]} as SLURM job {s.job_id}")
        if not executor.wait:
            return []
        pending = list(zip(todo, submitted))
        return _wait(pending, label, echo)
    failures: list[str] = []
    queue: list[Job] = list(todo)
    running: list[tuple[Job, submitit.Job]] = []
    try:
        _run_local(ex, executor, queue, running, label, failures, echo)
    except KeyboardInterrupt:  # local jobs outlive this process: stop them (their state is saved)
        for _, s in running:
            s.cancel(check=False)
        raise
    return failures


def _run_local(ex, executor, queue, running, label, failures, echo) -> None:
    while queue or running:
        while queue and len(running) < max(1, executor.parallel):
            j = queue.pop(0)
            running.append((j, ex.submit(TrainJob(), j.cfg)))
            echo(f"started {label[id(j)]} (job {running[-1][1].job_id})")
        done = [(j, s) for j, s in running if s.done()]
        if not done:
            time.sleep(2)
            continue
        running[:] = [(j, s) for j, s in running if (j, s) not in done]
        failures += _wait(done, label, echo)


def _wait(pending, label, echo) -> list[str]:
    failures = []
    for j, s in pending:
        try:
            s.result()
            echo(f"finished {label[id(j)]}")
        except Exception as exc:  # noqa: BLE001 - one failed run must not lose the others
            msg = f"{label[id(j)]} failed: {job_error(exc)} (log: {s.paths.stderr})"
            echo(msg)
            failures.append(msg)
    return failures


def job_error(exc: BaseException) -> str:
    """The one line a failed job's error says: submitit wraps it in the job's traceback between
    dashed lines and log paths; this is the traceback's last line, without the module path of
    the toolkit's own errors (whose messages read the same as in the CLI)."""
    text = str(exc)
    found = re.search(r"-{10,}\n(.*?)\n-{10,}", text, re.S)
    lines = [ln.strip() for ln in (found.group(1) if found else text).splitlines() if ln.strip()]
    last = lines[-1] if lines else type(exc).__name__
    ours = re.match(r"^niff_analysis(?:\.\w+)*\.\w+: (.*)$", last)
    return ours.group(1) if ours else last


def _write_sweep_file(root: Path, base: TrainConfig, jobs: list[Job], seeds: Sequence[int]) -> None:
    """Record the study in ``sweep.json``. A folder that already records a study keeps its arms
    and seeds (a sweep of some of them, e.g. to train those first, must not make the study's
    table forget the others' runs); one of another base recipe is refused before anything trains."""
    arms: dict = {}
    for j in jobs:
        arms.setdefault(
            j.arm, {k: v for k, v in dataclasses.asdict(j.cfg).items() if k in ARM_KEYS and v != getattr(base, k)}
        )
    recorded = {k: v for k, v in dataclasses.asdict(base).items() if k not in ("out", "seed")}
    recorded = json.loads(json.dumps(recorded))  # as the file holds it (lists, not tuples)
    seeds = list(seeds)
    previous = _read_sweep_file(root)
    if previous is not None:
        _refuse_other_base(root, previous.get("base") or {}, recorded)
        if isinstance(previous.get("arms"), dict):
            arms = {**previous["arms"], **{k: v for k, v in arms.items() if k not in previous["arms"]}}
        seeds = sorted(set(seeds) | {int(s) for s in previous.get("seeds") or []})
    atomic_write(root / SWEEP_FILE, json.dumps(dict(arms=arms, seeds=seeds, base=recorded), indent=2) + "\n")


def _read_sweep_file(root: Path) -> dict | None:
    try:
        previous = json.loads((root / SWEEP_FILE).read_text())
    except (OSError, ValueError):  # none yet, or unreadable: written anew
        return None
    return previous if isinstance(previous, dict) else None


def _refuse_other_base(root: Path, old: dict, new: dict) -> None:
    from .config import RECIPE_KEYS
    from .state import RECIPE_DEFAULTS

    differ = [
        f"{k} {old.get(k, RECIPE_DEFAULTS.get(k))!r} → {new.get(k, RECIPE_DEFAULTS.get(k))!r}"
        for k in RECIPE_KEYS
        if k != "seed" and old.get(k, RECIPE_DEFAULTS.get(k)) != new.get(k, RECIPE_DEFAULTS.get(k))
    ]
    if differ:
        raise NiffError(
            f"{root} holds a study of another base recipe ({'; '.join(differ)}); "
            "a study's runs share one base: sweep into another --out"
        )


def runs(root: PathLike, arms: Sequence[str] | None = None) -> list[tuple[str, int, Path]]:
    """(arm, seed, folder) of every run folder of a study (finished or not), arms in order.

    Also reads studies written before seeds were an axis (``OUT/<arm>/`` holding the run).
    """
    root = Path(root)
    if arms is None:
        if not (root / SWEEP_FILE).is_file():
            raise NiffError(f"{root}: no {SWEEP_FILE} (not a sweep folder)")
        arms = list(json.loads((root / SWEEP_FILE).read_text())["arms"])
    found = []
    for name in arms:
        folder = root / name
        if (folder / "train_config.json").is_file():  # the layout without seed folders
            seed = json.loads((folder / "train_config.json").read_text()).get("seed", 0)
            found.append((name, int(seed), folder))
            continue
        seeds = sorted(
            int(p.name[len(SEED_PREFIX) :])
            for p in folder.glob(f"{SEED_PREFIX}*")
            if p.is_dir() and p.name[len(SEED_PREFIX) :].isdigit()
        )
        found += [(name, s, folder / f"{SEED_PREFIX}{s}") for s in seeds]
    return found


def _accuracy(folder: Path) -> dict:
    metrics = folder / "metrics.csv"
    if not metrics.is_file():
        return {}
    m = pd.read_csv(metrics)
    return dict(zip(m["epoch"].astype(float), m["test_acc"]))


def collect(root: str, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """The kernel statistics recorded during training by every run of a study.

    Returns:
        kernel_stats rows with leading ``arm`` and ``seed`` columns, plus ``test_acc`` (the run's
        test accuracy after that epoch; NaN for records between epochs and at initialisation).
    """
    frames = []
    for name, seed, folder in runs(root, arms):
        if not (folder / STATS_NAME).is_file():
            continue
        hist = read_kernel_stats(folder)
        hist["test_acc"] = hist["epoch"].map(_accuracy(folder))
        hist.insert(0, "seed", seed)
        hist.insert(0, "arm", name)
        frames.append(hist)
    if not frames:
        raise NiffError(f"{root}: no run has recorded kernel statistics yet")
    return pd.concat(frames, ignore_index=True)


INIT_ARM = "init"  # the arm name of the initialisations in final_table
FINAL_COLUMNS = ["arm", "seed", "epoch", "stage", "measure", "stat", "value", "test_acc"]


def checkpoint_rows(folder: PathLike | None, arm: str, seed: int) -> pd.DataFrame:
    """One checkpoint's rows of :func:`final_table` (:data:`FINAL_COLUMNS`):
    :func:`~niff_analysis.analysis.stats.stage_stats` of its kernels under both measures, with
    its epochs and recorded test accuracy, labelled ``arm`` and ``seed``. ``folder`` is anything
    :func:`~niff_analysis.checkpoint.load_checkpoint` takes (``None``: the bundled default)."""
    from ..analysis.kernels import extract_kernels
    from ..analysis.stats import stage_stats
    from ..checkpoint import load_checkpoint

    model = load_checkpoint(folder)
    # nn.Module.__getattr__ is typed for tensors and modules only; load_checkpoint attaches a CheckpointConfig
    meta = cast(CheckpointConfig, model.niff_checkpoint)
    st = stage_stats(extract_kernels(model))
    st.insert(0, "epoch", int(meta.epochs or 0))
    st.insert(0, "seed", seed)
    st.insert(0, "arm", arm)
    acc = meta.test_acc
    st["test_acc"] = math.nan if acc is None else float(acc)
    return st[FINAL_COLUMNS]


def final_table(root: str, arms: Sequence[str] | None = None) -> pd.DataFrame:
    """Per finished run, :func:`~niff_analysis.analysis.stats.stage_stats` of its final
    checkpoint under both measures, with its final test accuracy (long form,
    :data:`FINAL_COLUMNS`), and the same of each seed's initialisation as arm ``"init"``
    (epoch 0). Computed from the checkpoints, so any statistic added later covers finished
    studies too."""
    rows = checkpoint_rows
    frames: list[pd.DataFrame] = []
    inits: dict[int, Path] = {}
    finished: set[int] = set()
    for name, seed, folder in runs(root, arms):
        if (folder / INIT_DIR / CONFIG_NAME).is_file():
            inits.setdefault(seed, folder / INIT_DIR)
        if is_finished(folder):
            frames.append(rows(folder, name, seed))
            finished.add(seed)
    # Every arm of a seed starts from the same weights (the content scale changes only the data):
    # the initialisation is the reference the arms moved away from, for the seeds some run of
    # which has finished (a seed whose runs have only started would stand beside no arm).
    frames += [rows(folder, INIT_ARM, seed) for seed, folder in sorted(inits.items()) if seed in finished]
    if not frames:
        return pd.DataFrame(columns=FINAL_COLUMNS)
    return pd.concat(frames, ignore_index=True)[FINAL_COLUMNS]


def final_csv(final: pd.DataFrame) -> str:
    """:func:`final_table` as the CSV text a study's table is kept in (10 significant digits)."""
    return final.to_csv(index=False, float_format="%.10g")


def seed_summary(final: pd.DataFrame, level: float = 0.95) -> pd.DataFrame:
    """Mean over seeds and its ``level`` t-interval, per arm, stage, measure and statistic
    (test accuracy as the statistic ``test_acc`` of stage and measure ``"any"``).

    Returns:
        Columns arm, stage, measure, stat, n_seeds, mean, lo, hi, sd (lo = hi = mean for one seed:
        no interval).
    """
    from ..analysis.uncertainty import seed_interval

    acc = final.drop_duplicates(["arm", "seed"]).assign(stage="any", measure="any", stat="test_acc")
    acc["value"] = acc["test_acc"]
    both = pd.concat([final, acc], ignore_index=True)
    rows = []
    for (arm, stage, measure, stat), g in both.groupby(["arm", "stage", "measure", "stat"], sort=False):
        v = g["value"].astype(float).dropna()
        n = len(v)
        mean, lo, hi = seed_interval(v, level)
        sd = float(v.std(ddof=1)) if n > 1 else math.nan
        rows.append((arm, stage, measure, stat, n, mean, lo, hi, sd))
    return pd.DataFrame(rows, columns=["arm", "stage", "measure", "stat", "n_seeds", "mean", "lo", "hi", "sd"])


def compare_arms(final: pd.DataFrame, arm: str, reference: str, level: float = 0.95) -> pd.DataFrame:
    """``arm`` against ``reference`` seed by seed: the same seed gives both the same initialisation
    and data order, so the per-seed ratio arm/reference isolates what the arm changed.

    Returns:
        Per stage, measure and statistic: n_seeds (seeds both arms finished), the reference's and
        the arm's mean, and the mean per-seed ratio with its ``level`` t-interval (lo, hi; equal
        to the mean for one seed).
    """
    from scipy import stats as sps

    keys = ["stage", "measure", "stat"]
    a = final[final["arm"] == arm].set_index(["seed", *keys])["value"]
    b = final[final["arm"] == reference].set_index(["seed", *keys])["value"]
    both = pd.concat(dict(arm=a, ref=b), axis=1).dropna().reset_index()
    both["ratio"] = both["arm"] / both["ref"]
    rows = []
    for key, g in both.groupby(keys, sort=False):
        n, r = len(g), g["ratio"].astype(float)
        half = float(sps.t.ppf(0.5 + level / 2, n - 1) * r.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
        rows.append(
            (
                *key,
                n,
                float(g["ref"].mean()),
                float(g["arm"].mean()),
                float(r.mean()),
                float(r.mean()) - half,
                float(r.mean()) + half,
            )
        )
    return pd.DataFrame(rows, columns=[*keys, "n_seeds", "reference", "arm", "ratio", "lo", "hi"])
