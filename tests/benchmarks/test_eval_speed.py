"""benchmarks/eval_speed.py on a tiny split: it runs, and its figures add up."""

from __future__ import annotations

import json

from benchmarks import eval_speed


def test_tiny_run_reports_every_stage(tmp_path, capsys):
    out = tmp_path / "speed.json"
    argv = ["--images", "40", "--detections", "10", "--backends", "pycocotools"]
    assert eval_speed.main([*argv, "--folder", str(tmp_path / "split"), "--output", str(out)]) == 0
    figures = json.loads(out.read_text())
    assert figures["images"] == 40 and figures["detections"] == 400
    assert figures["read_s"] >= 0 and figures["score_s"] >= 0
    assert isinstance(figures["coco_check_s"]["pycocotools"], float)
    assert 0 < figures["mAP_classes_with_positives"] <= 1
    text = capsys.readouterr().out
    assert "read + score:" in text and "coco cross-check (pycocotools)" in text
    assert eval_speed.main(["--backends", "nosuch"]) == 2
