"""The resolve step: a loaded config -> a config that every component takes as it is.

Every command loads its config (``detector.core.config.load_config``), then calls
:func:`resolve_config` once, here at the command-line edge, and hands the result on. This is
the only place that decides "is this the embedded demo?" (``data.root`` empty). It fixes:

- ``data.root``: a real folder, or the generated demo dataset (made on first use);
- ``data.classes``: an explicit class-list file for ILSVRC trees (the tree's own
  ``map_det.txt`` or devkit ``meta_det.mat``, else the 200 shipped classes);
- ``data.blacklist``: a file path, or "" (a shipped name maps to its file; the ILSVRC
  blacklist names val images, so on the demo it is dropped with a note);
- ``model.checkpoint_dir`` / ``model.checkpoints``, ``proposals.multibox.checkpoint`` and,
  when box regression or the SVM scorer is on, ``heads.checkpoint``:
  the demo's built models for the demo; for a real data root they must be configured, and
  missing ones are an error saying what is missing and how to train it. A real root never
  falls back to the demo's models;
- ``inference.device``/``precision`` and ``train.device``/``precision``: concrete values.

From Python::

    from detector import Detector, load_config, resolve_config

    det = Detector.from_config(resolve_config(load_config("demo")))
"""

from __future__ import annotations

import copy
import sys
from dataclasses import dataclass
from pathlib import Path

from detector.core.config import Config
from detector.core.devices import DeviceError, resolve_device, resolve_precision
from detector.core.paths import demo_models_dir, expand

MULTIBOX_NAME = "multibox.safetensors"  # the demo's MultiBox checkpoint in demo_models_dir()


class ResolveError(ValueError):
    """A config that cannot be used as it is; the message says what is missing and what to do."""


@dataclass(frozen=True)
class Needs:
    """What the command will use, so that only those parts must be present."""

    data: bool = True  # read the dataset (the demo tree is generated if missing)
    members: bool = True  # ensemble member checkpoints
    multibox: bool = True  # the MultiBox checkpoint (when proposals.multibox.enabled)
    heads: bool = True  # the heads file (when inference.box_regression or inference.scorer=svm)
    image_list: bool = False  # a run over a list of images: inference.precision=auto may be int8, calibrated on its first images


DETECT = Needs()  # detection by the API (one image at a time: no calibration images at hand)
RUN_LIST = Needs(data=False, image_list=True)  # detector.run on a folder or list of images
EVAL_RUN = Needs(image_list=True)  # eval.map running the detector on a split
TRAIN_MEMBERS = Needs(members=False, heads=False)  # proposals are computed, members are trained
TRAIN_MULTIBOX = Needs(members=False, multibox=False, heads=False)
TRAIN_HEADS = Needs(heads=False)  # the members' features and the proposals fit the heads
SCORE_FILE = Needs(
    members=False, multibox=False, heads=False
)  # eval.map --detections: annotations only
DRY_RUN = Needs(
    members=False, multibox=False, heads=False
)  # the trainers' --dry-run: the data only


def is_demo(cfg: Config) -> bool:
    """The demo is selected by an empty data root (before resolving)."""
    return cfg.data.root == ""


def resolve_config(
    cfg: Config, *, data_root: str | None = None, device: str | None = None, needs: Needs = DETECT
) -> Config:
    """A resolved copy of ``cfg`` (see the module docstring); ``cfg`` is left as it was.

    Args:
        data_root: a ``--data-root`` flag; replaces ``data.root`` when given.
        device: a ``--device`` flag; replaces ``inference.device`` and ``train.device``.
        needs: which parts the command uses (:data:`DETECT`, :data:`TRAIN_MEMBERS`, ...).
    Raises:
        ResolveError: a missing data root, checkpoint or device, naming it.
    """
    cfg = copy.deepcopy(cfg)
    if data_root is not None:
        cfg.data.root = data_root
    if device is not None:
        cfg.inference.device = cfg.train.device = device
    demo = is_demo(cfg)
    _resolve_data(cfg, demo, needs)
    if demo:
        _demo_models(cfg)
    _check_models(cfg, demo, needs)
    _resolve_devices(cfg, needs)
    return cfg


# ---- data -----------------------------------------------------------------------------------


def _resolve_data(cfg: Config, demo: bool, needs: Needs) -> None:
    from detector.datasets.ilsvrc import SHIPPED_BLACKLISTS

    data = cfg.data
    if demo:
        data.root = str(_demo_root(cfg, generate=needs.data))
        data.format = "ilsvrc"
    elif needs.data and not expand(data.root).is_dir():
        raise ResolveError(f"{expand(data.root)}: data root is not a directory (data.root)")
    else:
        data.root = str(expand(data.root))
    if data.format == "ilsvrc" and not data.classes and Path(data.root).is_dir():
        data.classes = str(_ilsvrc_classes(Path(data.root)))
    elif data.classes:
        data.classes = str(expand(data.classes))
    if data.blacklist in ("", "none"):
        data.blacklist = ""
    elif data.blacklist in SHIPPED_BLACKLISTS:
        why = _shipped_blacklist_mismatch(data, demo)
        if why:
            print(f"note: blacklist {data.blacklist!r} {why}", file=sys.stderr)
            data.blacklist = ""
        else:
            data.blacklist = str(SHIPPED_BLACKLISTS[data.blacklist])
    else:
        path = expand(data.blacklist)
        if not path.is_file():
            raise ResolveError(f"{path}: blacklist file not found (data.blacklist)")
        data.blacklist = str(path)


