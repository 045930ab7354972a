"""Ensemble scoring: softmax averaging, chunking, warping, precisions, empty input.

Members are small real GoogLeNets at 64 x 64 whose batch-norm statistics are set on real
crops (a freshly initialised GoogLeNet in eval mode outputs constant logits, which would make
every comparison vacuous) and whose logits are scaled to a spread of about 2.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from skimage import data

from detector.build import load_ensemble
from detector.classifier import checkpoint_metadata, save_checkpoint
from detector.core.config import Config
from detector.core.devices import resolve_precision
from detector.core.structures import ClassList
from detector.ensemble import Ensemble
from detector.warp import WarpSettings, warp_regions
from tests.conftest import calibrated_member

torch.set_num_threads(1)
S, P, C = 64, 8, 5
WARP = WarpSettings(size=S, context_pad=P, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
IMAGE = data.astronaut()


def make(
    members,
    *,
    precision: str = "fp32",
    chunk_size: int = 128,
    compile: bool = False,
    cascade: float = 0.0,
    backend: str = "torch",
):
    return Ensemble(
        members,
        warp=WARP,
        device="cpu",
        precision=precision,
        chunk_size=chunk_size,
        compile=compile,
        cascade_threshold=cascade,
        backend=backend,
    )


def _boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 400, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(20, 200, (n, 2))], 1).astype(np.float32)


CROPS = warp_regions(IMAGE, _boxes(40), WARP)


def _member(seed: int) -> torch.nn.Module:
    return calibrated_member(seed, C, CROPS)


@pytest.fixture(scope="module")
def members() -> list[torch.nn.Module]:
    return [_member(0), _member(1)]


def test_score_is_mean_of_member_softmaxes(members) -> None:
    ens = make(members, precision="fp32", chunk_size=64)
    with torch.inference_mode():
        expected = sum(m(CROPS).softmax(1) for m in members) / 2
    got = ens.score(CROPS)
    assert got.shape == (len(CROPS), C) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    assert got.std(0).max() > 0.01  # the members really discriminate between crops


def test_chunked_equals_unchunked_and_score_image_equals_warp_then_score(members) -> None:
    whole = make(members, precision="fp32", chunk_size=64)
    small = make(members, precision="fp32", chunk_size=7)
    np.testing.assert_allclose(small.score(CROPS), whole.score(CROPS), atol=1e-5)
    timings: dict[str, float] = {}
    by_image = small.score_image(IMAGE, _boxes(40), timings=timings)
    np.testing.assert_allclose(by_image, whole.score(CROPS), atol=1e-5)
    assert set(timings) == {"warp", "score"} and timings["score"] > 0


def test_bf16_agrees_with_fp32(members) -> None:
    p32 = make(members, precision="fp32").score(CROPS)
    p16 = make(members, precision="bf16").score(CROPS)
    assert (p32.argmax(1) == p16.argmax(1)).mean() >= 0.7
    assert np.abs(p32 - p16).mean() < 0.02


def test_int8_after_calibration(members) -> None:
    ens = make(members, precision="int8", chunk_size=16)
    with pytest.raises(RuntimeError, match="calibrate"):
        ens.score(CROPS)
    ens.calibrate(CROPS)
    probs = ens.score(CROPS[:10])
    assert probs.shape == (10, C)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    fp32 = make(members, precision="fp32").score(CROPS[:10])
    assert np.abs(probs - fp32).mean() < 0.1  # experimental: loose, see the module notes


def test_int8_quantizes_every_convolution(members) -> None:
    ens = make(members[:1], precision="int8", chunk_size=16)
    ens.calibrate(CROPS)
    (model,) = ens._models()
    quantized = [m for m in model.modules() if type(m).__module__.startswith("torch.ao.nn.")]
    assert len(quantized) >= 57  # GoogLeNet's 57 convolutions (BN and ReLU fused in) at least


def test_empty_inputs(members) -> None:
    ens = make(members, precision="fp32")
    assert ens.score(CROPS[:0]).shape == (0, C)
    assert ens.score_image(IMAGE, np.zeros((0, 4), np.float32)).shape == (0, C)


def test_concurrent_scoring_is_consistent(members) -> None:
    ens = make(members, precision="fp32", chunk_size=8)
    expected = ens.score(CROPS)
    results: list[np.ndarray] = []
    threads = [
        threading.Thread(target=lambda: results.append(ens.score_image(IMAGE, _boxes(40))))
        for _ in range(2)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results:
        np.testing.assert_allclose(r, expected, atol=1e-5)


def test_load_ensemble_takes_the_warp_from_the_checkpoints(tmp_path, members) -> None:
    classes = ClassList([f"n{i}" for i in range(C - 1)], [f"c{i}" for i in range(C - 1)])
    for i, m in enumerate(members):
        meta = checkpoint_metadata(classes, WARP, config_digest="t", member=i, seed=i)
        save_checkpoint(tmp_path / f"member_{i}.safetensors", m, meta)
    cfg = Config()  # model.input_size 224, context_pad 16: the checkpoints say 64 and 8
    cfg.model.checkpoint_dir, cfg.model.members = str(tmp_path), 2
    cfg.inference.precision, cfg.inference.chunk_size = "fp32", 16
    ens, meta = load_ensemble(cfg.model, cfg.inference, "cpu")
    assert ens.warp == WARP and len(ens) == 2 and meta["num_outputs"] == C
    assert ens.cascade_threshold == cfg.inference.cascade_threshold and ens.backend == "torch"
    expected = make(members, cascade=cfg.inference.cascade_threshold).score(CROPS)
    np.testing.assert_allclose(ens.score_image(IMAGE, _boxes(40)), expected, atol=1e-5)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="at least one member"):
        make([])
    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")


@pytest.mark.slow  # compiling one GoogLeNet: ~40 s on 2 cores
def test_compiled_matches_eager(members) -> None:
    eager = make(members[:1], precision="fp32", chunk_size=8)
    compiled = make(members[:1], precision="fp32", chunk_size=8, compile=True)
    np.testing.assert_allclose(compiled.score(CROPS[:11]), eager.score(CROPS[:11]), atol=1e-4)


def test_cascade_off_or_passing_every_crop_is_the_full_ensemble_exactly(members) -> None:
    ensemble = make(members)
    full = ensemble.score(CROPS)
    assert ensemble.counts.share_to_rest == 1.0 and ensemble.counts.crops == len(CROPS)
    np.testing.assert_array_equal(make(members, cascade=0.0).score(CROPS), full)
    np.testing.assert_array_equal(make(members, cascade=1e-12).score(CROPS), full)


def test_cascade_sends_only_foreground_crops_on_to_members_1_and_up(members) -> None:
    full = make(members).score(CROPS)
    first = make(members[:1]).score(CROPS)  # member 0 alone
    foreground = 1 - first[:, 0]
    threshold = float(np.median(foreground))
    cascade = make(members, cascade=threshold)
    got = cascade.score(CROPS)
    passed = foreground >= threshold
    assert 0 < passed.sum() < len(CROPS)
    assert (cascade.counts.crops, cascade.counts.to_rest) == (len(CROPS), passed.sum())
    np.testing.assert_allclose(got[passed], full[passed], atol=1e-6)
    np.testing.assert_array_equal(got[~passed], first[~passed])  # member 0's own
    # with the heads' features too: the same probabilities
    probs, _ = make(members, cascade=threshold).score_and_features(CROPS)
    np.testing.assert_allclose(probs, got, atol=1e-6)


def test_cascade_settings_that_cannot_work_are_refused(members) -> None:
    with pytest.raises(ValueError, match="compile=false"):
        make(members, compile=True, cascade=0.05)
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        make(members, cascade=1.5)
