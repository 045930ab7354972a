"""Builders: the one place that turns a (resolved) config into the detector's parts.

Components take plain keyword arguments; these functions read the config for them. The
warp settings come from the members' checkpoints (what they were trained with), falling back
to ``model.*`` for bare state dicts.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from detector.classifier import classes_from_metadata, load_members, warp_from_metadata
from detector.core.checkpoints import CheckpointError
from detector.core.config import Config, InferenceConfig, ModelConfig
from detector.core.devices import DeviceError, resolve_device
from detector.core.digests import file_sha256
from detector.core.paths import expand
from detector.core.structures import ClassList
from detector.ensemble import Ensemble
from detector.heads import HEADS_NAME, Heads, check_scorer_kind, load_heads
from detector.nms import NmsSettings
from detector.warp import WarpSettings
from proposals.generator import ProposalGenerator

MEMBER_GLOB = "member_*.safetensors"


class ModelSetupError(ValueError):
    """Checkpoints that are missing or do not fit the config; the message says what was expected."""


def detector_parts(cfg: Config) -> tuple[ProposalGenerator, Ensemble, ClassList, dict[str, Any]]:
    """The proposer, the scorer, the classes and the remaining ``Detector`` keyword arguments."""
    try:
        device = str(resolve_device(cfg.inference.device))
    except DeviceError as e:
        raise ModelSetupError(str(e)) from None
    if cfg.inference.threads > 0:
        torch.set_num_threads(cfg.inference.threads)
    ensemble, meta = load_ensemble(cfg.model, cfg.inference, device)
    classes = classes_from_metadata(meta) or _config_classes(cfg, meta)
    try:
        proposer = ProposalGenerator.from_config(cfg, device=device)
    except CheckpointError as e:
        raise ModelSetupError(str(e)) from None
    settings = {
        "nms": nms_settings(cfg.inference),
        "max_pixels": cfg.data.max_pixels,
        "calibration_images": cfg.inference.calibration_images,
        "heads": load_detector_heads(cfg, classes) if uses_heads(cfg.inference) else None,
        "box_regression": cfg.inference.box_regression,
        "scorer_kind": cfg.inference.scorer,
        "dedup_iou": cfg.inference.dedup_iou,
    }
    return proposer, ensemble, classes, settings


def uses_heads(inference: InferenceConfig) -> bool:
    """Whether the detector needs the heads file (box regression or the SVM scorer)."""
    try:
        kind = check_scorer_kind(inference.scorer)
    except ValueError as e:
        raise ModelSetupError(str(e)) from None
    return inference.box_regression or kind == "svm"


def heads_path(cfg: Config) -> Path:
    """``heads.checkpoint``, else ``heads.safetensors`` in member 0's folder."""
    if cfg.heads.checkpoint:
        return expand(cfg.heads.checkpoint)
    return member_paths(cfg.model)[0].parent / HEADS_NAME


def load_detector_heads(cfg: Config, classes: ClassList) -> Heads:
    """The heads file of ``cfg``, checked against member 0 and the classes.

    Raises:
        ModelSetupError: missing (saying how to train it), malformed or fitted on another
            member 0.
    """
    path = heads_path(cfg)
    why = "inference.box_regression" if cfg.inference.box_regression else "inference.scorer=svm"
    if not path.is_file():
        raise ModelSetupError(
            f"{path}: heads file not found ({why} needs it; heads.checkpoint); train it with "
            "`python -m detector.train --heads` after the members"
        )
    try:
        return load_heads(
            path, member_sha256=file_sha256(member_paths(cfg.model)[0]), classes=classes
        )
    except CheckpointError as e:
        raise ModelSetupError(str(e)) from None


def load_ensemble(
    model: ModelConfig, inference: InferenceConfig, device: str
) -> tuple[Ensemble, dict[str, Any]]:
    """The members of ``model`` as an :class:`Ensemble` with ``inference``'s settings, and the
    members' merged checkpoint metadata."""
    try:
        members, meta = load_members(member_paths(model), device)
    except CheckpointError as e:
        raise ModelSetupError(str(e)) from None
    ensemble = Ensemble(
        members,
        warp=warp_from_metadata(meta, warp_settings(model)),
        device=device,
        precision=inference.precision,
        chunk_size=inference.chunk_size,
        compile=inference.compile,
        cascade_threshold=inference.cascade_threshold,
        backend=inference.backend,
    )
    return ensemble, meta


def warp_settings(model: ModelConfig) -> WarpSettings:
    """The warp of ``model.*`` (what training uses and bare state dicts fall back to)."""
    return WarpSettings(
        size=model.input_size,
        context_pad=model.context_pad,
        mean=tuple(model.mean),
        std=tuple(model.std),
    )


def nms_settings(inference: InferenceConfig) -> NmsSettings:
    return NmsSettings(
        nms_iou=inference.nms_iou,
        score_threshold=inference.score_threshold,
        max_per_class=inference.max_per_class,
        max_detections=inference.max_detections,
    )


def member_paths(model: ModelConfig) -> list[Path]:
    """``model.checkpoints``, else ``member_*.safetensors`` in ``model.checkpoint_dir``;
    exactly ``model.members`` of them, all present.

    Raises:
        ModelSetupError: what was expected and what was found.
    """
    if model.checkpoints:
        paths = [expand(p) for p in model.checkpoints]
        where = "model.checkpoints"
    elif model.checkpoint_dir:
        folder = expand(model.checkpoint_dir)
        paths = sorted(folder.glob(MEMBER_GLOB))
        where = f"{folder}/{MEMBER_GLOB}"
    else:
        raise ModelSetupError(
            f"no ensemble checkpoints: set model.checkpoints or model.checkpoint_dir (expected "
            f"{model.members} {MEMBER_GLOB}); for the demo's, resolve the config first "
            "(detector.resolve.resolve_config)"
        )
    missing = [str(p) for p in paths if not p.is_file()]
    if missing:
        raise ModelSetupError(f"checkpoint not found: {', '.join(missing)}")
    if len(paths) != model.members:
        raise ModelSetupError(
            f"expected {model.members} ensemble members (model.members), found {len(paths)} "
            f"in {where} (or set model.members={len(paths)})"
        )
    return paths


def _config_classes(cfg: Config, meta: dict[str, Any]) -> ClassList:
    """Classes for checkpoints without a class list (bare state dicts): ``data.classes``."""
    from detector.datasets.classes import default_classes, load_classes

    classes = load_classes(expand(cfg.data.classes)) if cfg.data.classes else default_classes()
    if len(classes) + 1 != meta.get("num_outputs", len(classes) + 1):
        raise ModelSetupError(
            f"checkpoints have {meta.get('num_outputs')} outputs but the class list "
            f"{cfg.data.classes or 'ILSVRC 200'} has {len(classes)} classes + background"
        )
    return classes
