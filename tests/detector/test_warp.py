"""warp_regions against straightforward per-crop numpy references on real photographs.

Tolerance: the references work in float64 from the same normalised image; OpenCV computes
sample positions and bilinear weights in float32, so values (|v| <= 2.7 after normalisation)
agree to ~1e-5. 1e-4 leaves margin while still catching any half-pixel shift (which moves
values by ~0.1 on these photos).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage import data

from detector.core.config import IMAGENET_MEAN, IMAGENET_STD
from detector.warp import (
    WarpSettings,
    context_boxes,
    normalise_image,
    rounded_context_boxes,
    warp_regions,
)

TOL = 1e-4
S = 48
P = 6
WARP = WarpSettings(size=S, context_pad=P, mean=IMAGENET_MEAN, std=IMAGENET_STD)


def _axis_samples(lo: int, hi: int, size: int, clamp: bool) -> tuple[np.ndarray, np.ndarray]:
    """Source pixel indices (int64[S, 2]) and weights (float64[S, 2]) along one axis."""
    u = lo + (np.arange(size) + 0.5) * (hi - lo) / size - 0.5
    if clamp:  # crop-then-resize: samples stay on the crop's own pixels
        u = np.clip(u, lo, hi - 1)
    i0 = np.floor(u).astype(np.int64)
    a = u - i0
    return np.stack([i0, i0 + 1], 1), np.stack([1 - a, a], 1)


def _reference(
    image: np.ndarray, boxes: np.ndarray, size: int, pad: int, clamp: bool
) -> np.ndarray:
    """Bilinear sample of every output pixel centre; zero outside the image. float64[N,S,S,3]."""
    norm = normalise_image(image, IMAGENET_MEAN, IMAGENET_STD).astype(np.float64)
    h, w = norm.shape[:2]
    out = np.zeros((len(boxes), size, size, 3))
    for n, (x1, y1, x2, y2) in enumerate(rounded_context_boxes(boxes, size=size, context_pad=pad)):
        xi, xw = _axis_samples(x1, x2, size, clamp)
        yi, yw = _axis_samples(y1, y2, size, clamp)
        for dy in range(2):
            for dx in range(2):
                ys, xs = yi[:, dy], xi[:, dx]
                inside = ((ys >= 0) & (ys < h))[:, None] & ((xs >= 0) & (xs < w))[None, :]
                vals = norm[np.clip(ys, 0, h - 1)][:, np.clip(xs, 0, w - 1)]
                vals = vals * inside[..., None]
                out[n] += vals * (yw[:, dy, None, None] * xw[None, :, dx, None])
    return out


def _boxes(w: int, h: int) -> np.ndarray:
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, [w - 20, h - 20], (12, 2))
    wh = rng.uniform(5, [w / 2, h / 2], (12, 2))
    inside = np.concatenate([xy, np.minimum(xy + wh, [w, h])], 1)
    special = [
        [0, 0, w, h],  # whole image: the context reaches outside on every side
        [-40.3, -10.7, 60.2, 80.9],  # partly outside, fractional
        [w - 30.5, h - 50.5, w + 25.0, h + 5.0],  # partly outside, bottom right
        [10.2, 10.2, 10.2, 10.2],  # degenerate: zero size
        [5.0, 7.0, 5.6, 7.3],  # sub-pixel
        [w + 100, h + 100, w + 150, h + 160],  # entirely outside
        [-3 * w, -2 * h, 4 * w, 3 * h],  # far larger than the image (copied crop path)
    ]
    return np.concatenate([inside, special]).astype(np.float32)


@pytest.mark.parametrize("name", ["astronaut", "coffee"])
def test_resize_method_matches_crop_then_resize_reference(name: str) -> None:
    image = getattr(data, name)()
    boxes = _boxes(image.shape[1], image.shape[0])
    crops = warp_regions(image, boxes, WARP)
    assert crops.shape == (len(boxes), 3, S, S) and crops.dtype == torch.float32
    assert crops.is_contiguous(memory_format=torch.channels_last)
    ref = _reference(image, boxes, S, P, clamp=True)
    got = crops.permute(0, 2, 3, 1).numpy()
    assert np.abs(got - ref).max() < TOL
    assert np.all(got[-2] == 0)  # the box entirely outside the image is all mean


def test_roi_align_method_matches_zero_padded_bilinear_reference() -> None:
    image = data.astronaut()
    boxes = _boxes(image.shape[1], image.shape[0])
    crops = warp_regions(image, boxes, WARP, method="roi_align")
    assert crops.is_contiguous(memory_format=torch.channels_last)
    ref = _reference(image, boxes, S, P, clamp=False)
    assert np.abs(crops.permute(0, 2, 3, 1).numpy() - ref).max() < TOL


def test_methods_agree_away_from_upsampled_crop_borders() -> None:
    image = data.chelsea()
    boxes = _boxes(image.shape[1], image.shape[0])
    a = warp_regions(image, boxes, WARP)
    b = warp_regions(image, boxes, WARP, method="roi_align")
    for n, (x1, y1, x2, y2) in enumerate(rounded_context_boxes(boxes, size=S, context_pad=P)):
        bx, by = int(np.ceil(S / (2 * (x2 - x1)))), int(np.ceil(S / (2 * (y2 - y1))))
        inner = (a[n] - b[n])[:, by : S - by, bx : S - bx]
        assert inner.numel() == 0 or inner.abs().max() < TOL


def test_context_boxes_hand_computed() -> None:
    # S / (S - 2p) = 224 / 192 = 7/6 about the centre (20, 30) of a 20 x 40 box.
    got = context_boxes(np.array([[10, 10, 30, 50]], np.float32), size=224, context_pad=16)
    np.testing.assert_allclose(got, [[20 - 70 / 6, 30 - 140 / 6, 20 + 70 / 6, 30 + 140 / 6]])
    assert context_boxes(np.zeros((0, 4), np.float32), size=224, context_pad=16).shape == (0, 4)
    with pytest.raises(ValueError, match="context pad"):
        context_boxes(np.zeros((1, 4), np.float32), size=32, context_pad=16)


def test_constant_image_half_outside_is_half_mean() -> None:
    image = np.full((40, 40, 3), 255, np.uint8)
    # context pad 0: the crop is exactly the box; its left half lies outside the image.
    crops = warp_regions(
        image,
        np.array([[-20, 0, 20, 40]], np.float32),
        WarpSettings(size=8, context_pad=0, mean=IMAGENET_MEAN, std=IMAGENET_STD),
    )
    inside = (1.0 - np.array([0.485, 0.456, 0.406])) / np.array([0.229, 0.224, 0.225])
    np.testing.assert_allclose(
        crops[0, :, :, 4:].numpy(), np.broadcast_to(inside[:, None, None], (3, 8, 4)), rtol=1e-6
    )
    assert torch.all(crops[0, :, :, :4] == 0)


def test_empty_boxes_and_reused_buffer() -> None:
    image = data.astronaut()
    assert warp_regions(image, np.zeros((0, 4), np.float32), WARP).shape == (0, 3, S, S)
    buffer = torch.empty((5, 3, S, S)).contiguous(memory_format=torch.channels_last)
    boxes = np.array([[10, 10, 100, 100], [50, 60, 200, 220]], np.float32)
    got = warp_regions(image, boxes, WARP, out=buffer)
    assert got.data_ptr() == buffer.data_ptr() and got.shape == (2, 3, S, S)
    torch.testing.assert_close(got, warp_regions(image, boxes, WARP))


def test_bad_inputs_fail_clearly() -> None:
    with pytest.raises(ValueError, match="uint8"):
        warp_regions(np.zeros((10, 10), np.uint8), np.zeros((1, 4), np.float32), WARP)
    with pytest.raises(ValueError, match="channels_last"):
        warp_regions(
            np.zeros((10, 10, 3), np.uint8),
            np.zeros((1, 4), np.float32),
            WarpSettings(size=8, context_pad=0, mean=IMAGENET_MEAN, std=IMAGENET_STD),
            out=torch.empty((1, 3, 8, 8)),
        )
    with pytest.raises(ValueError, match="method"):
        warp_regions(
            np.zeros((10, 10, 3), np.uint8), np.zeros((1, 4), np.float32), WARP, method="x"
        )


def test_huge_boxes_never_make_the_warp_allocate_beyond_the_image() -> None:
    """A +-1e7 box (from a tampered cache entry, say) once asked for a 4.8 PB crop."""
    import tracemalloc

    image = np.ascontiguousarray(data.astronaut()[::4, ::4])  # 128 x 128
    boxes = np.array(
        [[-1e7, -1e7, 1e7, 1e7], [0, 0, 1e7, 5], [-1e7, 10, 50, 60], [1e7, 1e7, 1.1e7, 1.2e7]],
        np.float32,
    )
    tracemalloc.start()
    try:
        crops = warp_regions(image, boxes, WARP)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 * 4 * image.size + 10 * S * S * 3 * 4 * len(boxes)  # ~ the float image
    ref = _reference(image, boxes, S, P, clamp=True)
    assert np.abs(crops.permute(0, 2, 3, 1).numpy() - ref).max() < TOL
    assert np.all(crops[-1].numpy() == 0)


def test_non_finite_boxes_are_refused() -> None:
    image = np.zeros((10, 10, 3), np.uint8)
    for bad in (np.nan, np.inf, -np.inf):
        with pytest.raises(ValueError, match="finite"):
            warp_regions(image, np.array([[0, 0, bad, 5]], np.float32), WARP)


def test_sampled_crop_equals_cv2_resize_of_the_crop() -> None:
    """The path for crops larger than the image reads the same samples as cv2.resize."""
    import cv2

    from detector.warp import _sample_crop, _zero_padded_crop

    norm = normalise_image(data.coffee()[::3, ::3], IMAGENET_MEAN, IMAGENET_STD, pad=3)
    for x1, y1, x2, y2 in [(-50, -20, 300, 190), (10, 5, 40, 17), (0, 0, 7, 300), (-9, 3, 2, 4)]:
        want = cv2.resize(
            _zero_padded_crop(norm, x1, y1, x2, y2), (S, S), interpolation=cv2.INTER_LINEAR
        )
        got = np.empty((S, S, 3), np.float32)
        _sample_crop(norm, x1, y1, x2, y2, got)
        assert np.abs(got - want).max() < 1e-5
