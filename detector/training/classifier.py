"""Region classifier fine-tuning (R-CNN); the command line is ``python -m detector.train``.

Each ensemble member is a GoogLeNet with ``classes + 1`` outputs trained on warped
proposals: positives IoU >= 0.5 with a ground truth of their class (plus the ground truths),
background below, mini-batches of 128 = 32 + 96 regions sampled across all training images,
the same warp as inference, horizontal flips, SGD with momentum. Member ``i`` uses seed
``train.seed + i`` for its initial weights (when not pretrained), region sampling and order.

:func:`train_member` takes a resolved config (``detector.resolve.resolve_config``): a real
``data.root`` of any format ``detector.datasets.open_split`` reads, ``data.classes`` and
``data.blacklist`` as file paths (or ""), the MultiBox checkpoint set when MultiBox is on.

One process, one GPU or many: under torchrun it runs DistributedDataParallel (see
``detector.training.scaffold``); every rank draws the same global mini-batch of
``train.batch_size`` regions and warps and trains on positions r, r + N, ... of it
(gradients averaged: the single-process semantics, except that batch-norm statistics are
per rank); only rank 0 writes files and validates.

Outputs in ``output_dir``: ``member_<i>.safetensors`` (weights + metadata: classes, input
size, context pad, mean, std, config digest, member, seed, epoch, step; written atomically
at every epoch end and at the stop), ``member_<i>.state.pt`` (weights, optimizer, step: what
``resume`` reads, with ``torch.load(weights_only=True)``) and ``train_log.jsonl`` (one line
per step: member, step, epoch, loss, lr, seconds since the run started; one per validation:
val_mAP). Validation (``train.val_every`` epochs, and at the stop) detects on
``data.val_split`` through the inference path: the member alone as a
``detector.ensemble.Ensemble`` (warp, softmax), ``detector.nms.per_class_nms`` with the
``inference`` settings, and the devkit's mAP (``eval.ilsvrc_ap``).

Speed: ``train.precision=bf16`` (autocast, the default) trains GoogLeNet 1.5x (input 64) to
1.6x (input 96) faster than fp32 on this project's 2-core AMX machine, with the same loss
curve; on a CPU without native bf16 set ``train.precision=fp32``.

Determinism: mini-batch ``s`` of a member is a pure function of ``(seed, s)`` (see
``detector.training.regions``) and the dropout generator is re-seeded every step, so a
resumed run reproduces the uninterrupted one (same device, precision and thread count).
A state written with other data, model or optimisation settings is not resumed: the member
starts over (changing epochs, max_steps, val_every, loader_workers or the device is
allowed). An epoch is ``ceil(positives / positives per batch)`` steps: every positive is
seen about once per epoch (background regions, far more numerous, are subsampled).
"""

from __future__ import annotations

import math
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from detector.build import nms_settings, warp_settings
from detector.classifier import build_googlenet, checkpoint_metadata, save_checkpoint
from detector.core.checkpoints import CheckpointError, imagenet_weights_path
from detector.core.config import Config
from detector.core.digests import settings_digest
from detector.core.io import ImageLoadError, load_image
from detector.core.structures import ClassList, Detections, ImageRecord, Proposals
from detector.datasets import open_split, split_blacklist, with_images
from detector.ensemble import Ensemble
from detector.nms import per_class_nms
from detector.training.regions import ImageCache, RegionBatches, build_region_pool
from detector.training.sampling import RegionPool, teaches
from detector.training.scaffold import (
    TrainContext,
    TrainLog,
    load_state,
    progress_bar,
    save_state,
    setup,
    unwrap,
)
from eval.ilsvrc_ap import evaluate
from eval.submission import from_detections
from proposals.generator import ProposalGenerator

AUX_WEIGHT = 0.3  # GoogLeNet's auxiliary classifiers, when the model has them (paper, section 6)
LOG_NAME = "train_log.jsonl"
PREFIX = "detector.train"  # how messages on stderr start

