"""Region classifier fine-tuning (R-CNN): ``python -m detector.train``.

Each ensemble member is a GoogLeNet with ``classes + 1`` outputs trained on warped
proposals: positives IoU >= 0.5 with a ground truth of their class (plus the ground truths),
background below, mini-batches of 128 = 32 + 96 regions sampled across all training images,
the same warp as inference, horizontal flips, SGD with momentum. Member ``i`` uses seed
``train.seed + i`` for its initial weights (when not pretrained), region sampling and order.

Examples::

    python -m detector.train                                  # demo config, member 0
    python -m detector.train --members all                    # all model.members members
    python -m detector.train --config ilsvrc2014 data.root=/data/ILSVRC --member 3
    python -m detector.train --member 0 --resume              # continue where it stopped
    python -m detector.train --max-steps 50 train.epochs=2 model.input_size=64

    # one command for one CPU, one GPU or many: under torchrun it runs DistributedDataParallel
    # (gloo on CPU, nccl on CUDA, rank r on cuda:LOCAL_RANK); every rank draws the same global
    # mini-batch of train.batch_size regions and warps and trains on positions r, r + N, ...
    # of it (gradients averaged: the single-process semantics, except that batch-norm
    # statistics are per rank); only rank 0 writes files and validates
    torchrun --nproc_per_node 4 -m detector.train --config ilsvrc2014 data.root=/data/ILSVRC

Outputs in ``--output-dir`` (default ``train.output_dir``):
``member_<i>.safetensors`` (weights + metadata: classes, input size, context pad, mean,
std, config digest, member, seed, epoch, step; written atomically at every epoch end and at
the stop), ``member_<i>.state.pt`` (weights, optimizer, step: what ``--resume`` reads, with
``torch.load(weights_only=True)``) and ``train_log.jsonl`` (one line per step: step,
epoch, loss, lr, seconds since the run started; one per validation: val_mAP).
Validation (``train.val_every`` epochs, and at the stop) detects on ``data.val_split`` with
the member alone (warp, softmax, per-class NMS with the ``inference`` settings) and scores
with the devkit's mAP (``eval.ilsvrc_ap``).

Speed: ``train.precision=bf16`` (autocast, the default) trains GoogLeNet 1.5x (input 64) to
1.6x (input 96) faster than fp32 on this project's 2-core AMX machine, with the same loss
curve; on a CPU without native bf16 set ``train.precision=fp32``.

Determinism: mini-batch ``s`` of a member is a pure function of ``(seed, s)`` (see
``detector.region_dataset``) and the dropout generator is re-seeded every step, so a
resumed run reproduces the uninterrupted one (same device, precision and thread count).
A state written with other data, model or optimisation settings is not resumed: the member
starts over (changing epochs, max_steps, val_every, workers or the device is allowed).
An epoch is ``ceil(positives / positives per batch)`` steps: every positive is seen about
once per epoch (background regions, far more numerous, are subsampled).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from detector.config import Config, add_config_args, load_config
from detector.datasets.ilsvrc import read_blacklist
from detector.devices import select_device
from detector.region_dataset import (
    ImageCache,
    RegionBatches,
    build_region_pool,
    open_split,
)
from detector.runtime import tune_allocator
from detector.sampling import RegionPool
from detector.structures import ClassList, Detections, ImageRecord, Proposals

AUX_WEIGHT = 0.3  # GoogLeNet's auxiliary classifiers, when the model has them (paper, section 6)
LOG_NAME = "train_log.jsonl"
PROPOSAL_CHUNK = 256  # images decoded at a time while computing proposals (bounds memory)


@dataclass
class Dist:
    """This process's place in a torchrun job (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def init_distributed(device: torch.device) -> Dist:
    """Join the torchrun process group when ``WORLD_SIZE`` > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """Autocast dtype for ``train.precision`` (None = fp32)."""
    if precision == "fp32":
        return None
    if precision in ("bf16", "auto"):
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            return None
        return torch.bfloat16
    raise ValueError(f"train.precision {precision!r}: expected auto, fp32 or bf16")


# ----------------------------------------------------------------------------- data


def compute_proposals(
    cfg: Config, records: list[ImageRecord], device: torch.device
) -> list[Proposals | None]:
    """Proposals of every record through the cached proposal stage (None: the image failed).

    With the demo config an unset MultiBox checkpoint means the demo's built one.
    """
    from detector.demo import with_demo_defaults
    from detector.io import ImageLoadError, load_image
    from proposals.generator import ProposalGenerator

    generator = ProposalGenerator.from_config(with_demo_defaults(cfg), device=str(device))
    out: list[Proposals | None] = [None] * len(records)
    for first in range(0, len(records), PROPOSAL_CHUNK):
        chunk = range(first, min(first + PROPOSAL_CHUNK, len(records)))
        loaded, images = [], []  # the records whose image decoded, and their pixels
        for i in chunk:
            try:
                images.append(load_image(records[i].path, cfg.data.max_pixels))
                loaded.append(i)
            except ImageLoadError as e:  # one bad image must not cost the run
                print(f"detector.train: skipping {e}", file=sys.stderr)
        workers = cfg.proposals.selective_search.workers
        for i, props in zip(loaded, generator.propose_many(images, workers=workers), strict=True):
            out[i] = props
    return out


@dataclass
class Split:
    records: list[ImageRecord]
    proposals: list[Proposals | None]


def prepare_split(
    cfg: Config, split: str, device: torch.device, ctx: Dist
) -> tuple[Split, ClassList]:
    """Records and proposals of a split; rank 0 computes (and caches) first, the others reuse."""
    records, classes, _ = open_split(cfg, split)
    if split == cfg.data.train_split and cfg.train.max_images:
        records = records[: cfg.train.max_images]
    if not ctx.is_main:
        ctx.barrier()
    props = compute_proposals(cfg, records, device)
    if ctx.is_main:
        ctx.barrier()
    return Split(records, props), classes


def steps_per_epoch(pool: RegionPool, batch_size: int, fg_fraction: float) -> int:
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
    from detector.classifier import build_googlenet, imagenet_weights_path

    if cfg.model.pretrained and not imagenet_weights_path().is_file():
        print(
            f"detector.train: {imagenet_weights_path()}: GoogLeNet ImageNet weights not cached; "
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
    cfg: Config, classes: ClassList, member: int, seed: int, epoch: int, step: int
) -> dict:
    """What a member's safetensors checkpoint records besides its weights."""
    from detector.classifier import checkpoint_metadata

    return checkpoint_metadata(
        classes, input_size=cfg.model.input_size, context_pad=cfg.model.context_pad,
        mean=list(cfg.model.mean), std=list(cfg.model.std), config_digest=cfg.digest(),
        member=member, seed=seed, epoch=epoch, step=step,
    )  # fmt: skip


