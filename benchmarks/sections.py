"""The measurements of ``python -m benchmarks.run`` (see its docstring for what each does).

Kept apart from the command line so that ``--help`` does not import torch.
"""

from __future__ import annotations

import argparse
import dataclasses
import multiprocessing
import queue as queue_module
import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.roofline import crop_gflop, reference_peaks
from detector.build import nms_settings, warp_settings
from detector.classifier import build_googlenet
from detector.core.config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataConfig,
    InferenceConfig,
    ModelConfig,
    MultiBoxConfig,
)
from detector.core.devices import cpu_supports_bf16
from detector.core.runtime import available_cores
from detector.ensemble import Ensemble
from detector.warp import WarpSettings, warp_regions
from proposals.selective_search import DOUBLED, selective_search

NUM_OUTPUTS = 201  # 200 ILSVRC classes + background


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MB: Linux's VmHWM of this address
    space (``ru_maxrss`` survives exec, so a spawned child would report its parent's peak
    at the fork), else ``ru_maxrss`` (KiB)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def load_photos(names: tuple[str, ...]) -> list[np.ndarray]:
    from skimage import data

    return [np.ascontiguousarray(getattr(data, n)()[..., :3]) for n in names]


def search_settings(args: argparse.Namespace) -> dict:
    """The paper's doubled selective search; ``--quick`` searches at a smaller width."""
    return {**DOUBLED, "resize_width": args.search_width} if args.search_width else dict(DOUBLED)


def paper_warp(size: int) -> WarpSettings:
    """R-CNN's warp of the paper's configuration (16 px of context, ImageNet mean/std) at S."""
    return warp_settings(dataclasses.replace(ModelConfig(), input_size=size))


def random_ensemble(
    members: list[torch.nn.Module], size: int, *, backend: str = "torch", **settings
) -> Ensemble:
    """An ensemble on the CPU with the paper's warp at S = ``size``; ``settings``: precision,
    chunk_size, compile (no cascade: every member scores every crop)."""
    return Ensemble(
        members,
        warp=paper_warp(size),
        device="cpu",
        cascade_threshold=0.0,
        backend=backend,
        **settings,
    )


