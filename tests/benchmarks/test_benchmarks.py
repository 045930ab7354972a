"""The benchmark command runs end to end (tiny sizes) and writes every figure; the roofline
helpers count and measure what they claim.

No speed is asserted. What is: every section is in the JSON, every figure was measured
(finite, and positive where it is a time, a rate or a count), figures measured independently
agree with each other (stage times vs the wall time around them, the ensemble vs one member,
selective search alone vs inside the detector), and the paths compute the same thing
(pipelined vs serial detections, every box scored, the fast paths against fp32).
"""

from __future__ import annotations

import copy
import inspect
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

import benchmarks.sections as bench
from benchmarks.roofline import crop_gflop, matmul_peaks
from benchmarks.run import get_args_parser, main
from detector.build import warp_settings
from detector.core.config import Config
from detector.core.devices import cpu_supports_bf16
from detector.core.runtime import available_cores

SECTIONS = (
    "scoring",
    "selective_search",
    "end_to_end",
    "load",
    "memory",
    "accuracy",
)  # levers: in end_to_end
STAGES = {"load", "propose", "warp", "score", "nms"}
GOOGLENET_GFLOP_224 = 3.0  # 1.5 G multiply-adds a 224 x 224 crop

_random_member = bench.random_member


def confident_member(seed: int) -> nn.Module:
    """``random_member`` (the same work per crop) with He-initialised convolutions: the
    benchmark's std-0.01 ones shrink the features to ~1e-10, so every crop would get the
    same near-uniform softmax and no detection; these give ~20 classes above 0.01 a box."""
    model = _random_member(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
    return model


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench, "random_member", confident_member)
        assert main(["--quick", "--output", str(out)]) == 0
    assert [p.name for p in out.parent.iterdir()] == ["bench.json"]  # no temporary file left
    return json.loads(out.read_text())


def numbers(tree, path: str = ""):
    """(path, value) of every number in a JSON tree (booleans excluded)."""
    if isinstance(tree, dict):
        for k, v in tree.items():
            yield from numbers(v, f"{path}/{k}")
    elif isinstance(tree, list):
        for i, v in enumerate(tree):
            yield from numbers(v, f"{path}/{i}")
    elif isinstance(tree, int | float) and not isinstance(tree, bool):
        yield path, tree


def test_crop_gflop_counts_multiply_adds_twice():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten())
    # 2 x (8 output channels x 16 x 16 positions x 3 x 3 x 3 taps)
    assert crop_gflop(model, 16) == 2 * 8 * 16 * 16 * 27 / 1e9


def test_matmul_peaks_are_positive_per_format():
    peaks = matmul_peaks(n=128, repeats=1)
    assert {"fp32", "bf16"} <= set(peaks)
    assert all(v > 0 and math.isfinite(v) for v in peaks.values())


def test_report_has_every_section_and_finite_figures(report):
    assert set(SECTIONS) <= set(report)
    assert report["accuracy"] == {"skipped": "--quick"}
    found = dict(numbers(report))
    assert len(found) > 50
    bad = {p: v for p, v in found.items() if not math.isfinite(v) or v < 0}
    assert not bad, bad
    assert report["peak_rss_mb"] > 0


def test_scoring_measured_every_path(report):
    s = report["scoring"]
    expected = {"eager fp32 NCHW (torchvision)", "fp32 channels_last", "int8 FX x86 channels_last"}
    if cpu_supports_bf16():
        expected.add("bf16 channels_last")
    assert set(s["per_model"]) == expected
    assert s["crops"] == 16
    # FlopCounterMode on GoogLeNet at S = 64: about (64 / 224)^2 of its 3.0 GFLOP at 224
    assert s["gflop_per_crop"] == pytest.approx(GOOGLENET_GFLOP_224 * (64 / 224) ** 2, rel=0.2)
    assert {"fp32", "bf16"} <= set(s["matmul_peak_gflop_per_s"])
    assert {"fp32", "bf16"} <= set(s["conv3x3_peak_gflop_per_s"])
    for fmt, matmul in s["matmul_peak_gflop_per_s"].items():  # "of peak": the larger reference
        assert s["peak_gflop_per_s"][fmt] == max(matmul, s["conv3x3_peak_gflop_per_s"].get(fmt, 0))
    for row in s["per_model"].values():
        assert row["crops_per_s"] > 0 and row["gflop_per_s"] > 0 and row["fraction_of_peak"] > 0
    assert "int8 FX x86 channels_last" in s["setup_seconds"]  # quantizing takes over a second
    # the ensemble (2 members, default path) is timed apart from its single-member path:
    # per member it must run at about that path's rate (not 2x faster, nor 1 member of 2)
    e = s["ensemble"]
    assert e["members"] == 2 and e["compiled"] is False
    one = s["per_model"][f"{e['precision']} channels_last"]["crops_per_s"]
    assert 0.25 < e["crops_per_s"] * e["members"] / one < 4


