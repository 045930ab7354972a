"""Dataset tools: ``python -m detector.datasets export-coco``.

Examples::

    # the demo's train and val splits as COCO instances files (images stay where they are)
    python -m detector.datasets export-coco --split train --output coco/instances_train.json
    python -m detector.datasets export-coco --split val --output coco/instances_val.json
    # any split of any tree the readers support
    python -m detector.datasets export-coco --config ilsvrc2014 --data-root /data/ILSVRC \\
        --split val --output val.json

``file_name`` in the file is relative to the data root, so train on it with
``data.format=coco data.root=<that root> data.coco_annotations=coco/instances_{split}.json``
(README, "Train on your own data").
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from detector.core.config import DefaultsHelpFormatter, add_config_args, parse_args
from detector.core.messages import one_line


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detector.datasets",
        description="Dataset tools.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="examples:" + __doc__.split("Examples::", 1)[1],
    )
    sub = parser.add_subparsers(dest="command", required=True)
    export = sub.add_parser(
        "export-coco",
        help="write a split as a COCO instances JSON",
        formatter_class=DefaultsHelpFormatter,
    )
    export.add_argument("--split", required=True, help="the split to export")
    export.add_argument("--output", required=True, metavar="FILE", help="the JSON to write")
    export.add_argument(
        "--data-root", default=None, help="dataset root (default: config data.root; empty = demo)"
    )
    add_config_args(export)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(get_args_parser(), argv)
    from detector.core.atomic import atomic_write_text
    from detector.core.config import ConfigError, load_config
    from detector.core.paths import expand
    from detector.datasets import open_split
    from detector.datasets.coco import coco_document
    from detector.resolve import SCORE_FILE, ResolveError, resolve_config

    try:
        cfg = resolve_config(
            load_config(args.config, args.overrides), data_root=args.data_root, needs=SCORE_FILE
        )
        records, classes = open_split(cfg.data, args.split)
        root = expand(cfg.data.root)
        document = coco_document(records, classes, root)
        output = Path(args.output)
        source = cfg.data.coco_annotations.replace("{split}", args.split)
        if cfg.data.format == "coco" and output.resolve() == expand(source).resolve():
            raise ValueError(f"{output}: would overwrite the annotations it reads")
        atomic_write_text(output, json.dumps(document) + "\n")
    except (ConfigError, ResolveError, ValueError, OSError) as e:
        print(f"detector.datasets: error: {one_line(e)}", file=sys.stderr)
        return 2
    pattern = output.with_name(output.name.replace(args.split, "{split}"))
    print(
        f"detector.datasets: {len(document['images'])} images, {len(document['annotations'])} "
        f"boxes, {len(classes)} classes of split {args.split} -> {output}\n"
        f"  use it: data.format=coco data.root={root} data.coco_annotations={pattern}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
