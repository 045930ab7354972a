"""Fine-tune the ensemble's region classifiers (R-CNN): ``python -m detector.train``.

The command line of ``detector.training.classifier``: it loads the config, resolves it
(``detector.resolve``, which generates the demo dataset for the demo config) and trains the
chosen members one after another. ``--heads`` instead fits R-CNN's box regressors and SVMs
on member 0's features (``detector.training.heads``), after the members.

Examples::

    python -m detector.train                                  # demo config, member 0
    python -m detector.train --members all                    # all model.members members
    python -m detector.train --config ilsvrc2014 data.root=/data/ILSVRC --member 3
    python -m detector.train --member 0 --resume              # continue where it stopped
    python -m detector.train --max-steps 50 train.epochs=2 model.input_size=64
    python -m detector.train --config ilsvrc2014 data.root=/data/ILSVRC2014 --dry-run
                                                              # the training set, as JSON
    python -m detector.train --heads                          # box regressors + SVMs, after the members

    # one command for one CPU, one GPU or many: under torchrun it runs DistributedDataParallel
    # (gloo on CPU, nccl on CUDA, rank r on cuda:LOCAL_RANK); only rank 0 writes files
    torchrun --nproc_per_node 4 -m detector.train --config ilsvrc2014 data.root=/data/ILSVRC

Exit status: 0 done, 1 training failed (e.g. no training regions, an unreadable state),
2 a config or usage error; errors are one line on stderr.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from detector.core.config import (
    Config,
    ConfigError,
    TrainConfig,
    add_config_args,
    load_config,
    parse_args,
)
from detector.core.messages import one_line

PROG = "detector.train"
EXAMPLES = __doc__.split("Examples::", 1)[1].split("Exit status:", 1)[0]


def get_args_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    parser = argparse.ArgumentParser(
        prog="python -m detector.train",
        description="Fine-tune the ensemble's GoogLeNet region classifiers (R-CNN).",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + EXAMPLES,
    )
    add_config_args(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--member", type=int, default=0, help="train this member (0-based; default: 0)"
    )
    which.add_argument(
        "--members", choices=["all"], default=None, help="'all': members 0 .. model.members-1"
    )
    which.add_argument(
        "--heads",
        action="store_true",
        help="fit R-CNN's per-class box regressors and SVMs on member 0's features (after the "
        "members; written to heads.checkpoint, default heads.safetensors beside member 0)",
    )
    parser.add_argument("--resume", action="store_true", help="continue from member_<i>.state.pt")
    parser.add_argument(
        "--output-dir",
        default=None,
        metavar="DIR",
        help=f"checkpoints, states and train_log.jsonl (default: {defaults.output_dir}, "
        "config train.output_dir)",
    )
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        metavar="N",
        help=f"stop after this global step (default: {defaults.max_steps}, config "
        f"train.max_steps; 0 = {defaults.epochs} epochs, config train.epochs)",
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        help="read the training split (data.train_split), print one JSON object describing "
        "the training set (images per source, boxes per class, background images, images "
        "left out and why) and exit without computing proposals or training",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(get_args_parser(), argv)
    # torch and the trainer are imported after parsing: --help is fast.
    from detector.core.devices import DeviceError
    from detector.core.runtime import tune_allocator
    from detector.resolve import DRY_RUN, TRAIN_HEADS, TRAIN_MEMBERS, ResolveError, resolve_config
    from detector.training.classifier import train_member
    from detector.training.scaffold import is_main_process, leave_process_group

    tune_allocator()
    try:
        cfg = load_config(args.config, args.overrides)
        members = list(range(cfg.model.members)) if args.members == "all" else [args.member]
        if not members or not 0 <= min(members) <= max(members) < cfg.model.members:
            raise ConfigError(
                f"--member {args.member} outside 0..{cfg.model.members - 1} (model.members)"
            )
        needs = DRY_RUN if args.dry_run else TRAIN_HEADS if args.heads else TRAIN_MEMBERS
        cfg = resolve_config(cfg, needs=needs)
    except (ConfigError, ResolveError, DeviceError) as e:
        return _error(e, 2)
    if args.dry_run:
        from detector.training.dataset_summary import CLASSIFIER, dry_run

        return dry_run(cfg, CLASSIFIER, _error)
    if args.heads:
        return _train_heads(cfg)
    out = Path(args.output_dir or cfg.train.output_dir)
    try:
        for i in members:
            path = train_member(cfg, i, out, resume=args.resume, max_steps=args.max_steps)
            if is_main_process():
                print(f"member {i}: {path}")
    except DeviceError as e:  # train.device / precision this rank cannot use
        return _error(e, 2)
    except (ValueError, OSError) as e:  # data, checkpoints, states (CheckpointError, ...)
        return _error(e, 1)
    finally:
        leave_process_group()
    return 0


def _train_heads(cfg: Config) -> int:
    from detector.training.heads import train_heads

    try:
        print(f"heads: {train_heads(cfg)}")
    except (ValueError, OSError) as e:  # data, checkpoints (ModelSetupError, CheckpointError)
        return _error(e, 1)
    return 0


def _error(e: BaseException, status: int) -> int:
    print(f"{PROG}: error: {one_line(e)}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
