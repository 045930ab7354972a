"""Speed and memory of the pipeline, measured side by side in one run.

    python -m benchmarks.run --output runs/bench/bench.json
    python -m benchmarks.run --quick          # small sizes: checks the benchmark itself works

``--quick``: one downscaled photo, 2 members at S = 64, 20 MultiBox boxes, no mAP per lever,
no accuracy section (a smoke test).

Sections (each prints a table; all figures go to the JSON file):
1. scoring: crops/s of one GoogLeNet (201 outputs, S = 224) on warped crops of real photos,
   plain eager fp32 torchvision (NCHW) beside our paths (fp32 channels_last, bf16, compiled
   bf16, int8), with the ratio to the eager baseline and the fraction of this machine's
   measured matrix-multiply peak in the same number format; then the six-member ensemble.
2. selective search: seconds per image, one process and the pool with all cores.
3. end to end: the paper configuration (doubled selective search + 200 MultiBox boxes,
   six members at 224, 16 px context) on real photographs, seconds per image by stage (load,
   propose, warp, score = the CNNs alone, nms), serial and pipelined (proposals of the next
   images computed while one is scored), and whether both gave the same detections.
   levers: every speed lever (int8, OpenVINO, the cascade, near-duplicates) alone and
   combined beside the current default, with demo val mAP of each (``benchmarks.levers``;
   its figures go under end_to_end in the JSON).
4. load: crops/s of each scoring path (torch bf16/int8, OpenVINO bf16/int8) with 1 thread and
   with every core, idle and beside competing processes (``benchmarks.load``).
5. memory: peak resident memory when scoring few and many proposals (a fresh process each).
6. accuracy of the fast paths against fp32, on the trained demo models when they are built
   (``python -m detector.demo --build-only``; found by ``resolve_config``): max probability
   difference, top-1 agreement over crops, and agreement of the final detections.

Weights in sections 1-4 are random (speed does not depend on them). The 2 cores of a dev
machine are often shared: compare the ratios of one run, not figures across runs.
"""

from __future__ import annotations

import argparse
import sys

from detector.core.config import DefaultsHelpFormatter, MultiBoxConfig, parse_args

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")  # skimage.data photographs
# The levers' settings when they are on (docs/BENCHMARKS.md: measured on demo val).
CASCADE_THRESHOLDS = [
    0.02,
    0.1,
]  # eval.cascade on demo val: keeps 99% of the detections / the default
DEDUP_IOU = 0.95


def get_args_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks.run",
        description="Speed and memory of the pipeline, side by side in one run.",
        formatter_class=DefaultsHelpFormatter,
    )
    p.add_argument("--output", default="runs/bench/bench.json", help="JSON file for all figures")
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes: checks that the benchmark runs"
    )
    p.add_argument("--sections", default="scoring,selective_search,end_to_end,levers,load,memory,accuracy",
                   help="comma-separated sections to run")  # fmt: skip
    p.add_argument("--crops", type=int, default=256, help="crops scored per measurement")
    p.add_argument("--chunk", type=int, default=64, help="crops per forward pass")
    p.add_argument("--members", type=int, default=6, help="ensemble members")
    p.add_argument("--size", type=int, default=224, help="input size S")
    p.add_argument("--repeats", type=int, default=2, help="timed repeats (best is kept)")
    p.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                   help="include torch.compile (inductor) paths")  # fmt: skip
    p.add_argument(
        "--int8", action=argparse.BooleanOptionalAction, default=True, help="include the int8 path"
    )
    p.add_argument(
        "--photos", type=int, default=len(PHOTOS), help="photos for the end-to-end section"
    )
    p.add_argument("--workers", type=int, default=0, help="proposal workers (0 = all cores)")
    p.add_argument(
        "--memory-boxes",
        type=int,
        nargs="+",
        default=[256, 2048],
        help="proposal counts for memory",
    )
    p.add_argument(
        "--accuracy-images", type=int, default=8, help="demo val images for the accuracy section"
    )
    p.add_argument("--threads", type=int, default=0, help="torch threads (0 = all cores)")
    p.add_argument("--search-width", type=int, default=0,
                   help="selective search resize width (0 = the paper's 500)")  # fmt: skip
    p.add_argument("--multibox-top-k", type=int, default=MultiBoxConfig().top_k,
                   help="MultiBox boxes added to selective search's end to end (the paper's: %(default)s)")  # fmt: skip
    p.add_argument("--cascade", type=float, nargs="+", default=CASCADE_THRESHOLDS,
                   help="inference.cascade_threshold of the cascade levers (the largest in the combinations)")  # fmt: skip
    p.add_argument("--dedup", type=float, default=DEDUP_IOU,
                   help="inference.dedup_iou of the near-duplicate levers")  # fmt: skip
    p.add_argument("--lever-map", action=argparse.BooleanOptionalAction, default=True,
                   help="demo val mAP of every lever (python -m eval.map each; needs the demo models)")  # fmt: skip
    p.add_argument("--peak-size", type=int, default=2048,
                   help="n of the n x n x n matrix products that measure the peak")  # fmt: skip
    return p


def main(argv: list[str] | None = None) -> int:
    args = parse_args(get_args_parser(), argv)
    from benchmarks import report  # torch and the detector: after parsing, --help is fast

    return report.run(args, PHOTOS)


if __name__ == "__main__":
    sys.exit(main())
