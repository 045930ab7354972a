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


def conv3x3_peaks(model: torch.nn.Module, size: int, batch: int = 32, repeats: int = 3) -> dict:
    """Best GFLOP/s (GOP/s) over ``model``'s own 3 x 3 convolutions, each timed alone at its
    shape in the network (input S x S, ``batch`` crops, channels_last) on all torch threads.

    The second reference beside :func:`matmul_peaks`: on AVX-512 CPUs oneDNN runs some 3 x 3
    convolutions faster than a square matrix product, so a fraction of the matmul peak alone
    can read above what is left to gain. int8 times each convolution quantized by FX alone
    (with its quantize/dequantize steps), so its figure is a lower bound of that peak.
    """
    shapes = _conv3x3_inputs(model, size)
    best: dict[str, float] = {}
    for conv, shape in shapes:
        x = torch.randn(batch, *shape[1:]).contiguous(memory_format=torch.channels_last)
        flop = 2.0 * conv.weight.numel() * batch * _output_pixels(conv, shape)
        runs = {"fp32": (conv, x), "bf16": (conv, x)}
        for fmt, (layer, inp) in runs.items():
            with torch.inference_mode(), _autocast(fmt):
                rate = flop / _best_seconds(lambda layer=layer, inp=inp: layer(inp), repeats) / 1e9
            best[fmt] = max(best.get(fmt, 0.0), rate)
        quantized = _quantized_conv(conv, x)
        if quantized is not None:
            with torch.inference_mode():
                rate = flop / _best_seconds(lambda q=quantized, x=x: q(x), repeats) / 1e9
            best["int8"] = max(best.get("int8", 0.0), rate)
    return best


def reference_peaks(model: torch.nn.Module, size: int, matmul_n: int = 2048) -> dict:
    """Both references and, per format, the larger of them: the peak the scoring paths are
    measured against (``{"matmul": ..., "conv3x3": ..., "peak": ...}``, GFLOP/s)."""
    matmul = matmul_peaks(matmul_n)
    conv = conv3x3_peaks(model, size)
    best = {k: max(matmul.get(k, 0.0), conv.get(k, 0.0)) for k in set(matmul) | set(conv)}
    return {"matmul": matmul, "conv3x3": conv, "peak": best}


def _conv3x3_inputs(model: torch.nn.Module, size: int) -> list[tuple[torch.nn.Conv2d, tuple]]:
    """(conv, its input shape at batch 1) for every 3 x 3 convolution of ``model``."""
    found: list[tuple[torch.nn.Conv2d, tuple]] = []
    hooks = [
        m.register_forward_hook(lambda m, inp, out: found.append((m, tuple(inp[0].shape))))
        for m in model.modules()
        if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)
    ]
    try:
        with torch.inference_mode():
            model.eval()(torch.zeros(1, 3, size, size))
    finally:
        for h in hooks:
            h.remove()
    return [(conv.to(memory_format=torch.channels_last), shape) for conv, shape in found]


def _output_pixels(conv: torch.nn.Conv2d, shape: tuple) -> int:
    h, w = shape[2:]
    (kh, kw), (sh, sw), (ph, pw) = conv.kernel_size, conv.stride, conv.padding
    return ((h + 2 * ph - kh) // sh + 1) * ((w + 2 * pw - kw) // sw + 1)


def _autocast(fmt: str) -> contextlib.AbstractContextManager:
    if fmt == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def _quantized_conv(conv: torch.nn.Conv2d, x: torch.Tensor):
    """``conv`` alone quantized by FX (x86 backend), calibrated on ``x``; None when the build
    has no quantized engine."""
    import copy
    import warnings

    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    try:
        torch.backends.quantized.engine = "x86"
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mapping = get_default_qconfig_mapping("x86")
            prepared = prepare_fx(torch.nn.Sequential(copy.deepcopy(conv)), mapping, (x[:1],))
            with torch.inference_mode():
                prepared(x)
            return convert_fx(prepared).eval()
    except RuntimeError:
        return None
