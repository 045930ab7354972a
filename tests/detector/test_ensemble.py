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

from detector.classifier import build_googlenet, checkpoint_metadata, save_checkpoint
from detector.ensemble import Ensemble, resolve_precision
from detector.structures import ClassList
from detector.warp import warp_regions

torch.set_num_threads(1)
S, P, C = 64, 8, 5
IMAGE = data.astronaut()


def _boxes(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    xy = rng.uniform(0, 400, (n, 2))
    return np.concatenate([xy, xy + rng.uniform(20, 200, (n, 2))], 1).astype(np.float32)


CROPS = warp_regions(IMAGE, _boxes(40), size=S, context_pad=P)


def _member(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_googlenet(C)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: statistics of exactly these crops
    model.train()
    with torch.no_grad():
        model(CROPS[:32])
    model.eval()
    with torch.no_grad():
        model.fc.weight *= 2.0 / model(CROPS).std()
    return model


@pytest.fixture(scope="module")
def members() -> list[torch.nn.Module]:
    return [_member(0), _member(1)]


def test_score_is_mean_of_member_softmaxes(members) -> None:
    ens = Ensemble(members, precision="fp32", input_size=S, chunk_size=64)
    with torch.inference_mode():
        expected = sum(m(CROPS).softmax(1) for m in members) / 2
    got = ens.score(CROPS)
    assert got.shape == (len(CROPS), C) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected.numpy(), atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)
    assert got.std(0).max() > 0.01  # the members really discriminate between crops


def test_chunked_equals_unchunked_and_score_image_equals_warp_then_score(members) -> None:
    whole = Ensemble(members, precision="fp32", input_size=S, chunk_size=64, context_pad=P)
    small = Ensemble(members, precision="fp32", input_size=S, chunk_size=7, context_pad=P)
    np.testing.assert_allclose(small.score(CROPS), whole.score(CROPS), atol=1e-5)
    timings: dict[str, float] = {}
    by_image = small.score_image(IMAGE, _boxes(40), timings=timings)
    np.testing.assert_allclose(by_image, whole.score(CROPS), atol=1e-5)
    assert set(timings) == {"warp", "score"} and timings["score"] > 0


def test_bf16_agrees_with_fp32(members) -> None:
    p32 = Ensemble(members, precision="fp32", input_size=S).score(CROPS)
    p16 = Ensemble(members, precision="bf16", input_size=S).score(CROPS)
    assert (p32.argmax(1) == p16.argmax(1)).mean() >= 0.7
    assert np.abs(p32 - p16).mean() < 0.02


def test_int8_after_calibration(members) -> None:
    ens = Ensemble(members, precision="int8", input_size=S, chunk_size=16)
    with pytest.raises(RuntimeError, match="calibrate"):
        ens.score(CROPS)
    ens.calibrate(CROPS)
    probs = ens.score(CROPS[:10])
    assert probs.shape == (10, C)
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    fp32 = Ensemble(members, precision="fp32", input_size=S).score(CROPS[:10])
    assert np.abs(probs - fp32).mean() < 0.1  # experimental: loose, see the module notes


def test_int8_quantizes_every_convolution(members) -> None:
    ens = Ensemble(members[:1], precision="int8", input_size=S, chunk_size=16)
    ens.calibrate(CROPS)
    (model,) = ens._models()
    quantized = [m for m in model.modules() if type(m).__module__.startswith("torch.ao.nn.")]
    assert len(quantized) >= 57  # GoogLeNet's 57 convolutions (BN and ReLU fused in) at least


def test_empty_inputs(members) -> None:
    ens = Ensemble(members, precision="fp32", input_size=S)
    assert ens.score(CROPS[:0]).shape == (0, C)
    assert ens.score_image(IMAGE, np.zeros((0, 4), np.float32)).shape == (0, C)


def test_concurrent_scoring_is_consistent(members) -> None:
    ens = Ensemble(members, precision="fp32", input_size=S, chunk_size=8, context_pad=P)
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


def test_from_checkpoints_uses_metadata(tmp_path, members) -> None:
    classes = ClassList([f"n{i}" for i in range(C - 1)], [f"c{i}" for i in range(C - 1)])
    paths = [
        save_checkpoint(
            tmp_path / f"member_{i}.safetensors",
            m,
            checkpoint_metadata(classes, input_size=S, context_pad=P, member=i),
        )
        for i, m in enumerate(members)
    ]
    ens = Ensemble.from_checkpoints(paths, precision="fp32", chunk_size=16)
    assert (ens.input_size, ens.context_pad, len(ens)) == (S, P, 2)
    expected = Ensemble(members, precision="fp32", input_size=S).score(CROPS)
    np.testing.assert_allclose(ens.score_image(IMAGE, _boxes(40)), expected, atol=1e-5)


def test_bad_settings() -> None:
    with pytest.raises(ValueError, match="precision"):
        resolve_precision("fp16", torch.device("cpu"))
    with pytest.raises(ValueError, match="at least one member"):
        Ensemble([])
    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")


@pytest.mark.slow  # compiling one GoogLeNet: ~40 s on 2 cores
def test_compiled_matches_eager(members) -> None:
    eager = Ensemble(members[:1], precision="fp32", input_size=S, chunk_size=8)
    compiled = Ensemble(members[:1], precision="fp32", input_size=S, chunk_size=8, compile=True)
    np.testing.assert_allclose(compiled.score(CROPS[:11]), eager.score(CROPS[:11]), atol=1e-4)
