"""Devices and number formats: the one place that decides where and how tensors run.

The command line resolves ``auto`` once (``detector.resolve``); components receive a
concrete device (``cpu``, ``cuda:0``) and precision (``fp32``, ``bf16``, ``int8``).
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

PRECISIONS = ("auto", "fp32", "bf16", "int8")


class DeviceError(ValueError):
    """A device or precision that this machine cannot provide; the message says why."""


def resolve_device(name: str | torch.device, local_rank: int = 0) -> torch.device:
    """``auto`` = the local rank's GPU when there is one, else the CPU; ``cuda`` = the local
    rank's GPU. A CUDA device on a machine without one is a :class:`DeviceError`."""
    name = str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise DeviceError(f"unknown device {name!r} ({e})") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} requested but no CUDA GPU is available")
        if device.index is None:
            device = torch.device("cuda", local_rank)
    return device


def resolve_precision(
    precision: str, device: torch.device, calibration_at_hand: bool = False
) -> str:
    """``auto`` -> int8 on a CPU with torch's x86 int8 kernels when ``calibration_at_hand``
    (a run over a list of images calibrates on its first ones: ``detector.run``,
    ``eval.map``), else bf16 where the device computes it natively, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise DeviceError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "int8" and device.type != "cpu":
        raise DeviceError("precision int8 (FX quantization) runs on the CPU only")
    if precision != "auto":
        return precision
    if calibration_at_hand and cpu_supports_int8(device):
        return "int8"
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"


def cpu_supports_int8(device: torch.device) -> bool:
    """True on a CPU whose torch build has the x86 quantized engine (FX int8, fbgemm/oneDNN)."""
    return device.type == "cpu" and "x86" in torch.backends.quantized.supported_engines


def autocast_dtype(precision: str) -> torch.dtype | None:
    """The autocast dtype of a resolved precision (None = run in the weights' dtype)."""
    return torch.bfloat16 if precision == "bf16" else None


def cpu_supports_bf16() -> bool:
    """True when oneDNN is built in and the CPU has native bf16 (avx512_bf16 or amx_bf16)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: be conservative, bf16 emulation is slower than fp32
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", info) is not None
