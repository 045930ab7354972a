"""Proposal coverage on the command line: ``python -m eval.recall``.

    python -m eval.recall --split val                      # the demo val split
    python -m eval.recall --data-root /data/ILSVRC2014 --split val --config ilsvrc2014 \
        --json recall.json --plot recall.png

The metrics are ``eval.coverage``'s. An image that cannot be read is reported on one line
and left out; the rest go on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detector.core.config import DefaultsHelpFormatter, add_config_args, parse_args
from detector.core.messages import one_line
from detector.core.structures import ImageRecord, Proposals


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m eval.recall",
        description="Proposal coverage of selective search, MultiBox and their union.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_config_args(parser)
    parser.add_argument("--split", default=None, help="split name (default: config data.val_split)")
    parser.add_argument(
        "--data-root",
        default=None,
        help="ILSVRC DET root (default: config data.root; empty = demo)",
    )
    parser.add_argument(
        "--max-images",
        type=int,
        default=0,
        metavar="N",
        help="use the first N images of the split (0 = all)",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="selective-search processes (default: proposals.selective_search.workers; 0 = all cores)",
    )
    parser.add_argument(
        "--device", default=None, help="device for MultiBox (default: config inference.device)"
    )
    parser.add_argument(
        "--json", default=None, metavar="FILE", help="write the report as JSON here"
    )
    parser.add_argument(
        "--plot", default=None, metavar="PNG", help="write the recall-vs-proposals plot here"
    )
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the selective-search order in the curve"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(get_args_parser(), argv)
    from detector.core.config import ConfigError, load_config
    from detector.resolve import TRAIN_MEMBERS, ResolveError, resolve_config
    from eval.coverage import evaluate_proposals, format_report, plot_curves

    try:
        cfg = load_config(args.config, args.overrides)
        if args.workers is not None:
            cfg.proposals.selective_search.workers = args.workers
        cfg = resolve_config(cfg, data_root=args.data_root, device=args.device, needs=TRAIN_MEMBERS)
        records, proposals = propose_split(cfg, args.split or cfg.data.val_split, args.max_images)
    except (ConfigError, ResolveError, FileNotFoundError, ValueError) as e:
        print(f"eval.recall: error: {one_line(e)}", file=sys.stderr)
        return 2
    report = evaluate_proposals(records, proposals, seed=args.seed)
    report["settings"] = {
        "split": args.split or cfg.data.val_split,
        "images": len(records),
        "config": cfg.source,
    }
    print(format_report(report))
    if args.json:
        from detector.core.atomic import atomic_write_text

        atomic_write_text(args.json, json.dumps(report, indent=1))
    if args.plot:
        plot_curves(report, Path(args.plot))
    return 0


def propose_split(cfg, split: str, max_images: int) -> tuple[list[ImageRecord], list[Proposals]]:
    """Records of the split that decode, and their proposals (cached selective search +
    MultiBox); an unreadable image is reported and left out."""
    from detector.core.io import ImageLoadError
    from detector.datasets import open_split, with_images
    from proposals.generator import ProposalGenerator

    records, _ = open_split(cfg.data, split)
    records = with_images(records[:max_images] if max_images else records)
    generator = ProposalGenerator.from_config(cfg)
    results = generator.propose_files([r.path for r in records], max_pixels=cfg.data.max_pixels)
    kept, proposals = [], []
    for record, result in zip(records, results, strict=True):
        if isinstance(result, ImageLoadError):
            print(f"eval.recall: skipping {result}", file=sys.stderr)
            continue
        kept.append(record)
        proposals.append(result)
    return kept, proposals


if __name__ == "__main__":
    sys.exit(main())