def real_crops(photos: list[np.ndarray], n: int, size: int, settings: dict) -> torch.Tensor:
    """n warped crops (float32[n, 3, S, S]) of selective-search boxes on real photos."""
    boxes_per = [selective_search(p, **settings) for p in photos]
    warp = paper_warp(size)
    crops = []
    for photo, boxes in zip(photos, boxes_per, strict=True):
        crops.append(warp_regions(photo, boxes[: n // len(photos) + 1], warp))
    return torch.cat(crops)[:n].contiguous(memory_format=torch.channels_last)


def random_member(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return build_googlenet(NUM_OUTPUTS)


def rate(fn: Callable[[], object], n: int, repeats: int) -> float:
    """Items per second of ``fn`` (which processes n items), best of ``repeats`` after a warm-up."""
    fn()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return n / best


# ---- 1. scoring ------------------------------------------------------------------------------


def bench_scoring(crops: torch.Tensor, args: argparse.Namespace) -> dict:
    n = len(crops)
    member = random_member(0)
    baseline = random_member(0).eval()  # plain torchvision module, NCHW, fp32, eager
    nchw = crops.contiguous()

    def eager() -> object:
        with torch.inference_mode():
            return [baseline(nchw[i : i + args.chunk]) for i in range(0, n, args.chunk)]

    rows = {"eager fp32 NCHW (torchvision)": rate(eager, n, args.repeats)}
    settings = [("fp32 channels_last", "fp32", False), ("bf16 channels_last", "bf16", False)]
    if args.compile:
        settings.append(("compiled bf16 channels_last", "bf16", True))
    if args.int8:
        settings.append(("int8 FX x86 channels_last", "int8", False))
    for name, precision, compiled in settings:
        if precision == "bf16" and not cpu_supports_bf16():
            continue
        ens = random_ensemble(
            [member], crops.shape[-1], precision=precision, chunk_size=args.chunk, compile=compiled
        )
        t0 = time.perf_counter()
        if precision == "int8":
            ens.calibrate(crops)
        ens.score(crops[: args.chunk])  # compiles here when asked
        setup = time.perf_counter() - t0
        rows[name] = rate(lambda e=ens: e.score(crops), n, args.repeats)
        if setup > 1.0:
            rows[name + " (setup s)"] = setup
    base = rows["eager fp32 NCHW (torchvision)"]
    gflop = crop_gflop(member, crops.shape[-1])
    refs = reference_peaks(member, crops.shape[-1], args.peak_size)
    peaks = refs["peak"]
    formats = {name: precision for name, precision, _ in settings}
    per_model = {}
    for k, v in rows.items():
        if "setup" in k:
            continue
        peak = peaks.get(formats.get(k, "fp32"))
        per_model[k] = {"crops_per_s": v, "ratio": v / base, "gflop_per_s": v * gflop}
        per_model[k]["fraction_of_peak"] = v * gflop / peak if peak else None
    setup = {k.replace(" (setup s)", ""): v for k, v in rows.items() if "setup" in k}
    ensemble, args.ensemble = bench_ensemble(crops, args)  # reused end to end (compiled once)
    ensemble["ratio_vs_eager_fp32_per_model"] = ensemble["crops_per_s"] * args.members / base
    return {
        "per_model": per_model,
        "setup_seconds": setup,
        "ensemble": ensemble,
        "crops": n,
        "gflop_per_crop": gflop,
        "matmul_peak_gflop_per_s": refs["matmul"],
        "conv3x3_peak_gflop_per_s": refs["conv3x3"],
        "peak_gflop_per_s": peaks,
    }


def bench_ensemble(crops: torch.Tensor, args: argparse.Namespace) -> tuple[dict, Ensemble]:
    """The default path (precision auto, compile as --compile) with ``--members`` members."""
    members = [random_member(i) for i in range(args.members)]
    ens = random_ensemble(
        members, crops.shape[-1], precision="auto", chunk_size=args.chunk, compile=args.compile
    )
    ens.score(crops[: args.chunk])
    r = rate(lambda: ens.score(crops), len(crops), max(1, args.repeats - 1))
    res = {
        "members": args.members,
        "precision": ens.precision,
        "compiled": ens.compile,
        "crops_per_s": r,
    }
    return res, ens


def print_scoring(res: dict) -> None:
    print(f"\n== region scoring: one GoogLeNet ({res['gflop_per_crop']:.2f} GFLOP a crop), "
          f"{res['crops']} crops of real photos ==")  # fmt: skip
    for ref, label in (("matmul", "matrix-multiply peak"), ("conv3x3", "best own 3x3 convolution")):
        peaks = res[f"{ref}_peak_gflop_per_s"]
        print(f"{label} of this machine, GFLOP/s: "
              + ", ".join(f"{k} {v:.0f}" for k, v in sorted(peaks.items())))  # fmt: skip
    print("of peak: against the larger of the two in the path's number format")
    print(f"{'path':<34}{'crops/s':>10}{'x eager fp32':>14}{'GFLOP/s':>10}{'of peak':>9}")
    for name, row in res["per_model"].items():
        frac = row["fraction_of_peak"]
        of_peak = "-" if frac is None else f"{frac:.0%}"
        print(f"{name:<34}{row['crops_per_s']:>10.1f}{row['ratio']:>14.2f}"
              f"{row['gflop_per_s']:>10.0f}{of_peak:>9}")  # fmt: skip
    for name, s in res["setup_seconds"].items():
        print(f"  setup of {name}: {s:.1f} s (once per process)")
    e = res["ensemble"]
    print(
        f"ensemble of {e['members']} ({e['precision']}, compiled={e['compiled']}): {e['crops_per_s']:.1f} crops/s "
        f"= {e['crops_per_s'] * e['members']:.1f} member-crops/s, "
        f"{e['ratio_vs_eager_fp32_per_model']:.2f}x eager fp32 per member"
    )


# ---- 2. selective search ---------------------------------------------------------------------


def bench_selective_search(photos: list[np.ndarray], settings: dict) -> dict:
    from proposals.pool import SelectiveSearchPool

    t0 = time.perf_counter()
    counts = [len(selective_search(p, **settings)) for p in photos]
    serial = (time.perf_counter() - t0) / len(photos)
    with SelectiveSearchPool(workers=0, **settings) as pool:
        list(pool.map(photos * available_cores()))  # start every worker (spawned lazily)
        t0 = time.perf_counter()
        list(pool.map(photos))
        pooled = (time.perf_counter() - t0) / len(photos)
    res = {"boxes_per_image": float(np.mean(counts)), "serial_s_per_image": serial}
    res |= {"pool_s_per_image": pooled, "pool_workers": available_cores()}
    print(
        f"\n== selective search (doubled superpixels, width {settings.get('resize_width', 500)}) =="
    )
    print(f"boxes/image {res['boxes_per_image']:.0f}; one process {serial:.2f} s/image; "
          f"pool of {res['pool_workers']} {pooled:.2f} s/image")  # fmt: skip
    return res


# ---- 3. end to end ---------------------------------------------------------------------------

STAGES = ("load", "propose", "warp", "score", "nms")  # Detections.timings; "score" = the CNNs
STAGE_LABELS = {"score": "score (CNNs)"}


def paper_scorer(args: argparse.Namespace, precision: str) -> Ensemble:
    """The paper's six members with random weights (the scoring section's ensemble for the
    default precision: compiled once), no cascade."""
    scorer = getattr(args, "ensemble", None) if precision == "auto" else None
    if scorer is None:
        members = [random_member(i) for i in range(args.members)]
        scorer = random_ensemble(
            members, args.size, precision=precision, chunk_size=args.chunk, compile=args.compile
        )
    return scorer


def paper_detector(args: argparse.Namespace, scorer: Ensemble, dedup_iou: float):
    """The paper configuration around ``scorer``: doubled selective search, MultiBox K=800
    (random weights) top 200, the config's default NMS. An int8 scorer calibrates on the
    first image it scores."""
    from detector.core.structures import ClassList
    from detector.datasets import default_classes
    from detector.detector import Detector
    from proposals.generator import ProposalGenerator
    from proposals.multibox.model import MultiBox, MultiBoxNet

    torch.manual_seed(0)
    mb = MultiBoxConfig()
    priors = torch.rand(mb.num_priors, 2) * 0.5
    priors = torch.cat([priors, priors + 0.3 + torch.rand(mb.num_priors, 2) * 0.2], dim=1)
    multibox = MultiBox(
        MultiBoxNet(mb.num_priors, priors),
        input_size=args.size,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        top_k=args.multibox_top_k,
        nms_iou=mb.nms_iou,
        device="cpu",
    )
    proposer = ProposalGenerator(search_settings(args), multibox, cache=None, workers=args.workers)
    classes = default_classes()
    if scorer.num_outputs != len(classes) + 1:  # members trained on other classes (the demo's)
        count = scorer.num_outputs - 1
        classes = ClassList([f"c{i}" for i in range(count)], [f"class {i}" for i in range(count)])
    inference = InferenceConfig()
    return Detector(
        proposer,
        scorer,
        classes,
        nms=nms_settings(inference),
        max_pixels=DataConfig().max_pixels,
        calibration_images=inference.calibration_images,
        heads=None,
        box_regression=inference.box_regression,
        scorer_kind=inference.scorer,
        dedup_iou=dedup_iou,
    )


def same_detections(a, b) -> bool:
    """Two ``Detections`` of one image agree: proposals, classes, boxes and scores."""
    return (
        a.num_proposals == b.num_proposals
        and len(a) == len(b)
        and np.array_equal(a.labels, b.labels)
        and np.allclose(a.boxes, b.boxes, atol=1e-3)
        and np.allclose(a.scores, b.scores, atol=1e-5)
    )


def end_to_end(photos: list[np.ndarray], args: argparse.Namespace, precision: str) -> dict:
    from detector.batch import scoring_leaves_cores_free

    det = paper_detector(args, paper_scorer(args, precision), InferenceConfig().dedup_iou)
    # warm-up: int8 calibrates on the first photo's proposals (as in use); compiled
    # members were compiled by the scoring section, or compile here on a small image
    det(photos[0] if precision == "int8" else photos[0][:64, :64])
    stages: dict[str, list[float]] = {}
    serial_dets = []
    t0 = time.perf_counter()
    for p in photos:
        d = det(p)
        serial_dets.append(d)
        for k, v in d.timings.items():
            stages.setdefault(k, []).append(v)
    serial = (time.perf_counter() - t0) / len(photos)
    t0 = time.perf_counter()  # no proposal cache: detect_many redoes every search
    results = list(det.detect_many(photos, workers=args.workers, pipeline=True))
    pipelined = (time.perf_counter() - t0) / len(photos)
    failed = [r for _, r in results if isinstance(r, Exception)]
    if failed:
        raise RuntimeError(f"pipelined detection failed on {len(failed)} photo(s)") from failed[0]
    piped_dets = [r for _, r in results]
    mean = {k: float(np.mean(stages[k])) for k in STAGES if k in stages}
    mean |= {k: float(np.mean(v)) for k, v in stages.items() if k not in mean}
    res = {"precision": det.scorer.precision}
    res["proposals_per_image"] = float(np.mean([d.num_proposals for d in serial_dets]))
    res |= {"stages_s": mean, "serial_s_per_image": serial, "pipelined_s_per_image": pipelined}
    # pipelined, one thread proposes while the main thread warps and scores the previous image
    res["bound_s_per_image"] = max(
        mean.get("propose", 0.0), mean.get("warp", 0.0) + mean.get("score", 0.0)
    )
    res["detect_many_pipelines_here"] = scoring_leaves_cores_free(det)
    res["per_image"] = {
        name: {"proposals": [d.num_proposals for d in ds], "detections": [len(d) for d in ds]}
        for name, ds in (("serial", serial_dets), ("pipelined", piped_dets))
    }
    res["pipelined_matches_serial"] = all(
        same_detections(a, b) for a, b in zip(serial_dets, piped_dets, strict=True)
    )
    print(f"\n== end to end, paper configuration ({args.members} members, S={args.size}, "
          f"{res['precision']}) on {len(photos)} photos ==")  # fmt: skip
    print(
        f"proposals/image {res['proposals_per_image']:.0f}; "
        + ", ".join(f"{STAGE_LABELS.get(k, k)} {mean[k]:.2f} s" for k in STAGES if k in mean)
    )
    print(f"serial {serial:.2f} s/image; pipelined (selective search in worker processes) "
          f"{pipelined:.2f} s/image; max(propose, warp + score) = {res['bound_s_per_image']:.2f} s")  # fmt: skip
    if not res["pipelined_matches_serial"]:
        print("warning: the pipelined detections differ from the serial ones")
    choice = (
        "pipelined" if res["detect_many_pipelines_here"] else "serial (scoring uses every core)"
    )
    print(f"detect_many's choice on this machine: {choice}")
    return res


# ---- 4. memory -------------------------------------------------------------------------------


def _memory_child(n_boxes: int, members: int, size: int, chunk: int, threads: int, queue) -> None:
    torch.set_num_threads(threads)  # as many as the parent scores with
    photo = load_photos(("astronaut",))[0]
    rng = np.random.default_rng(0)
    xy = rng.uniform(0, 400, size=(n_boxes, 2))
    boxes = np.concatenate([xy, xy + rng.uniform(20, 110, size=(n_boxes, 2))], axis=1).astype(
        np.float32
    )
    models = [random_member(i) for i in range(members)]
    ens = random_ensemble(models, size, precision="auto", chunk_size=chunk, compile=False)
    before = peak_rss_mb()
    probs = ens.score_image(photo, boxes)
    queue.put((before, peak_rss_mb(), probs.shape))


def bench_memory(args: argparse.Namespace) -> dict:
    """One fresh process per proposal count, started together (each measures only itself)."""
    ctx = multiprocessing.get_context("spawn")
    children = []
    for n in args.memory_boxes:
        q = ctx.Queue()
        child_args = (n, args.members, args.size, args.chunk, torch.get_num_threads(), q)
        p = ctx.Process(target=_memory_child, args=child_args)
        p.start()
        children.append((n, p, q))
    res = {}
    for n, p, q in children:
        before, peak, shape = _child_result(p, q, f"the memory process for {n} proposals")
        p.join()
        res[str(n)] = {"after_load_mb": before, "peak_mb": peak, "scored": list(shape)}
    print(
        f"\n== peak resident memory, {args.members} members, chunk {args.chunk} (fresh process each) =="
    )
    for n, r in res.items():
        print(
            f"{n:>6} proposals: {r['peak_mb']:.0f} MB peak ({r['after_load_mb']:.0f} MB after loading)"
        )
    return res


def _child_result(process, queue, what: str):
    """The child's one message; an error (not a hang) when it dies first (e.g. killed for memory)."""
    while True:
        try:
            return queue.get(timeout=1.0)
        except queue_module.Empty:
            if not process.is_alive():
                raise RuntimeError(f"{what} exited with code {process.exitcode}") from None


# ---- 5. accuracy of the fast paths -----------------------------------------------------------


def skipped_accuracy(why: str) -> dict:
    print(f"\n== accuracy: skipped ({why}) ==")
    return {"skipped": why}


FAST_PATHS = (("torch", "bf16"), ("torch", "int8"), ("openvino", "bf16"), ("openvino", "int8"))


def bench_accuracy(args: argparse.Namespace) -> dict:
    from detector.core.config import load_config
    from detector.core.io import load_image
    from detector.demo import models_are_built
    from detector.detector import Detector
    from detector.resolve import ResolveError, resolve_config

    not_built = "demo models not built: python -m detector.demo --build-only"
    if not models_are_built(load_config("demo")):
        return skipped_accuracy(not_built)
    try:  # the demo's dataset and trained models; the fast paths compared are CPU paths
        cfg = resolve_config(load_config("demo"), device="cpu")
    except ResolveError:
        return skipped_accuracy(not_built)
    paths = sorted((Path(cfg.data.root) / "Data" / "DET" / "val").glob("*.JPEG"))
    paths = paths[: args.accuracy_images]
    out = {}
    cfg.inference.precision = "fp32"
    cfg.inference.cascade_threshold = 0.0  # number formats compared, every member on every crop
    det = Detector.from_config(cfg)
    images = [load_image(p, cfg.data.max_pixels) for p in paths]
    proposals = [det.proposer(im) for im in images]
    ref_probs = [det.scorer.score_image(im, p.boxes) for im, p in zip(images, proposals, strict=True)]  # fmt: skip
    ref_dets = [det.nms(p.boxes, pr) for p, pr in zip(proposals, ref_probs, strict=True)]
    for backend, precision in FAST_PATHS:
        if precision == "bf16" and not cpu_supports_bf16():
            continue
        ens = Ensemble(det.scorer.members, warp=det.scorer.warp, device="cpu", precision=precision,
                       chunk_size=args.chunk, compile=False, cascade_threshold=0.0, backend=backend)  # fmt: skip
        if precision == "int8":  # as detect_many does: 256 crops over the first images
            ens.calibrate_on_images([(im, p.boxes) for im, p in zip(images, proposals, strict=True)])  # fmt: skip
        probs = [ens.score_image(im, p.boxes) for im, p in zip(images, proposals, strict=True)]
        dets = [det.nms(p.boxes, pr) for p, pr in zip(proposals, probs, strict=True)]
        out[precision if backend == "torch" else f"{backend} {precision}"] = compare(
            ref_probs, probs, ref_dets, dets
        )
    print(f"\n== accuracy against fp32: trained demo models, {len(paths)} demo val images ==")
    for k, v in out.items():
        print(f"{k}: max |p - p_fp32| {v['max_prob_diff']:.4f}; top-1 agreement {v['top1_agreement']:.3f}; "
              f"detections matched {v['detection_agreement']:.3f} (score >= 0.1, same class, IoU >= 0.5)")  # fmt: skip
    return out


def compare(ref_probs, probs, ref_dets, dets) -> dict:
    from eval.agreement import detections_kept

    diff = max(float(np.abs(a - b).max()) for a, b in zip(ref_probs, probs, strict=True) if len(a))
    top1 = np.mean(
        np.concatenate([a.argmax(1) == b.argmax(1) for a, b in zip(ref_probs, probs, strict=True)])
    )
    matched, total = detections_kept(ref_dets, dets, min_score=0.1, iou=0.5)
    return {
        "max_prob_diff": diff,
        "top1_agreement": float(top1),
        "detection_agreement": matched / max(total, 1),
    }


# ---- main ------------------------------------------------------------------------------------
