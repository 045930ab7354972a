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

The models live in ``<cache>/demo/models/`` (see ``detector.paths``), with ``build.json``
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

from detector.config import Config, add_config_args, load_config
from detector.paths import cache_root
from detector.runtime import tune_allocator

BUILD_RECORD = "build.json"


def is_demo(cfg: Config) -> bool:
    """The demo is selected by an empty data root."""
    return cfg.data.root == ""


def demo_models_dir(cfg: Config) -> Path:
    return cache_root() / "demo" / "models"


def with_demo_defaults(cfg: Config) -> Config:
    """Fill empty model paths with the demo's built models when the config is the demo's."""
    if not is_demo(cfg):
        return cfg
    cfg = copy.deepcopy(cfg)
    models = demo_models_dir(cfg)
    if not cfg.model.checkpoints and not cfg.model.checkpoint_dir:
        cfg.model.checkpoint_dir = str(models)
    if cfg.proposals.multibox.enabled and not cfg.proposals.multibox.checkpoint:
        cfg.proposals.multibox.checkpoint = str(models / "multibox.safetensors")
    return cfg


def build_key(cfg: Config) -> dict:
    """What the demo models depend on: everything but inference-time and output settings."""
    d = cfg.to_dict()
    for key in ("inference", "eval", "source"):
        d.pop(key, None)
    d["proposals"]["multibox"].pop("checkpoint", None)
    d["model"].pop("checkpoints", None)
    d["model"].pop("checkpoint_dir", None)
    return d


def models_are_built(cfg: Config) -> bool:
    record = demo_models_dir(cfg) / BUILD_RECORD
    try:
        return json.loads(record.read_text()).get("key") == build_key(cfg)
    except (OSError, ValueError):
        return False


def build_models(cfg: Config, *, rebuild: bool = False) -> Path:
    """Train MultiBox and every ensemble member into the demo models folder; returns it."""
    out = demo_models_dir(cfg)
    if models_are_built(cfg) and not rebuild:
        return out
    from detector.train import train_member
    from proposals.multibox_train import train_multibox

    out.mkdir(parents=True, exist_ok=True)
    (out / BUILD_RECORD).unlink(missing_ok=True)
    timings: dict[str, float] = {}
    resume = not rebuild
    if cfg.proposals.multibox.enabled:
        t0 = time.perf_counter()
        mb_cfg = copy.deepcopy(cfg)
        mb_cfg.proposals.multibox.checkpoint = ""
        trained = train_multibox(mb_cfg, out / "multibox_run", resume=resume)
        os.replace(trained, out / "multibox.safetensors")
        timings["multibox"] = time.perf_counter() - t0
        print(f"[demo] MultiBox trained in {timings['multibox']:.0f} s", flush=True)
    member_cfg = with_demo_defaults(cfg)
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
    tmp = out / (BUILD_RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=1))
    os.replace(tmp, out / BUILD_RECORD)
    return out


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description="Build the embedded demo (data + models) and run detection and evaluation on it.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
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
    args = get_args_parser().parse_args(argv)
    tune_allocator()
    cfg = load_config(args.config, args.overrides)
    if not is_demo(cfg):
        print(
            "detector.demo: the config has data.root set; the demo uses data.root=''",
            file=sys.stderr,
        )
        return 2
    from detector.datasets.demo import ensure_demo_dataset

    t0 = time.perf_counter()
    root = ensure_demo_dataset(cfg)
    print(f"[demo] dataset: {root}", flush=True)
    build_models(cfg, rebuild=args.rebuild)
    print(
        f"[demo] models: {demo_models_dir(cfg)} ({time.perf_counter() - t0:.0f} s so far)",
        flush=True,
    )
    if args.build_only:
        return 0
    return run_and_evaluate(args, root, Path(args.output_dir))


def run_and_evaluate(args: argparse.Namespace, root: Path, out: Path) -> int:
    """``detector.run`` on the demo val images, then ``eval.map`` on its submission file."""
    from detector import run
    from eval import map as eval_map

    config = ["--config", args.config] if args.config else []
    images = root / "Data" / "DET" / "val"
    submission = out / "val_submission.txt"
    status = run.main(
        [
            "--images", str(images),
            "--output-dir", str(out),
            "--submission", str(submission),
            "--save-vis", str(out / "vis"),
            "--image-set", str(root / "ImageSets" / "DET" / "val.txt"),
            "--overwrite",
            *config, *args.overrides,
        ]
    )  # fmt: skip
    if status == 2:
        return status
    return eval_map.main(
        ["--split", "val", "--detections", str(submission), "--json", str(out / "val_map.json")]
        + config
        + list(args.overrides)
    )


if __name__ == "__main__":
    sys.exit(main())