def save_state(path: Path, state: dict) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_state(path: Path) -> dict:
    """The resumable state (weights_only: the file cannot run code)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(
            f"{path}: not a readable training state ({type(e).__name__}: {e})"
        ) from None


class TrainLog:
    """``train_log.jsonl``: appended one line at a time by rank 0."""

    def __init__(self, path: Path, enabled: bool):
        self.path, self.enabled = path, enabled

    def truncate_after(self, step: int, member: int) -> None:
        """On resume, drop this member's lines past the checkpointed step (an interrupted tail)."""
        if not self.enabled or not self.path.exists():
            return
        keep = []
        for line in self.path.read_text().splitlines():
            try:
                rec = json.loads(line)
            except ValueError:
                continue
            if rec.get("member") != member or rec.get("step", 0) <= step:
                keep.append(line)
        self.path.write_text("".join(f"{line}\n" for line in keep))

    def write(self, **record) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


# ----------------------------------------------------------------------------- loop


def train_member(
    cfg: Config,
    member: int,
    output_dir: Path,
    resume: bool = False,
    max_steps: int | None = None,
) -> Path:
    """Fine-tune ensemble member ``member``; returns the path of its checkpoint.

    Args:
        cfg: the full config (``data``, ``proposals``, ``model``, ``train`` are read).
        member: index i; the member's seed is ``cfg.train.seed + i``.
        output_dir: receives ``member_<i>.safetensors``, ``member_<i>.state.pt``, the log.
        resume: continue from ``member_<i>.state.pt`` if it exists.
        max_steps: stop after this global step (absolute, so resuming with 2N after N
            continues to 2N); None = ``train.max_steps``, or if 0 ``train.epochs`` epochs.
    """
    output_dir = Path(output_dir)
    device = select_device(cfg.train.device)
    ctx = init_distributed(device)
    device = select_device(cfg.train.device, ctx.local_rank)
    if ctx.is_main:
        output_dir.mkdir(parents=True, exist_ok=True)
    seed = cfg.train.seed + member
    train, classes = prepare_split(cfg, cfg.data.train_split, device, ctx)
    pool = build_region_pool(train.records, train.proposals, cfg.train.fg_iou, cfg.train.bg_iou)
    if len(pool) == 0:
        raise ValueError(
            f"split {cfg.data.train_split!r}: no training regions (no images, or every image failed)"
        )
    per_epoch = steps_per_epoch(pool, cfg.train.batch_size, cfg.train.fg_fraction)
    if max_steps is None:
        max_steps = cfg.train.max_steps or per_epoch * cfg.train.epochs
    total = max_steps
    val = None
    if cfg.train.val_every > 0 and ctx.is_main:
        val, _ = prepare_split(cfg, cfg.data.val_split, device, Dist())

    model = build_model(cfg, len(classes), seed).to(device)
    optimizer = torch.optim.SGD(
        model.parameters(),
        lr=cfg.train.lr,
        momentum=cfg.train.momentum,
        weight_decay=cfg.train.weight_decay,
    )
    ckpt = output_dir / f"member_{member}.safetensors"
    state_path = output_dir / f"member_{member}.state.pt"
    log = TrainLog(output_dir / LOG_NAME, ctx.is_main)
    start = 0
    if resume and state_path.exists():
        start = restore(state_path, model, optimizer, cfg, member)
    log.truncate_after(start, member)  # a fresh run replaces this member's lines
    if ctx.world_size > 1:
        model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    batches = RegionBatches(
        pool,
        ImageCache([r.path for r in train.records], cfg.data.max_pixels),
        seed=seed,
        batch_size=cfg.train.batch_size,
        fg_fraction=cfg.train.fg_fraction,
        flip=cfg.train.flip,
        size=cfg.model.input_size,
        context_pad=cfg.model.context_pad,
        mean=cfg.model.mean,
        std=cfg.model.std,
        rank=ctx.rank,
        world_size=ctx.world_size,
    )
    loop = Loop(cfg, member, seed, model, optimizer, device, ctx, log, per_epoch)
    loop.run(batches, start, total, classes, val, ckpt, state_path)
    return ckpt


