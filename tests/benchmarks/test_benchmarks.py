"""The benchmark command runs end to end (tiny sizes) and writes every figure; the roofline
helpers count and measure what they claim. No timing is asserted."""

from __future__ import annotations

import json

import torch
from torch import nn

from benchmarks.roofline import crop_gflop, matmul_peaks
from benchmarks.run import main


def test_crop_gflop_counts_multiply_adds_twice():
    model = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.Flatten())
    # 2 x (8 output channels x 16 x 16 positions x 3 x 3 x 3 taps)
    assert crop_gflop(model, 16) == 2 * 8 * 16 * 16 * 27 / 1e9


def test_matmul_peaks_are_positive_per_format():
    peaks = matmul_peaks(n=128, repeats=1)
    assert {"fp32", "bf16"} <= set(peaks)
    assert all(v > 0 for v in peaks.values())


def test_quick_run_writes_every_section(tmp_path):
    out = tmp_path / "bench.json"
    sections = "scoring,selective_search,end_to_end,memory"
    assert main(["--quick", "--output", str(out), "--sections", sections]) == 0
    report = json.loads(out.read_text())
    scoring = report["scoring"]
    base = scoring["per_model"]["eager fp32 NCHW (torchvision)"]
    assert base["ratio"] == 1.0 and base["crops_per_s"] > 0
    assert "int8 FX x86 channels_last" in scoring["per_model"]
    for row in scoring["per_model"].values():
        assert row["gflop_per_s"] == row["crops_per_s"] * scoring["gflop_per_crop"]
        assert row["fraction_of_peak"] > 0
    assert scoring["ensemble"]["members"] == 2 and scoring["ensemble"]["crops_per_s"] > 0
    assert report["selective_search"]["boxes_per_image"] > 0
    for path in ("default", "int8"):
        e2e = report["end_to_end"][path]
        assert e2e["proposals_per_image"] > 0
        assert {"propose", "score", "nms"} <= set(e2e["stages_s"])
        assert e2e["serial_s_per_image"] > 0 and e2e["pipelined_s_per_image"] > 0
    assert report["end_to_end"]["int8"]["precision"] == "int8"
    assert isinstance(report["end_to_end"]["default"]["detect_many_pipelines_here"], bool)
    assert set(report["memory"]) == {"16", "64"}
    assert all(m["peak_mb"] >= m["after_load_mb"] > 0 for m in report["memory"].values())
    assert not out.with_name("bench.json.tmp").exists()


torch.set_num_threads(1)
