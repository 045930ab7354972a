"""Score warped regions with an ensemble of classifiers: the mean of their softmaxes.

The fast CPU path (docs/DECISIONS.md, "Speed paths"): eval mode, channels_last weights and
inputs, ``torch.inference_mode``, bf16 autocast where the CPU has bf16 instructions (AVX-512 BF16 or
AMX), optionally ``torch.compile`` (inductor with freezing) with one fixed chunk shape, or
experimental int8 (FX post-training quantization, x86 backend) calibrated on real crops.
On CUDA: bf16 autocast, channels_last, and the warp runs on the device (roi_align).

Example (``detector.build.load_ensemble`` does this from a config)::

    members, meta = load_members(["m0.safetensors", "m1.safetensors"], "cpu")
    warp = warp_from_metadata(meta, fallback)  # what the members were trained with
    ens = Ensemble(members, warp=warp, device="cpu", precision="bf16", chunk_size=128,
                   compile=False, cascade_threshold=0.0, backend="torch")
    probs = ens.score(ens.regions(image, proposals.boxes))  # float32[N, K + 1]

Tuning ``cascade_threshold`` (``python -m eval.cascade``): score once with every member, then
any threshold's probabilities follow without running a CNN again::

    first, mean = ens.score_first_and_mean(ens.regions(image, proposals.boxes))
    probs = cascade_probs(first, mean, 0.05)  # what cascade_threshold=0.05 would give
"""

from __future__ import annotations

import contextlib
import copy
import threading
import time
import warnings
from collections.abc import Callable, Sequence

import numpy as np
import torch
from torch import nn

from detector.core.devices import autocast_dtype, resolve_device, resolve_precision
from detector.openvino_members import check_backend, openvino_members, quantized_members
from detector.warp import Regions, WarpSettings, warp_regions

# A runnable member: crops float[N, 3, S, S] -> logits float[N, C] (torch modules, compiled
# modules or OpenVINO members).
Member = Callable[[torch.Tensor], torch.Tensor]

CALIBRATION_CROPS = 256  # int8: warped proposals that calibrate, over all the images given


class CropCounts:
    """Crops scored by member 0 and crops that went on to members 1.. (all of them without a
    cascade), since the ensemble was made; thread-safe. A compiled ensemble counts the
    zero padding of its last chunk too."""

    def __init__(self) -> None:
        self.crops = 0
        self.to_rest = 0
        self._lock = threading.Lock()

    def add(self, crops: int, to_rest: int) -> None:
        with self._lock:
            self.crops += crops
            self.to_rest += to_rest

    @property
    def share_to_rest(self) -> float:
        """The share of crops members 1.. scored (1.0 before any crop)."""
        return self.to_rest / self.crops if self.crops else 1.0


