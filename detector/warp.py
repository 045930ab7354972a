"""Warp proposals to fixed-size, normalised CNN inputs (R-CNN's "warp" with context padding).

Every box is enlarged about its centre by ``S / (S - 2p)`` (so that, after warping, ``p``
pixels of context surround the original box in the ``S x S`` crop), its edges are rounded to
whole pixels, and the region is warped anisotropically to ``S x S`` with bilinear
interpolation. Image values are normalised first, ``(x / 255 - mean) / std``, and everything
outside the image is zero (= the mean after normalisation).

Sampling convention (both methods): for the rounded context box ``[X1, X2) x [Y1, Y2)``
(integers, at least one pixel wide), output column ``i`` (``0 <= i < S``) samples the source
at pixel-index coordinate ``u = X1 + (i + 0.5) * (X2 - X1) / S - 0.5`` (the centre of output
pixel ``i`` mapped to source pixel centres), likewise rows, with bilinear weights.

- ``method="resize"`` (the CPU path): the crop ``[Y1:Y2, X1:X2]`` of the zero-padded
  normalised image is resized by ``cv2.resize(INTER_LINEAR)`` straight into one preallocated
  NHWC batch. As in R-CNN and ``cv2.resize``, a sample that falls within half a source pixel
  outside the crop takes the crop's edge value (``u`` is clamped to ``[X1, X2 - 1]``).
- ``method="roi_align"`` (the GPU path): ``torchvision.ops.roi_align(aligned=True,
  sampling_ratio=1)`` evaluates exactly the same ``u``, but without the clamp: such samples
  blend in the pixel just beyond the crop. The two methods agree to float rounding except in
  the border band of an upsampled crop (the ``ceil(S / (2 * (X2 - X1)))`` outermost columns,
  likewise rows), where the samples lie within half a source pixel of the crop's edge.
  roi_align repeats the image's edge pixel for samples in ``[-1, 0]``, so it runs on a
  zero-padded image.

On the CPU ``roi_align`` is single-threaded and ~10x slower than the resize loop (measured on
a 500x375 image with 2,000 boxes: 1,420 ms against 125 ms; docs/PROTOCOLS.md, "Warp"), hence the two methods.
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torchvision.ops import roi_align

METHODS = ("auto", "resize", "roi_align")


@dataclass(frozen=True)
class WarpSettings:
    """R-CNN's warp, the one place its settings live (what the members were trained with).

    Attributes:
        size: S, the side of the square crops.
        context_pad: p, pixels of context around the box in the crop.
        mean, std: per-channel RGB normalisation on the [0, 1] scale.
    """

    size: int
    context_pad: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __post_init__(self) -> None:
        if self.size <= 2 * self.context_pad:
            raise ValueError(
                f"input size {self.size} must exceed twice the context pad {self.context_pad}"
            )
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            raise ValueError(f"mean and std need 3 values, std > 0: {self.mean}, {self.std}")


def context_boxes(boxes: np.ndarray, *, size: int, context_pad: int) -> np.ndarray:
    """Enlarge boxes about their centres by ``size / (size - 2 * context_pad)``.

    Args:
        boxes (float32[N, 4]): internal xyxy.
    Returns:
        float32[N, 4]: the context boxes (not clipped: they may extend beyond the image).
    """
    if size <= 2 * context_pad:
        raise ValueError(f"input size {size} must exceed twice the context pad {context_pad}")
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    scale = size / (size - 2 * context_pad)
    centre = (b[:, :2] + b[:, 2:]) / 2
    half = (b[:, 2:] - b[:, :2]) * (scale / 2)
    return np.concatenate([centre - half, centre + half], axis=1).astype(np.float32)


# Edges of context boxes are kept within +-2^31 pixels (far beyond any image), so their
# integer arithmetic cannot overflow.
MAX_EDGE = 2**31


def rounded_context_boxes(boxes: np.ndarray, *, size: int, context_pad: int) -> np.ndarray:
    """Context boxes with edges rounded to whole pixels, each at least 1 x 1 pixel.

    Returns:
        int64[N, 4]: ``[X1, Y1, X2, Y2)`` pixel edges, possibly outside the image (within
        +-:data:`MAX_EDGE`).
    """
    c = np.floor(context_boxes(boxes, size=size, context_pad=context_pad).astype(np.float64) + 0.5)
    c = np.clip(c, -MAX_EDGE, MAX_EDGE).astype(np.int64)
    c[:, 2:] = np.maximum(c[:, 2:], c[:, :2] + 1)  # degenerate boxes still sample one pixel
    return c


def normalise_image(
    image: np.ndarray, mean: Sequence[float], std: Sequence[float], pad: int = 0
) -> np.ndarray:
    """``(image / 255 - mean) / std`` as float32, inside a zero border of ``pad`` pixels.

    Args:
        image (uint8[H, W, 3]): RGB.
    Returns:
        float32[H + 2 pad, W + 2 pad, 3].
    """
    h, w = image.shape[:2]
    scale = (1.0 / (255.0 * np.asarray(std, dtype=np.float64))).astype(np.float32)
    shift = (np.asarray(mean, dtype=np.float64) / np.asarray(std, dtype=np.float64)).astype(
        np.float32
    )
    out = np.zeros((h + 2 * pad, w + 2 * pad, 3), dtype=np.float32)
    inner = out[pad : pad + h, pad : pad + w]
    np.multiply(image, scale, out=inner)
    inner -= shift
    return out


def warp_regions(
    image: np.ndarray,
    boxes: np.ndarray,
    warp: WarpSettings,
    *,
    device: str | torch.device = "cpu",
    out: torch.Tensor | None = None,
    method: str = "auto",
) -> torch.Tensor:
    """Warp every box (with context) of one image to a normalised ``size x size`` crop.

    Args:
        image (uint8[H, W, 3]): RGB.
        boxes (float32[N, 4]): internal xyxy in image pixels (may extend beyond the image).
        warp: S, p, mean and std (see :class:`WarpSettings`).
        device: where the crops are produced; CUDA devices warp with roi_align there.
        out: optional float32 tensor of at least N crops, (>= N, 3, S, S) channels_last on
            ``device``, reused instead of allocating (its first N crops are returned).
        method: "auto" (resize on the CPU, roi_align elsewhere), "resize" or "roi_align".
    Returns:
        float32 Tensor[N, 3, S, S] in channels_last memory format on ``device``.
    """
    _check_image(image)
    if method not in METHODS:
        raise ValueError(f"unknown warp method {method!r}; expected one of {METHODS}")
    device = torch.device(device)
    if method == "auto":
        method = "resize" if device.type == "cpu" else "roi_align"
    size, mean, std = warp.size, warp.mean, warp.std
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if not np.isfinite(boxes).all():
        raise ValueError("warp_regions: boxes must be finite (got NaN or infinity)")
    rounded = rounded_context_boxes(boxes, size=size, context_pad=warp.context_pad)
    crops = _output(out, len(rounded), size, device)
    if len(rounded) == 0:
        return crops
    if method == "roi_align":
        return _warp_roi_align(image, rounded, size, mean, std, crops)
    if device.type == "cpu":
        _warp_resize(image, rounded, size, mean, std, crops.permute(0, 2, 3, 1).numpy())
        return crops
    staging = _output(None, len(rounded), size, torch.device("cpu"))
    _warp_resize(image, rounded, size, mean, std, staging.permute(0, 2, 3, 1).numpy())
    return crops.copy_(staging)


def _check_image(image: np.ndarray) -> None:
    if not (
        isinstance(image, np.ndarray)
        and image.ndim == 3
        and image.shape[2] == 3
        and image.dtype == np.uint8
    ):
        got = getattr(image, "shape", type(image).__name__)
        raise ValueError(f"warp_regions: expected a uint8[H, W, 3] RGB image, got {got}")


def _output(out: torch.Tensor | None, n: int, size: int, device: torch.device) -> torch.Tensor:
    """The (N, 3, S, S) channels_last float32 destination: a prefix of ``out`` or a new one."""
    if out is None:
        return torch.empty(
            (n, 3, size, size),
            dtype=torch.float32,
            device=device,
            memory_format=torch.channels_last,
        )
    ok = (
        out.dim() == 4
        and out.shape[0] >= n
        and tuple(out.shape[1:]) == (3, size, size)
        and out.dtype == torch.float32
        and out.device == device
        and out.is_contiguous(memory_format=torch.channels_last)
    )
    if not ok:
        raise ValueError(
            f"warp_regions: out must be float32 (>={n}, 3, {size}, {size}) channels_last on "
            f"{device}, got {out.dtype} {tuple(out.shape)} on {out.device}"
        )
    return out[:n]


def _warp_resize(
    image: np.ndarray,
    rounded: np.ndarray,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    dest: np.ndarray,
) -> None:
    """cv2.resize each rounded context box into ``dest`` (float32[N, S, S, 3], a view)."""
    h, w = image.shape[:2]
    # One zero border wide enough for the usual context boxes lets almost every crop be a
    # view; a box reaching further out (rare: proposals lie inside the image) is copied.
    need = max(0, -rounded[:, :2].min(), rounded[:, 2].max() - w, rounded[:, 3].max() - h)
    pad = int(min(need, max(h, w) // 4 + 2))
    padded = normalise_image(image, mean, std, pad)
    shifted = rounded + pad
    ph, pw = padded.shape[:2]
    for n, (x1, y1, x2, y2) in enumerate(shifted.tolist()):
        if x1 >= 0 and y1 >= 0 and x2 <= pw and y2 <= ph:
            crop = padded[y1:y2, x1:x2]
        elif (x2 - x1) * (y2 - y1) <= ph * pw:
            crop = _zero_padded_crop(padded, x1, y1, x2, y2)
        else:  # a crop larger than the image is never made: sample it where it is read
            _sample_crop(padded, x1, y1, x2, y2, dest[n])
            continue
        cv2.resize(crop, (size, size), dst=dest[n], interpolation=cv2.INTER_LINEAR)


def _sample_crop(padded: np.ndarray, x1: int, y1: int, x2: int, y2: int, dest: np.ndarray) -> None:
    """``cv2.resize(INTER_LINEAR)`` of the zero-padded crop ``[y1:y2, x1:x2]`` into ``dest``
    (float32[S, S, 3]) without making the crop: only the 2 x 2 source pixels of each output
    pixel are read (memory ~ S^2, whatever the box). The same samples as cv2.resize: the
    position clamped to the crop, bilinear weights (here in float64, not float32)."""
    size = dest.shape[0]
    cols, col_w = _linear_taps(x1, x2, size)
    rows, row_w = _linear_taps(y1, y2, size)
    ph, pw = padded.shape[:2]
    inside = ((rows >= 0) & (rows < ph))[:, :, None, None] & ((cols >= 0) & (cols < pw))[None, None]
    taps = padded[np.clip(rows, 0, ph - 1)[:, :, None, None], np.clip(cols, 0, pw - 1)[None, None]]
    taps = np.where(inside[..., None], taps, 0.0)  # (S, 2, S, 2, 3)
    dest[:] = np.einsum("ia,jb,iajbc->ijc", row_w, col_w, taps.astype(np.float64))


def _linear_taps(lo: int, hi: int, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Source indices (int64[S, 2]) and weights (float64[S, 2]) of a linear resize of
    ``[lo, hi)`` to ``size`` samples, clamped to the range as cv2.resize does."""
    u = lo + (np.arange(size) + 0.5) * ((hi - lo) / size) - 0.5
    u = np.clip(u, lo, hi - 1)
    i0 = np.floor(u).astype(np.int64)
    a = u - i0
    return np.stack([i0, np.minimum(i0 + 1, hi - 1)], 1), np.stack([1 - a, a], 1)


