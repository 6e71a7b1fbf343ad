"""Benchmark: ``resnet18_niff`` against ``resnet18`` in a plain training loop and as the trainer
runs, in float32 and bf16, this checkout against the layer code before the allocator setting and the FFT backward.

glibc's allocator settings are process-wide, so every setting runs in a process of its own
(``benchmarks/loop_worker.py``). The processes start together, build their models and warm up;
then they take turns: one step of one (model, precision) in one process at a time, every process
and contender once per round, the order rotated from round to round. So the settings are timed
side by side, as contenders in one process are, and a load that comes and goes hits all of them.
Medians are over rounds; the spread is the range over rounds, of the times and of each ratio
taken within a round. Settings:

* ``plain``: a user's own loop, nothing set up; this checkout's NIFF layers keep glibc's freed
  memory from their first forward pass on (``niff_analysis/layers/memory.py``), the old code
  does not;
* ``plain, opted out``: the same with ``NIFF_KEEP_FREED_MEMORY=0`` (glibc's defaults throughout);
* ``trainer``: freed memory kept before anything runs, as ``niff-analyze train`` does.

``main`` is the tree of :data:`REFERENCE_COMMIT` (the code the issue measured), extracted with
``git archive`` into a temporary folder; without git history (e.g. a copied tree) its rows are
left out and the table says so. On a GPU only the plain loop runs (the allocator concerns the
CPU). Targets: in the plain loop the NIFF step within 10 % of the trainer's setting,
and float32 at least 1.3× faster than ``main``'s plain loop.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from niff_analysis.layers.memory import ENV_VAR
from niff_analysis.train.precision import cpu_bf16_flags, cpu_model

from . import show, verdict

ROOT = Path(__file__).resolve().parents[1]
WORKER = Path(__file__).resolve().with_name("loop_worker.py")
# main on 2026-12-06, before the allocator setting and the FFT backward: the layer code whose
# plain-loop step was timed as the starting point.
REFERENCE_COMMIT = "df67acc621eafe2986466303e679d6468190f68a"
MODELS = ("resnet18", "resnet18_niff")
# (code, setting, extra environment)
SETTINGS = (
    ("this", "plain", {}),
    ("this", "plain, opted out", {ENV_VAR: "0"}),
    ("this", "trainer", {}),
    ("main", "plain", {}),
    ("main", "trainer", {}),
)


def reference_tree(dest: Path, commit: str = REFERENCE_COMMIT) -> Path | None:
    """``niff_analysis`` of ``commit`` extracted under ``dest`` (its bundled checkpoints left
    out); None where this checkout has no git history."""
    try:
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", commit, "--", "niff_analysis", ":(exclude)niff_analysis/checkpoints"],
            capture_output=True,
            check=True,
        )
        subprocess.run(["tar", "-x", "-C", str(dest)], input=archive.stdout, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    return dest


class _Worker:
    """One worker process (``loop_worker.py``) for one (code tree, setting)."""

    def __init__(self, code_root: Path, env_extra: dict, spec: dict):
        env = {k: v for k, v in os.environ.items() if k != ENV_VAR}
        env.update(
            env_extra,
            OMP_NUM_THREADS=str(spec["threads"]),
            PYTHONPATH=os.pathsep.join([str(code_root), *filter(None, [os.environ.get("PYTHONPATH")])]),
        )
        self.code_root = code_root
        self.stderr = tempfile.TemporaryFile("w+")  # a file, not a pipe: warnings cannot fill it and block
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), json.dumps(spec)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
            cwd=tempfile.gettempdir(),
        )

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait()
            self.stderr.seek(0)
            raise RuntimeError(f"benchmark worker failed:\n{self.stderr.read()[-2000:]}")
        return json.loads(line)

    def ready(self) -> list[str]:
        info = self._read()
        if not Path(info["niff_analysis"]).resolve().is_relative_to(self.code_root.resolve()):
            raise RuntimeError(f"worker imported {info['niff_analysis']}, not the tree under {self.code_root}")
        return info["ready"]

    def step(self, key: str) -> tuple[float, float]:
        """One step of ``key``: (wall seconds, CPU seconds of the worker process)."""
        self.proc.stdin.write(key + "\n")
        self.proc.stdin.flush()
        res = self._read()
        return res["seconds"], res["cpu_seconds"]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        self.stderr.close()


def run(
    quick: bool = False,
    device: torch.device = torch.device("cpu"),
    rounds: int | None = None,
    batch: int | None = None,
    reference: bool = True,
    width: int = 64,
) -> pd.DataFrame:
    """Time both models per setting and precision; print the tables; return the per-setting rows
    (``width``: the ResNets' base channels, 64 as in the paper; tests use a narrow one)."""
    batch = batch or (16 if quick else 128)
    rounds = rounds or (1 if quick else 5)
    flags = cpu_bf16_flags()
    precisions = ["fp32"] + (
        ["bf16"]
        if (flags if device.type == "cpu" else device.type == "cuda" and torch.cuda.is_bf16_supported())
        else []
    )
    spec = dict(
        models=list(MODELS),
        precisions=precisions,
        batch=batch,
        threads=torch.get_num_threads(),
        device=str(device),
        width=width,
    )
    with tempfile.TemporaryDirectory() as tmp:
        trees = {"this": ROOT, "main": reference_tree(Path(tmp)) if reference else None}
        # The allocator settings concern the CPU only: on a GPU the plain loop is the one setting.
        settings = [s for s in SETTINGS if trees[s[0]] is not None and (device.type == "cpu" or s[1] == "plain")]
        workers = {}
        try:
            for code, setting, env in settings:
                workers[(code, setting)] = _Worker(trees[code], env, dict(spec, setting=setting.split(",")[0]))
            keys = {name: w.ready() for name, w in workers.items()}
            samples: dict[tuple, list[dict]] = {name: [] for name in workers}
            order = [(name, key) for name in workers for key in keys[name]]
            for r in range(rounds):
                shift = r * len(order) // rounds  # rotate: nobody always goes first
                times: dict[tuple, dict] = {name: {} for name in workers}
                for name, key in order[shift:] + order[:shift]:
                    times[name][key] = workers[name].step(key)
                for name in workers:
                    samples[name].append(times[name])
        finally:
            for w in workers.values():
                w.close()
    print(
        f"\n# train_loop: {cpu_model()}; native bf16: {', '.join(flags) or 'none'}; device {device}; "
        f"{spec['threads']} threads; batch {batch}; {rounds} round(s); one process per setting, taking turns"
        + ("" if trees["main"] is not None else "; main's tree unavailable (no git history): its rows left out")
    )
    rows = []
    for (code, setting), per_round in samples.items():
        for precision in precisions:
            row = dict(code=code, setting=setting, precision=precision, allocator=_allocator(code, setting, device))
            for clock, i in (("", 0), ("cpu_", 1)):
                t = {m: np.array([r[f"{m}/{precision}"][i] for r in per_round]) * 1e3 for m in MODELS}
                ratio = t["resnet18_niff"] / t["resnet18"]
                row.update(
                    {
                        f"resnet18_{clock}ms": np.median(t["resnet18"]),
                        f"niff_{clock}ms": np.median(t["resnet18_niff"]),
                        f"niff_{clock}range": f"{t['resnet18_niff'].min():.0f}-{t['resnet18_niff'].max():.0f}",
                        f"niff/base_{clock}": np.median(t["resnet18_niff"]) / np.median(t["resnet18"]),
                        f"niff/base_{clock}range": f"{ratio.min():.2f}-{ratio.max():.2f}",
                    }
                )
            rows.append(row)
    frame = pd.DataFrame(rows)
    show(
        f"train_loop: one training step, median over rounds (ms; cpu_: the worker's CPU time), batch {batch}, "
        "32x32, CIFAR stem",
        frame,
    )
    # On a GPU the process's CPU time is launch overhead and waiting, not the step's work.
    for clock, i in (("wall time", 0), ("CPU time", 1))[: 2 if device.type == "cpu" else 1]:
        _print_targets(
            {k: [{c: v[i] for c, v in r.items()} for r in rs] for k, rs in samples.items()}, precisions, clock
        )
    return frame


def _allocator(code: str, setting: str, device: torch.device) -> str:
    if device.type != "cpu":
        return "n/a"
    if setting == "trainer":
        return "freed memory kept"
    if setting == "plain, opted out" or code == "main":
        return "glibc defaults"
    return "kept from the first NIFF forward"


def _ratio(samples, a: tuple, b: tuple, key: str) -> tuple[float, float, float] | None:
    """median(a)/median(b) for ``key`` and the range of the per-round ratios; None if missing."""
    if a not in samples or b not in samples:
        return None
    ta = np.array([r[key] for r in samples[a]])
    tb = np.array([r[key] for r in samples[b]])
    per_round = ta / tb
    return float(np.median(ta) / np.median(tb)), float(per_round.min()), float(per_round.max())


def _print_targets(samples, precisions, clock: str) -> None:
    checks = []
    for p in precisions:
        checks.append(
            (
                f"NIFF {p}: plain loop / trainer's setting (this checkout)",
                _ratio(samples, ("this", "plain"), ("this", "trainer"), f"resnet18_niff/{p}"),
                1.10,
                True,
            )
        )
    checks.append(
        (
            "NIFF fp32: main's plain loop / this plain loop (speed-up)",
            _ratio(samples, ("main", "plain"), ("this", "plain"), "resnet18_niff/fp32"),
            1.3,
            False,
        )
    )
    checks.append(
        (
            "NIFF fp32: main / this, both with freed memory kept (the FFT path alone)",
            _ratio(samples, ("main", "trainer"), ("this", "trainer"), "resnet18_niff/fp32"),
            None,
            False,
        )
    )
    checks.append(
        (
            "NIFF fp32, opted out: main's plain loop / this (the FFT path, glibc defaults)",
            _ratio(samples, ("main", "plain"), ("this", "plain, opted out"), "resnet18_niff/fp32"),
            None,
            False,
        )
    )
    if "bf16" in precisions:
        for m in MODELS:
            for setting in ("plain", "trainer"):
                if ("this", setting) in samples:
                    ta = np.array([r[f"{m}/fp32"] for r in samples[("this", setting)]])
                    tb = np.array([r[f"{m}/bf16"] for r in samples[("this", setting)]])
                    checks.append(
                        (
                            f"{m} {setting}: fp32 / bf16 (this checkout)",
                            (float(np.median(ta) / np.median(tb)), float((ta / tb).min()), float((ta / tb).max())),
                            None,
                            False,
                        )
                    )
    print(f"\n  ({clock}; median ratio, and its range over rounds)")
    for label, r, target, lower in checks:
        if r is None:
            print(f"  {label}: not measured")
            continue
        goal = (
            "" if target is None else (f" (target {'<=' if lower else '>='} {target}: {verdict(r[0], target, lower)})")
        )
        print(f"  {label}: {r[0]:.2f} [rounds {r[1]:.2f}-{r[2]:.2f}]{goal}")