class Ensemble:
    """Average the softmax of several region classifiers over warped crops.

    Args:
        members: classifiers mapping (N, 3, S, S) to (N, C) logits; all with C outputs. They
            are put in eval mode and moved to ``device`` in channels_last format (in place).
        warp: the crops the members were trained on (see :class:`detector.warp.WarpSettings`).
        device: "cpu", "cuda", "cuda:N" (or "auto").
        precision: "fp32" | "bf16" | "int8" (or "auto"; int8: :meth:`calibrate` first, or let
            :meth:`calibrate_on_images` do it; check it against fp32 on trained weights).
        chunk_size: crops per forward pass; bounds memory (crops, activations).
        compile: torch.compile each member (inductor, freezing) for one (chunk_size, 3, S, S)
            shape; the last chunk is zero-padded to it. Compiles lazily on first use.
        cascade_threshold: members 1..N-1 score only the crops whose member-0 foreground
            probability (1 - p_background) is at least this; the other crops keep member 0's
            probabilities. 0 = off: every member scores every crop (the paper). Needs
            ``compile`` off (the subsets vary in size).
        backend: "torch" (eager, compiled or FX int8 members) or "openvino" (the members
            converted to OpenVINO IR once and cached; the ``openvino`` extra; CPU only;
            ``detector.openvino_members``).
    """

    def __init__(
        self,
        members: Sequence[nn.Module],
        *,
        warp: WarpSettings,
        device: str | torch.device,
        precision: str,
        chunk_size: int,
        compile: bool,
        cascade_threshold: float,
        backend: str,
    ) -> None:
        if not members:
            raise ValueError("an ensemble needs at least one member")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
        if not 0 <= cascade_threshold <= 1:
            raise ValueError(f"cascade_threshold must be in [0, 1], got {cascade_threshold}")
        if cascade_threshold > 0 and compile:
            raise ValueError(
                "inference.compile=true needs inference.cascade_threshold=0 (or keep the cascade "
                "with compile=false): the crops that reach members 1.. vary in number, a "
                "compiled member takes one fixed shape"
            )
        self.cascade_threshold = float(cascade_threshold)
        self.backend = check_backend(backend)
        self.warp = warp
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device)
        if self.backend == "openvino" and (self.device.type != "cpu" or compile):
            raise ValueError("inference.backend=openvino runs on the CPU, uncompiled by torch")
        self.chunk_size = chunk_size
        self.compile = compile and self.precision != "int8"
        self.members = [_prepare(m, self.device) for m in members]
        self.num_outputs = _num_outputs(self.members, warp.size, self.device)
        eager = not self.compile and self.backend == "torch"
        self._runnable: list[Member] | None = list(self.members) if eager else None
        if self.precision == "int8":
            self._runnable = None  # set by calibrate()
        self.counts = CropCounts()
        self._lock = threading.Lock()  # the members are compiled or quantized once
        self._calibration_lock = threading.Lock()

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
        with self._lock, warnings.catch_warnings():
            # torch.ao's deprecation notices (its successor, torchao's PT2E, is not a
            # dependency here) would otherwise repeat for every member.
            warnings.simplefilter("ignore", (DeprecationWarning, UserWarning))
            self._runnable = self._quantize(crops)

    def calibrate_on_images(self, pairs: Sequence[tuple[np.ndarray, np.ndarray]]) -> int:
        """int8: calibrate once on ``(image uint8[H, W, 3], boxes float32[N, 4])`` pairs,
        :data:`CALIBRATION_CROPS` warped crops in all, spread evenly over each image's
        boxes. A no-op (0) when already calibrated or not int8; returns the crops used."""
        pairs = [(image, boxes) for image, boxes in pairs if len(boxes)]
        with self._calibration_lock:  # concurrent first calls calibrate once
            if not pairs or not self.needs_calibration:
                return 0
            per_image = -(-CALIBRATION_CROPS // len(pairs))
            crops = []
            for image, boxes in pairs:
                pick = np.linspace(0, len(boxes) - 1, min(len(boxes), per_image)).astype(int)
                crops.append(warp_regions(image, boxes[pick], self.warp))
            batch = torch.cat(crops)
            self.calibrate(batch)
            return len(batch)

    def _quantize(self, crops: torch.Tensor) -> list[Member]:
        if self.backend == "openvino":
            return quantized_members(
                self.members, crops.float(), size=self.warp.size, threads=torch.get_num_threads()
            )
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

    def regions(self, image: np.ndarray, boxes: np.ndarray) -> Regions:
        """The warp step: the boxes of one image as lazily warped crops, this ensemble's
        warp settings, device and chunk size (see :class:`detector.warp.Regions`)."""
        return Regions(image, boxes, self.warp, device=self.device, chunk_size=self.chunk_size)

    def score(self, crops: Regions | torch.Tensor) -> np.ndarray:
        """The score step: mean softmax of the members, chunk by chunk.

        An uncalibrated int8 ensemble first calibrates on the regions' image.

        Args:
            crops: :class:`Regions` of one image, or float32[N, 3, S, S] warped crops.
        Returns:
            float32[N, C]: rows sum to 1; column 0 is the background.
        """
        out = np.empty((len(crops), self.num_outputs), dtype=np.float32)
        start = 0
        for chunk in self._chunks(crops):
            out[start : start + len(chunk)] = self._score_chunk(chunk, self.cascade_threshold)[1]
            start += len(chunk)
        return out

    def score_first_and_mean(self, crops: Regions | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Member 0's softmax and the full ensemble's mean softmax of the same crops, every
        member scoring every crop whatever ``cascade_threshold`` is (what tuning the cascade
        needs: :func:`cascade_probs` turns the pair into any threshold's probabilities).

        Returns:
            (float32[N, C] member 0's softmax, float32[N, C] the mean softmax).
        """
        n = len(crops)
        first = np.empty((n, self.num_outputs), dtype=np.float32)
        mean = np.empty((n, self.num_outputs), dtype=np.float32)
        start = 0
        for chunk in self._chunks(crops):
            end = start + len(chunk)
            first[start:end], mean[start:end] = self._score_chunk(chunk, 0.0)
            start = end
        return first, mean

    def score_image(
        self, image: np.ndarray, boxes: np.ndarray, timings: dict[str, float] | None = None
    ) -> np.ndarray:
        """Warp and score the boxes of one image (float32[N, C]); ``timings``, if given,
        receives the seconds of "warp" and "score" (the CNNs), added."""
        t0 = time.perf_counter()
        regions = self.regions(image, boxes)
        probs = self.score(regions)
        if timings is not None:
            timings["warp"] = timings.get("warp", 0.0) + regions.seconds
            spent = time.perf_counter() - t0 - regions.seconds
            timings["score"] = timings.get("score", 0.0) + spent
        return probs

    def score_and_features(self, crops: Regions | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`score`, plus member 0's pooled features of the same crops (what R-CNN's
        box regressors and SVMs read, ``detector.heads``).

        fp32/bf16 eager: one forward pass of member 0 gives both (``fc`` of the features is
        its logits), so the features cost nothing extra. Compiled or int8 members run member
        0's eager fp32/bf16 trunk once more for the features: the heads are fitted on those.

        Returns:
            (float32[N, C] mean softmax, float32[N, D] features of member 0).
        """
        if not callable(getattr(self.members[0], "features", None)):
            raise TypeError("member 0 has no features(x): box regression and SVMs need one")
        probs, feats = [], []
        for chunk in self._chunks(crops):
            p, f = self._score_chunk_features(chunk)
            probs.append(p)
            feats.append(f)
        if not probs:
            return self._no_features()
        return np.concatenate(probs), np.concatenate(feats)

    def _chunks(self, crops: Regions | torch.Tensor):
        """The crops chunk by chunk; an uncalibrated int8 ensemble first calibrates on the
        regions' image."""
        if isinstance(crops, Regions) and self.needs_calibration:
            self.calibrate_on_images([(crops.image, crops.boxes)])
        return crops if isinstance(crops, Regions) else crops.split(self.chunk_size)

    def _score_chunk(self, crops: torch.Tensor, threshold: float) -> tuple[np.ndarray, np.ndarray]:
        """float32[n, C] member 0's softmax and the (cascaded at ``threshold``) mean softmax
        of one chunk (n <= chunk_size)."""
        n = len(crops)
        if n == 0:
            empty = np.zeros((0, self.num_outputs), dtype=np.float32)
            return empty, empty.copy()
        x = self._input(crops)
        models = self._models()
        with torch.inference_mode(), self._autocast():
            first = models[0](x).float().softmax(dim=1)
            probs = self._mean_softmax(x, models, first, threshold)
        return first[:n].cpu().numpy(), probs[:n].cpu().numpy()

    def _mean_softmax(
        self, x: torch.Tensor, models: list[Member], first: torch.Tensor, threshold: float
    ):
        """The members' mean softmax on ``x``, given member 0's (``first``); with a cascade
        (``threshold`` > 0), members 1.. see only the crops member 0 finds foreground enough
        (:func:`cascade_probs` is the same rule on the full ensemble's probabilities)."""
        rest = models[1:]
        keep = None
        if threshold > 0 and rest:
            keep = (1 - first[:, 0]) >= threshold
            if bool(keep.all()):
                keep = None  # every crop goes on: the plain path, no copies
        self.counts.add(len(first), len(first) if keep is None else int(keep.sum()))
        if keep is None:
            total = first.clone()
            for model in rest:
                total += model(x).float().softmax(dim=1)
            return total / len(models)
        out = first.clone()
        if bool(keep.any()):
            subset = x[keep].contiguous(memory_format=torch.channels_last)
            total = first[keep]
            for model in rest:
                total = total + model(subset).float().softmax(dim=1)
            out[keep] = total / len(models)
        return out

    def _score_chunk_features(self, crops: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """:meth:`_score_chunk` and member 0's features of one chunk."""
        n = len(crops)
        if n == 0:
            return self._no_features()
        x = self._input(crops)
        models = self._models()
        first = self.members[0]
        with torch.inference_mode(), self._autocast():
            feats = first.features(x)
            # eager: member 0's logits from the same pass; compiled or int8: its own pass
            logits = first.fc(feats) if models[0] is first else models[0](x)
            first_probs = logits.float().softmax(dim=1)
            probs = self._mean_softmax(x, models, first_probs, self.cascade_threshold)
        return probs[:n].cpu().numpy(), feats[:n].float().cpu().numpy()

    def _no_features(self) -> tuple[np.ndarray, np.ndarray]:
        dim = int(self.members[0].fc.in_features)
        return np.zeros((0, self.num_outputs), np.float32), np.zeros((0, dim), np.float32)

    def _input(self, crops: torch.Tensor) -> torch.Tensor:
        """A chunk on the device, channels_last; compiled: zero-padded to the one shape."""
        x = crops.to(self.device, torch.float32).contiguous(memory_format=torch.channels_last)
        if self.compile and len(x) < self.chunk_size:  # one fixed shape: no recompilation
            fill = x.new_zeros((self.chunk_size - len(x), *x.shape[1:]))
            x = torch.cat([x, fill]).contiguous(memory_format=torch.channels_last)
        return x

    def _autocast(self) -> contextlib.AbstractContextManager:
        dtype = autocast_dtype(self.precision)
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def _models(self) -> list[Member]:
        """The callable members: compiled (or converted) lazily, once, under a lock."""
        runnable = self._runnable
        if runnable is not None:
            return runnable
        if self.precision == "int8":
            raise RuntimeError("precision int8: call calibrate(crops) before scoring")
        with self._lock:
            if self._runnable is None:
                self._runnable = self._compile_members()
        return self._runnable

    def _compile_members(self) -> list[Member]:
        if self.backend == "openvino":
            return openvino_members(
                self.members,
                precision=self.precision,
                size=self.warp.size,
                threads=torch.get_num_threads(),
            )
        compiled = []
        shape = (self.chunk_size, 3, self.warp.size, self.warp.size)
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


def cascade_reaches(first: np.ndarray, threshold: float) -> np.ndarray:
    """bool[N]: the crops a cascade at ``threshold`` sends on to members 1..N-1, from member
    0's softmax ``first`` (float32[N, C], column 0 the background): foreground probability
    1 - p_background >= ``threshold``, compared in float32 as :class:`Ensemble` does; every
    crop at 0 (the cascade off)."""
    if threshold <= 0:
        return np.ones(len(first), dtype=bool)
    return (np.float32(1) - first[:, 0].astype(np.float32)) >= np.float32(threshold)


def cascade_probs(first: np.ndarray, mean: np.ndarray, threshold: float) -> np.ndarray:
    """The probabilities an ``Ensemble(cascade_threshold=threshold)`` gives, from member 0's
    softmax and the full ensemble's mean softmax of the same crops
    (:meth:`Ensemble.score_first_and_mean`): the mean where the crop reaches members 1..,
    member 0's own elsewhere (float32[N, C])."""
    reach = cascade_reaches(first, threshold)
    if reach.all():
        return mean
    return np.where(reach[:, None], mean, first).astype(np.float32, copy=False)