def test_selective_search_agrees_with_the_detector_proposals(report):
    ss = report["selective_search"]
    assert ss["boxes_per_image"] > 0 and ss["serial_s_per_image"] > 0
    assert ss["pool_s_per_image"] > 0 and ss["pool_workers"] == available_cores()
    # the same photo and settings through the detector's proposer: selective search's
    # boxes plus at most top_k MultiBox boxes
    top_k = report["settings"]["multibox_top_k"]
    levers = report["end_to_end"]["levers"]["rows"].values()
    for e2e in [report["end_to_end"]["default"], *levers]:
        assert ss["boxes_per_image"] <= e2e["proposals_per_image"]
        assert e2e["proposals_per_image"] <= ss["boxes_per_image"] + top_k


def test_end_to_end_stages_account_for_the_wall_time(report):
    assert set(report["end_to_end"]) == {"default", "levers"}
    e2e = report["end_to_end"]["default"]
    assert e2e["precision"] == ("bf16" if cpu_supports_bf16() else "fp32")
    stages = e2e["stages_s"]
    assert set(stages) == STAGES  # "score" is the CNNs alone; there is no "cnn" any more
    assert min(stages[k] for k in ("propose", "warp", "score")) > 0
    # the stages are consecutive laps inside each timed detection: their sum is the serial
    # wall time less the call overhead (a stage counted twice, e.g. the warp inside
    # "score" and again on its own, or one left out would break this)
    serial = e2e["serial_s_per_image"]
    assert 0.8 * serial <= sum(stages.values()) <= serial * (1 + 1e-9)
    assert e2e["pipelined_s_per_image"] > 0
    assert isinstance(e2e["detect_many_pipelines_here"], bool)


def test_levers_each_time_the_paper_configuration_with_their_settings(report):
    levers = report["end_to_end"]["levers"]
    rows = levers["rows"]
    default = rows["current default (detector.run)"]
    assert default["overrides"] == [] and default["precision"] == "int8"  # a list at hand
    baseline = rows["bf16, every member on every crop"]
    assert baseline["precision"] == "bf16" and baseline["share_to_rest"] == 1.0
    for name, row in rows.items():
        assert row["s_per_image"] > 0 and row["setup_s"] > 0, name
        assert 0 <= row["share_to_rest"] <= 1 and 0 < row["fraction_of_peak"] < 2, name
        if "inference.cascade_threshold=0" in row["overrides"]:
            assert row["share_to_rest"] == 1.0, name  # every crop reached members 1..
        # dedup scores at most as many crops as there are proposals; the others all of them
        dedup = any("dedup_iou" in o for o in row["overrides"])
        scored, proposed = row["crops_scored_per_image"], row["proposals_per_image"]
        assert (scored <= proposed) if dedup else (scored == proposed), name
        assert "demo_val_map" not in row  # --quick: no eval.map runs
    assert rows["OpenVINO int8"]["backend"] == "openvino"
    for ref in ("matmul", "conv3x3"):
        assert set(levers[ref]) >= {"fp32", "bf16"} and min(levers[ref].values()) > 0
    assert all(levers["peak"][k] >= levers["matmul"][k] for k in levers["matmul"])


def test_load_times_every_path_idle_and_loaded(report):
    load = report["load"]
    assert load["threads"] == sorted({1, available_cores()})
    expected = {
        f"{path}, {n} thread{'s' if n > 1 else ''}"
        for path in ("torch bf16", "torch int8 FX", "OpenVINO bf16", "OpenVINO int8")
        for n in load["threads"]
    }
    assert set(load["idle"]) == set(load["loaded"]) == expected
    assert min(load["idle"].values()) > 0 and min(load["loaded"].values()) > 0


