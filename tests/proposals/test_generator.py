"""ProposalGenerator: cached selective search + MultiBox, merged; built from a config."""

import numpy as np
import pytest
import torch
from skimage import data

from detector.core.config import IMAGENET_MEAN, IMAGENET_STD, ConfigError, load_config
from detector.core.structures import ProposalSource
from proposals.cache import ProposalCache, cache_key
from proposals.generator import ProposalGenerator
from proposals.multibox.model import CheckpointError, MultiBox, MultiBoxNet, save_checkpoint
from proposals.selective_search import selective_search

torch.set_num_threads(2)
SETTINGS = {"resize_width": 120, "ks": [100, 200], "min_side": 10}
SS, MB = int(ProposalSource.SELECTIVE_SEARCH), int(ProposalSource.MULTIBOX)


@pytest.fixture(scope="module")
def image():
    return np.ascontiguousarray(data.astronaut()[::4, ::4])  # 128 x 128 real photograph


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    priors = np.array(
        [[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.5, 0.5, 1, 1], [0.2, 0.1, 0.6, 0.9]], np.float32
    )
    path = tmp_path_factory.mktemp("mb") / "multibox.safetensors"
    return save_checkpoint(
        path, MultiBoxNet(4, priors), input_size=64, mean=IMAGENET_MEAN, std=IMAGENET_STD
    )


def _config(**overrides):
    items = [f"proposals.selective_search.{k}={v}" for k, v in SETTINGS.items()]
    items += [f"{k}={v}" for k, v in overrides.items()]
    return load_config("ilsvrc2014", items)


def test_selective_search_only_is_cached(image, tmp_path):
    cfg = _config(
        **{
            "proposals.multibox.enabled": "false",
            "proposals.selective_search.cache_dir": str(tmp_path),
        }
    )
    gen = ProposalGenerator.from_config(cfg)
    assert gen.multibox is None and gen.cache.directory == tmp_path
    settings = gen.ss_settings
    out = gen(image)
    np.testing.assert_array_equal(out.boxes, selective_search(image, **settings))
    assert len(out) > 0 and (out.source == SS).all() and np.isnan(out.scores).all()
    key = cache_key(image, settings)
    assert gen.cache.path(key).is_file()
    # a second call reads the cache: plant a different entry and get it back
    planted = out.boxes[:3]
    gen.cache.put(key, type(out)(planted, np.full(3, np.nan, np.float32), np.zeros(3, np.uint8)))
    np.testing.assert_array_equal(gen(image).boxes, planted)


def test_process_pool_computes_uncached_search_in_workers(image, tmp_path, monkeypatch):
    cfg = _config(
        **{
            "proposals.multibox.enabled": "false",
            "proposals.selective_search.cache_dir": str(tmp_path),
        }
    )
    gen = ProposalGenerator.from_config(cfg)
    expected = selective_search(image, **gen.ss_settings)

    def not_here(*args, **kwargs):
        raise AssertionError("selective search ran in the calling process")

    monkeypatch.setattr("proposals.generator.selective_search", not_here)
    with gen.process_pool(workers=1) as pool:
        np.testing.assert_array_equal(gen(image, pool=pool).boxes, expected)
    assert gen.cache.get(cache_key(image, gen.ss_settings)) is not None  # cached by the caller
    np.testing.assert_array_equal(gen(image).boxes, expected)  # now from the cache, no search
    gen.ss_settings = None
    assert gen.process_pool() is None


def test_stopped_worker_processes_fall_back_to_this_process(image):
    gen = ProposalGenerator(SETTINGS, None, cache=None, workers=0)
    with gen.process_pool(workers=1) as pool:
        gen(image, pool=pool)  # the worker is up
        for process in list(pool._executor._processes.values()):
            process.kill()  # as when a script without a __main__ guard spawns them
            process.join()
        with pytest.warns(RuntimeWarning, match="guard"):
            out = gen(image, pool=pool)
    np.testing.assert_array_equal(out.boxes, selective_search(image, **SETTINGS))


def test_both_sources_merged(image, checkpoint):
    cfg = _config(
        **{
            "proposals.multibox.checkpoint": str(checkpoint),
            "proposals.multibox.num_priors": 4,
            "proposals.multibox.input_size": 64,
            "proposals.selective_search.cache_dir": "none",
        }
    )
    gen = ProposalGenerator.from_config(cfg)
    assert gen.cache is None and isinstance(gen.multibox, MultiBox)
    out = gen(image)
    ss = selective_search(image, **gen.ss_settings)
    mb = gen.multibox.propose(image)
    assert 1 <= len(mb) <= 4
    assert len(out) == len(ss) + (out.source == MB).sum()
    assert (out.source == SS).sum() == len(ss)
    np.testing.assert_array_equal(out.from_source(ProposalSource.SELECTIVE_SEARCH).boxes, ss)
    # propose_many: selective search in a worker process, MultiBox batched (float noise only)
    many = gen.propose_many([image, image[:64]], workers=1)
    for got, want in zip(many, [out, gen(image[:64])], strict=True):
        np.testing.assert_allclose(got.boxes, want.boxes, atol=1e-3)
        assert got.source.tolist() == want.source.tolist()


