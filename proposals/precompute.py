"""Compute and cache the proposals of a split or a folder: ``python -m proposals.precompute``.

Examples::

    python -m proposals.precompute --split train                  # the demo's train split
    python -m proposals.precompute --config ilsvrc2014 --data-root /data/ILSVRC2014 --split val
    python -m proposals.precompute --images photos/ --recursive   # a folder, list or image
    python -m proposals.precompute --split train --shard 3/16     # job-array task 3 of 16
    torchrun --nnodes 4 --nproc_per_node 1 -m proposals.precompute --split train

Selective search (and MultiBox, when ``proposals.multibox.enabled``) runs on every image
of the split, on all cores, and lands in the proposal cache (``proposals.cache_dir``, by
default under ``$INCEPTION_RCNN_CACHE``) where training, ``detector.run``, ``eval.map`` and
``eval.recall`` find it. Images already cached are skipped, so a re-run resumes. With
``--shard I/N`` (0-based) this process takes every N-th image from the I-th (a job-array
task); under torchrun each rank takes its share the same way and rank 0 prints the total.
Point every task at one shared cache folder. Ends with a summary (images, cached before,
computed, failed, proposals per image, seconds per image); exit status 0, 1 when some
images failed (listed), 2 for bad input.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from detector.core.config import Config, DefaultsHelpFormatter, add_config_args, parse_args
from detector.core.distributed import Group, Shard, World
from detector.core.messages import one_line

if TYPE_CHECKING:
    from proposals.bulk import BulkReport


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proposals.precompute",
        description="Compute and cache the proposals of a dataset split or of image files.",
        formatter_class=DefaultsHelpFormatter,
        epilog="examples:" + __doc__.split("Examples::", 1)[1].split("Selective search", 1)[0],
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--split", default=None, help="a split of the configured dataset")
    source.add_argument(
        "--images", default=None, metavar="PATH", help="a folder, an image list or one image"
    )
    parser.add_argument("--recursive", action="store_true", help="--images: also subfolders")
    parser.add_argument(
        "--data-root", default=None, help="dataset root (default: config data.root; empty = demo)"
    )
    parser.add_argument(
        "--shard",
        default=None,
        metavar="I/N",
        help="only every N-th image from the I-th (0-based), e.g. for a job array",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        metavar="N",
        help="selective-search processes (default: proposals.selective_search.workers; "
        "0 = all cores; under torchrun the ranks of a machine split them)",
    )
    parser.add_argument("--device", default=None, help="MultiBox's device (default: auto)")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the summary here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    add_config_args(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(get_args_parser(), argv)
    from detector.core.config import ConfigError, load_config
    from detector.resolve import Needs, ResolveError, resolve_config

    world = World.from_env()
    try:
        if args.shard and world.distributed:
            raise ValueError("--shard is for runs without torchrun (each rank takes its share)")
        shard = Shard.parse(args.shard) if args.shard else world.shard
        cfg = load_config(args.config, args.overrides)
        needs = Needs(data=args.images is None, members=False)
        cfg = resolve_config(cfg, data_root=args.data_root, device=args.device, needs=needs)
        paths, what = image_paths(cfg, args)
    except (ConfigError, ResolveError, ValueError, OSError) as e:
        return _error(e)
    with Group.join(world) as group:
        return precompute_share(cfg, args, world, group, shard, paths, what)


def image_paths(cfg: Config, args: argparse.Namespace) -> tuple[list[Path], str]:
    """The files to propose and how to name them in messages."""
    if args.images is not None:
        from detector.core.io import find_images

        listing = find_images(args.images, recursive=args.recursive)
        return listing.images, f"the {listing.kind} {args.images}"
    from detector.datasets import open_split

    split = args.split or cfg.data.train_split
    records, _ = open_split(cfg.data, split)
    missing = [r.image_id for r in records if r.path is None]
    if missing:
        raise ValueError(
            f"split {split!r}: no image file for {missing[0]} ({len(missing)} missing)"
        )
    return [r.path for r in records], f"split {split} of {cfg.data.root}"


def precompute_share(
    cfg: Config,
    args: argparse.Namespace,
    world: World,
    group: Group,
    shard: Shard,
    paths: list[Path],
    what: str,
) -> int:
    """Propose this process's share of ``paths``; rank 0 prints (and writes) the total."""
    import torch
    from tqdm import tqdm

    from detector.core.checkpoints import CheckpointError
    from detector.core.runtime import available_cores
    from proposals.bulk import precompute
    from proposals.generator import ProposalGenerator

    ss = cfg.proposals.selective_search
    workers = ss.workers if args.workers is None else args.workers
    workers = workers or world.cores(available_cores())
    if ss.enabled:
        torch.set_num_threads(1)  # the search processes own the cores; MultiBox is a small share
    try:
        generator = ProposalGenerator.from_config(cfg, device=world.device(cfg.inference.device))
    except (CheckpointError, ValueError) as e:
        return _error(e)
    mine = shard.take(paths)
    if world.is_main:
        share = "" if shard.whole else f" (share {shard}: {len(mine)} images)"
        if world.distributed:
            share = f" ({world.size} ranks, every {world.size}th image each)"
        sources = " + ".join(
            s for s, on in (("selective search", ss.enabled), ("MultiBox", generator.multibox))
            if on
        )  # fmt: skip
        print(f"proposals.precompute: {sources} on {len(paths)} images of {what}{share}")
    bar = tqdm(total=len(mine), unit="img", disable=args.no_progress or not world.is_main)
    try:
        report = precompute(
            generator, mine, max_pixels=cfg.data.max_pixels, workers=workers, on_image=bar.update
        )
    finally:
        bar.close()
    reports = group.gather(report)
    if not world.is_main:
        return 1 if report.failed else 0
    total = reports[0]
    for other in reports[1:]:
        total = total.merged(other)
    print_summary(total, shard, world.size)
    if args.json:
        from detector.core.atomic import atomic_write_text

        atomic_write_text(Path(args.json), json.dumps(total.to_dict(), indent=2) + "\n")
    return 1 if total.failed else 0


def print_summary(report: BulkReport, shard: Shard, ranks: int) -> None:
    d = report.to_dict()
    where = f" over {ranks} ranks" if ranks > 1 else "" if shard.whole else f" (share {shard})"
    print(
        f"proposals.precompute: {d['images']} images{where}: {d['cached']} already cached, "
        f"{d['computed']} computed, {len(d['failed'])} failed; {d['boxes_per_image']} "
        f"proposals per image; {d['seconds_per_image']} s per image "
        f"({d['compute_seconds']} s in all)"
    )
    for line in d["failed"]:
        print(f"  failed: {line}")


def _error(e: BaseException | str) -> int:
    print(f"proposals.precompute: error: {one_line(e)}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
