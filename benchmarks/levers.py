"""The speed levers side by side (``python -m benchmarks.run --sections levers``).

The paper configuration (doubled selective search + 200 MultiBox boxes, six GoogLeNets at
224 with 16 px of context) on real photographs, once per lever: the current default, each
lever alone (int8, OpenVINO, the cascade, near-duplicate crops) and combined. Each row
gives seconds per image (the CNNs and all), the share of crops members 1.. scored, the
executed GFLOP/s as a fraction of this machine's peak in the row's number format (the larger
of the matrix-product and the best-3x3-convolution references, ``benchmarks.roofline``),
and the demo val mAP of the same settings through the real CLI (``python -m eval.map``).

The members are the demo's trained members run at 224 when they are built (the same
network and work as the paper's six; the cascade's decisions then come from trained
weights, though not ones trained on ILSVRC), else random ones (the cascade then passes
every crop). The mAP column runs the demo config at its own size.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from benchmarks.roofline import crop_gflop, reference_peaks
from detector.core.config import Config, apply_override
from detector.core.devices import resolve_precision
from detector.ensemble import CropCounts

BASELINE = "bf16, every member on every crop"
DEFAULT = "current default (detector.run)"


@dataclass(frozen=True)
class Lever:
    """One row: a name and the ``inference.*`` overrides that turn the lever on."""

    name: str
    overrides: tuple[str, ...]


def default_levers(cascades: list[float], dedup: float) -> list[Lever]:
    """The paper's scoring in bf16 (every member on every crop: the baseline), int8 (what
    ``detector.run`` resolves ``auto`` to), OpenVINO, the cascade at each of ``cascades``,
    near-duplicate crops, and the current default with and without them."""
    full = "inference.cascade_threshold=0"
    dedup_on = f"inference.dedup_iou={dedup}"
    int8, bf16 = "inference.precision=int8", "inference.precision=bf16"
    openvino = "inference.backend=openvino"
    return [
        Lever(BASELINE, (bf16, full)),
        Lever("int8, every member on every crop", (int8, full)),
        Lever("OpenVINO bf16", (openvino, bf16, full)),
        Lever("OpenVINO int8", (openvino, int8, full)),
        *(Lever(f"int8 + cascade {t}", (int8, f"inference.cascade_threshold={t}")) for t in cascades),
        Lever(f"int8 + dedup {dedup}", (int8, full, dedup_on)),
        Lever(DEFAULT, ()),
        Lever(f"current default + dedup {dedup}", (dedup_on,)),
        Lever(f"OpenVINO int8, default cascade + dedup {dedup}", (openvino, int8, dedup_on)),
    ]  # fmt: skip


def inference_settings(lever: Lever) -> Config:
    """The paper's defaults with the lever's overrides."""
    cfg = Config()
    for item in lever.overrides:
        apply_override(cfg, item)
    return cfg


def paper_members(count: int) -> tuple[list[torch.nn.Module], str]:
    """The demo's trained members when built (their weights at any input size), else random."""
    from benchmarks.sections import random_member
    from detector.build import member_paths
    from detector.classifier import load_members
    from detector.core.config import load_config
    from detector.demo import models_are_built
    from detector.resolve import ResolveError, resolve_config

    demo = load_config("demo")
    if models_are_built(demo):
        try:
            paths = member_paths(resolve_config(demo, device="cpu").model)
            return load_members(paths[:count])[0], "the demo's trained members"
        except ResolveError:
            pass
    return [random_member(i) for i in range(count)], "random members"


def lever_detector(lever: Lever, members: list[torch.nn.Module], args: argparse.Namespace):
    """The paper configuration with ``members`` and the lever's inference settings."""
    from benchmarks.sections import paper_detector, paper_warp
    from detector.ensemble import Ensemble

    inference = inference_settings(lever).inference
    at_hand = inference.calibration_images > 0  # as detector.run resolves auto: int8
    scorer = Ensemble(
        members,
        warp=paper_warp(args.size),
        device="cpu",
        precision=resolve_precision(inference.precision, torch.device("cpu"), at_hand),
        chunk_size=args.chunk,
        compile=inference.compile,
        cascade_threshold=inference.cascade_threshold,
        backend=inference.backend,
    )
    return paper_detector(args, scorer, inference.dedup_iou)


