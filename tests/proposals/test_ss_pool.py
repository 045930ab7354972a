"""The selective-search process pool against the serial function, with bad items mixed in."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from skimage import data

from detector.core.config import load_config
from proposals.pool import ProposalError, SelectiveSearchPool
from proposals.selective_search import RCNN_FAST, selective_search, settings_from_config

SETTINGS = {**RCNN_FAST, "resize_width": 300}  # smaller images keep the test fast


@pytest.fixture(scope="module")
def photos() -> list[np.ndarray]:
    return [data.coffee(), data.chelsea()]


@pytest.fixture(scope="module")
def serial(photos) -> list[np.ndarray]:
    return [selective_search(im, **SETTINGS) for im in photos]


def test_pool_matches_serial_and_survives_bad_items(tmp_path, photos, serial):
    paths = []
    for i, im in enumerate(photos):
        paths.append(tmp_path / f"photo{i}.png")  # lossless: the worker decodes the same pixels
        Image.fromarray(im).save(paths[-1])
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    missing = tmp_path / "missing.jpg"
    items = [paths[0], str(missing), photos[1], broken, np.zeros((5, 5, 3), np.float32), paths[1]]

    with SelectiveSearchPool(workers=2, **SETTINGS) as pool:
        results = list(pool.map(items))
        unordered = dict(pool.imap_unordered([photos[0], missing]))
        assert np.array_equal(pool.run(photos[1]), serial[1])
        with pytest.raises(ProposalError, match="missing.jpg"):
            pool.run(missing)

    assert len(results) == len(items)
    for index, want in [(0, serial[0]), (2, serial[1]), (5, serial[1])]:
        assert isinstance(results[index], np.ndarray)
        assert np.array_equal(results[index], want)
    for bad, name in [(results[1], "missing.jpg"), (results[3], "broken.jpg")]:
        assert isinstance(bad, ProposalError) and name in str(bad)
    assert isinstance(results[4], ProposalError) and "uint8" in str(results[4])
    assert sorted(unordered) == [0, 1]
    assert np.array_equal(unordered[0], serial[0])
    assert isinstance(unordered[1], ProposalError)


def test_empty_input_and_unknown_setting():
    with SelectiveSearchPool(workers=1) as pool:
        assert list(pool.map([])) == []
        assert list(pool.imap_unordered([])) == []
    with pytest.raises(TypeError, match="ksizes"):
        SelectiveSearchPool(workers=1, ksizes=(1, 2))
    with pytest.raises(RuntimeError, match="with"):
        list(SelectiveSearchPool(workers=1).map([data.coffee()]))


def test_zero_workers_means_all_cores(monkeypatch):
    monkeypatch.setattr("proposals.pool.available_cores", lambda: 3)
    assert SelectiveSearchPool(workers=0).workers == 3
    assert SelectiveSearchPool(workers=2).workers == 2


def test_from_config():
    cfg = load_config(None, ["proposals.selective_search.workers=1", "data.max_pixels=1000"])
    pool = SelectiveSearchPool.from_config(cfg)
    assert pool.workers == 1 and pool.max_pixels == 1000
    assert pool.settings == settings_from_config(cfg.proposals.selective_search)
    assert pool.settings["ks"] == cfg.proposals.selective_search.ks
    assert "cache_dir" not in pool.settings and "workers" not in pool.settings


_PARENT = """
import sys, time
import numpy as np
from proposals.pool import SelectiveSearchPool

if __name__ == "__main__":
    with SelectiveSearchPool(2, resize_width=40, min_side=5) as pool:
        list(pool.map([np.zeros((20, 20, 3), np.uint8)] * 4))
        print(" ".join(str(pid) for pid in pool._executor._processes), flush=True)
        time.sleep(300)
"""


def _alive(pid: int) -> bool:
    """Running (a zombie that nobody reaps counts as gone)."""
    from pathlib import Path

    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.skipif(not __import__("sys").platform.startswith("linux"), reason="reads /proc")
def test_workers_exit_when_their_parent_is_killed(tmp_path):
    """kill -9 of the parent once left every worker (~75 MB each) running forever."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    script = tmp_path / "parent.py"
    script.write_text(_PARENT)
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    parent = subprocess.Popen(
        [sys.executable, str(script)], cwd=root, env=env, stdout=subprocess.PIPE, text=True
    )
    workers: list[int] = []
    try:
        workers = [int(p) for p in parent.stdout.readline().split()]
        assert len(workers) == 2 and all(_alive(p) for p in workers)
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait(timeout=30)
        deadline = time.monotonic() + 20
        while any(_alive(p) for p in workers) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not [p for p in workers if _alive(p)], "workers outlived their parent"
    finally:
        if parent.poll() is None:
            parent.kill()
        for pid in workers:  # only the processes this test started
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