def test_pipelined_detections_equal_serial(report):
    e2e = report["end_to_end"]["default"]
    serial, piped = e2e["per_image"]["serial"], e2e["per_image"]["pipelined"]
    assert piped == serial
    assert sum(serial["detections"]) > 0  # something to compare
    assert np.mean(serial["proposals"]) == e2e["proposals_per_image"]
    assert e2e["pipelined_matches_serial"] is True  # boxes, classes and scores too


def test_memory_children_score_every_box(report):
    m = report["memory"]
    assert set(m) == {"16", "64"}
    for n, r in m.items():
        assert r["scored"] == [int(n), bench.NUM_OUTPUTS]  # each fresh process scored them all
        # in MB (getrusage reports KiB): torch and two GoogLeNets take a few hundred
        assert 100 < r["after_load_mb"] <= r["peak_mb"] < 16_000


def test_accuracy_is_skipped_without_demo_models(monkeypatch, capsys):
    import detector.demo

    monkeypatch.setattr(detector.demo, "models_are_built", lambda cfg: False)
    args = get_args_parser().parse_args([])
    assert bench.bench_accuracy(args) == {
        "skipped": "demo models not built: python -m detector.demo --build-only"
    }
    assert "accuracy: skipped (demo models not built" in capsys.readouterr().out


def stand_in_demo(root: Path) -> Config:
    """A resolved demo config whose models are one random member (the demo's warp, S = 64,
    He-initialised as in :func:`confident_member`) and whose val split is two small photos;
    no MultiBox, no proposal cache."""
    from PIL import Image

    from detector.classifier import build_googlenet, checkpoint_metadata, save_checkpoint
    from detector.core.config import load_config
    from detector.datasets import default_classes

    cfg = load_config("demo")
    val = root / "Data" / "DET" / "val"
    val.mkdir(parents=True)
    for name, photo in zip(("a", "b"), bench.load_photos(("astronaut", "coffee")), strict=True):
        Image.fromarray(photo[::3, ::3]).save(val / f"{name}.JPEG")
    torch.manual_seed(0)
    member = build_googlenet(bench.NUM_OUTPUTS)
    with torch.no_grad():
        for m in member.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        member.fc.weight.mul_(3.0)  # top scores ~0.2: detections above the 0.1 compared
    warp = warp_settings(cfg.model)
    meta = checkpoint_metadata(default_classes(), warp, config_digest="", member=0, seed=0)
    path = save_checkpoint(root / "member_0.safetensors", member, meta)
    cfg.data.root = str(root)
    cfg.model.checkpoints, cfg.model.checkpoint_dir, cfg.model.members = [str(path)], "", 1
    cfg.proposals.multibox.enabled = False
    cfg.proposals.selective_search.resize_width = 80
    cfg.proposals.selective_search.cache_dir = "none"
    cfg.inference.device = "cpu"
    return cfg


def test_accuracy_compares_the_fast_paths_with_fp32(monkeypatch, tmp_path, capsys):
    import detector.demo
    import detector.resolve

    cfg = stand_in_demo(tmp_path)
    monkeypatch.setattr(detector.demo, "models_are_built", lambda c: True)
    real = detector.resolve.resolve_config

    def resolved(*args, **kwargs):
        inspect.signature(real).bind(*args, **kwargs)  # called as the real one takes it
        assert args[0].source.endswith("demo.yaml") and kwargs.get("device") == "cpu"
        return copy.deepcopy(cfg)

    monkeypatch.setattr(detector.resolve, "resolve_config", resolved)
    args = get_args_parser().parse_args(["--accuracy-images", "2", "--chunk", "32"])
    res = bench.bench_accuracy(args)
    bf16 = {"bf16", "openvino bf16"} if cpu_supports_bf16() else set()
    assert set(res) == {"int8", "openvino int8"} | bf16
    for precision, r in res.items():
        # the path really ran in its own number format (not fp32 again), and close to fp32
        assert 0 < r["max_prob_diff"] < 0.2, precision
        assert 0.5 <= r["top1_agreement"] <= 1 and 0.5 <= r["detection_agreement"] <= 1
    assert (
        "accuracy against fp32: trained demo models, 2 demo val images" in capsys.readouterr().out
    )


torch.set_num_threads(1)
