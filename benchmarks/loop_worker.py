"""One process of ``benchmarks/train_loop.py``: plain training steps, timed on request.

Run as a script (``python benchmarks/loop_worker.py SPEC``), not imported: ``niff_analysis`` is
whatever ``PYTHONPATH`` puts first, so the same worker times this checkout and an older tree.
SPEC is JSON with ``models``, ``precisions`` ("fp32", "bf16"), ``batch``, ``threads``, ``device``,
optionally ``width`` (ResNets' base channels, 64 by default; the tests use 8) and ``setting``:
``"plain"`` (a user's own loop: nothing is set up front) or ``"trainer"``
(glibc's freed memory kept before anything runs, as ``niff-analyze train`` does). Every step is
the trainer's: forward (under bf16 autocast for "bf16"), label-smoothed cross-entropy in
float32, backward, SGD with momentum.

The worker builds the models, runs one warm-up step of each (model, precision) and prints a
JSON line ``{"ready": [...keys], ...}``; then, for every key it reads on stdin, it runs one step
and prints ``{"key": ..., "seconds": ..., "cpu_seconds": ...}``, until EOF. The parent sends one key at a time to one
worker at a time, so the processes take turns like contenders of one process do.
"""

from __future__ import annotations

import json
import sys
import time


def main(spec: dict) -> None:
    import torch
    import torch.nn.functional as F

    import niff_analysis
    from niff_analysis.models import create_model

    if spec["setting"] == "trainer":
        from niff_analysis.train.trainer import keep_freed_memory  # both trees have it here

        keep_freed_memory()
    torch.set_num_threads(int(spec["threads"]))
    device = torch.device(spec["device"])
    torch.manual_seed(0)
    x = torch.randn(spec["batch"], 3, 32, 32, device=device)
    y = torch.randint(0, 10, (spec["batch"],), device=device)
    steps = {}
    for name in spec["models"]:
        kw = dict(width=spec["width"]) if spec.get("width", 64) != 64 else {}  # the old tree has no width=
        model = create_model(name, num_classes=10, in_chans=3, stem="cifar", **kw).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
        for precision in spec["precisions"]:
            steps[f"{name}/{precision}"] = _step(model, opt, x, y, device, precision == "bf16", F, torch)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for step in steps.values():  # warm-up: first-touch allocations, autotuning
        step()
    sync()
    _emit(
        dict(
            ready=list(steps),
            niff_analysis=niff_analysis.__file__,
            torch=torch.__version__,
            threads=torch.get_num_threads(),
        )
    )
    while True:
        line = sys.stdin.readline()  # readline, not iteration: no read-ahead past the request
        if not line:
            break
        key = line.strip()
        sync()
        t0, c0 = time.perf_counter(), time.process_time()
        steps[key]()
        sync()
        # Wall time, and the CPU time of this process (all its threads, user + system: the page
        # faults of fresh allocations are system time), which another process's load hardly moves.
        _emit(dict(key=key, seconds=time.perf_counter() - t0, cpu_seconds=time.process_time() - c0))


def _emit(obj: dict) -> None:
    print(json.dumps(obj), flush=True)


def _step(model, opt, x, y, device, bf16: bool, F, torch):
    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            logits = model(x)
        F.cross_entropy(logits.float(), y, label_smoothing=0.1).backward()
        opt.step()

    return step


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
