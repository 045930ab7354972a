"""Scoring on a shared machine (``python -m benchmarks.run --sections load``).

Crops/s of one member for each scoring path (torch bf16 eager, torch int8 FX, OpenVINO bf16,
OpenVINO int8) with 1 thread and with every core, first on an idle machine, then while one
competing process per core runs single-threaded matrix products (what another job or a test
suite on the same cores looks like). torch's OpenMP teams spin and wait for each other, so
a team whose threads lose their cores can stall; the figures say which thread count each
path should take when the machine is shared.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import time

import torch

from benchmarks.sections import random_ensemble, random_member, rate
from detector.core.runtime import available_cores

PATHS = (
    ("torch bf16", "torch", "bf16"),
    ("torch int8 FX", "torch", "int8"),
    ("OpenVINO bf16", "openvino", "bf16"),
    ("OpenVINO int8", "openvino", "int8"),
)


def _busy(seconds: float) -> None:
    """A competing job: single-threaded matrix products for ``seconds``."""
    torch.set_num_threads(1)
    a = torch.randn(512, 512)
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        a @ a


class CompetingLoad:
    """``count`` busy processes for the duration of a ``with`` block."""

    def __init__(self, count: int, seconds: float = 3600.0) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.processes = [ctx.Process(target=_busy, args=(seconds,)) for _ in range(count)]

    def __enter__(self) -> CompetingLoad:
        for p in self.processes:
            p.start()
        time.sleep(2.0)  # let them start (spawn imports torch)
        return self

    def __exit__(self, *exc) -> None:
        for p in self.processes:
            p.terminate()
        for p in self.processes:
            p.join()


def bench_load(crops: torch.Tensor, args: argparse.Namespace) -> dict:
    cores = available_cores()
    threads = sorted({1, cores})
    before = torch.get_num_threads()
    ensembles = {
        f"{name}, {n} thread{'s' if n > 1 else ''}": (n, _ensemble(crops, backend, precision, n, args))
        for name, backend, precision in PATHS
        for n in threads
    }  # fmt: skip
    res: dict = {"cores": cores, "threads": threads, "idle": {}, "loaded": {}}
    for condition in ("idle", "loaded"):
        with CompetingLoad(cores) if condition == "loaded" else contextlib.nullcontext():
            for key, (n, ens) in ensembles.items():
                torch.set_num_threads(n)
                res[condition][key] = rate(lambda e=ens: e.score(crops), len(crops), args.repeats)
    torch.set_num_threads(before)
    print_load(res)
    return res


def _ensemble(crops: torch.Tensor, backend: str, precision: str, threads: int, args):
    """One random member on ``backend`` in ``precision``, calibrated and warmed up with
    ``threads`` threads (OpenVINO takes its thread count when it compiles)."""
    torch.set_num_threads(threads)
    ens = random_ensemble(
        [random_member(0)], crops.shape[-1], precision=precision, chunk_size=args.chunk,
        compile=False, backend=backend,
    )  # fmt: skip
    if ens.needs_calibration:
        ens.calibrate(crops)
    ens.score(crops[: args.chunk])
    return ens


def print_load(res: dict) -> None:
    print(f"\n== scoring on a shared machine: one member, crops/s; loaded = {res['cores']} "
          "competing single-threaded processes ==")  # fmt: skip
    print(f"{'path':<34}{'idle':>8}{'loaded':>8}{'loaded/idle':>12}")
    for key, idle in res["idle"].items():
        loaded = res["loaded"][key]
        print(f"{key:<34}{idle:>8.1f}{loaded:>8.1f}{loaded / idle:>12.2f}")
