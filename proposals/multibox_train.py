"""Training loop of the MultiBox proposal network (``python -m proposals.multibox train``).

Priors by k-means on the normalised training boxes, then SGD with momentum on the
matching loss (``proposals.matching``), horizontal flips. One checkpoint per epoch, written
atomically: ``multibox.safetensors`` (weights + priors + metadata, what inference loads)
and ``train_state.pt`` (optimizer state and counters for ``--resume``, read back with
``torch.load(weights_only=True)``). JSON lines go to ``log.jsonl``.

Runs as one process or under torchrun (DistributedDataParallel, gloo on CPU, nccl on
CUDA, DistributedSampler; only rank 0 writes).

Examples:
    python -m proposals.multibox train --config demo
    python -m proposals.multibox train --config demo proposals.multibox.epochs=2 --output-dir /tmp/mb
    python -m proposals.multibox train --config demo --resume
    torchrun --nproc_per_node 2 -m proposals.multibox train --config demo
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler
from tqdm import tqdm

from detector.config import Config, add_config_args, load_config
from detector.devices import select_device
from detector.io import ImageLoadError, load_image
from detector.structures import ImageRecord
from proposals.matching import loss_terms
from proposals.multibox import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    MultiBoxNet,
    preprocess,
    read_checkpoint,
    save_checkpoint,
)
from proposals.priors import kmeans_priors

CHECKPOINT_NAME = "multibox.safetensors"
STATE_NAME = "train_state.pt"
LOG_NAME = "log.jsonl"


# ---------------------------------------------------------------------------------------
# data


def training_records(cfg: Config) -> list[ImageRecord]:
    """The training split's records that have an image (config ``data.*``)."""
    from detector.datasets import IlsvrcDet

    if cfg.data.format != "ilsvrc":
        raise ValueError(f"data.format={cfg.data.format!r}: MultiBox training reads ilsvrc only")
    root = Path(cfg.data.root) if cfg.data.root else _demo_root(cfg)
    records = [r for r in IlsvrcDet(root, cfg.data.train_split) if r.path is not None]
    if not records:
        raise ValueError(f"{root}: split {cfg.data.train_split!r} has no images")
    return records


def _demo_root(cfg: Config) -> Path:
    from detector.datasets.demo import ensure_demo_dataset

    return Path(ensure_demo_dataset(cfg))


def image_size(record: ImageRecord) -> tuple[int, int]:
    """(width, height) from the annotation, else from the image header."""
    if record.width > 0 and record.height > 0:
        return record.width, record.height
    from PIL import Image

    with Image.open(record.path) as im:
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
    """(image Tensor[3, S, S], boxes Tensor[M, 4] normalised) pairs, flipped at random."""

    def __init__(
        self,
        records: list[ImageRecord],
        *,
        input_size: int,
        mean=IMAGENET_MEAN,
        std=IMAGENET_STD,
        flip: bool = True,
        max_pixels: int = 50_000_000,
    ) -> None:
        self.records, self.input_size, self.mean, self.std = records, input_size, mean, std
        self.flip, self.max_pixels = flip, max_pixels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor] | None:
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
        return x, torch.from_numpy(boxes.astype(np.float32).reshape(-1, 4))


def collate(batch: list[tuple[Tensor, Tensor] | None]) -> tuple[Tensor, list[Tensor]] | None:
    """-> images (Tensor[B, 3, S, S]), boxes (B tensors [M_b, 4]); unreadable images left out
    (None when none is left)."""
    batch = [b for b in batch if b is not None]
    if not batch:
        return None
    return torch.stack([b[0] for b in batch]), [b[1] for b in batch]


# ---------------------------------------------------------------------------------------
# distributed set-up