def test_multibox_only_and_nothing(image, checkpoint):
    mb = MultiBox.from_checkpoint(checkpoint, top_k=2, nms_iou=0.7)
    out = ProposalGenerator(None, mb, cache=None, workers=0)(image)
    assert 1 <= len(out) <= 2 and (out.source == MB).all()
    none = ProposalGenerator(None, None, cache=None, workers=0)
    assert len(none(image)) == 0
    assert [len(p) for p in none.propose_many([image, image])] == [0, 0]
    assert none.propose_many([]) == []


def test_config_errors(checkpoint):
    with pytest.raises(ConfigError, match="proposals.multibox.checkpoint is empty"):
        ProposalGenerator.from_config(_config())
    with pytest.raises(CheckpointError, match="num_priors=4 but num_priors=800 was expected"):
        ProposalGenerator.from_config(_config(**{"proposals.multibox.checkpoint": str(checkpoint)}))


def test_default_cache_dir_and_disabled_search(tmp_path, monkeypatch):
    monkeypatch.setenv("INCEPTION_RCNN_CACHE", str(tmp_path / "cache"))
    cfg = _config(
        **{"proposals.multibox.enabled": "false", "proposals.selective_search.enabled": "false"}
    )
    gen = ProposalGenerator.from_config(cfg)
    assert gen.ss_settings is None
    assert gen.cache.directory == ProposalCache(tmp_path / "cache" / "proposals").directory
    assert len(gen(np.zeros((0, 0, 3), np.uint8))) == 0


def _unwritable_cache(tmp_path, monkeypatch, how):
    if (
        how == "read_only"
    ):  # the tests run as root, who may write anywhere: a file blocks the folder
        (tmp_path / "blocked").write_text("a file where the cache folder's parent should be")
        return tmp_path / "blocked" / "proposals"
    import errno

    import proposals.cache

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(proposals.cache.np, "savez_compressed", full)
    return tmp_path / "full"


@pytest.mark.parametrize("how", ["read_only", "full"])
def test_unwritable_cache_warns_once_and_goes_on(image, tmp_path, monkeypatch, how):
    """A read-only or full proposal cache once failed every image; now one warning naming
    the folder, and the proposals are computed as if there were no cache."""
    import warnings

    folder = _unwritable_cache(tmp_path, monkeypatch, how)
    cfg = _config(
        **{
            "proposals.multibox.enabled": "false",
            "proposals.selective_search.cache_dir": str(folder),
        }
    )
    gen = ProposalGenerator.from_config(cfg)
    expected = selective_search(image, **gen.ss_settings)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for im in (image, image[::-1].copy(), image):
            assert len(gen(im)) > 0
        many = gen.propose_many([image[:, ::-1].copy()], workers=1)
    np.testing.assert_array_equal(gen(image).boxes, expected)
    assert len(many[0]) > 0
    messages = [str(w.message) for w in caught]
    assert len(messages) == 1, messages
    assert messages[0].startswith(f"{folder}: ") and "without caching" in messages[0]
    assert "\n" not in messages[0]
    assert not list(folder.parent.glob("**/*.tmp"))


def test_tampered_cache_entry_is_recomputed(image, tmp_path):
    """A cache entry with +-1e7 boxes (a 6 PiB warp) is corrupt: recomputed, not used."""
    cfg = _config(
        **{
            "proposals.multibox.enabled": "false",
            "proposals.selective_search.cache_dir": str(tmp_path),
        }
    )
    gen = ProposalGenerator.from_config(cfg)
    key = cache_key(image, gen.ss_settings)
    huge = np.array([[-1e7, -1e7, 1e7, 1e7]], np.float32)
    gen.cache.put(key, type(gen(image))(huge, [np.nan], [SS]))
    with pytest.warns(RuntimeWarning, match="corrupt proposal cache entry"):
        out = gen(image)
    np.testing.assert_array_equal(out.boxes, selective_search(image, **gen.ss_settings))
    assert gen.cache.get(key) is not None  # stored again, clean


def test_propose_files_in_order_in_bounded_chunks_with_bad_files(image, tmp_path):
    """Files are proposed chunk by chunk (here 2 at a time), in order; an unreadable file
    yields its ImageLoadError in its place and the others are proposed as one by one."""
    from PIL import Image

    from detector.core.io import ImageLoadError

    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image[:, ::-1].copy()).save(tmp_path / "b.png")
    (tmp_path / "bad.png").write_bytes(b"not an image")
    gen = ProposalGenerator(SETTINGS, None, cache=None, workers=1)
    paths = [tmp_path / "a.png", tmp_path / "bad.png", tmp_path / "b.png"]
    results = list(gen.propose_files(paths, max_pixels=10**8, workers=1, chunk=2))
    assert len(results) == 3 and isinstance(results[1], ImageLoadError)
    assert "bad.png" in str(results[1])
    for result, picture in ((results[0], image), (results[2], image[:, ::-1].copy())):
        np.testing.assert_array_equal(result.boxes, gen(picture).boxes)
