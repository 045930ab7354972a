"""MultiBox on the command line: ``python -m proposals.multibox {train,propose}``.

Examples:
    python -m proposals.multibox train --config demo
    python -m proposals.multibox train --config ilsvrc2014 data.root=/data/ILSVRC2014 --output-dir runs/mb
    python -m proposals.multibox train --config demo --resume
    python -m proposals.multibox train --config ilsvrc2014 data.root=/data/ILSVRC2014 --dry-run
    torchrun --nproc_per_node 2 -m proposals.multibox train --config demo
    python -m proposals.multibox propose --checkpoint runs/multibox/multibox.safetensors img.jpg
"""

from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from detector.core.config import MultiBoxConfig, add_config_args, parse_args
from detector.core.messages import one_line
from detector.core.runtime import tune_allocator

EXAMPLES = __doc__.split("Examples:", 1)[1]


def get_args_parser() -> argparse.ArgumentParser:
    defaults = MultiBoxConfig()
    parser = argparse.ArgumentParser(
        prog="python -m proposals.multibox",
        description="Train the MultiBox proposal network, or run it on images.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser(
        "train",
        help="train MultiBox on the training split",
        description="Train the MultiBox proposal network on the training split.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=EXAMPLES,
    )
    add_config_args(train)
    train.add_argument(
        "--resume", action="store_true", help="continue from the output directory's last checkpoint"
    )
    train.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help=f"checkpoints and logs (default: {defaults.output_dir}, "
        "config proposals.multibox.output_dir)",
    )
    train.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help=f"stop after this many optimizer steps (default: {defaults.epochs} epochs, "
        "config proposals.multibox.epochs)",
    )
    train.add_argument(
        "--dry-run",
        action="store_true",
        help="read the training split (data.train_split), print one JSON object describing "
        "the training set and exit without training",
    )
    propose = sub.add_parser("propose", help="print the proposals of images as JSON lines")
    propose.add_argument("--checkpoint", required=True, help="MultiBox safetensors checkpoint")
    propose.add_argument(
        "--top-k",
        type=int,
        default=defaults.top_k,
        help=f"boxes kept per image (default {defaults.top_k})",
    )
    propose.add_argument(
        "--nms-iou", type=float, default=defaults.nms_iou,
        help=f"class-agnostic NMS IoU (default {defaults.nms_iou})",
    )  # fmt: skip
    propose.add_argument("--device", default="cpu", help="torch device (default cpu)")
    propose.add_argument("images", nargs="+", help="image files")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(get_args_parser(), argv)
    tune_allocator()
    if args.command == "train":
        return train_command(args)
    return propose_command(args)


def train_command(args: argparse.Namespace) -> int:
    """Exit status 0 done, 1 training failed (data, checkpoints, a diverged loss), 2 a config
    or usage error; errors are one line on stderr."""
    from detector.core.config import ConfigError, load_config
    from detector.core.devices import DeviceError
    from detector.resolve import DRY_RUN, TRAIN_MULTIBOX, ResolveError, resolve_config
    from detector.training.multibox import train_multibox
    from detector.training.scaffold import is_main_process, leave_process_group

    needs = DRY_RUN if args.dry_run else TRAIN_MULTIBOX
    try:
        cfg = resolve_config(load_config(args.config, args.overrides), needs=needs)
    except (ConfigError, ResolveError, DeviceError) as e:
        return _train_error(e, 2)
    if args.dry_run:
        from detector.training.dataset_summary import MULTIBOX, dry_run

        return dry_run(cfg, MULTIBOX, _train_error)
    try:
        path = train_multibox(cfg, args.output_dir, resume=args.resume, max_steps=args.max_steps)
    except DeviceError as e:  # train.device this rank cannot use
        return _train_error(e, 2)
    except (ValueError, OSError, FloatingPointError) as e:  # data, checkpoints, divergence
        return _train_error(e, 1)
    finally:
        leave_process_group()
    if is_main_process():
        print(f"MultiBox checkpoint: {path}")
    return 0


def _train_error(e: BaseException, status: int) -> int:
    print(f"proposals.multibox train: error: {one_line(e)}", file=sys.stderr)
    return status


def propose_command(args: argparse.Namespace) -> int:
    from detector.core.checkpoints import CheckpointError
    from detector.core.config import DataConfig
    from detector.core.io import load_image
    from proposals.multibox.model import MultiBox

    try:
        model = MultiBox.from_checkpoint(
            args.checkpoint, args.device, top_k=args.top_k, nms_iou=args.nms_iou
        )
    except CheckpointError as e:
        print(f"proposals.multibox propose: error: {e}", file=sys.stderr)
        return 2
    status = 0
    for path in args.images:
        try:
            image = load_image(path, DataConfig().max_pixels)
        except Exception as e:  # one bad image fails itself, not the run
            print(f"proposals.multibox propose: error: {e}", file=sys.stderr)
            status = 1
            continue
        p = model.propose(image)
        rec = {
            "image": path,
            "boxes": np.round(p.boxes, 2).tolist(),
            "scores": np.round(p.scores, 5).tolist(),
        }
        print(json.dumps(rec))
    return status


if __name__ == "__main__":
    sys.exit(main())