@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str) -> Dist:
    """Join the torchrun group when WORLD_SIZE > 1 (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    dev = select_device(device, local)
    if world <= 1:
        return Dist(0, 1, dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), dev)


# ---------------------------------------------------------------------------------------
# training


def train_multibox(
    cfg: Config,
    output_dir: str | Path | None = None,
    resume: bool = False,
    max_steps: int | None = None,
    progress: bool = True,
) -> Path:
    """Train MultiBox on ``cfg``'s training split; returns the checkpoint path.

    Args:
        cfg: the config (``data.*``, ``proposals.multibox.*``, ``inference.device``).
        output_dir: where checkpoints and logs go (default ``proposals.multibox.output_dir``).
        resume: continue from ``output_dir``'s ``train_state.pt`` and checkpoint when both
            exist (else start afresh).
        max_steps: stop after this many optimizer steps in all (tests, demo); None = epochs.
        progress: show a tqdm bar (rank 0).
    """
    mb = cfg.proposals.multibox
    out = Path(output_dir or mb.output_dir)
    d = setup_distributed(cfg.inference.device)
    torch.manual_seed(mb.seed + d.rank)
    # rank 0 may have to generate the demo dataset first; the others wait for it
    if d.world > 1 and not d.main:
        dist.barrier()
    records = training_records(cfg)
    if d.world > 1 and d.main:
        dist.barrier()
    net, opt, start_epoch, step = _build(cfg, records, out, resume, d)
    model = DistributedDataParallel(net) if d.world > 1 else net
    dataset = MultiBoxDataset(
        records, input_size=mb.input_size, flip=mb.flip, max_pixels=cfg.data.max_pixels
    )
    sampler = (
        DistributedSampler(dataset, d.world, d.rank, shuffle=True, seed=mb.seed)
        if d.world > 1
        else RandomSampler(dataset, generator=torch.Generator().manual_seed(mb.seed))
    )
    loader = DataLoader(
        dataset,
        batch_size=mb.batch_size,
        sampler=sampler,
        num_workers=mb.workers,
        collate_fn=collate,
    )
    if d.main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=1))
    for epoch in range(start_epoch, mb.epochs):
        if max_steps is not None and step >= max_steps:
            break
        if isinstance(sampler, DistributedSampler):
            sampler.set_epoch(epoch)
        else:  # reseeded per epoch, so an epoch's order survives --resume
            sampler.generator.manual_seed(mb.seed + epoch)
        step = _train_epoch(model, opt, loader, epoch, step, cfg, out, d, max_steps, progress)
        recompute_batchnorm(net, loader, mb.bn_batches, d.device)
        if d.main:
            _save(out, net, opt, epoch, step, cfg)
    if d.world > 1:
        dist.barrier()
    return out / CHECKPOINT_NAME


def _build(
    cfg: Config, records: list[ImageRecord], out: Path, resume: bool, d: Dist
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
        if d.world > 1:  # k-means is deterministic, but every rank must hold the same slots
            dist.broadcast(priors, 0)
        net = MultiBoxNet(mb.num_priors, priors, pretrained=mb.pretrained_backbone)
    net = net.to(d.device)
    opt = torch.optim.SGD(
        net.parameters(), lr=mb.lr, momentum=mb.momentum, weight_decay=mb.weight_decay
    )
    if not resuming:
        return net, opt, 0, 0
    state = torch.load(state_path, map_location=d.device, weights_only=True)
    opt.load_state_dict(state["optimizer"])
    return net, opt, int(state["epoch"]) + 1, int(state["step"])


def _train_epoch(model, opt, loader, epoch, step, cfg, out, d, max_steps, progress) -> int:
    mb = cfg.proposals.multibox
    model.train()
    bar = tqdm(
        loader, desc=f"multibox epoch {epoch}", disable=not (progress and d.main), leave=False
    )
    t0 = time.time()
    for batch in bar:
        if batch is None:
            continue
        images, gts = batch
        boxes, logits = model(images.to(d.device, non_blocking=True))
        location, confidence = loss_terms(boxes, logits, [g.to(d.device) for g in gts], mb.alpha)
        loss = location + confidence
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"MultiBox loss is {loss.item()} at step {step}: lower proposals.multibox.lr"
            )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.set_postfix(loss=f"{loss.item():.3f}")
        if d.main and (step % mb.log_every == 0 or step == 1):
            _log(
                out,
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


def _save(out: Path, net: MultiBoxNet, opt, epoch: int, step: int, cfg: Config) -> None:
    mb = cfg.proposals.multibox
    save_checkpoint(
        out / CHECKPOINT_NAME,
        net,
        input_size=mb.input_size,
        extra={"epoch": epoch, "step": step, "config_digest": cfg.digest()},
    )
    tmp = out / (STATE_NAME + ".tmp")
    torch.save({"optimizer": opt.state_dict(), "epoch": epoch, "step": step}, tmp)
    os.replace(tmp, out / STATE_NAME)
    _log(out, event="checkpoint", epoch=epoch, step=step, path=str(out / CHECKPOINT_NAME))


def _log(out: Path, **record) -> None:
    """One JSON line in log.jsonl (rank 0 only calls this)."""
    out.mkdir(parents=True, exist_ok=True)
    with open(out / LOG_NAME, "a") as f:
        f.write(json.dumps(record) + "\n")


# ---------------------------------------------------------------------------------------
# command line


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m proposals.multibox train",
        description="Train the MultiBox proposal network on the training split.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("Examples:", 1)[1],
    )
    add_config_args(parser)
    parser.add_argument(
        "--resume", action="store_true", help="continue from the output directory's last checkpoint"
    )
    parser.add_argument(
        "--output-dir",
        default=None,
        help="checkpoints and logs (default proposals.multibox.output_dir)",
    )
    parser.add_argument(
        "--max-steps", type=int, default=None, help="stop after this many optimizer steps"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = get_args_parser().parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        path = train_multibox(cfg, args.output_dir, resume=args.resume, max_steps=args.max_steps)
    except (
        ValueError,
        FileNotFoundError,
    ) as e:  # ConfigError, CheckpointError, AnnotationError, ...
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(json.dumps({"checkpoint": str(path)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