__all__ = [
    "Split",
    "classification_loss",
    "compute_proposals",
    "lr_at",
    "prepare_split",
    "restore",
    "resume_key",
    "step_seed",
    "steps_per_epoch",
    "train_member",
    "validation_map",
]


# ----------------------------------------------------------------------------- data


def compute_proposals(
    cfg: Config, records: list[ImageRecord], device: torch.device
) -> list[Proposals | None]:
    """Proposals of every record through the cached proposal stage (None: the image failed)."""
    return list(stream_proposals(cfg, records, device))


def stream_proposals(
    cfg: Config, records: list[ImageRecord], device: torch.device
) -> Iterator[Proposals | None]:
    """:func:`compute_proposals` one record at a time (each image decoded once), so the
    region pool can be built without holding every image's proposals."""
    generator = ProposalGenerator.from_config(cfg, device=str(device))
    paths = [r.path for r in records]
    workers = cfg.proposals.selective_search.workers
    for result in generator.propose_files(paths, max_pixels=cfg.data.max_pixels, workers=workers):
        if isinstance(result, ImageLoadError):  # one bad image must not cost the run
            print(f"{PREFIX}: skipping {result}", file=sys.stderr)
            result = None
        yield result


@dataclass
class Split:
    """The images of one split that have pixels, and their proposals (None: failed)."""

    records: list[ImageRecord]
    proposals: list[Proposals | None]


def prepare_split(
    cfg: Config, split: str, device: torch.device, *, max_images: int = 0
) -> tuple[Split, ClassList]:
    """Records (those with an image file) and proposals of ``split``, and the class list.

    Args:
        max_images: keep the first this many records (0 = all; ``train.max_images``).
    """
    records, classes = split_records(cfg, split, max_images=max_images)
    return Split(records, compute_proposals(cfg, records, device)), classes


def split_records(
    cfg: Config, split: str, *, max_images: int = 0
) -> tuple[list[ImageRecord], ClassList]:
    """The records of ``split`` that have an image file (the first ``max_images``; 0 = all)."""
    records, classes = open_split(cfg.data, split)
    records = with_images(records)
    return (records[:max_images] if max_images else records), classes


def training_records(cfg: Config, *, max_images: int = 0) -> tuple[list[ImageRecord], ClassList]:
    """The records of ``data.train_split`` that can give training regions: an image file,
    and ground truth or (``train.background_from``) background."""
    records, classes = split_records(cfg, cfg.data.train_split, max_images=max_images)
    return [r for r in records if teaches(r, cfg.train.background_from)], classes


def steps_per_epoch(pool: RegionPool, *, batch_size: int, fg_fraction: float) -> int:
    """Steps that show every positive about once (at least one step)."""
    per_batch = max(1, int(round(batch_size * fg_fraction)))
    if pool.num_positives == 0:
        return max(1, math.ceil(len(pool) / batch_size))
    return max(1, math.ceil(pool.num_positives / per_batch))


# ----------------------------------------------------------------------------- model


def build_model(cfg: Config, num_classes: int, seed: int) -> nn.Module:
    """GoogLeNet with ``num_classes + 1`` outputs; ImageNet weights when wanted and cached.

    The seed fixes the new classifier layer (and every layer when training from scratch):
    members start from different weights. (The paper's members shared one initialisation
    "mainly because of an oversight".)
    """
    if cfg.model.pretrained and not imagenet_weights_path().is_file():
        print(
            f"{PREFIX}: {imagenet_weights_path()}: GoogLeNet ImageNet weights not cached; "
            "training from scratch",
            file=sys.stderr,
        )
    torch.manual_seed(seed)
    model = build_googlenet(num_classes + 1, pretrained=cfg.model.pretrained, if_missing="random")
    return model.to(memory_format=torch.channels_last)


