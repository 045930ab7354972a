"""The embedded demo, end to end: data, models, detections, mAP.

    python -m detector.demo                 # build what is missing, detect on demo val, evaluate
    python -m detector.demo --rebuild       # retrain the demo models from scratch
    python -m detector.demo --build-only    # data and models only

First run on a fresh machine: generates the demo dataset (ILSVRC DET layout), trains the
MultiBox network and the ensemble members with the project's own training code
(``proposals.multibox train`` and ``detector.train``), then runs ``detector.run`` on the demo
val images and ``eval.map`` on the result. Later runs reuse the cached data and models, so
``python -m detector.run --images <demo val>`` and ``python -m eval.map --split val`` work with
no other arguments.

The models live in ``<cache>/demo/models/`` (see ``detector.core.paths``), with ``build.json``
recording the config digest they were trained with; a changed config is rebuilt.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

from detector.core.atomic import atomic_write_text
from detector.core.config import (
    Config,
    DefaultsHelpFormatter,
    add_config_args,
    load_config,
    parse_args,
)
from detector.core.messages import one_line
from detector.core.paths import demo_models_dir

# The resolve step, the trainers and the detector import torch: they are imported where they
# are used, after the command line is parsed (--help is fast).

BUILD_RECORD = "build.json"


def build_key(cfg: Config) -> dict:
    """What the demo models depend on: everything but inference-time, heads (trained after
    the models, by their own command) and output settings."""
    d = cfg.to_dict()
    for key in ("inference", "heads", "eval", "source"):
        d.pop(key, None)
    d["proposals"]["multibox"].pop("checkpoint", None)
    d["model"].pop("checkpoints", None)
    d["model"].pop("checkpoint_dir", None)
    return d


def models_are_built(cfg: Config) -> bool:
    record = demo_models_dir() / BUILD_RECORD
    try:
        return json.loads(record.read_text()).get("key") == build_key(cfg)
    except (OSError, ValueError):
        return False


def build_models(cfg: Config, *, rebuild: bool = False) -> Path:
    """Train MultiBox and every ensemble member of the demo config ``cfg`` (not resolved)
    into the demo models folder; returns it."""
    from detector.resolve import MULTIBOX_NAME, TRAIN_MEMBERS, TRAIN_MULTIBOX, resolve_config
    from detector.training.classifier import train_member
    from detector.training.multibox import train_multibox

    out = demo_models_dir()
    if models_are_built(cfg) and not rebuild:
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / BUILD_RECORD).unlink(missing_ok=True)
    timings: dict[str, float] = {}
    resume = not rebuild
    if cfg.proposals.multibox.enabled:
        t0 = time.perf_counter()
        mb_cfg = copy.deepcopy(cfg)
        mb_cfg.proposals.multibox.checkpoint = ""
        trained = train_multibox(
            resolve_config(mb_cfg, needs=TRAIN_MULTIBOX), out / "multibox_run", resume=resume
        )
        os.replace(trained, out / MULTIBOX_NAME)
        timings["multibox"] = time.perf_counter() - t0
        print(f"[demo] MultiBox trained in {timings['multibox']:.0f} s", flush=True)
    member_cfg = resolve_config(cfg, needs=TRAIN_MEMBERS)  # now with the demo's MultiBox
    for i in range(cfg.model.members):
        t0 = time.perf_counter()
        train_member(member_cfg, i, out, resume=resume)
        timings[f"member_{i}"] = time.perf_counter() - t0
        print(f"[demo] member {i} trained in {timings[f'member_{i}']:.0f} s", flush=True)
    record = {
        "key": build_key(cfg),
        "seconds": timings,
        "built": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    atomic_write_text(out / BUILD_RECORD, json.dumps(record, indent=1))
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detector.demo",
        description="Build the embedded demo (data + models) and run detection and evaluation on it.",
        formatter_class=DefaultsHelpFormatter,
    )
    add_config_args(parser)
    parser.add_argument(
        "--rebuild", action="store_true", help="retrain the demo models even if built"
    )
    parser.add_argument(
        "--build-only", action="store_true", help="build data and models, then stop"
    )
    parser.add_argument(
        "--output-dir",
        default="runs/demo",
        help="where detections, visualizations and the evaluation are written",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = parse_args(get_args_parser(), argv)
    from detector.core.runtime import tune_allocator
    from detector.resolve import EVAL_RUN, ResolveError, is_demo, resolve_config

    tune_allocator()
    try:
        cfg = load_config(args.config, args.overrides)
        if not is_demo(cfg):
            raise ResolveError("the config has data.root set; the demo uses data.root=''")
        t0 = time.perf_counter()
        build_models(cfg, rebuild=args.rebuild)
        resolved = resolve_config(cfg, needs=EVAL_RUN)  # detects on a list: auto may be int8
    except (ResolveError, ValueError) as e:
        print(f"detector.demo: error: {one_line(e)}", file=sys.stderr)
        return 2
    print(f"[demo] dataset: {resolved.data.root}", flush=True)
    print(
        f"[demo] models: {demo_models_dir()} ({time.perf_counter() - t0:.0f} s so far)", flush=True
    )
    if args.build_only:
        return 0
    return run_and_evaluate(resolved, Path(args.output_dir))


def run_and_evaluate(cfg: Config, out: Path) -> int:
    """Detection on the demo val images, then the devkit mAP of its submission file."""
    from detector.run import RunOptions, detect_folder
    from eval.map import MapOptions, evaluate_split

    root = Path(cfg.data.root)
    submission = out / "val_submission.txt"
    run = RunOptions(
        images=str(root / "Data" / "DET" / "val"),
        output_dir=str(out),
        submission=str(submission),
        save_vis=str(out / "vis"),
        image_set=str(root / "ImageSets" / "DET" / "val.txt"),
        overwrite=True,
    )
    status = detect_folder(cfg, run)
    if status in (2, 3):  # a setup or output error: nothing to evaluate
        return status
    return evaluate_split(
        cfg, MapOptions(split="val", detections=str(submission), json=str(out / "val_map.json"))
    )


if __name__ == "__main__":
    sys.exit(main())
