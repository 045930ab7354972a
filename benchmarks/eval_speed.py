"""Speed of ``python -m eval.map`` on a synthetic ILSVRC-sized split.

It writes a seeded split in the ILSVRC DET layout (``--images`` annotation files with about
``--objects`` objects each over the 200 classes) and a submission file of about
``--detections`` detections per image (jittered ground truths and random boxes), then
times what ``eval.map --detections`` does, stage by stage:

- ``read``: the split's annotations (``detector.datasets.open_split``) and the submission
  file (``eval.submission.read_submission``);
- ``score``: the devkit evaluation (``eval.ilsvrc_ap.evaluate``);
- ``coco_check``: the cross-check (``eval.coco_check.coco_ap50``), with each backend that
  is installed (faster-coco-eval, pycocotools), unless ``--no-coco-check``.

The 2 cores of the dev machine are shared: compare figures from one run. Target: read +
score of a 10,000-image split (R-CNN's val2 has 9,917) in under 10 s.

Examples::

    python benchmarks/eval_speed.py
    python benchmarks/eval_speed.py --images 2000 --backends faster-coco-eval --output speed.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # run as a plain script

from detector.core.atomic import atomic_write_text  # noqa: E402
from detector.core.config import DataConfig  # noqa: E402
from detector.datasets import default_classes, open_split  # noqa: E402
from eval.coco_check import BACKENDS, available_backends, coco_ap50  # noqa: E402
from eval.ilsvrc_ap import evaluate  # noqa: E402
from eval.submission import SubmissionArrays, read_submission, write_submission  # noqa: E402

SPLIT = "val"
WIDTH, HEIGHT = 500, 375


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=10_000, help="images in the split")
    parser.add_argument("--objects", type=float, default=5.0, help="mean objects per image")
    parser.add_argument(
        "--detections", type=int, default=100, help="detections per image in the submission"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--folder", default="", help="where the split is written (default: a temporary folder)"
    )
    parser.add_argument(
        "--backends",
        default=",".join(BACKENDS),
        help=f"comma-separated cross-check backends to time, among {', '.join(BACKENDS)} "
        "(those not installed are reported as such)",
    )
    parser.add_argument("--no-coco-check", action="store_true", help="time no cross-check")
    parser.add_argument("--output", default="", help="also write the figures as JSON here")
    return parser


def write_split(root: Path, images: int, objects: float, per_image: int, seed: int) -> Path:
    """Annotations, list and submission of a seeded split under ``root``; returns the
    submission file. Boxes are inclusive pixels inside a 500 x 375 image."""
    rng = np.random.default_rng(seed)
    classes = default_classes()
    ann = root / "Annotations" / "DET" / SPLIT
    ann.mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "DET").mkdir(parents=True, exist_ok=True)
    names = [f"bench_{i:06d}" for i in range(1, images + 1)]
    counts = rng.poisson(objects, images)
    gt_image, gt_label, gt_boxes = [], [], []
    for index, (name, n) in enumerate(zip(names, counts, strict=True), 1):
        xy = rng.integers(0, [WIDTH - 40, HEIGHT - 40], (n, 2))
        wh = rng.integers(10, 200, (n, 2))
        boxes = np.hstack([xy, np.minimum(xy + wh, [WIDTH - 1, HEIGHT - 1])])
        labels = rng.integers(1, len(classes) + 1, n)
        body = "".join(
            f"<object><name>{classes.wnids[c - 1]}</name><bndbox><xmin>{b[0]}</xmin>"
            f"<xmax>{b[2]}</xmax><ymin>{b[1]}</ymin><ymax>{b[3]}</ymax></bndbox></object>"
            for b, c in zip(boxes, labels, strict=True)
        )
        (ann / f"{name}.xml").write_text(
            f"<annotation><filename>{name}</filename><size><width>{WIDTH}</width>"
            f"<height>{HEIGHT}</height></size>{body}</annotation>"
        )
        gt_image.append(np.full(n, index))
        gt_label.append(labels)
        gt_boxes.append(boxes)
    (root / "ImageSets" / "DET" / f"{SPLIT}.txt").write_text(
        "".join(f"{name} {i}\n" for i, name in enumerate(names, 1))
    )
    return write_submission(
        root / "submission.txt",
        _detections(rng, np.concatenate(gt_image), np.concatenate(gt_label),
                    np.concatenate(gt_boxes).astype(np.float64), images, per_image, len(classes)),
    )  # fmt: skip


def _detections(
    rng: np.random.Generator,
    gt_image: np.ndarray,
    gt_label: np.ndarray,
    gt_boxes: np.ndarray,
    images: int,
    per_image: int,
    k: int,
) -> SubmissionArrays:
    """Half jittered ground truths (of the right class 9 times in 10), half random boxes."""
    m = images * per_image
    near = rng.random(m) < 0.5
    pick = rng.integers(0, len(gt_image), m)
    image = np.where(near, gt_image[pick], rng.integers(1, images + 1, m))
    label = np.where(near & (rng.random(m) < 0.9), gt_label[pick], rng.integers(1, k + 1, m))
    xy = rng.uniform(0, [WIDTH - 40, HEIGHT - 40], (m, 2))
    random_boxes = np.hstack([xy, xy + rng.uniform(10, 200, (m, 2))])
    boxes = np.where(near[:, None], gt_boxes[pick] + rng.normal(0, 8, (m, 4)), random_boxes)
    boxes[:, 2:] = np.maximum(boxes[:, 2:], boxes[:, :2])
    return SubmissionArrays(image, label, rng.random(m), boxes)


def measure(root: Path, submission: Path, backends: list[str]) -> dict:
    data = DataConfig(root=str(root), classes="", blacklist="")
    t0 = time.perf_counter()
    records, classes = open_split(data, SPLIT)
    t1 = time.perf_counter()
    arrays = read_submission(submission, len(classes), [r.index for r in records])
    t2 = time.perf_counter()
    result = evaluate(records, arrays, len(classes))
    t3 = time.perf_counter()
    figures = {
        "images": len(records),
        "objects": int(sum(len(r.labels) for r in records)),
        "detections": len(arrays),
        "read_annotations_s": round(t1 - t0, 2),
        "read_submission_s": round(t2 - t1, 2),
        "read_s": round(t2 - t0, 2),
        "score_s": round(t3 - t2, 2),
        "read_and_score_s": round(t3 - t0, 2),
        "mAP": None if np.isnan(result.mAP) else result.mAP,  # NaN on small splits (devkit)
        "mAP_classes_with_positives": result.mAP_with_positives,
        "coco_check_s": {},
    }
    installed = available_backends()
    for backend in backends:
        if backend not in installed:
            figures["coco_check_s"][backend] = "not installed"
            continue
        t0 = time.perf_counter()
        check = coco_ap50(records, arrays, len(classes), backend=backend)
        figures["coco_check_s"][backend] = round(time.perf_counter() - t0, 2)
        figures[f"coco_mAP_{backend}"] = check.mAP
    return figures


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    backends = [] if args.no_coco_check else [b for b in args.backends.split(",") if b]
    unknown = sorted(set(backends) - set(BACKENDS))
    if unknown:
        print(f"eval_speed: unknown backend(s) {', '.join(unknown)}", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="eval_speed_") as tmp:
        root = Path(args.folder) if args.folder else Path(tmp)
        t0 = time.perf_counter()
        submission = write_split(root, args.images, args.objects, args.detections, args.seed)
        written = time.perf_counter() - t0
        figures = {"write_split_s": round(written, 2), **measure(root, submission, backends)}
    print(
        f"{figures['images']} images, {figures['objects']} objects, "
        f"{figures['detections']} detections (written in {figures['write_split_s']} s)"
    )
    print(
        f"read: {figures['read_s']} s (annotations {figures['read_annotations_s']} s, "
        f"submission {figures['read_submission_s']} s); score: {figures['score_s']} s; "
        f"read + score: {figures['read_and_score_s']} s"
    )
    for backend, seconds in figures["coco_check_s"].items():
        unit = "" if isinstance(seconds, str) else " s"
        print(f"coco cross-check ({backend}): {seconds}{unit}")
    if args.output:
        atomic_write_text(args.output, json.dumps(figures, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
