"""MultiBox training target: one-to-one matching of ground truths to slots, and the loss.

Matching (docs/PROTOCOLS.md, "MultiBox training"): slot i with predicted box l_i (normalised xyxy) and
confidence c_i = sigmoid(x_i) is assigned to ground truth g_j by the Hungarian algorithm
(``scipy.optimize.linear_sum_assignment``) on the cost

    cost[i, j] = alpha / 2 * ||l_i - g_j||^2 - log c_i + log(1 - c_i),

i.e. the increase of the loss when slot i becomes g_j's positive instead of a negative.
``-log c + log(1 - c)`` equals ``-x``; it is written with ``logsigmoid`` as in the paper.
Every ground truth gets its own slot (when M <= K); the rest are negatives.

Loss of one image = alpha / 2 * sum of the matched squared corner errors
                    + sum over all K slots of the binary cross-entropy (matched = 1, else 0).
The batch loss is the mean of the per-image losses (a sum over slots, a mean over images):
the per-image scale is the paper's, and the learning rate does not depend on the batch size.
An image without ground truth contributes only its K negatives. An image whose annotation
is not complete for every class (``negatives`` False, see ``train.background_from``)
contributes only its matched slots: an unmatched slot there may sit on an unboxed object.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from torch import Tensor


def match_cost(pred_boxes: Tensor, logits: Tensor, gt: Tensor, alpha: float) -> Tensor:
    """The matching cost matrix of one image.

    Args:
        pred_boxes (Tensor[K, 4]): predicted boxes, normalised xyxy.
        logits (Tensor[K]): objectness logits.
        gt (Tensor[M, 4]): ground-truth boxes, normalised xyxy.
    Returns:
        cost (Tensor[K, M]).
    """
    sq = ((pred_boxes[:, None, :] - gt[None, :, :].to(pred_boxes)) ** 2).sum(-1)  # (K, M)
    conf = F.logsigmoid(-logits) - F.logsigmoid(logits)  # -log c + log(1 - c), (K,)
    return alpha / 2 * sq + conf[:, None]


def match(
    pred_boxes: Tensor, logits: Tensor, gt: Tensor, alpha: float
) -> tuple[np.ndarray, np.ndarray]:
    """One-to-one assignment of ground truths to slots minimising the summed cost.

    Args:
        pred_boxes (Tensor[K, 4]), logits (Tensor[K]), gt (Tensor[M, 4]): as in :func:`match_cost`.
    Returns:
        slots (int64[P]), gts (int64[P]): slot ``slots[p]`` is matched to ground truth
        ``gts[p]``, P = min(K, M), sorted by slot. Empty when M == 0.
    """
    if len(gt) == 0 or len(pred_boxes) == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64)
    with torch.no_grad():
        cost = match_cost(pred_boxes.detach(), logits.detach(), gt, alpha)
    slots, gts = linear_sum_assignment(cost.double().cpu().numpy())
    return slots.astype(np.int64), gts.astype(np.int64)


def loss_terms(
    pred_boxes: Tensor,
    logits: Tensor,
    gt: list[Tensor],
    alpha: float,
    negatives: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """The two terms of :func:`multibox_loss`, each already averaged over the images.

    Args:
        pred_boxes (Tensor[B, K, 4]): predicted boxes, normalised xyxy.
        logits (Tensor[B, K]): objectness logits.
        gt: B tensors (Tensor[M_b, 4]) of normalised ground-truth boxes (M_b may be 0).
        alpha: weight of the location term.
        negatives (Tensor[B] bool): whether image b's unmatched slots are negatives; None =
            all images are exhaustively annotated.
    Returns:
        location (Tensor[]): alpha / 2 * matched squared errors, mean over images.
        confidence (Tensor[]): BCE summed over slots, mean over images.
    """
    if len(gt) != len(pred_boxes):
        raise ValueError(f"multibox_loss: {len(pred_boxes)} images but {len(gt)} ground truths")
    batch = max(len(pred_boxes), 1)
    targets = torch.zeros_like(logits)
    location = pred_boxes.new_zeros(())
    for b, boxes in enumerate(gt):
        boxes = torch.as_tensor(boxes, dtype=pred_boxes.dtype, device=pred_boxes.device)
        slots, gts = match(pred_boxes[b], logits[b], boxes.reshape(-1, 4), alpha)
        if len(slots) == 0:
            continue
        slots_t = torch.as_tensor(slots, device=logits.device)
        targets[b, slots_t] = 1.0
        err = pred_boxes[b, slots_t] - boxes[torch.as_tensor(gts, device=boxes.device)]
        location = location + alpha / 2 * (err**2).sum()
    weight = None
    if negatives is not None:  # unmatched slots count only where the image is fully boxed
        weight = torch.where(negatives.to(logits.device)[:, None], 1.0, targets)
    confidence = F.binary_cross_entropy_with_logits(logits, targets, weight=weight, reduction="sum")
    return location / batch, confidence / batch


def multibox_loss(pred_boxes: Tensor, logits: Tensor, gt: list[Tensor], alpha: float) -> Tensor:
    """MultiBox loss of a batch (see the module docstring for the normalisation).

    Args:
        pred_boxes (Tensor[B, K, 4]), logits (Tensor[B, K]), gt (list of Tensor[M_b, 4]),
        alpha: as in :func:`loss_terms`.
    Returns:
        loss (Tensor[]): differentiable scalar.
    """
    location, confidence = loss_terms(pred_boxes, logits, gt, alpha)
    return location + confidence
