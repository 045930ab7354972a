"""benchmarks/region_pool.py on a small synthetic set: it runs, and its figures add up."""

from __future__ import annotations

import json

from benchmarks import region_pool


def test_small_run_reports_both_rules(tmp_path, capsys):
    out = tmp_path / "pool.json"
    assert region_pool.main(["--images", "300", "--proposals", "40", "--json", str(out)]) == 0
    complete, everything = json.loads(out.read_text())
    assert (complete["background_from"], everything["background_from"]) == ("complete", "all")
    assert complete["images"] == everything["images"] == 300
    # the same positives either way; background from 10% of the images, or from all
    assert complete["positives"] == everything["positives"] > 300
    assert complete["regions"] < everything["regions"] <= 300 * (40 + 3)
    for row in (complete, everything):
        assert row["bytes_per_region"] == 26.0  # 22 in the pool + 4 in the sampler's index
        assert row["on_disk_MiB"] == 0.0  # far below the 1 GiB budget: nothing spilled
    assert "ms/step" in capsys.readouterr().out
