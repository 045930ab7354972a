"""Selective-search speed and box counts: presets, one core vs the process pool.

For each preset (R-CNN fast mode, doubled superpixels) it runs every photo serially with one
OpenCV thread, then through :class:`proposals.pool.SelectiveSearchPool` with all cores (the
first pass includes starting the workers, the second is warm), and prints boxes/image and
seconds/image. The 2 cores of the dev machine are shared: compare figures from one run.

Examples::

    python benchmarks/selective_search_bench.py
    python benchmarks/selective_search_bench.py --photos coffee,chelsea --workers 2 \\
        --output runs/bench/selective_search.json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np
from skimage import data

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from detector.core.runtime import available_cores  # noqa: E402
from proposals.pool import SelectiveSearchPool  # noqa: E402
from proposals.selective_search import DOUBLED, RCNN_FAST, selective_search  # noqa: E402

PRESETS = {"rcnn_fast": RCNN_FAST, "doubled": DOUBLED}
DEFAULT_PHOTOS = "astronaut,coffee,chelsea,rocket,hubble_deep_field,immunohistochemistry"


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--photos",
        default=DEFAULT_PHOTOS,
        help=f"comma-separated skimage.data photographs (default: {DEFAULT_PHOTOS})",
    )
    parser.add_argument(
        "--presets",
        default=",".join(PRESETS),
        help=f"comma-separated presets among {', '.join(PRESETS)} (default: all)",
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="pool size for the parallel run; 0 = all cores"
    )
    parser.add_argument(
        "--output", default="", help="write the figures as JSON to this file (default: print only)"
    )
    return parser


def load_photos(names: list[str]) -> dict[str, np.ndarray]:
    photos = {}
    for name in names:
        loader = getattr(data, name, None)
        if loader is None:
            raise SystemExit(f"error: skimage.data has no photograph {name!r}")
        photos[name] = loader()
    return photos


def bench_serial(photos: dict[str, np.ndarray], settings: dict) -> dict:
    cv2.setNumThreads(1)
    counts, seconds, cpu = {}, {}, 0.0
    for name, image in photos.items():
        start, start_cpu = time.perf_counter(), time.process_time()
        counts[name] = len(selective_search(image, **settings))
        seconds[name] = time.perf_counter() - start
        cpu += time.process_time() - start_cpu
    n = len(photos)
    return {
        "boxes_per_image": sum(counts.values()) / n,
        "s_per_image": sum(seconds.values()) / n,
        # CPU seconds: less distorted than wall time when a neighbour shares the cores
        "cpu_s_per_image": cpu / n,
        "boxes": counts,
        "seconds": {k: round(v, 3) for k, v in seconds.items()},
    }


def bench_pool(photos: dict[str, np.ndarray], settings: dict, workers: int) -> dict:
    images = list(photos.values())
    with SelectiveSearchPool(workers=workers, **settings) as pool:
        start = time.perf_counter()
        list(pool.map(images))
        cold = time.perf_counter() - start
        start = time.perf_counter()
        results = list(pool.map(images))
        warm = time.perf_counter() - start
    failures = [str(r) for r in results if isinstance(r, Exception)]
    return {
        "workers": pool.workers,
        "s_per_image_cold": cold / len(images),
        "s_per_image_warm": warm / len(images),
        "failures": failures,
    }


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    photos = load_photos([p for p in args.photos.split(",") if p])
    unknown = [p for p in args.presets.split(",") if p not in PRESETS]
    if unknown:
        raise SystemExit(f"error: unknown preset(s) {', '.join(unknown)}")
    sizes = {name: list(im.shape[:2]) for name, im in photos.items()}
    report = {
        "photos": sizes,
        "cores": available_cores(),
        "load_average": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        "presets": {},
    }
    print(
        f"{len(photos)} photos, {available_cores()} cores available, "
        f"load average {report['load_average']}: timings are only comparable within one run"
    )
    for preset in args.presets.split(","):
        serial = bench_serial(photos, PRESETS[preset])
        pooled = bench_pool(photos, PRESETS[preset], args.workers)
        report["presets"][preset] = {"settings": PRESETS[preset], "serial": serial, "pool": pooled}
        print(
            f"{preset:10s} {serial['boxes_per_image']:7.0f} boxes/image  "
            f"1 worker {serial['s_per_image']:.2f} s/image ({serial['cpu_s_per_image']:.2f} CPU s)  "
            f"pool of {pooled['workers']}: {pooled['s_per_image_warm']:.2f} s/image warm, "
            f"{pooled['s_per_image_cold']:.2f} cold"
        )
    if {"rcnn_fast", "doubled"} <= set(report["presets"]):
        p = report["presets"]
        ratio = (
            p["doubled"]["serial"]["boxes_per_image"] / p["rcnn_fast"]["serial"]["boxes_per_image"]
        )
        report["doubled_over_rcnn_fast"] = ratio
        print(f"doubled / rcnn_fast boxes: {ratio:.2f}")
    if args.output:
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=list) + "\n")
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
