"""The on-disk proposal cache: keys, round trips, atomic writes, corrupt entries."""

from __future__ import annotations

import os

import numpy as np
import pytest

from detector.core.structures import Proposals, ProposalSource
from proposals.cache import ProposalCache, cache_key
from proposals.selective_search import DOUBLED, selective_search


def small_image() -> np.ndarray:
    im = np.full((250, 500, 3), 128, np.uint8)
    im[50:150, 100:200] = (255, 0, 0)
    return im


def sample_proposals() -> Proposals:
    return Proposals(
        boxes=np.array([[0, 0, 10, 10], [1.5, 2.25, 30, 40]], np.float32),
        scores=np.array([np.nan, 0.75], np.float32),
        source=np.array([ProposalSource.SELECTIVE_SEARCH, ProposalSource.MULTIBOX], np.uint8),
    )


def test_key_depends_on_pixels_shape_and_settings():
    im = small_image()
    key = cache_key(im, DOUBLED)
    assert len(key) == 64 and key == cache_key(im.copy(), {"ks": [100, 200]})
    assert key == cache_key(im, {"ks": (np.int64(100), 200)})
    changed = im.copy()
    changed[0, 0, 0] += 1
    assert cache_key(changed, DOUBLED) != key
    assert cache_key(im.reshape(500, 250, 3), DOUBLED) != key
    assert cache_key(im, {"ks": (50, 100)}) != key
    assert cache_key(im[:, ::-1], DOUBLED) == cache_key(np.ascontiguousarray(im[:, ::-1]), DOUBLED)
    assert cache_key(np.zeros((0, 0, 3), np.uint8), {}) != cache_key(np.zeros((0, 3), np.uint8), {})


def test_round_trip(tmp_path):
    cache = ProposalCache(tmp_path / "cache")
    key = cache_key(small_image(), DOUBLED)
    assert cache.get(key) is None
    path = cache.put(key, sample_proposals())
    assert path == tmp_path / "cache" / key[:2] / f"{key}.npz"
    got = cache.get(key)
    want = sample_proposals()
    assert np.array_equal(got.boxes, want.boxes)
    assert np.array_equal(got.scores, want.scores, equal_nan=True)
    assert np.array_equal(got.source, want.source)
    assert got.boxes.dtype == np.float32 and got.source.dtype == np.uint8
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary left behind


def test_empty_proposals_round_trip(tmp_path):
    cache = ProposalCache(tmp_path)
    key = cache_key(np.zeros((0, 0, 3), np.uint8), DOUBLED)
    cache.put(key, Proposals())
    got = cache.get(key)
    assert got is not None and len(got) == 0 and got.boxes.shape == (0, 4)


def test_selective_search_result_round_trip(tmp_path):
    im = small_image()
    boxes = selective_search(im, **DOUBLED)
    p = Proposals(boxes, np.full(len(boxes), np.nan, np.float32), np.zeros(len(boxes), np.uint8))
    cache = ProposalCache(tmp_path)
    key = cache_key(im, DOUBLED)
    cache.put(key, p)
    assert np.array_equal(cache.get(key).boxes, boxes)


def test_overwrite_replaces(tmp_path):
    cache = ProposalCache(tmp_path)
    key = cache_key(small_image(), {})
    cache.put(key, sample_proposals())
    cache.put(key, Proposals())
    assert len(cache.get(key)) == 0


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing_array"])
def test_corrupt_entry_is_deleted_and_recomputed(tmp_path, damage):
    cache = ProposalCache(tmp_path)
    key = cache_key(small_image(), DOUBLED)
    path = cache.put(key, sample_proposals())
    if damage == "truncate":
        path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    elif damage == "garbage":
        path.write_bytes(b"not a zip file at all")
    else:
        np.savez(path, boxes=np.zeros((1, 4), np.float32))  # no scores/source
    with pytest.warns(RuntimeWarning, match="corrupt proposal cache entry"):
        assert cache.get(key) is None
    assert not path.exists()
    # The caller recomputes and stores again: a clean entry from then on.
    cache.put(key, sample_proposals())
    assert len(cache.get(key)) == 2


def test_bad_key_is_refused(tmp_path):
    cache = ProposalCache(tmp_path)
    with pytest.raises(ValueError, match="sha256"):
        cache.get("../../etc/passwd")
    with pytest.raises(ValueError, match="sha256"):
        cache.put("abc", Proposals())


@pytest.mark.parametrize(
    "boxes",
    [
        [[0, 0, np.nan, 10]],
        [[0, 0, np.inf, 10]],
        [[-1e7, -1e7, 1e7, 1e7]],  # the 6 PiB warp
        [[0, 0, 501, 10]],  # beyond the 500 x 250 image
        [[-0.5, 0, 10, 10]],
        [[5, 0, 4, 10]],  # x2 < x1
        [0, 0, 10, 10, 0, 0, 5, 5],  # not N x 4
    ],
)
def test_entry_with_bad_boxes_is_corrupt(tmp_path, boxes):
    cache = ProposalCache(tmp_path)
    key = cache_key(small_image(), DOUBLED)
    path = cache.path(key)
    path.parent.mkdir(parents=True)
    n = np.asarray(boxes).size // 4
    np.savez(
        path,
        boxes=np.asarray(boxes, np.float32),
        scores=np.full(n, np.nan, np.float32),
        source=np.zeros(n, np.uint8),
    )
    with pytest.warns(RuntimeWarning, match="corrupt proposal cache entry"):
        assert cache.get(key, image_size=(500, 250)) is None
    assert not path.exists()


def test_entry_inside_the_image_is_kept(tmp_path):
    cache = ProposalCache(tmp_path)
    key = cache_key(small_image(), DOUBLED)
    cache.put(key, Proposals(np.array([[0, 0, 500, 250]], np.float32), [np.nan], [0]))
    assert len(cache.get(key, image_size=(500, 250))) == 1
