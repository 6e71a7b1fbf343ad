"""``python -m benchmarks [NAME ...] [--quick] [--device D] [--threads N]``: run the benchmarks."""

from __future__ import annotations

import argparse
import datetime as _dt
import importlib
import os
import time

import torch

from niff_analysis.device import resolve_device
from niff_analysis.layers.memory import ENV_VAR
from niff_analysis.train.precision import cpu_bf16_flags, cpu_model
from niff_analysis.train.trainer import keep_freed_memory

from . import BENCHMARKS


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument(
        "names", nargs="*", metavar="NAME", help=f"benchmarks to run (default: all): {', '.join(BENCHMARKS)}"
    )
    parser.add_argument("--quick", action="store_true", help="small batches, few repeats (smoke run)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda, ...")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch intra-op threads (default: torch's choice, all cores)"
    )
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="keep glibc's default allocator settings (by default the suite runs "
        "with the trainer's keep_freed_memory(), as training does)",
    )
    args = parser.parse_args(argv)
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark {unknown[0]!r}; choose from {', '.join(BENCHMARKS)}")
    if args.threads is not None:
        if args.threads < 1:
            parser.error("--threads must be positive")
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)  # the toolkit's one rule: auto = cuda, then mps, then cpu
    if args.default_malloc:
        os.environ[ENV_VAR] = "0"  # the NIFF layers would otherwise set it on their first CPU forward
    kept = False if args.default_malloc else keep_freed_memory()
    names = args.names or list(BENCHMARKS)
    print(
        f"# {_dt.datetime.now().isoformat(timespec='seconds')} | torch {torch.__version__} | "
        f"{cpu_model()} (native bf16: {', '.join(cpu_bf16_flags()) or 'none'}), "
        f"{torch.get_num_threads()} threads | device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
        + (" | quick" if args.quick else "")
        + (" | malloc: freed memory kept" if kept else " | malloc: glibc defaults")
    )
    start = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        importlib.import_module(f".{name}", __package__).run(quick=args.quick, device=device)
        print(f"  [{name}: {time.perf_counter() - t0:.0f} s]")
    print(f"\n# all done in {time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
