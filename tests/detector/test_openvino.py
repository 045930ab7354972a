"""The OpenVINO backend (``inference.backend=openvino``) against torch fp32 on a trained tiny
GoogLeNet: fp32, bf16 and int8 scores, the on-disk cache, the cascade's varying batch sizes."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from skimage import data

from detector.classifier import build_googlenet
from detector.ensemble import Ensemble
from detector.openvino_members import cache_dir, member_digest
from detector.warp import WarpSettings, warp_regions

pytest.importorskip("openvino", reason="the openvino extra is not installed")

S, C = 32, 4
WARP = WarpSettings(size=S, context_pad=4, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
IMAGE = data.astronaut()


def _boxes(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 400, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(20, 110, (n, 2))], 1).astype(np.float32)


CROPS = warp_regions(IMAGE, _boxes(96, 0), WARP)


def _labels(crops: torch.Tensor) -> torch.Tensor:
    """A learnable target: background for dark crops, else the crop's strongest channel."""
    mean = crops.mean(dim=(2, 3))
    return torch.where(mean.mean(1) < -0.3, 0, mean.argmax(1) + 1)


@pytest.fixture(scope="module")
def trained() -> list[torch.nn.Module]:
    """Two tiny GoogLeNets trained for a few dozen steps on warped crops of a real photo."""
    members = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        model = build_googlenet(C)
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.momentum = None  # cumulative: eval mode sees these crops' statistics
        opt = torch.optim.Adam(model.parameters(), lr=1e-3)
        target = _labels(CROPS)
        with torch.enable_grad():
            for _ in range(30):
                loss = torch.nn.functional.cross_entropy(model(CROPS), target)
                opt.zero_grad()
                loss.backward()
                opt.step()
        members.append(model.eval())
    return members


@pytest.fixture(scope="module", autouse=True)
def cache(tmp_path_factory):
    """One cache for the module: each member is converted once, then read back."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("INCEPTION_RCNN_CACHE", str(tmp_path_factory.mktemp("cache")))
        yield cache_dir()


def make(members, backend: str, precision: str, cascade: float = 0.0) -> Ensemble:
    return Ensemble(
        members,
        warp=WARP,
        device="cpu",
        precision=precision,
        chunk_size=32,
        compile=False,
        cascade_threshold=cascade,
        backend=backend,
    )


def test_the_trained_members_are_not_constant(trained) -> None:
    probs = make(trained, "torch", "fp32").score(CROPS)
    assert probs.std(0).max() > 0.05 and len(set(probs.argmax(1).tolist())) >= 2


def test_fp32_and_bf16_match_torch_fp32(trained, cache) -> None:
    reference = make(trained, "torch", "fp32").score(CROPS)
    fp32 = make(trained, "openvino", "fp32").score(CROPS)
    assert np.abs(fp32 - reference).max() < 1e-4
    bf16 = make(trained, "openvino", "bf16").score(CROPS)
    assert np.abs(bf16 - reference).max() < 0.05
    assert (bf16.argmax(1) == reference.argmax(1)).mean() >= 0.9
    assert len(list(cache.glob("*-float.xml"))) == 2  # one IR per member, shared by both


def test_int8_is_calibrated_close_to_fp32_and_cached(trained, cache) -> None:
    reference = make(trained, "torch", "fp32").score(CROPS)
    ens = make(trained, "openvino", "int8")
    with pytest.raises(RuntimeError, match="calibrate"):
        ens.score(CROPS)
    ens.calibrate(CROPS[:64])
    int8 = ens.score(CROPS)
    np.testing.assert_allclose(int8.sum(1), 1.0, atol=1e-5)
    assert np.abs(int8 - reference).mean() < 0.03
    assert (int8.argmax(1) == reference.argmax(1)).mean() >= 0.85
    written = {p: p.stat().st_mtime_ns for p in cache.glob("*-int8.*")}
    assert len(written) == 4  # .xml + .bin per member
    again = make(trained, "openvino", "int8")
    again.calibrate(CROPS[:64])  # the same weights and crops: read back, not re-quantized
    np.testing.assert_array_equal(again.score(CROPS), int8)
    assert {p: p.stat().st_mtime_ns for p in cache.glob("*-int8.*")} == written


def test_the_cache_key_follows_the_weights_size_and_crops(trained) -> None:
    a, b = trained
    assert member_digest(a, S, None) == member_digest(a, S, None)
    assert member_digest(a, S, None) != member_digest(b, S, None)
    assert member_digest(a, S, None) != member_digest(a, 64, None)
    assert member_digest(a, S, CROPS[:8]) != member_digest(a, S, CROPS[8:16])


def test_the_cascade_runs_on_varying_subsets(trained) -> None:
    reference = make(trained, "torch", "fp32", cascade=0.5).score(CROPS)
    cascade = make(trained, "openvino", "fp32", cascade=0.5).score(CROPS)
    assert np.abs(cascade - reference).max() < 1e-4


def test_concurrent_scoring_is_consistent(trained) -> None:
    ens = make(trained, "openvino", "fp32")
    expected = ens.score(CROPS)
    results: list[np.ndarray] = []
    threads = [threading.Thread(target=lambda: results.append(ens.score(CROPS))) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 3 and all(np.array_equal(r, expected) for r in results)


def test_settings_that_cannot_work_are_refused(trained) -> None:
    with pytest.raises(ValueError, match="unknown inference.backend"):
        make(trained, "tensorrt", "fp32")
    with pytest.raises(ValueError, match="uncompiled"):
        Ensemble(trained, warp=WARP, device="cpu", precision="fp32", chunk_size=8,
                 compile=True, cascade_threshold=0.0, backend="openvino")  # fmt: skip
