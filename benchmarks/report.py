"""The report of ``python -m benchmarks.run``: every section asked for, printed and written
as JSON (the sections themselves: ``benchmarks.sections``, ``benchmarks.levers``,
``benchmarks.load``)."""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch

from benchmarks.levers import bench_levers
from benchmarks.load import bench_load
from benchmarks.sections import (
    bench_accuracy,
    bench_memory,
    bench_scoring,
    bench_selective_search,
    end_to_end,
    load_photos,
    peak_rss_mb,
    print_scoring,
    real_crops,
    search_settings,
    skipped_accuracy,
)
from detector.core.atomic import atomic_write_text
from detector.core.devices import cpu_supports_bf16
from detector.core.runtime import tune_allocator


def apply_quick(args: argparse.Namespace) -> None:
    args.crops, args.chunk, args.members, args.size, args.repeats = 16, 8, 2, 64, 1
    args.lever_map = False
    args.compile, args.photos, args.memory_boxes, args.accuracy_images = False, 1, [16, 64], 2
    args.peak_size, args.search_width, args.multibox_top_k = 256, 80, 20


def environment() -> dict:
    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_threads": torch.get_num_threads(),
        "bf16": cpu_supports_bf16(),
        "cuda": torch.cuda.is_available(),
        "GLIBC_TUNABLES": os.environ.get("GLIBC_TUNABLES", ""),
        "time": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def run(args: argparse.Namespace, photo_names: tuple[str, ...]) -> int:
    """Every section ``args.sections`` names, printed and written to ``args.output``."""
    allocator_tuned = tune_allocator()
    if args.quick:
        apply_quick(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    env = environment() | {"allocator_tuned": allocator_tuned}
    print(f"torch {env['torch']}, {env['cpu_threads']} threads, bf16 {env['bf16']}, "
          f"glibc allocator tuned (mallopt: no mmap, no trim): {allocator_tuned}")  # fmt: skip
    sections = set(args.sections.split(","))
    photos = load_photos(photo_names[: max(args.photos, 1)])
    if args.quick:
        photos = [p[::4, ::4].copy() for p in photos]
    report: dict = {"environment": env, "settings": dict(vars(args))}
    if "scoring" in sections:
        crops = real_crops(photos, args.crops, args.size, search_settings(args))
        report["scoring"] = bench_scoring(crops, args)
        print_scoring(report["scoring"])
    if "selective_search" in sections:
        report["selective_search"] = bench_selective_search(photos, search_settings(args))
    if "end_to_end" in sections:  # the API's default by stage, serial and pipelined
        report.setdefault("end_to_end", {})["default"] = end_to_end(photos, args, "auto")
    if "levers" in sections:  # every speed lever side by side, with demo val mAP
        report.setdefault("end_to_end", {})["levers"] = bench_levers(photos, args)
    if "load" in sections:
        crops = real_crops(photos, args.crops, args.size, search_settings(args))
        report["load"] = bench_load(crops, args)
    if "memory" in sections:
        report["memory"] = bench_memory(args)
    if "accuracy" in sections:
        report["accuracy"] = skipped_accuracy("--quick") if args.quick else bench_accuracy(args)
    report["peak_rss_mb"] = peak_rss_mb()
    print(f"\npeak resident memory of this process: {report['peak_rss_mb']:.0f} MB")
    out = Path(args.output)
    atomic_write_text(out, json.dumps(report, indent=1, default=float))
    print(f"figures written to {out}")
    return 0
