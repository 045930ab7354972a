"""Training of the MultiBox proposal network; the command line is ``python -m proposals.multibox train``.

Priors by k-means on the normalised training boxes, then SGD with momentum on the
matching loss (``proposals.matching``), horizontal flips. Images are normalised with
``model.mean``/``model.std`` (stored in the checkpoint, so inference does the same). One
checkpoint per epoch, written atomically: ``multibox.safetensors`` (weights + priors +
metadata, what inference loads) and ``train_state.pt`` (optimizer state and counters for
``resume``, read back with ``torch.load(weights_only=True)``). JSON lines go to
``log.jsonl`` (every ``log_every`` steps, and one ``"event": "checkpoint"`` line per epoch);
a tqdm bar shows the run's steps.

:func:`train_multibox` takes a resolved config (``detector.resolve.resolve_config``): a real
``data.root`` of any format ``detector.datasets.open_split`` reads. It trains on
``train.device``, in fp32 (``train.precision`` is for the region classifier), as one
process or under torchrun (DistributedDataParallel, gloo on CPU, nccl on CUDA,
DistributedSampler; only rank 0 writes); see ``detector.training.scaffold``.
"""

from __future__ import annotations

import json
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler

from detector.core.atomic import atomic_write_text
from detector.core.config import Config
from detector.core.io import ImageLoadError, load_image
from detector.core.structures import ImageRecord
from detector.datasets import open_split, with_images
from detector.training.sampling import gives_background, teaches
from detector.training.scaffold import (
    TrainContext,
    TrainLog,
    load_state,
    progress_bar,
    save_state,
    setup,
)
from proposals.matching import loss_terms
from proposals.multibox.model import MultiBoxNet, preprocess, read_checkpoint, save_checkpoint
from proposals.priors import kmeans_priors

CHECKPOINT_NAME = "multibox.safetensors"
STATE_NAME = "train_state.pt"
LOG_NAME = "log.jsonl"

__all__ = [
    "MultiBoxDataset",
    "all_training_boxes",
    "collate",
    "image_size",
    "normalised_boxes",
    "recompute_batchnorm",
    "train_multibox",
]


# ---------------------------------------------------------------------------------------
# data


def image_size(record: ImageRecord) -> tuple[int, int]:
    """(width, height) from the annotation, else from the image header."""
    if record.width > 0 and record.height > 0:
        return record.width, record.height
    from PIL import Image

    from detector.core.io import ALLOWED_FORMATS

    with Image.open(record.path, formats=ALLOWED_FORMATS) as im:
        return im.width, im.height


def normalised_boxes(record: ImageRecord, width: int, height: int) -> np.ndarray:
    """record.boxes (pixels) -> float32[M, 4] normalised xyxy, clipped to [0, 1]."""
    scale = np.array([width, height, width, height], dtype=np.float32)
    return np.clip(record.boxes / scale, 0.0, 1.0).astype(np.float32)


def all_training_boxes(records: list[ImageRecord]) -> np.ndarray:
    """float32[M, 4]: every ground truth of the split, normalised (the k-means input)."""
    parts = [normalised_boxes(r, *image_size(r)) for r in records if len(r.boxes)]
    return np.concatenate(parts) if parts else np.zeros((0, 4), np.float32)


class MultiBoxDataset(Dataset):
    """(image Tensor[3, S, S], boxes Tensor[M, 4] normalised) pairs, flipped at random.

    Args:
        records: images with ground truth (pixels).
        input_size: S (``proposals.multibox.input_size``).
        mean, std: RGB normalisation on the [0, 1] scale (``model.mean`` / ``model.std``).
        flip: horizontal flips with probability 1/2 (``proposals.multibox.flip``).
        max_pixels: larger images are refused (``data.max_pixels``).
    """

    def __init__(
        self,
        records: list[ImageRecord],
        *,
        input_size: int,
        mean: tuple[float, ...] | list[float],
        std: tuple[float, ...] | list[float],
        flip: bool,
        max_pixels: int,
        background_from: str,
    ) -> None:
        self.records, self.input_size = records, input_size
        self.background_from = background_from
        self.mean, self.std = tuple(mean), tuple(std)
        self.flip, self.max_pixels = flip, max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor, bool] | None:
        """None for an unreadable image (warned about): one bad file does not stop training."""
        rec = self.records[i]
        try:
            image = load_image(rec.path, self.max_pixels)
        except ImageLoadError as e:
            warnings.warn(f"skipping {e}", stacklevel=2)
            return None
        h, w = image.shape[:2]
        boxes = normalised_boxes(rec, w, h)
        # the DataLoader seeds torch per worker, so flips differ between workers and epochs
        if self.flip and torch.rand(()) < 0.5:
            image = np.ascontiguousarray(image[:, ::-1])
            boxes = np.stack([1 - boxes[:, 2], boxes[:, 1], 1 - boxes[:, 0], boxes[:, 3]], axis=1)
        x = preprocess(image, self.input_size, self.mean, self.std)
        negatives = gives_background(rec, self.background_from)  # unmatched slots: no object
        return x, torch.from_numpy(boxes.astype(np.float32).reshape(-1, 4)), negatives