# Settings that may change between a run and its resumption (more epochs, another log cadence).
RESUMABLE_CHANGES = {
    "train": ("epochs", "max_steps", "val_every", "workers", "output_dir", "device")
}


def resume_key(cfg: Config) -> str:
    """Digest of what the training state depends on (not inference/eval/output settings)."""
    d = cfg.to_dict()
    for section in ("inference", "eval", "source"):
        d.pop(section, None)
    for section, keys in RESUMABLE_CHANGES.items():
        for key in keys:
            d[section].pop(key, None)
    return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


def restore(state_path: Path, model: nn.Module, optimizer, cfg: Config, member: int) -> int:
    """Load weights and optimizer from the state file; returns the step to continue from.

    A state written with other data, model or optimisation settings is not resumed (0).
    """
    state = load_state(state_path)
    if state.get("member") != member:
        raise ValueError(f"{state_path}: state of member {state.get('member')}, not {member}")
    if state.get("resume_key") != resume_key(cfg):
        print(
            f"detector.train: {state_path}: written with other settings; starting over",
            file=sys.stderr,
        )
        return 0
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    return int(state["step"])


class Loop:
    """The optimisation loop of one member (steps, epochs, checkpoints, validation)."""

    def __init__(self, cfg, member, seed, model, optimizer, device, ctx, log, per_epoch):
        self.cfg, self.member, self.seed = cfg, member, seed
        self.model, self.optimizer, self.device = model, optimizer, device
        self.ctx, self.log, self.per_epoch = ctx, log, per_epoch
        self.autocast = resolve_precision(cfg.train.precision, device)

    def run(self, batches, start, total, classes, val, ckpt, state_path) -> None:
        from tqdm import tqdm

        loader = torch.utils.data.DataLoader(
            batches,
            batch_size=None,
            sampler=range(start, total),
            num_workers=self.cfg.train.workers,
            worker_init_fn=_worker_init,
            pin_memory=self.device.type == "cuda",
        )
        bar = tqdm(
            total=total,
            initial=start,
            desc=f"member {self.member}",
            disable=not self.ctx.is_main,
            dynamic_ncols=True,
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
        with torch.autocast(
            self.device.type,
            dtype=self.autocast or torch.float32,
            enabled=self.autocast is not None,
        ):
            output = self.model(crops)
        loss = classification_loss(output, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = loss.detach()
        if self.ctx.world_size > 1:
            dist.all_reduce(value, op=dist.ReduceOp.AVG)
        return float(value)

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
                    self.cfg, unwrap(self.model), classes, val, self.device, self.autocast
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
        save_state(state_path, state)
        from detector.classifier import save_checkpoint

        meta = member_metadata(self.cfg, classes, self.member, self.seed, epoch, step)
        save_checkpoint(ckpt, model, meta)  # atomic (temporary file + rename)


def unwrap(model: nn.Module) -> nn.Module:
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def _worker_init(_: int) -> None:
    torch.set_num_threads(1)  # the main process trains; workers only warp


# ----------------------------------------------------------------------------- validation


@torch.no_grad()
def score_regions(
    model: nn.Module,
    image: np.ndarray,
    boxes: np.ndarray,
    cfg: Config,
    device: torch.device,
    autocast: torch.dtype | None = None,
    chunk: int = 256,
) -> np.ndarray:
    """Softmax of one member over warped regions (the inference warp).

    Returns:
        float32[N, K + 1]; column 0 is background.
    """
    from detector.warp import warp_regions

    out = []
    for i in range(0, len(boxes), chunk):
        crops = warp_regions(
            image, boxes[i : i + chunk], size=cfg.model.input_size,
            context_pad=cfg.model.context_pad, mean=cfg.model.mean, std=cfg.model.std,
            device=device,
        )  # fmt: skip
        with torch.autocast(
            device.type, dtype=autocast or torch.float32, enabled=autocast is not None
        ):
            logits = model(crops)
        out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, 0), np.float32)


