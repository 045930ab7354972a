"""Score warped regions with an ensemble of classifiers: the mean of their softmaxes.

The fast CPU path (DESIGN.md "Speed"): eval mode, channels_last weights and inputs,
``torch.inference_mode``, bf16 autocast where the CPU has bf16 instructions (AVX-512 BF16 or
AMX), optionally ``torch.compile`` (inductor with freezing) with one fixed chunk shape, or
experimental int8 (FX post-training quantization, x86 backend) calibrated on real crops.
On CUDA: bf16 autocast, channels_last, and the warp runs on the device (roi_align).

Example:
    ens = Ensemble.from_checkpoints(["m0.safetensors", "m1.safetensors"], precision="auto")
    probs = ens.score_image(image, proposals.boxes)  # float32[N, K + 1]
"""

from __future__ import annotations

import contextlib
import copy
import re
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from detector.classifier import load_members
from detector.warp import IMAGENET_MEAN, IMAGENET_STD, warp_regions

PRECISIONS = ("auto", "fp32", "bf16", "int8")


def cpu_supports_bf16() -> bool:
    """True when oneDNN is built in and the CPU has native bf16 (avx512_bf16 or amx_bf16)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:  # not Linux: be conservative, bf16 emulation is slower than fp32
        return False
    return re.search(r"\b(avx512_bf16|amx_bf16)\b", info) is not None


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> the first CUDA device when available, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_precision(precision: str, device: torch.device) -> str:
    """``"auto"`` -> bf16 where the device computes it natively, fp32 elsewhere."""
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; expected one of {PRECISIONS}")
    if precision == "int8" and device.type != "cpu":
        raise ValueError("int8 (FX quantization) runs on the CPU only")
    if precision != "auto":
        return precision
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    return "bf16" if device.type == "cpu" and cpu_supports_bf16() else "fp32"


class Ensemble:
    """Average the softmax of several region classifiers over warped crops.

    Args:
        members: classifiers mapping (N, 3, S, S) to (N, C) logits; all with C outputs. They
            are put in eval mode and moved to ``device`` in channels_last format (in place).
        device: "cpu", "cuda", "cuda:N" or "auto".
        precision: "auto" | "fp32" | "bf16" | "int8" (int8: call :meth:`calibrate` first;
            experimental, check it against fp32 on trained weights).
        chunk_size: crops per forward pass; bounds memory (crops, activations).
        compile: torch.compile each member (inductor, freezing) for one (chunk_size, 3, S, S)
            shape; the last chunk is zero-padded to it. Compiles lazily on first use.
        input_size: S. context_pad, mean, std: the warp's defaults for :meth:`score_image`.
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        *,
        device: str | torch.device = "cpu",
        precision: str = "auto",
        chunk_size: int = 128,
        compile: bool = False,
        input_size: int = 224,
        context_pad: int = 16,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        self.chunk_size = chunk_size
        self.compile = compile and self.precision != "int8"
        self.input_size = input_size
        self.context_pad = context_pad
        self.mean = tuple(mean)
        self.std = tuple(std)
        self.members = [_prepare(m, self.device) for m in members]
        self.num_outputs = _num_outputs(self.members, input_size, self.device)
        self._runnable: list[nn.Module] | None = None if self.compile else list(self.members)
        if self.precision == "int8":
            self._runnable = None  # set by calibrate()
        self._lock = threading.Lock()

    @classmethod
    def from_checkpoints(
        cls, paths: Sequence[str | Path], *, device: str | torch.device = "cpu", **kwargs: Any
    ) -> Ensemble:
        """Load members with :func:`detector.classifier.load_members`; warp settings from
        their metadata (keyword arguments override)."""
        dev = resolve_device(device)
        models, meta = load_members(paths, dev)
        settings = {
            k: meta[k]
            for k in ("input_size", "context_pad", "mean", "std")
            if meta.get(k) is not None
        }
        settings.update(kwargs)
        return cls(models, device=dev, **settings)

    @classmethod
    def from_config(cls, cfg: Any) -> Ensemble:
        """Members from ``cfg.model.checkpoints`` (or ``checkpoint_dir/member_*.safetensors``),
        inference settings from ``cfg.inference``."""
        paths = list(cfg.model.checkpoints)
        if not paths and cfg.model.checkpoint_dir:
            paths = sorted(Path(cfg.model.checkpoint_dir).glob("member_*.safetensors"))
        if not paths:
            raise ValueError("config: model.checkpoints and model.checkpoint_dir give no members")
        inf = cfg.inference
        return cls.from_checkpoints(
            paths,
            device=inf.device,
            precision=inf.precision,
            chunk_size=inf.chunk_size,
            compile=inf.compile,
        )

    def __len__(self) -> int:
        return len(self.members)

    @property
    def needs_calibration(self) -> bool:
        """True for int8 before :meth:`calibrate` has run."""
        return self.precision == "int8" and self._runnable is None

    def calibrate(self, crops: torch.Tensor) -> None:
        """Quantize every member to int8 (FX post-training, x86 backend) on these crops.

        Args:
            crops (float32[N, 3, S, S]): warped crops representative of the inputs (a few
                hundred from real images; not random noise).
        """
        if self.precision != "int8":
            raise RuntimeError(f"calibrate() is for precision int8, not {self.precision}")
        if len(crops) == 0:
            raise ValueError("calibrate() needs at least one crop")
        with warnings.catch_warnings():
            # torch.ao's deprecation notices (its successor, torchao's PT2E, is not a
            # dependency here) would otherwise repeat for every member.
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
            self._runnable = self._quantize(crops)

    def _quantize(self, crops: torch.Tensor) -> list[nn.Module]:
        from torch.ao.quantization import get_default_qconfig_mapping
        from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

        torch.backends.quantized.engine = "x86"
        qconfig = get_default_qconfig_mapping("x86")
        crops = crops.float().contiguous(memory_format=torch.channels_last)
        quantized = []
        for model in self.members:
            # prepare_fx fuses modules in place: keep the fp32 members intact.
            prepared = prepare_fx(copy.deepcopy(model), qconfig, example_inputs=(crops[:1],))
            with torch.inference_mode():
                for start in range(0, len(crops), self.chunk_size):
                    prepared(crops[start : start + self.chunk_size])
            quantized.append(convert_fx(prepared).eval())
        return quantized

    def score(self, crops: torch.Tensor) -> np.ndarray:
        """Mean softmax of the members over crops, chunk by chunk.

        Args:
            crops (float32[N, 3, S, S]): warped, normalised crops.
        Returns:
            float32[N, C]: rows sum to 1; column 0 is the background.
        """
        n = len(crops)
        out = np.empty((n, self.num_outputs), dtype=np.float32)
        for start in range(0, n, self.chunk_size):
            out[start : start + self.chunk_size] = self._score_chunk(
                crops[start : start + self.chunk_size]
            )
        return out

    def score_image(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        *,
        context_pad: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        timings: dict[str, float] | None = None,
    ) -> np.ndarray:
        """Warp and score the boxes of one image, one chunk at a time (memory stays bounded).

        Args:
            image (uint8[H, W, 3]): RGB.
            boxes (float32[N, 4]): internal xyxy.
            context_pad, mean, std: override the ensemble's warp settings.
            timings: if given, receives seconds spent in "warp" and "score" (added).
        Returns:
            float32[N, C]: averaged softmax probabilities, column 0 the background.
        """
        boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        pad = self.context_pad if context_pad is None else context_pad
        warp_kw = {
            "size": self.input_size,
            "context_pad": pad,
            "mean": self.mean if mean is None else tuple(mean),
            "std": self.std if std is None else tuple(std),
            "device": self.device,
        }
        out = np.empty((len(boxes), self.num_outputs), dtype=np.float32)
        buffer = None  # one chunk of crops, reused: this call's own, so calls stay independent
        clock = {"warp": 0.0, "score": 0.0}
        for start in range(0, len(boxes), self.chunk_size):
            t0 = time.perf_counter()
            crops = warp_regions(
                image, boxes[start : start + self.chunk_size], out=buffer, **warp_kw
            )
            if buffer is None:
                buffer = crops
            t1 = time.perf_counter()
            out[start : start + len(crops)] = self._score_chunk(crops)
            clock["warp"] += t1 - t0
            clock["score"] += time.perf_counter() - t1
        if timings is not None:
            for key, value in clock.items():
                timings[key] = timings.get(key, 0.0) + value
        return out

    def _score_chunk(self, crops: torch.Tensor) -> np.ndarray:
        """float32[n, C] mean softmax of one chunk (n <= chunk_size)."""
        n = len(crops)
        if n == 0:
            return np.zeros((0, self.num_outputs), dtype=np.float32)
        x = crops.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        if self.compile and n < self.chunk_size:  # one fixed shape: no recompilation
            fill = x.new_zeros((self.chunk_size - n, *x.shape[1:]))
            x = torch.cat([x, fill]).contiguous(memory_format=torch.channels_last)
        models = self._models()
        with torch.inference_mode(), self._autocast():
            total = torch.zeros((len(x), self.num_outputs), device=self.device)
            for model in models:
                total += model(x).float().softmax(dim=1)
        return (total[:n] / len(models)).cpu().numpy()

    def _autocast(self) -> contextlib.AbstractContextManager:
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def _models(self) -> list[nn.Module]:
        """The callable members: compiled lazily, once, under a lock."""
        runnable = self._runnable
        if runnable is not None:
            return runnable
        if self.precision == "int8":
            raise RuntimeError("precision int8: call calibrate(crops) before scoring")
        with self._lock:
            if self._runnable is None:
                self._runnable = self._compile_members()
        return self._runnable

    def _compile_members(self) -> list[nn.Module]:
        compiled = []
        shape = (self.chunk_size, 3, self.input_size, self.input_size)
        warm = torch.zeros(shape, device=self.device).contiguous(memory_format=torch.channels_last)
        for model in self.members:
            c = torch.compile(model, backend="inductor", dynamic=False, options={"freezing": True})
            with torch.inference_mode(), self._autocast():
                c(warm)  # compile now, inside the lock, not in a racing first call
            compiled.append(c)
        return compiled


def _prepare(model: nn.Module, device: torch.device) -> nn.Module:
    return model.eval().to(device, memory_format=torch.channels_last)


def _num_outputs(members: Sequence[nn.Module], input_size: int, device: torch.device) -> int:
    """Number of outputs shared by all members (their ``fc``, else one tiny forward pass)."""
    counts = set()
    for m in members:
        fc = getattr(m, "fc", None)
        if isinstance(fc, nn.Linear):
            counts.add(fc.out_features)
        else:
            with torch.inference_mode():
                x = torch.zeros((1, 3, input_size, input_size), device=device)
                counts.add(int(m(x).shape[1]))
    if len(counts) != 1:
        raise ValueError(f"ensemble members disagree on the number of outputs: {sorted(counts)}")
    return counts.pop()
