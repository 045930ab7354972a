"""k-means priors and the MultiBox matching and loss, on hand-made cases."""

import math

import numpy as np
import pytest
import torch

from proposals.matching import loss_terms, match, match_cost, multibox_loss
from proposals.priors import grid_boxes, kmeans_priors


def test_kmeans_priors_finds_hand_made_clusters():
    rng = np.random.default_rng(0)
    centres = np.array([[0.1, 0.1, 0.3, 0.3], [0.5, 0.5, 0.9, 0.9], [0.0, 0.6, 0.4, 1.0]])
    boxes = np.concatenate([c + rng.normal(0, 0.01, (20, 4)) for c in centres]).clip(0, 1)
    priors = kmeans_priors(boxes.astype(np.float32), 3, seed=0)
    assert priors.dtype == np.float32 and priors.shape == (3, 4)
    # sorted by descending area: the big box, then the two others by coordinates
    np.testing.assert_allclose(priors, centres[[1, 2, 0]], atol=0.01)
    np.testing.assert_array_equal(priors, kmeans_priors(boxes.astype(np.float32), 3, seed=0))


def test_kmeans_priors_fills_deterministically_when_few_boxes():
    boxes = np.array([[0.2, 0.2, 0.4, 0.4], [0.2, 0.2, 0.4, 0.4]], np.float32)
    priors = kmeans_priors(boxes, 3, seed=0)
    # one distinct box + the first two grid boxes: the whole image and the top-left quarter
    expected = np.array([[0, 0, 1, 1], [0, 0, 0.5, 0.5], [0.2, 0.2, 0.4, 0.4]], np.float32)
    np.testing.assert_allclose(priors, expected)


def test_kmeans_priors_empty_input_is_the_grid():
    priors = kmeans_priors(np.zeros((0, 4), np.float32), 5, seed=0)
    assert priors.shape == (5, 4)
    assert {tuple(p) for p in priors} == {tuple(p) for p in grid_boxes(5)}


def test_kmeans_priors_rejects_pixel_boxes():
    with pytest.raises(ValueError, match="normalised"):
        kmeans_priors(np.array([[10, 10, 50, 50]], np.float32), 1, seed=0)


def _case():
    """2 ground truths x 3 slots, small enough to solve by hand."""
    pred = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0]])
    logits = torch.tensor([0.0, 0.0, 2.0])
    gt = torch.tensor([[0.5, 0.5, 1.0, 1.0], [0.0, 0.0, 0.6, 0.6]])
    return pred, logits, gt


def test_match_cost_and_assignment_by_hand():
    pred, logits, gt = _case()
    alpha = 1.0
    cost = match_cost(pred, logits, gt, alpha)
    # -log c + log(1 - c) = -logit; squared distances by hand
    sq = np.array([[4 * 0.25, 2 * 0.01], [0.0, 2 * 0.25 + 2 * 0.16], [2 * 0.25, 2 * 0.16]])
    expected = alpha / 2 * sq - np.array([0.0, 0.0, 2.0])[:, None]
    np.testing.assert_allclose(cost.numpy(), expected, atol=1e-6)
    # (slot1->g0, slot0->g1): 0 + 0.01 = 0.01; (slot2->g0, slot0->g1): 0.25 - 2 + 0.01 = -1.74;
    # (slot1->g0, slot2->g1): 0 + 0.16 - 2 = -1.84, the minimum
    slots, gts = match(pred, logits, gt, alpha)
    assert slots.tolist() == [1, 2] and gts.tolist() == [0, 1]


def test_multibox_loss_value_by_hand():
    pred, logits, gt = _case()
    alpha = 1.0
    loss = multibox_loss(pred[None], logits[None], [gt], alpha)
    location = alpha / 2 * (0.0 + 2 * 0.16)  # slot 1 exact, slot 2 off by 0.4 on x2 and y2
    # slot 0 negative at logit 0, slot 1 positive at logit 0, slot 2 positive at logit 2
    bce = math.log(2) + math.log(2) + math.log(1 + math.exp(-2))
    assert loss.item() == pytest.approx(location + bce, rel=1e-5)


def test_multibox_loss_is_mean_over_images_and_handles_empty_gt():
    pred, logits, gt = _case()
    one = multibox_loss(pred[None], logits[None], [gt], 1.0)
    two = multibox_loss(torch.stack([pred, pred]), torch.stack([logits, logits]), [gt, gt], 1.0)
    assert two.item() == pytest.approx(one.item(), rel=1e-6)
    # no ground truth: every slot is a negative, no location term
    empty = multibox_loss(pred[None], logits[None], [torch.zeros(0, 4)], 1.0)
    expected = 2 * math.log(2) + math.log(1 + math.exp(2))
    assert empty.item() == pytest.approx(expected, rel=1e-5)
    assert match(pred, logits, torch.zeros(0, 4), 1.0)[0].shape == (0,)


def test_multibox_loss_gradients_flow_to_boxes_and_logits():
    pred, logits, gt = _case()
    pred.requires_grad_(True)
    logits.requires_grad_(True)
    multibox_loss(pred[None], logits[None], [gt], 1.0).backward()
    assert pred.grad[0].abs().sum() == 0  # unmatched slot: no location gradient
    assert pred.grad[2].abs().sum() > 0
    assert logits.grad[0] > 0 and logits.grad[1] < 0  # push negative down, positive up


def test_unmatched_slots_of_an_incomplete_image_are_not_negatives():
    """An image boxed for some classes only (train.background_from=complete) teaches its
    matched slots; its unmatched ones may sit on unboxed objects and get no gradient."""
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0], [0.2, 0.2, 0.4, 0.4]]] * 2)
    logits = torch.tensor([[2.0, -1.0, 0.5], [2.0, -1.0, 0.5]], requires_grad=True)
    gt = [torch.tensor([[0.0, 0.0, 0.5, 0.5]])] * 2
    _, confidence = loss_terms(boxes, logits, gt, 1.0, torch.tensor([True, False]))
    confidence.backward()
    grad = logits.grad
    assert (grad[0] != 0).all()  # complete: every slot learns
    assert grad[1, 0] != 0 and (grad[1, 1:] == 0).all()  # incomplete: the matched slot only
    full = (
        torch.nn.functional.softplus(-logits[0, 0])
        + torch.nn.functional.softplus(logits[0, 1:]).sum()
    )
    matched = torch.nn.functional.softplus(-logits[1, 0])
    assert confidence.item() == pytest.approx(((full + matched) / 2).item(), rel=1e-6)