def detect_image(probs: np.ndarray, boxes: np.ndarray, cfg: Config) -> Detections:
    """Per-class NMS of one image's scored proposals, with the inference settings."""
    from detector.nms import per_class_nms

    inf = cfg.inference
    kept_boxes, scores, labels = per_class_nms(
        boxes, probs, nms_iou=inf.nms_iou, score_threshold=inf.score_threshold,
        max_per_class=inf.max_per_class, max_detections=inf.max_detections,
    )  # fmt: skip
    return Detections(kept_boxes, scores, labels)


def validation_map(
    cfg: Config,
    model: nn.Module,
    classes: ClassList,
    val: Split,
    device: torch.device,
    autocast: torch.dtype | None = None,
) -> float:
    """Detection mAP of one member on the validation split (devkit protocol)."""
    from detector.io import ImageLoadError, load_image
    from eval.ilsvrc_ap import evaluate
    from eval.submission import from_detections

    was_training = model.training
    model.eval()
    detections = []
    for rec, props in zip(val.records, val.proposals, strict=True):
        if props is None or len(props) == 0:
            detections.append(Detections())
            continue
        try:
            image = load_image(rec.path, cfg.data.max_pixels)
        except ImageLoadError as e:
            print(f"detector.train: validation skips {e}", file=sys.stderr)
            detections.append(Detections())
            continue
        probs = score_regions(model, image, props.boxes, cfg, device, autocast)
        detections.append(detect_image(probs, props.boxes, cfg))
    model.train(was_training)
    submission = from_detections(
        (rec.index, d) for rec, d in zip(val.records, detections, strict=True)
    )
    blacklist = (
        read_blacklist(blacklist_path(cfg.data.blacklist), classes) if cfg.data.blacklist else ()
    )
    return float(evaluate(val.records, submission, len(classes), blacklist, cfg.eval.iou).mAP)


def blacklist_path(name: str) -> Path:
    """``data.blacklist``: a file, or "ilsvrc2014" for the shipped 2014 val blacklist."""
    if name == "ilsvrc2014":
        return Path(__file__).resolve().parent / "data" / "ilsvrc2014_det_val_blacklist.txt"
    return Path(name).expanduser()


# ----------------------------------------------------------------------------- CLI


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m detector.train",
        description="Fine-tune the ensemble's GoogLeNet region classifiers (R-CNN).",
    )
    add_config_args(parser)
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--member", type=int, default=0, help="train this member (0-based; default 0)"
    )
    which.add_argument(
        "--members", choices=["all"], default=None, help="'all': members 0 .. model.members-1"
    )
    parser.add_argument("--resume", action="store_true", help="continue from member_<i>.state.pt")
    parser.add_argument("--output-dir", default=None, help="default: train.output_dir")
    parser.add_argument(
        "--max-steps",
        type=int,
        default=None,
        help="stop after this global step (default: train.max_steps, else train.epochs epochs)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    tune_allocator()
    try:
        cfg = load_config(args.config, args.overrides)
    except ValueError as e:
        print(f"detector.train: {e}", file=sys.stderr)
        return 2
    members = range(cfg.model.members) if args.members == "all" else [args.member]
    if not 0 <= min(members) <= max(members) < max(cfg.model.members, 1):
        print(
            f"detector.train: --member {args.member} outside 0..{cfg.model.members - 1}",
            file=sys.stderr,
        )
        return 2
    out = Path(args.output_dir or cfg.train.output_dir)
    try:
        for i in members:
            path = train_member(cfg, i, out, resume=args.resume, max_steps=args.max_steps)
            if int(os.environ.get("RANK", "0")) == 0:
                print(f"member {i}: {path}")
    except (ValueError, FileNotFoundError) as e:
        print(f"detector.train: {e}", file=sys.stderr)
        return 1
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
