"""How close region scoring is to what this machine can compute: measured matrix-multiply
peaks per number format and the work of one crop.

``scoring GFLOP/s = crops/s x GFLOP per crop``; dividing by the measured peak of the same
number format says how much is left to gain by tuning, as opposed to by other hardware
(crops/s targets quoted from AMX machines do not transfer: AVX-512 BF16/VNNI machines peak
far lower).

    from benchmarks.roofline import crop_gflop, matmul_peaks
    peaks = matmul_peaks()        # {"fp32": 89.4, "bf16": 380.2, "int8": 760.0} GFLOP/s (GOP/s)
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode


def crop_gflop(model: torch.nn.Module, size: int) -> float:
    """GFLOP (2 x multiply-adds, as FlopCounterMode counts them) of one S x S crop."""
    x = torch.zeros(1, 3, size, size)
    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model.eval()(x)
    return counter.get_total_flops() / 1e9


def matmul_peaks(n: int = 2048, repeats: int = 5) -> dict[str, float]:
    """Best GFLOP/s (GOP/s for int8) of an n x n x n matrix product on all torch threads.

    A large square product is the best case oneDNN reaches on this CPU: the ceiling a
    convolution network in the same format can approach, never exceed.
    """
    gen = torch.Generator().manual_seed(0)
    a32, b32 = torch.randn(n, n, generator=gen), torch.randn(n, n, generator=gen)
    flop = 2.0 * n**3
    peaks = {
        "fp32": flop / _best_seconds(lambda: a32 @ b32, repeats) / 1e9,
    }
    a16, b16 = a32.bfloat16(), b32.bfloat16()
    peaks["bf16"] = flop / _best_seconds(lambda: a16 @ b16, repeats) / 1e9
    a8 = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=gen)
    b8 = torch.randint(-128, 128, (n, n), dtype=torch.int8, generator=gen)
    with contextlib.suppress(RuntimeError):  # no int8 GEMM kernel in this build
        peaks["int8"] = flop / _best_seconds(lambda: torch._int_mm(a8, b8), repeats) / 1e9
    return peaks


def _best_seconds(fn: Callable[[], object], repeats: int) -> float:
    fn()  # warm-up: oneDNN primitive creation, page faults
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best
