"""Memory and build time of the training region pool at ILSVRC scale, synthetic proposals.

R-CNN's training set on ILSVRC 2014 (val1 + train_pos_1k) is ~100,000-200,000 images with
~1,000 proposals each. This builds the pool (``detector.training.regions.build_region_pool``,
exactly as ``detector.train`` does, from a stream of proposals) for seeded synthetic images
of ``--proposals`` random boxes and 1-3 ground truths, at each ``--images`` size, and prints
per size: regions, seconds, the peak of memory allocated while building (``tracemalloc``,
which sees numpy's buffers), the bytes in memory and on disk when done (the pool spills to
memory-mapped files past ``POOL_MEMORY_BYTES``), and the per-step cost of drawing a
mini-batch. The background index (4 bytes a background region) is the part that always
lives in memory.

Examples::

    python benchmarks/region_pool.py                       # 10k, 50k, 200k images
    python benchmarks/region_pool.py --images 2000 --json pool.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from detector.core.atomic import atomic_write_text  # noqa: E402
from detector.core.structures import ImageRecord, Proposals  # noqa: E402
from detector.training.regions import POOL_MEMORY_BYTES, build_region_pool  # noqa: E402
from detector.training.sampling import sample_minibatch  # noqa: E402

SIZE = 500  # synthetic images are 500 x 375, ILSVRC's usual size


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python benchmarks/region_pool.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--images", type=int, nargs="+", default=[10_000, 50_000, 200_000])
    p.add_argument("--proposals", type=int, default=1000, help="proposals per image")
    p.add_argument("--json", default=None, metavar="FILE", help="also write the figures here")
    return p


def synthetic(n: int, proposals: int, seed: int) -> tuple[list[ImageRecord], Iterator[Proposals]]:
    """``n`` records (1-3 ground truths of 200 classes) and a generator of their proposals."""
    rng = np.random.default_rng(seed)
    records = []
    for i in range(n):
        k = int(rng.integers(1, 4))
        gt = random_boxes(rng, k)
        complete = None if i % 10 == 0 else frozenset({1})  # 10% complete, as val1 in train_N
        records.append(ImageRecord(f"i{i}", i + 1, None, SIZE, 375, gt, rng.integers(1, 201, k),
                                   complete_for=complete))  # fmt: skip

    def stream() -> Iterator[Proposals]:
        prng = np.random.default_rng(seed + 1)
        for _ in range(n):
            boxes = random_boxes(prng, proposals)
            yield Proposals(boxes, np.full(proposals, np.nan, np.float32), np.zeros(proposals))

    return records, stream()


def random_boxes(rng: np.random.Generator, n: int) -> np.ndarray:
    xy = rng.random((n, 2)) * [SIZE - 20, 355]
    wh = 20 + rng.random((n, 2)) * [SIZE / 2, 375 / 2]
    return np.concatenate([xy, np.minimum(xy + wh, [SIZE, 375])], axis=1).astype(np.float32)


def measure(n: int, proposals: int, spill: Path, background_from: str) -> dict:
    records, stream = synthetic(n, proposals, seed=n)
    tracemalloc.start()
    t0 = time.perf_counter()
    pool = build_region_pool(
        records, stream, fg_iou=0.5, bg_iou=0.5, background_from=background_from, spill_dir=spill
    )
    build = time.perf_counter() - t0
    _ = pool.positives, pool.background
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    mapped = isinstance(pool.boxes, np.memmap)
    region_bytes = pool.image_idx.nbytes + pool.boxes.nbytes + pool.labels.nbytes
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(20):
        sample_minibatch(rng, pool, batch_size=128, fg_fraction=0.25)
    step = (time.perf_counter() - t0) / 20
    return {
        "images": n,
        "regions": len(pool),
        "positives": pool.num_positives,
        "background_from": background_from,
        "build_seconds": round(build, 2),
        "peak_allocated_MiB": round(peak / 2**20, 1),
        "in_memory_MiB": round((pool.nbytes - (region_bytes if mapped else 0)) / 2**20, 1),
        "on_disk_MiB": round(region_bytes / 2**20, 1) if mapped else 0.0,
        "bytes_per_region": round(pool.nbytes / max(len(pool), 1), 1),
        "sample_ms_per_step": round(step * 1000, 3),
    }


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    print(
        f"region pool: {args.proposals} synthetic proposals per image, 1-3 ground truths, "
        f"10% of images complete for every class; spills to disk past "
        f"{POOL_MEMORY_BYTES / 2**30:.0f} GiB"
    )
    rows = []
    header = (
        f"{'images':>8} {'from':>8} {'regions':>12} {'build s':>8} {'peak MiB':>9} "
        f"{'RAM MiB':>8} {'disk MiB':>9} {'B/region':>8} {'ms/step':>8}"
    )
    print(header)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.images:
            for background_from in ("complete", "all"):
                spill = Path(tmp) / f"{n}-{background_from}"
                r = measure(n, args.proposals, spill, background_from)
                rows.append(r)
                print(
                    f"{r['images']:>8} {background_from:>8} {r['regions']:>12,} "
                    f"{r['build_seconds']:>8} {r['peak_allocated_MiB']:>9} "
                    f"{r['in_memory_MiB']:>8} {r['on_disk_MiB']:>9} {r['bytes_per_region']:>8} "
                    f"{r['sample_ms_per_step']:>8}",
                    flush=True,
                )
    if args.json:
        atomic_write_text(Path(args.json), json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
