"""MultiBox: class-agnostic box proposals from one forward pass of an Inception network.

The network (Erhan et al. 2014; Szegedy et al. 2014, section 8) sees the whole image
resized to S x S and predicts K boxes, each a correction of a k-means prior (normalised
corners), and K objectness logits. Proposals are decoded, clipped, filtered by
class-agnostic NMS and the best ``top_k`` are kept.

Checkpoints are safetensors files (they cannot execute code): the network's weights, the
priors as the tensor ``priors``, and JSON metadata under the key ``multibox`` (num_priors,
input_size, mean, std, transform_input).

Example::

    mb = MultiBox.from_checkpoint("multibox.safetensors", "cpu", top_k=200, nms_iou=0.7)
    proposals = mb.propose(image)  # Proposals, descending objectness

Training: ``detector.training.multibox``; command line: ``python -m proposals.multibox``.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from torch import Tensor, nn
from torchvision.models import GoogLeNet_Weights, googlenet
from torchvision.ops import nms

from detector.core.checkpoints import (
    WARP_RULES,
    CheckpointError,
    Rule,
    check_metadata,
    imagenet_weights_path,
    is_int,
    load_state_strict,
    read_safetensors,
    write_safetensors,
)
from detector.core.digests import file_sha256
from detector.core.structures import Proposals, ProposalSource

FEATURE_DIM = 1024  # GoogLeNet's pooled features (inception5b)
# The head predicts corrections in units of BOX_SCALE x the image side. The pooled features
# have a squared norm of ~500, so an unscaled linear regression takes steps of ~lr x alpha x
# 500 x error and diverges at classifier learning rates; the scale divides that by 100.
BOX_SCALE = 0.1
METADATA_KEY = "multibox"
FORMAT_VERSION = 1
# What each metadata field must hold (checked on loading: checkpoints are untrusted).
METADATA_RULES: dict[str, Rule] = {
    **WARP_RULES,
    "num_priors": ("an integer >= 1", lambda v: is_int(v, 1)),
}


def build_backbone(pretrained: bool, transform_input: bool = False) -> nn.Module:
    """GoogLeNet without its classifier: images (B, 3, S, S) -> features (B, 1024).

    With ImageNet weights ``transform_input`` is forced on: it maps inputs normalised with
    the ImageNet mean/std to the [-1, 1] scaling the ported weights were trained with.
    Requested but not cached weights fall back to random initialisation with a warning.
    """
    if pretrained and not imagenet_weights_path().is_file():
        warnings.warn(
            "GoogLeNet ImageNet weights are not in the torch hub cache "
            f"({torch.hub.get_dir()}/checkpoints); MultiBox starts from random weights",
            stacklevel=2,
        )
        pretrained = False
    if pretrained:
        # torchvision requires aux_logits with these weights; the aux heads are dropped after.
        net = googlenet(weights=GoogLeNet_Weights.IMAGENET1K_V1)
        net.aux_logits, net.aux1, net.aux2 = False, None, None
        net.transform_input = True
    else:
        net = googlenet(weights=None, aux_logits=False, init_weights=True)
        net.transform_input = transform_input
    net.fc = nn.Identity()
    return net


class MultiBoxNet(nn.Module):
    """GoogLeNet features + a linear head with K x 5 outputs.

    Args:
        num_priors: K, the number of prediction slots.
        priors (float32[K, 4] or None): normalised xyxy priors (None: zeros, to be loaded).
        pretrained: start the backbone from cached ImageNet weights.
        transform_input: torchvision's input re-scaling (True whenever ImageNet weights
            are, or were, used; stored in checkpoints).
    """

    def __init__(
        self,
        num_priors: int,
        priors: np.ndarray | Tensor | None = None,
        *,
        pretrained: bool = False,
        transform_input: bool = False,
    ) -> None:
        super().__init__()
        if num_priors <= 0:
            raise ValueError(f"MultiBoxNet: num_priors must be positive, got {num_priors}")
        self.num_priors = num_priors
        self.backbone = build_backbone(pretrained, transform_input)
        self.head = nn.Linear(FEATURE_DIM, num_priors * 5)
        # small corrections at the start: every slot begins on its prior
        nn.init.normal_(self.head.weight, std=1e-3)
        nn.init.zeros_(self.head.bias)
        # objectness starts near the base rate (a few positives among K slots) so the
        # summed BCE of the first steps does not swamp the location term
        with torch.no_grad():
            self.head.bias.view(num_priors, 5)[:, 4] = -float(np.log(num_priors))
        p = torch.zeros(num_priors, 4) if priors is None else torch.as_tensor(priors).float()
        if tuple(p.shape) != (num_priors, 4):
            raise ValueError(
                f"MultiBoxNet: priors of shape {tuple(p.shape)}, expected ({num_priors}, 4)"
            )
        self.register_buffer("priors", p.clone())

    @property
    def transform_input(self) -> bool:
        return bool(self.backbone.transform_input)

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (Tensor[B, 3, S, S], mean/std normalised) -> boxes (Tensor[B, K, 4]) in
        normalised xyxy (not clipped), logits (Tensor[B, K])."""
        out = self.head(self.backbone(images)).view(-1, self.num_priors, 5)  # (B, K, 5)
        return self.priors + BOX_SCALE * out[..., :4], out[..., 4]