def time_lever(lever: Lever, members, photos: list[np.ndarray], args, peaks, gflop) -> dict:
    """Seconds per image of one lever on ``photos`` (after its setup), with its crop counts."""
    t0 = time.perf_counter()
    det = lever_detector(lever, members, args)
    if det.scorer.needs_calibration:  # int8: as detect_many does, on the images at hand
        det.calibrate(photos)
    det(photos[0][:96, :96])  # warm-up: OpenVINO converts (or reads its cache) here
    setup = time.perf_counter() - t0
    det.scorer.counts = CropCounts()  # the timed images only
    stages: dict[str, float] = {}
    proposals = 0
    t0 = time.perf_counter()
    for photo in photos:
        d = det(photo)
        proposals += d.num_proposals
        for k, v in d.timings.items():
            stages[k] = stages.get(k, 0.0) + v / len(photos)
    seconds = (time.perf_counter() - t0) / len(photos)
    counts = det.scorer.counts
    member_crops = counts.crops + counts.to_rest * (len(members) - 1)
    gflop_per_s = member_crops * gflop / len(photos) / max(stages.get("score", 0.0), 1e-9)
    precision = det.scorer.precision
    return {
        "overrides": list(lever.overrides),
        "precision": precision,
        "backend": det.scorer.backend,
        "setup_s": setup,
        "s_per_image": seconds,
        "stages_s": stages,
        "proposals_per_image": proposals / len(photos),
        "crops_scored_per_image": counts.crops / len(photos),
        "share_to_rest": counts.share_to_rest,
        "gflop_per_s": gflop_per_s,
        "fraction_of_peak": gflop_per_s / peaks[precision] if precision in peaks else None,
    }


def demo_map(lever: Lever, workdir: Path) -> float | None:
    """Demo val mAP of the lever's settings, by ``python -m eval.map`` in a fresh process."""
    slug = "".join(c if c.isalnum() else "_" for c in lever.name)
    out, report = workdir / slug, workdir / f"{slug}.json"
    command = [
        sys.executable, "-m", "eval.map", "--split", "val", "--no-coco-check", "--no-progress",
        "--output-dir", str(out), "--json", str(report), *lever.overrides,
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, env=os.environ.copy())
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:]
        print(f"  eval.map failed for {lever.name}: {tail}", file=sys.stderr)
        return None
    return float(json.loads(report.read_text())["mAP"])


def bench_levers(photos: list[np.ndarray], args: argparse.Namespace) -> dict:
    members, source = paper_members(args.members)
    gflop = crop_gflop(members[0], args.size)
    refs = reference_peaks(members[0], args.size, args.peak_size)
    levers = default_levers(args.cascade, args.dedup)
    rows = {}
    for lever in levers:
        rows[lever.name] = time_lever(lever, members, photos, args, refs["peak"], gflop)
        print(f"  timed {lever.name}: {rows[lever.name]['s_per_image']:.2f} s/image", flush=True)
    if args.lever_map:
        with tempfile.TemporaryDirectory(prefix="levers-") as tmp:
            for lever in levers:
                rows[lever.name]["demo_val_map"] = demo_map(lever, Path(tmp))
    res = {"members": source, "photos": len(photos), "gflop_per_crop": gflop, **refs}
    res["rows"] = rows
    print_levers(res, args)
    return res


def print_levers(res: dict, args: argparse.Namespace) -> None:
    rows = res["rows"]
    base = rows[BASELINE]["s_per_image"]
    print(f"\n== speed levers, paper configuration ({args.members} members, S={args.size}, "
          f"{res['members']}) on {res['photos']} photos ==")  # fmt: skip
    for ref in ("matmul", "conv3x3"):
        print(f"peak reference {ref}: " + ", ".join(f"{k} {v:.0f}" for k, v in sorted(res[ref].items()))
              + " GFLOP/s")  # fmt: skip
    print(f"{'lever':<34}{'s/image':>9}{'x bf16':>10}{'score s':>9}{'to 1..':>8}"
          f"{'of peak':>9}{'setup s':>9}{'demo mAP':>10}")  # fmt: skip
    for name, r in rows.items():
        frac = "-" if r["fraction_of_peak"] is None else f"{r['fraction_of_peak']:.0%}"
        m = r.get("demo_val_map")
        m = "-" if m is None else f"{m:.2%}"
        print(f"{name:<34}{r['s_per_image']:>9.2f}{base / r['s_per_image']:>10.2f}"
              f"{r['stages_s'].get('score', 0.0):>9.2f}{r['share_to_rest']:>8.0%}{frac:>9}"
              f"{r['setup_s']:>9.1f}{m:>10}")  # fmt: skip
    best = min(rows.values(), key=lambda r: r["s_per_image"])
    print(f"fastest: {best['s_per_image']:.2f} s/image ({'; '.join(best['overrides']) or 'defaults'})"
          f"; target 10 s/image")  # fmt: skip