def _zero_padded_crop(padded: np.ndarray, x1: int, y1: int, x2: int, y2: int) -> np.ndarray:
    """``padded[y1:y2, x1:x2]`` with zeros wherever the window leaves the array."""
    ph, pw = padded.shape[:2]
    crop = np.zeros((y2 - y1, x2 - x1, 3), dtype=np.float32)
    sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, pw), min(y2, ph)
    if sx1 < sx2 and sy1 < sy2:
        crop[sy1 - y1 : sy2 - y1, sx1 - x1 : sx2 - x1] = padded[sy1:sy2, sx1:sx2]
    return crop


def _warp_roi_align(
    image: np.ndarray,
    rounded: np.ndarray,
    size: int,
    mean: Sequence[float],
    std: Sequence[float],
    dest: torch.Tensor,
) -> torch.Tensor:
    """roi_align(aligned=True, sampling_ratio=1) on a 1-pixel zero-padded normalised image.

    One zero pixel suffices: roi_align returns 0 for samples beyond ``[-1, size]`` and clamps
    those in between to the (now zero) edge row/column.
    """
    device = dest.device
    img = torch.from_numpy(image).to(device).permute(2, 0, 1).float()
    m = torch.tensor(mean, dtype=torch.float32, device=device).view(3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32, device=device).view(3, 1, 1)
    img = torch.nn.functional.pad((img / 255.0 - m) / s, (1, 1, 1, 1))
    rois = torch.zeros((len(rounded), 5), dtype=torch.float32, device=device)
    rois[:, 1:] = torch.from_numpy(rounded.astype(np.float32) + 1.0).to(device)
    crops = roi_align(img[None], rois, (size, size), 1.0, sampling_ratio=1, aligned=True)
    return dest.copy_(crops)