def preprocess(image: np.ndarray, size: int, mean: Sequence[float], std: Sequence[float]) -> Tensor:
    """Whole image -> network input, identical at training and test time.

    Args:
        image (uint8[H, W, 3]): RGB.
    Returns:
        Tensor[3, S, S] float32, resized anisotropically and normalised with mean/std.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(
            f"MultiBox expects uint8[H, W, 3] RGB, got {image.dtype}{list(image.shape)}"
        )
    h, w = image.shape[:2]
    # area averaging when shrinking avoids aliasing; bilinear when enlarging
    interp = cv2.INTER_AREA if (w > size and h > size) else cv2.INTER_LINEAR
    resized = cv2.resize(image, (size, size), interpolation=interp).astype(np.float32) / 255.0
    resized = (resized - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return torch.from_numpy(np.ascontiguousarray(resized.transpose(2, 0, 1)))


def decode_proposals(
    boxes: Tensor,
    logits: Tensor,
    width: int,
    height: int,
    *,
    top_k: int,
    nms_iou: float,
    min_size: float = 1.0,
) -> Proposals:
    """Network output of one image -> :class:`Proposals` in pixels.

    Args:
        boxes (Tensor[K, 4]): normalised xyxy; logits (Tensor[K]).
        width, height: size of the original image.
        top_k: boxes kept after NMS (best scores first).
        nms_iou: class-agnostic NMS threshold.
        min_size: boxes narrower or lower than this many pixels after clipping are dropped
            (also inverted corners and non-finite values).
    Returns:
        Proposals sorted by descending sigmoid objectness, source MULTIBOX.
    """
    boxes = boxes.detach().float().cpu().clamp(0.0, 1.0)
    scores = torch.sigmoid(logits.detach().float().cpu())
    scale = torch.tensor([width, height, width, height], dtype=torch.float32)
    pix = boxes * scale
    ok = (
        torch.isfinite(pix).all(1)
        & torch.isfinite(scores)
        & (pix[:, 2] - pix[:, 0] >= min_size)
        & (pix[:, 3] - pix[:, 1] >= min_size)
    )
    pix, scores = pix[ok], scores[ok]
    keep = nms(pix, scores, nms_iou)[:top_k]  # nms returns indices by descending score
    n = len(keep)
    return Proposals(
        pix[keep].numpy(),
        scores[keep].numpy(),
        np.full(n, int(ProposalSource.MULTIBOX), dtype=np.uint8),
    )


class MultiBox:
    """Inference wrapper: whole image -> top-k class-agnostic proposals.

    Args:
        net: a trained :class:`MultiBoxNet` (put in eval mode here).
        input_size: S, the square the image is resized to.
        mean, std: input normalisation (RGB, [0, 1] scale).
        top_k, nms_iou: see :func:`decode_proposals`.
        device: where the network runs.
        batch_size: images per forward pass in :meth:`propose_batch`.
    """

    def __init__(
        self,
        net: MultiBoxNet,
        *,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        top_k: int,
        nms_iou: float,
        device: str | torch.device = "cpu",
        batch_size: int = 16,
    ) -> None:
        self.device = torch.device(device)
        self.net = net.to(self.device).eval()
        self.input_size = input_size
        self.mean, self.std = tuple(mean), tuple(std)
        self.top_k, self.nms_iou, self.batch_size = top_k, nms_iou, batch_size
        # What its proposals depend on, for the proposal cache; None = not cached (a network
        # built in memory has no checkpoint to name it by).
        self.identity: dict[str, Any] | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path,
        device: str | torch.device = "cpu",
        *,
        top_k: int,
        nms_iou: float,
        num_priors: int | None = None,
        input_size: int | None = None,
    ) -> MultiBox:
        """Load a checkpoint written by :func:`save_checkpoint`.

        ``num_priors`` / ``input_size``, when given (from the config), must equal the
        checkpoint's: a mismatch is a :class:`CheckpointError` saying what was expected.
        """
        net, meta = load_checkpoint(path, num_priors=num_priors, input_size=input_size)
        model = cls(
            net,
            input_size=meta["input_size"],
            mean=meta["mean"],
            std=meta["std"],
            top_k=top_k,
            nms_iou=nms_iou,
            device=device,
        )
        model.identity = {
            "source": "multibox",
            "checkpoint_sha256": file_sha256(path),
            "top_k": top_k,
            "nms_iou": nms_iou,
        }
        return model

    def propose(self, image: np.ndarray) -> Proposals:
        """image (uint8[H, W, 3]) -> Proposals (at most top_k, descending score)."""
        return self.propose_batch([image])[0]

    def propose_batch(self, images: Sequence[np.ndarray]) -> list[Proposals]:
        """Proposals of several images, ``batch_size`` images per forward pass."""
        out: list[Proposals] = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            batch = torch.stack(
                [preprocess(im, self.input_size, self.mean, self.std) for im in chunk]
            )
            with torch.inference_mode():
                boxes, logits = self.net(batch.to(self.device))
            for im, b, lg in zip(chunk, boxes, logits, strict=True):
                h, w = im.shape[:2]
                out.append(decode_proposals(b, lg, w, h, top_k=self.top_k, nms_iou=self.nms_iou))
        return out


def save_checkpoint(
    path: str | Path,
    net: MultiBoxNet,
    *,
    input_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    extra: dict | None = None,
) -> Path:
    """Write weights + priors + metadata as safetensors, atomically.

    ``extra`` (JSON-able: epoch, config digest, ...) is stored alongside the metadata.
    """
    meta = {
        "format_version": FORMAT_VERSION,
        "num_priors": net.num_priors,
        "input_size": int(input_size),
        "mean": [float(v) for v in mean],
        "std": [float(v) for v in std],
        "transform_input": net.transform_input,
        **(extra or {}),
    }
    return write_safetensors(path, net.state_dict(), METADATA_KEY, meta)


def read_checkpoint(path: str | Path) -> tuple[dict[str, Tensor], dict]:
    """Tensors and metadata of a MultiBox safetensors file; CheckpointError when it is not one."""
    if not Path(path).is_file():
        raise CheckpointError(f"{path}: MultiBox checkpoint not found")
    tensors, meta = read_safetensors(path, METADATA_KEY)
    if not meta:
        raise CheckpointError(f"{path}: not a MultiBox checkpoint (no {METADATA_KEY!r} metadata)")
    for key in ("num_priors", "input_size", "mean", "std", "transform_input"):
        if key not in meta:
            raise CheckpointError(f"{path}: metadata lacks {key!r}")
    check_metadata(path, meta, METADATA_RULES)
    return tensors, meta


def load_checkpoint(
    path: str | Path, *, num_priors: int | None = None, input_size: int | None = None
) -> tuple[MultiBoxNet, dict]:
    """Rebuild the network of a checkpoint; checks the metadata against the tensors and
    against the expected ``num_priors`` / ``input_size`` when given."""
    tensors, meta = read_checkpoint(path)
    k = int(meta["num_priors"])
    for name, expected, have in (
        ("num_priors", num_priors, k),
        ("input_size", input_size, meta["input_size"]),
    ):
        if expected is not None and int(expected) != int(have):
            raise CheckpointError(
                f"{path}: checkpoint has {name}={have} but {name}={expected} was expected "
                f"(set proposals.multibox.{name}={have} or use a matching checkpoint)"
            )
    priors = tensors.get("priors")
    if priors is None or tuple(priors.shape) != (k, 4):
        got = None if priors is None else tuple(priors.shape)
        raise CheckpointError(
            f"{path}: tensor 'priors' has shape {got}, expected ({k}, 4) for num_priors={k}"
        )
    net = MultiBoxNet(k, priors, transform_input=bool(meta["transform_input"]))
    load_state_strict(net, tensors, path, f"a MultiBoxNet with num_priors={k}")
    return net, meta