def collate(
    batch: list[tuple[Tensor, Tensor, bool] | None],
) -> tuple[Tensor, list[Tensor], Tensor] | None:
    """-> images (Tensor[B, 3, S, S]), boxes (B tensors [M_b, 4]), negatives (Tensor[B]
    bool: unmatched slots are negatives); unreadable images left out (None when none is left)."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    negatives = torch.tensor([b[2] for b in batch], dtype=torch.bool)
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch], negatives


# ---------------------------------------------------------------------------------------
# training


def train_multibox(
    cfg: Config,
    output_dir: str | Path | None = None,
    *,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
) -> Path:
    """Train MultiBox on ``cfg``'s training split; returns the checkpoint path.

    Args:
        cfg: the resolved config (``data.*``, ``proposals.multibox.*``, ``model.mean/std``,
            ``train.device``).
        output_dir: where checkpoints and logs go (default ``proposals.multibox.output_dir``).
        resume: continue from ``output_dir``'s ``train_state.pt`` and checkpoint when both
            exist (else start afresh; a fresh run replaces the log).
        max_steps: stop after this many optimizer steps in all (tests, demo); None = epochs.
        progress: show a tqdm bar (rank 0).
    Raises:
        ValueError: a split without images; CheckpointError: unreadable resume files;
        FloatingPointError: the loss diverged.
    """
    mb = cfg.proposals.multibox
    out = Path(output_dir or mb.output_dir)
    ctx = setup(cfg.train)
    torch.manual_seed(mb.seed + ctx.rank)
    records = with_images(open_split(cfg.data, cfg.data.train_split)[0])
    # an image with nothing boxed and an incomplete annotation teaches nothing
    records = [r for r in records if teaches(r, cfg.train.background_from)]
    if not records:
        raise ValueError(f"{cfg.data.root}: split {cfg.data.train_split!r} has no images")
    net, opt, start_epoch, step = _build(cfg, records, out, resume, ctx)
    model = ctx.wrap(net)
    dataset = MultiBoxDataset(
        records,
        input_size=mb.input_size,
        mean=cfg.model.mean,
        std=cfg.model.std,
        flip=mb.flip,
        max_pixels=cfg.data.max_pixels,
        background_from=cfg.train.background_from,
    )
    sampler = (
        DistributedSampler(dataset, ctx.world_size, ctx.rank, shuffle=True, seed=mb.seed)
        if ctx.distributed
        else RandomSampler(dataset, generator=torch.Generator().manual_seed(mb.seed))
    )
    loader = DataLoader(
        dataset,
        batch_size=mb.batch_size,
        sampler=sampler,
        num_workers=mb.loader_workers,
        collate_fn=collate,
    )
    log = TrainLog(out / LOG_NAME, enabled=ctx.is_main)
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "config.json", json.dumps(cfg.to_dict(), indent=1))
        log.truncate_after(step)  # a resumed run continues the log; a fresh one replaces it
    total = step + max(0, mb.epochs - start_epoch) * len(loader)
    if max_steps is not None:
        total = max(step, min(total, max_steps))
    bar = progress_bar(total=total, initial=step, desc="multibox", enabled=progress and ctx.is_main)
    for epoch in range(start_epoch, mb.epochs):
        if max_steps is not None and step >= max_steps:
            break
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        else:  # reseeded per epoch, so an epoch's order survives --resume
            sampler.generator.manual_seed(mb.seed + epoch)
        step = _train_epoch(model, opt, loader, epoch, step, cfg, ctx, log, bar, max_steps)
        recompute_batchnorm(net, loader, mb.bn_batches, ctx.device)
        if ctx.is_main:
            _save(out, net, opt, epoch, step, cfg, log)
    bar.close()
    ctx.barrier()
    return out / CHECKPOINT_NAME


def _build(
    cfg: Config, records: list[ImageRecord], out: Path, resume: bool, ctx: TrainContext
) -> tuple[MultiBoxNet, torch.optim.Optimizer, int, int]:
    """Network (new, or from the checkpoint on --resume), optimizer, first epoch, step."""
    mb = cfg.proposals.multibox
    state_path, ckpt_path = out / STATE_NAME, out / CHECKPOINT_NAME
    resuming = resume and state_path.is_file() and ckpt_path.is_file()
    if resuming:
        tensors, meta = read_checkpoint(ckpt_path)
        net = MultiBoxNet(
            meta["num_priors"], tensors["priors"], transform_input=meta["transform_input"]
        )
        net.load_state_dict(tensors)
    else:
        priors = torch.from_numpy(
            kmeans_priors(all_training_boxes(records), mb.num_priors, mb.seed)
        )
        ctx.broadcast(priors)  # k-means is deterministic, but every rank must hold the same slots
        net = MultiBoxNet(mb.num_priors, priors, pretrained=mb.pretrained_backbone)
    net = net.to(ctx.device)
    opt = torch.optim.SGD(
        net.parameters(), lr=mb.lr, momentum=mb.momentum, weight_decay=mb.weight_decay
    )
    if not resuming:
        return net, opt, 0, 0
    state = load_state(state_path, map_location=ctx.device)
    opt.load_state_dict(state["optimizer"])
    return net, opt, int(state["epoch"]) + 1, int(state["step"])


def _train_epoch(model, opt, loader, epoch, step, cfg, ctx, log, bar, max_steps) -> int:
    mb = cfg.proposals.multibox
    model.train()
    t0 = time.time()
    for batch in loader:
        if batch is None:
            continue
        images, gts, negatives = batch
        boxes, logits = model(images.to(ctx.device, non_blocking=True))
        gts = [g.to(ctx.device) for g in gts]
        location, confidence = loss_terms(boxes, logits, gts, mb.alpha, negatives)
        loss = location + confidence
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"MultiBox loss is {loss.item()} at step {step}: lower proposals.multibox.lr"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(epoch=epoch, loss=f"{loss.item():.3f}")
        if step % mb.log_every == 0 or step == 1:
            log.write(
                epoch=epoch,
                step=step,
                loss=loss.item(),
                location=location.item(),
                confidence=confidence.item(),
                lr=opt.param_groups[0]["lr"],
                seconds=time.time() - t0,
            )
        if max_steps is not None and step >= max_steps:
            break
    return step


def recompute_batchnorm(net: torch.nn.Module, loader: DataLoader, batches: int, device) -> None:
    """Precise BN: replace the BatchNorm running statistics by their average over
    ``batches`` training batches under the final weights.

    The running averages (momentum 0.1) trail the weights; after a short run, or a large
    learning rate, evaluation-mode outputs then differ from training-mode ones. Each rank
    recomputes its own; rank 0's are saved.
    """
    norms = [m for m in net.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if batches <= 0 or not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    net.train()
    with torch.no_grad():
        for _, batch in zip(range(batches), loader, strict=False):
            if batch is not None:
                net(batch[0].to(device))
    for m, momentum in zip(norms, momenta, strict=True):
        m.momentum = momentum


def _save(
    out: Path, net: MultiBoxNet, opt, epoch: int, step: int, cfg: Config, log: TrainLog
) -> None:
    mb = cfg.proposals.multibox
    save_checkpoint(
        out / CHECKPOINT_NAME,
        net,
        input_size=mb.input_size,
        mean=cfg.model.mean,
        std=cfg.model.std,
        extra={"epoch": epoch, "step": step, "config_digest": cfg.digest()},
    )
    save_state(out / STATE_NAME, {"optimizer": opt.state_dict(), "epoch": epoch, "step": step})
    log.write(event="checkpoint", epoch=epoch, step=step, path=str(out / CHECKPOINT_NAME))