def classification_loss(output, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy over classes + 1; GoogLeNet's auxiliary heads (if any) weigh 0.3."""
    if isinstance(output, torch.Tensor):
        return F.cross_entropy(output.float(), labels)
    logits, *aux = [o for o in output if o is not None]
    loss = F.cross_entropy(logits.float(), labels)
    for a in aux:
        loss = loss + AUX_WEIGHT * F.cross_entropy(a.float(), labels)
    return loss


def lr_at(base_lr: float, lr_step: int, epoch: int) -> float:
    """Step schedule: 10x lower every ``lr_step`` epochs (0 = constant)."""
    return base_lr * (0.1 ** (epoch // lr_step) if lr_step > 0 else 1.0)


def step_seed(seed: int, step: int, rank: int) -> int:
    """Dropout seed of one step on one rank (reproducible after a resume)."""
    return int(np.random.default_rng([seed, step, rank, 7]).integers(2**62))


# ----------------------------------------------------------------------------- checkpoints


def member_metadata(
    cfg: Config, classes: ClassList, *, member: int, seed: int, epoch: int, step: int
) -> dict:
    """What a member's safetensors checkpoint records besides its weights."""
    return checkpoint_metadata(
        classes,
        warp_settings(cfg.model),
        config_digest=cfg.digest(),
        member=member,
        seed=seed,
        epoch=epoch,
        step=step,
    )


# Settings that may change between a run and its resumption (more epochs, another log cadence).
RESUMABLE_CHANGES = {
    "train": ("epochs", "max_steps", "val_every", "loader_workers", "output_dir", "device")
}


def resume_key(cfg: Config) -> str:
    """Digest of what the training state depends on (not inference/heads/eval/output settings)."""
    d = cfg.to_dict()
    for section in ("inference", "heads", "eval", "source"):
        d.pop(section, None)
    for section, keys in RESUMABLE_CHANGES.items():
        for key in keys:
            d[section].pop(key, None)
    return settings_digest(d)


def restore(state_path: Path, model: nn.Module, optimizer, cfg: Config, member: int) -> int:
    """Load weights and optimizer from the state file; returns the step to continue from.

    A state written with other data, model or optimisation settings is not resumed (0).
    """
    state = load_state(state_path)
    if state.get("member") != member:
        raise CheckpointError(f"{state_path}: state of member {state.get('member')}, not {member}")
    if state.get("resume_key") != resume_key(cfg):
        print(
            f"{PREFIX}: {state_path}: written with other settings; starting over",
            file=sys.stderr,
        )
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


# ----------------------------------------------------------------------------- loop


def train_member(
    cfg: Config,
    member: int,
    output_dir: str | Path,
    *,
    resume: bool = False,
    max_steps: int | None = None,
) -> Path:
    """Fine-tune ensemble member ``member``; returns the path of its checkpoint.

    Args:
        cfg: the resolved config (``data``, ``proposals``, ``model``, ``train`` are read;
            ``inference`` for validation).
        member: index i; the member's seed is ``cfg.train.seed + i``.
        output_dir: receives ``member_<i>.safetensors``, ``member_<i>.state.pt``, the log.
        resume: continue from ``member_<i>.state.pt`` if it exists.
        max_steps: stop after this global step (absolute, so resuming with 2N after N
            continues to 2N); None = ``train.max_steps``, or if 0 ``train.epochs`` epochs.
    Raises:
        ValueError: no training regions; CheckpointError: an unreadable state file;
        DeviceError: ``train.device`` or ``train.precision`` unavailable.
    """
    output_dir = Path(output_dir)
    ctx = setup(cfg.train)
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.train.seed + member
    spill = output_dir / f".region-pool-member{member}-rank{ctx.rank}"
    shutil.rmtree(spill, ignore_errors=True)  # a killed run's memory-mapped pool
    with ctx.main_first():  # rank 0 computes (and caches) the proposals, the others reuse them
        records, classes = training_records(cfg, max_images=cfg.train.max_images)
        pool = build_region_pool(
            records,
            stream_proposals(cfg, records, ctx.device),
            fg_iou=cfg.train.fg_iou,
            bg_iou=cfg.train.bg_iou,
            background_from=cfg.train.background_from,
            spill_dir=spill,
        )
    if len(pool) == 0:
        raise ValueError(
            f"split {cfg.data.train_split!r}: no training regions (no images, or every image failed)"
        )
    per_epoch = steps_per_epoch(
        pool, batch_size=cfg.train.batch_size, fg_fraction=cfg.train.fg_fraction
    )
    if max_steps is None:
        max_steps = cfg.train.max_steps or per_epoch * cfg.train.epochs
    total = max_steps
    val = None
    if cfg.train.val_every > 0 and ctx.is_main:
        val, _ = prepare_split(cfg, cfg.data.val_split, ctx.device)

    model = build_model(cfg, len(classes), seed).to(ctx.device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
    )
    ckpt = output_dir / f"member_{member}.safetensors"
    state_path = output_dir / f"member_{member}.state.pt"
    log = TrainLog(output_dir / LOG_NAME, enabled=ctx.is_main)
    start = 0
    if resume and state_path.exists():
        start = restore(state_path, model, optimizer, cfg, member)
    log.truncate_after(start, member=member)  # a fresh run replaces this member's lines
    model = ctx.wrap(model)
    batches = RegionBatches(
        pool,
        ImageCache([r.path for r in records], cfg.data.max_pixels),
        seed=seed,
        batch_size=cfg.train.batch_size,
        fg_fraction=cfg.train.fg_fraction,
        flip=cfg.train.flip,
        warp=warp_settings(cfg.model),
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    loop = Loop(cfg, member, seed, model, optimizer, ctx, log, per_epoch)
    try:
        loop.run(batches, start, total, classes, val, ckpt, state_path)
    finally:
        shutil.rmtree(spill, ignore_errors=True)
    return ckpt


class Loop:
    """The optimisation loop of one member (steps, epochs, checkpoints, validation)."""

    def __init__(
        self,
        cfg: Config,
        member: int,
        seed: int,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        ctx: TrainContext,
        log: TrainLog,
        per_epoch: int,
    ) -> None:
        self.cfg, self.member, self.seed = cfg, member, seed
        self.model, self.optimizer = model, optimizer
        self.ctx, self.log, self.per_epoch = ctx, log, per_epoch
        self.device = ctx.device

    def run(self, batches, start, total, classes, val, ckpt, state_path) -> None:
        loader = torch.utils.data.DataLoader(
            batches,
            batch_size=None,
            sampler=range(start, total),
            num_workers=self.cfg.train.loader_workers,
            worker_init_fn=_worker_init,
            pin_memory=self.device.type == "cuda",
        )
        bar = progress_bar(
            total=total, initial=start, desc=f"member {self.member}", enabled=self.ctx.is_main
        )
        t0 = time.perf_counter()
        step = start
        for crops, labels in loader:
            epoch = step // self.per_epoch
            lr = lr_at(self.cfg.train.lr, self.cfg.train.lr_step, epoch)
            loss = self.step(crops, labels, step, lr)
            step += 1
            self.log.write(
                member=self.member, step=step, epoch=epoch, loss=round(loss, 6), lr=lr,
                seconds=round(time.perf_counter() - t0, 3),
            )  # fmt: skip
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:g}")
            if step % self.per_epoch == 0 or step == total:
                self.end_of_period(step, total, classes, val, ckpt, state_path)
        bar.close()
        if step == start and self.ctx.is_main and not ckpt.exists():
            self.save(step, classes, ckpt, state_path)  # nothing to do, still leave a checkpoint

    def step(self, crops: torch.Tensor, labels: torch.Tensor, step: int, lr: float) -> float:
        """One SGD step on this rank's share; returns the global mean loss."""
        torch.manual_seed(step_seed(self.seed, step, self.ctx.rank))
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        crops = crops.to(self.device, non_blocking=True, memory_format=torch.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        self.model.train()
        with self.ctx.autocast():
            output = self.model(crops)
        loss = classification_loss(output, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        return float(self.ctx.mean(loss.detach()))

    def end_of_period(self, step, total, classes, val, ckpt, state_path) -> None:
        """Checkpoint (rank 0) at an epoch end or the stop; validation there too (val_every)."""
        epoch_done = step // self.per_epoch
        if self.ctx.is_main:
            self.save(step, classes, ckpt, state_path)
            every = self.cfg.train.val_every
            epoch_end = every > 0 and step % self.per_epoch == 0 and epoch_done % every == 0
            if val is not None and (epoch_end or step == total):
                t = time.perf_counter()
                m = validation_map(
                    self.cfg, unwrap(self.model), classes, val, self.device, self.ctx.precision
                )
                self.log.write(
                    member=self.member, step=step, epoch=epoch_done, val_mAP=round(m, 6),
                    seconds=round(time.perf_counter() - t, 3),
                )  # fmt: skip
                print(f"member {self.member} epoch {epoch_done}: val mAP {m:.4f}", file=sys.stderr)
        self.ctx.barrier()

    def save(self, step: int, classes: ClassList, ckpt: Path, state_path: Path) -> None:
        model = unwrap(self.model)
        epoch = step // self.per_epoch
        state = {
            "model": model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": step,
            "epoch": epoch,
            "member": self.member,
            "seed": self.seed,
            "config_digest": self.cfg.digest(),
            "resume_key": resume_key(self.cfg),
        }
        save_state(state_path, state)  # atomic (temporary file + rename)
        meta = member_metadata(
            self.cfg, classes, member=self.member, seed=self.seed, epoch=epoch, step=step
        )
        save_checkpoint(ckpt, model, meta)  # atomic too


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the main process trains; workers only warp


# ----------------------------------------------------------------------------- validation


def validation_map(
    cfg: Config,
    model: nn.Module,
    classes: ClassList,
    val: Split,
    device: torch.device,
    precision: str,
) -> float:
    """Detection mAP of one member on the validation split, through the inference path.

    The member is scored as a one-member :class:`detector.ensemble.Ensemble` (the warp of
    ``model.*``, ``inference.chunk_size``, ``precision``), detections are
    ``detector.nms.per_class_nms`` with the ``inference`` settings and the score is the
    devkit's mAP (``eval.ilsvrc_ap``, ``eval.iou``, blacklist ``data.blacklist``). The model
    is back in its training mode afterwards.
    """
    was_training = model.training
    ensemble = Ensemble(
        [model],  # put in eval mode, channels_last, on device (in place)
        warp=warp_settings(cfg.model),
        device=device,
        precision=precision,
        chunk_size=cfg.inference.chunk_size,
        compile=False,
        cascade_threshold=0.0,  # one member: nothing to cascade
        backend="torch",
    )
    nms = asdict(nms_settings(cfg.inference))
    detections = []
    try:
        for rec, props in zip(val.records, val.proposals, strict=True):
            if props is None or len(props) == 0:
                detections.append(Detections())
                continue
            try:
                image = load_image(rec.path, cfg.data.max_pixels)
            except ImageLoadError as e:
                print(f"{PREFIX}: validation skips {e}", file=sys.stderr)
                detections.append(Detections())
                continue
            probs = ensemble.score(ensemble.regions(image, props.boxes))
            detections.append(Detections(*per_class_nms(props.boxes, probs, **nms)))
    finally:
        model.train(was_training)
    submission = from_detections(
        (rec.index, d) for rec, d in zip(val.records, detections, strict=True)
    )
    found = split_blacklist(cfg.data, classes, cfg.data.val_split, val.records)
    blacklist = found.pairs if found is not None else ()
    return float(evaluate(val.records, submission, len(classes), blacklist, cfg.eval.iou).mAP)