class Regions:
    """The warped crops of one image's boxes, made chunk by chunk as they are iterated.

    Warping every proposal at once would hold N x 3 x S x S floats (570 MB for 945 crops at
    224); iterating yields chunks of at most ``chunk_size`` crops in one reused buffer, so
    memory stays bounded. ``seconds`` accumulates the time spent warping.

    Args:
        image (uint8[H, W, 3]): RGB. boxes (float32[N, 4]): internal xyxy.
        warp: the warp settings. device: where the crops are made. chunk_size: crops per chunk.
    """

    def __init__(
        self,
        image: np.ndarray,
        boxes: np.ndarray,
        warp: WarpSettings,
        *,
        device: str | torch.device,
        chunk_size: int,
    ) -> None:
        self.image = image
        self.boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
        self.warp, self.device, self.chunk_size = warp, torch.device(device), chunk_size
        self.seconds = 0.0

    def __len__(self) -> int:
        return len(self.boxes)

    def __iter__(self) -> Iterator[torch.Tensor]:
        """Tensor[n, 3, S, S] chunks (channels_last, on ``device``), in box order. A chunk is
        overwritten by the next one: score it before asking for more."""
        buffer = None
        for start in range(0, len(self.boxes), self.chunk_size):
            t0 = time.perf_counter()
            chunk = self.boxes[start : start + self.chunk_size]
            crops = warp_regions(self.image, chunk, self.warp, device=self.device, out=buffer)
            buffer = crops if buffer is None else buffer
            self.seconds += time.perf_counter() - t0
            yield crops