def _shipped_blacklist_mismatch(data, demo: bool) -> str | None:
    """Why a shipped (ILSVRC val) blacklist cannot apply to this dataset, or None."""
    from detector.datasets.ilsvrc import SHIPPED_BLACKLISTS, read_blacklist

    if demo:
        return "names ILSVRC val images; ignored on the demo"
    if data.format != "ilsvrc":
        return f"names ILSVRC val images; ignored for data.format={data.format}"
    if data.classes:
        from detector.datasets.classes import load_classes

        try:
            read_blacklist(SHIPPED_BLACKLISTS[data.blacklist], load_classes(Path(data.classes)))
        except ValueError:
            return (
                f"names ILSVRC 2014 classes that the class list {data.classes} lacks; ignored "
                "(set data.blacklist to a file of your own)"
            )
    return None


def _demo_root(cfg: Config, generate: bool) -> Path:
    from detector.datasets.demo import default_demo_dir, ensure_demo_dataset

    folder = expand(cfg.data.demo_dir) if cfg.data.demo_dir else default_demo_dir()
    return Path(ensure_demo_dataset(folder)) if generate else folder


def _ilsvrc_classes(root: Path) -> Path:
    from detector.datasets.classes import DEFAULT_CLASSES
    from detector.datasets.ilsvrc import classes_file

    return classes_file(root) or DEFAULT_CLASSES


# ---- models ---------------------------------------------------------------------------------


def _demo_models(cfg: Config) -> None:
    """The demo's built models fill the checkpoint paths the config leaves empty."""
    models = demo_models_dir()
    if not cfg.model.checkpoints and not cfg.model.checkpoint_dir:
        cfg.model.checkpoint_dir = str(models)
    mb = cfg.proposals.multibox
    if mb.enabled and not mb.checkpoint:
        mb.checkpoint = str(models / MULTIBOX_NAME)


def _check_models(cfg: Config, demo: bool, needs: Needs) -> None:
    build = (
        "build the demo models with `python -m detector.demo --build-only`"
        if demo
        else f"train them with `python -m detector.train {_config_flag(cfg)}--members all`"
    )
    if needs.members:
        _check_members(cfg, build)
    if needs.heads:
        _check_heads(cfg, demo)
    mb = cfg.proposals.multibox
    if needs.multibox and mb.enabled:
        how = (
            "build the demo models with `python -m detector.demo --build-only`"
            if demo
            else f"train one with `python -m proposals.multibox train {_config_flag(cfg)}`".rstrip()
        )
        if not mb.checkpoint:
            raise ResolveError(
                "no MultiBox checkpoint: set proposals.multibox.checkpoint, or "
                f"proposals.multibox.enabled=false; {how}"
            )
        if not expand(mb.checkpoint).is_file():
            raise ResolveError(
                f"{expand(mb.checkpoint)}: MultiBox checkpoint not found "
                f"(proposals.multibox.checkpoint); {how}, or set proposals.multibox.enabled=false"
            )
        mb.checkpoint = str(expand(mb.checkpoint))


def _check_members(cfg: Config, build: str) -> None:
    from detector.build import ModelSetupError, member_paths

    try:
        paths = member_paths(cfg.model)
    except ModelSetupError as e:
        if not cfg.model.checkpoints and not cfg.model.checkpoint_dir:
            raise ResolveError(
                f"no ensemble checkpoints for data root {cfg.data.root}: set "
                f"model.checkpoint_dir (a folder of member_*.safetensors) or model.checkpoints; "
                f"{build}"
            ) from None
        raise ResolveError(f"{e}; {build}") from None
    cfg.model.checkpoints, cfg.model.checkpoint_dir = [str(p) for p in paths], ""


def _check_heads(cfg: Config, demo: bool) -> None:
    """The heads file, when box regression or the SVM scorer asks for it (after the members)."""
    from detector.build import ModelSetupError, heads_path, uses_heads

    try:
        if not uses_heads(cfg.inference):
            return
        path = heads_path(cfg)
    except ModelSetupError as e:
        raise ResolveError(str(e)) from None
    if not path.is_file():
        flags = "" if demo else _config_flag(cfg)
        why = "inference.box_regression" if cfg.inference.box_regression else "inference.scorer=svm"
        raise ResolveError(
            f"{path}: heads file not found ({why} needs it; heads.checkpoint); train it with "
            f"`python -m detector.train {flags}--heads` after the members"
        )
    cfg.heads.checkpoint = str(path)


def _config_flag(cfg: Config) -> str:
    name = Path(cfg.source).stem if cfg.source else ""
    return f"--config {name} data.root={cfg.data.root} " if name else f"data.root={cfg.data.root} "


# ---- devices --------------------------------------------------------------------------------


def _resolve_devices(cfg: Config, needs: Needs) -> None:
    try:
        device = resolve_device(cfg.inference.device)
        at_hand = needs.image_list and cfg.inference.calibration_images > 0
        cfg.inference.precision = resolve_precision(cfg.inference.precision, device, at_hand)
        cfg.inference.device = str(device)
        train_device = resolve_device(cfg.train.device)
        if cfg.train.precision == "int8":
            raise DeviceError("train.precision int8: training runs in fp32 or bf16")
        cfg.train.precision = resolve_precision(cfg.train.precision, train_device)
        cfg.train.device = train_device.type  # torchrun ranks take their own cuda:LOCAL_RANK
    except DeviceError as e:
        raise ResolveError(f"{e} (inference.device / train.device, or --device)") from None
