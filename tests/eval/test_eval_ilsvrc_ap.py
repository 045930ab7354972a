"""The devkit's rules, one hand-worked case each, and a randomized check against a literal
port of eval_detection.m's loops."""

from __future__ import annotations

import time

import numpy as np
import pytest

from detector.core.structures import ImageRecord, from_inclusive
from eval.ilsvrc_ap import evaluate, overlaps, small_object_threshold, voc_ap
from eval.submission import SubmissionArrays


def image(index: int, boxes=(), labels=()) -> ImageRecord:
    """An image whose ground truth is given in the devkit's inclusive frame."""
    return ImageRecord(f"im{index}", index, None, 500, 400, from_inclusive(boxes), labels)


def dets(*rows) -> SubmissionArrays:
    """Rows ``(image_index, class_id, score, xmin, ymin, xmax, ymax)``, inclusive frame."""
    if not rows:
        return SubmissionArrays()
    a = np.array(rows, dtype=np.float64)
    return SubmissionArrays(a[:, 0], a[:, 1], a[:, 2], a[:, 3:])


BIG = [0, 0, 99, 99]  # 100 x 100: threshold 0.5


# ---- overlap and threshold ------------------------------------------------------------------


def test_overlap_uses_plus_one_widths():
    ov = overlaps(np.array([[0.0, 0, 9, 9]]), np.array([[5.0, 0, 14, 9]]))
    assert ov[0] == pytest.approx(50 / 150)  # iw = 9 - 5 + 1 = 5, areas 100 each


def test_touching_boxes_overlap_but_disjoint_do_not():
    ov = overlaps(
        np.array([[0.0, 0, 9, 9], [0, 0, 9, 9]]), np.array([[9.0, 0, 18, 9], [10, 0, 19, 9]])
    )
    assert ov[0] == pytest.approx(10 / 190)  # share column 9
    assert ov[1] == -np.inf


def test_small_object_threshold_boundary():
    # w*h/((w+10)*(h+10)) crosses 0.5 between 24 and 25 px squares
    thr = small_object_threshold(np.array([[0.0, 0, 23, 23], [0, 0, 24, 24]]), 0.5, 10)
    assert thr[0] == 576 / 1156 < 0.5
    assert thr[1] == 0.5


def test_small_object_gets_lower_threshold():
    # 24 px gt (thr 0.49827): a det of 24 x 48.1 px has ov 0.49896 -> hit
    # 25 px gt (thr 0.5): a det of 25 x 50.1 px has ov 0.49900 -> miss
    gt = [image(1, [[0, 0, 23, 23]], [1]), image(2, [[0, 0, 24, 24]], [1])]
    r = evaluate(gt, dets((1, 1, 0.9, 0, 0, 23, 47.1), (2, 1, 0.8, 0, 0, 24, 49.1)), 1)
    assert r.num_tp[0] == 1
    assert r.ap[0] == pytest.approx(0.5)  # TP first, then FP: recall 1/2 at precision 1


def test_overlap_exactly_at_threshold_is_a_hit():
    # large object: ov = 10000 / 20000 = 0.5 exactly
    r = evaluate([image(1, [BIG], [1])], dets((1, 1, 0.9, 0, 0, 99, 199)), 1)
    assert r.ap[0] == 1.0
    # small object: a 34 x 34 det around a 24 x 24 gt has ov = 576 / 1156 = its threshold
    r = evaluate([image(1, [[0, 0, 23, 23]], [1])], dets((1, 1, 0.9, -5, -5, 28, 28)), 1)
    assert r.ap[0] == 1.0
    # one more column: ov = 576 / 1190 < threshold
    r = evaluate([image(1, [[0, 0, 23, 23]], [1])], dets((1, 1, 0.9, -5, -5, 29, 28)), 1)
    assert r.ap[0] == 0.0


def test_iou_parameter_caps_the_threshold():
    # ov 0.5 misses at iou=0.7; the small-object rule still applies below it
    r = evaluate([image(1, [BIG], [1])], dets((1, 1, 0.9, 0, 0, 99, 199)), 1, iou=0.7)
    assert r.ap[0] == 0.0


# ---- matching -------------------------------------------------------------------------------


def test_duplicate_detection_takes_a_second_free_object():
    # two overlapping objects; three identical detections: the first takes the best-overlapping
    # object (B, ov 0.917), the second the other one (A, ov 0.909), the third is a FP
    gt = [image(1, [[0, 0, 99, 99], [0, 0, 99, 119]], [1, 1])]
    box = (0, 0, 99, 109)
    r = evaluate(gt, dets((1, 1, 0.9, *box), (1, 1, 0.8, *box), (1, 1, 0.7, *box)), 1)
    assert r.num_tp[0] == 2
    assert r.ap[0] == 1.0
    np.testing.assert_allclose(r.precision[0], [1, 1, 2 / 3])


def test_equal_overlap_takes_first_object_in_xml_order():
    # det1 overlaps both objects equally (8000/12000); det2 hits only the left object
    left, right = [0, 0, 99, 99], [40, 0, 139, 99]
    d = dets((1, 1, 0.9, 20, 0, 119, 99), (1, 1, 0.8, 0, 0, 99, 99))
    # left first in the XML: det1 takes it, det2 finds it taken -> FP
    assert evaluate([image(1, [left, right], [1, 1])], d, 1).num_tp[0] == 1
    # right first: det1 takes right, det2 takes left
    assert evaluate([image(1, [right, left], [1, 1])], d, 1).num_tp[0] == 2


def test_other_class_objects_are_not_matched():
    r = evaluate([image(1, [BIG], [2])], dets((1, 1, 0.9, *BIG)), 2)
    assert r.num_tp.tolist() == [0, 0]
    assert r.npos.tolist() == [0, 1]


def test_equal_scores_keep_file_order_within_an_image():
    miss, hit = (200, 200, 299, 299), tuple(BIG)
    gt = [image(1, [BIG], [1])]
    # FP listed first: ranking FP, TP -> precision 1/2 at recall 1
    assert evaluate(gt, dets((1, 1, 0.5, *miss), (1, 1, 0.5, *hit)), 1).ap[0] == 0.5
    assert evaluate(gt, dets((1, 1, 0.5, *hit), (1, 1, 0.5, *miss)), 1).ap[0] == 1.0


def test_equal_scores_across_images_rank_by_image_index():
    # image 2's TP is listed first in the file, but image 1's FP ranks first (same score)
    gt = [image(1, [], []), image(2, [BIG], [1])]
    r = evaluate(gt, dets((2, 1, 0.5, *BIG), (1, 1, 0.5, *BIG)), 1)
    assert r.ap[0] == 0.5


def test_blacklisted_detections_ignored_and_objects_not_counted():
    gt = [image(1, [BIG], [1]), image(2, [BIG], [1])]
    d = dets((1, 1, 0.9, 300, 300, 399, 399), (2, 1, 0.8, *BIG))
    assert evaluate(gt, d, 1).ap[0] == pytest.approx(0.25)  # FP, TP; npos 2
    r = evaluate(gt, d, 1, blacklist={(1, 1)})
    assert r.ap[0] == 1.0
    assert r.npos[0] == 1 and r.num_dets[0] == 1
    assert r.settings["num_ignored_detections"] == 1
    assert r.settings["num_ignored_ground_truths"] == 1


def test_blacklist_is_per_class():
    gt = [image(1, [BIG, BIG], [1, 2])]
    r = evaluate(gt, dets((1, 1, 0.9, *BIG)), 2, blacklist={(1, 2)})
    assert r.ap.tolist() == [1.0, 0.0]
    assert r.npos.tolist() == [1, 0]
    assert r.degenerate == [2]


# ---- degenerate classes, as the devkit computes them -----------------------------------------
# Ground truth of class 1 on image 1 and class 3 on image 2; class 2 has no object, and the
# class list has 5 classes. K = 3, the largest class id in the ground truth.
DEGENERATE_GT = [image(1, [BIG], [1]), image(2, [BIG], [3])]
TWO_HITS = [(1, 1, 0.9, *BIG), (2, 3, 0.8, *BIG)]


def test_k_is_the_largest_ground_truth_class_not_the_class_list():
    """Class list of 5: classes 4 and 5 are above K = 3 and not evaluated (a detection of
    class 4 neither counts nor makes a class of its own); the devkit's mAP is 2/3, not 2/5."""
    r = evaluate(DEGENERATE_GT, dets(*TWO_HITS, (1, 4, 0.95, *BIG)), 5)
    assert r.num_classes == 3
    assert r.ap.tolist() == [1.0, 0.0, 1.0]
    assert r.mAP == pytest.approx(2 / 3)
    assert r.settings["num_detections_above_k"] == 1 and r.settings["num_detections"] == 3


def test_class_without_positives_or_detections_has_ap_0():
    r = evaluate(DEGENERATE_GT, dets(*TWO_HITS), 5)
    assert r.ap.tolist() == [1.0, 0.0, 1.0] and r.degenerate == [2]
    assert r.mAP == pytest.approx(2 / 3) and r.mAP_reason is None
    assert r.mAP_with_positives == 1.0  # (1 + 1) / 2


def test_class_without_positives_but_with_a_detection_has_ap_nan_and_so_has_the_map():
    """The devkit's recall is 0/0 = NaN for that class: its AP is NaN, and the mean too."""
    r = evaluate(DEGENERATE_GT, dets(*TWO_HITS, (1, 2, 0.1, *BIG)), 5)
    assert r.ap[0] == 1.0 and np.isnan(r.ap[1]) and r.ap[2] == 1.0
    assert np.isnan(r.mAP)
    assert r.mAP_reason == "class 2 has detections but no positives"
    assert r.nan_classes == [2]
    assert r.mAP_with_positives == 1.0
    report = r.to_json()
    assert report["mAP"] is None and report["mAP_reason"] == r.mAP_reason
    assert report["mAP_classes_with_positives"] == 1.0
    assert report["classes"][1]["ap"] is None and report["nan_classes"] == [2]


def test_a_blacklisted_detection_of_a_class_without_positives_also_makes_nan():
    """Class 2's only object and its only detection are blacklisted: npos 0, one (ignored)
    detection: NaN, as in the devkit, whose ignored rows stay in the ranking."""
    gt = [image(1, [BIG, BIG], [1, 2])]
    r = evaluate(gt, dets((1, 1, 0.9, *BIG), (1, 2, 0.9, *BIG)), 2, blacklist={(1, 2)})
    assert r.ap[0] == 1.0 and np.isnan(r.ap[1])
    assert r.npos.tolist() == [1, 0] and r.num_dets.tolist() == [1, 0]
    assert r.num_ignored.tolist() == [0, 1]
    assert np.isnan(r.mAP) and r.mAP_with_positives == 1.0
    two = evaluate(
        gt + [image(2, [BIG], [2])],
        dets((1, 2, 0.9, *BIG), (2, 1, 0.8, *BIG)),
        2,
        blacklist={(1, 2), (2, 2)},
    )
    assert np.isnan(two.ap).tolist() == [False, True]
    assert two.mAP_reason == "class 2 has detections but no positives"
    several = evaluate(DEGENERATE_GT, dets(*TWO_HITS, (1, 2, 0.1, *BIG)), 5, blacklist={(2, 3)})
    assert several.mAP_reason == "classes 2, 3 have detections but no positives"


def test_no_ground_truth_at_all_gives_k_0_and_nan():
    r = evaluate([image(1)], dets(), 3)
    assert r.num_classes == 0 and np.isnan(r.mAP)
    assert r.mAP_reason == "the ground truth has no objects (K = 0)"
    assert r.to_json()["mAP"] is None


def test_image_without_objects_gives_false_positives():
    gt = [image(1, [BIG], [1]), image(2)]
    r = evaluate(gt, dets((2, 1, 0.9, *BIG), (1, 1, 0.8, *BIG)), 1)
    assert r.num_tp[0] == 1 and r.num_dets[0] == 2
    assert r.ap[0] == 0.5


def test_empty_submission():
    r = evaluate([image(1, [BIG], [1])], dets(), 2)
    assert r.ap.tolist() == [0.0]  # K = 1
    assert r.num_dets.tolist() == [0]
    assert r.mAP == 0.0


def test_no_ground_truth_at_all():
    r = evaluate([], dets(), 3)
    assert r.ap.tolist() == [] and r.degenerate == []
    assert evaluate([], dets()).num_classes == 0  # K from the ground truth: none


def test_num_classes_defaults_to_largest_gt_class():
    assert evaluate([image(1, [BIG], [4])], dets()).num_classes == 4


def test_detections_outside_the_split_or_classes_are_errors():
    gt = [image(1, [BIG], [1])]
    with pytest.raises(ValueError, match="image index 7"):
        evaluate(gt, dets((7, 1, 0.9, *BIG)), 1)
    with pytest.raises(ValueError, match="class id 2 outside 1..1"):
        evaluate(gt, dets((1, 2, 0.9, *BIG)), 1)


# ---- AP formula -----------------------------------------------------------------------------


def test_voc_ap_by_hand():
    # ranking TP FP TP TP, npos 4: rec .25 .25 .5 .75, prec 1 .5 .667 .75
    # monotone precision 1, .75, .75 -> AP = .25*1 + .25*.75 + .25*.75 = 0.625
    assert voc_ap(np.array([0.25, 0.25, 0.5, 0.75]), np.array([1, 0.5, 2 / 3, 0.75])) == 0.625
    assert voc_ap(np.array([]), np.array([])) == 0.0


def test_ap_through_evaluate_by_hand():
    gt = [
        image(
            1, [[0, 0, 99, 99], [200, 0, 299, 99], [0, 200, 99, 299], [200, 200, 299, 299]], [1] * 4
        )
    ]
    d = dets(
        (1, 1, 0.9, 0, 0, 99, 99),
        (1, 1, 0.8, 400, 400, 450, 450),
        (1, 1, 0.7, 200, 0, 299, 99),
        (1, 1, 0.6, 0, 200, 99, 299),
    )
    r = evaluate(gt, d, 1)
    assert r.ap[0] == pytest.approx(0.625)
    np.testing.assert_allclose(r.recall[0], [0.25, 0.25, 0.5, 0.75])


# ---- randomized: the literal devkit loops ---------------------------------------------------


def devkit_reference(gt, d: SubmissionArrays, k: int, blacklist, iou=0.5) -> np.ndarray:
    """eval_detection.m's loops, transcribed: per-image stable sort, greedy match, global sort."""
    per_image = {}
    for i in np.argsort(d.image_index, kind="stable"):
        per_image.setdefault(int(d.image_index[i]), []).append(i)
    tp_cell, fp_cell, lab_cell, conf_cell = {}, {}, {}, {}
    npos = np.zeros(k + 1)
    for rec in gt:
        g = rec.boxes.astype(np.float64).copy()
        g[:, 2:] -= 1
        thr = np.minimum(
            iou,
            [
                (b[3] - b[1] + 1) * (b[2] - b[0] + 1) / ((b[3] - b[1] + 11) * (b[2] - b[0] + 11))
                for b in g
            ],
        )
        ids = per_image.get(rec.index, [])
        ids = [ids[j] for j in np.argsort(-d.score[ids], kind="stable")]
        detected = np.zeros(len(g), bool)
        tp, fp = np.zeros(len(ids)), np.zeros(len(ids))
        for j, di in enumerate(ids):
            c = d.class_id[di]
            if (rec.index, c) in blacklist:
                continue
            bb, ovmax, kmax = d.boxes[di], -np.inf, -1
            for kk in range(len(g)):
                if rec.labels[kk] != c or detected[kk]:
                    continue
                bg = g[kk]
                iw = min(bb[2], bg[2]) - max(bb[0], bg[0]) + 1
                ih = min(bb[3], bg[3]) - max(bb[1], bg[1]) + 1
                if iw > 0 and ih > 0:
                    ua = (
                        (bb[2] - bb[0] + 1) * (bb[3] - bb[1] + 1)
                        + (bg[2] - bg[0] + 1) * (bg[3] - bg[1] + 1)
                        - iw * ih
                    )
                    ov = iw * ih / ua
                    if ov >= thr[kk] and ov > ovmax:
                        ovmax, kmax = ov, kk
            if kmax >= 0:
                tp[j], detected[kmax] = 1, True
            else:
                fp[j] = 1
        tp_cell[rec.index], fp_cell[rec.index] = tp, fp
        lab_cell[rec.index], conf_cell[rec.index] = d.class_id[ids], d.score[ids]
        for lab in rec.labels:
            npos[lab] += (rec.index, lab) not in blacklist
    order = sorted(tp_cell)
    tp_all, fp_all = (
        np.concatenate([tp_cell[i] for i in order]),
        np.concatenate([fp_cell[i] for i in order]),
    )
    labels, confs = (
        np.concatenate([lab_cell[i] for i in order]),
        np.concatenate([conf_cell[i] for i in order]),
    )
    s = np.argsort(-confs, kind="stable")
    tp_all, fp_all, labels = tp_all[s], fp_all[s], labels[s]
    ap = np.zeros(k)
    for c in range(1, k + 1):
        ctp, cfp = np.cumsum(tp_all[labels == c]), np.cumsum(fp_all[labels == c])
        # ignored rows stay, as in the devkit (0/0 precision -> NaN); npos = 0 gives 0/0
        # recall, hence NaN AP, when the class has any row, and AP 0 when it has none
        with np.errstate(invalid="ignore", divide="ignore"):
            ap[c - 1] = voc_ap(ctp / npos[c], ctp / (ctp + cfp))
    return ap


def random_case(rng: np.random.Generator, n_images: int, k: int, n_dets: int, big: bool = False):
    gt = []
    for i in range(1, n_images + 1):
        n = rng.integers(0, 5)
        xy = rng.integers(0, 150, (n, 2))
        wh = rng.integers(30 if big else 5, 120, (n, 2))
        gt.append(image(i, np.hstack([xy, xy + wh - 1]), rng.integers(1, k + 1, n)))
    # detections: jittered ground truths (many near-duplicates) plus random boxes
    src = [(r.index, b, lab) for r in gt for b, lab in zip(r.boxes, r.labels, strict=True)]
    rows = []
    for _ in range(n_dets):
        if src and rng.random() < 0.6:
            idx, b, lab = src[rng.integers(len(src))]
            b = b.astype(np.float64) - [0, 0, 1, 1] + rng.normal(0, 6 if not big else 4, 4)
            c = lab if rng.random() < 0.9 else rng.integers(1, k + 1)
        else:
            idx, c = rng.integers(1, n_images + 1), rng.integers(1, k + 1)
            xy = rng.integers(0, 150, 2)
            b = np.r_[xy, xy + rng.integers(5, 120, 2)].astype(np.float64)
        score = rng.random() if big else np.round(rng.random(), 1)  # coarse scores: many ties
        rows.append((idx, c, score, *np.round(b, 1)))
    return gt, dets(*rows)


@pytest.mark.parametrize("seed", range(6))
def test_matches_literal_devkit_loops(seed):
    rng = np.random.default_rng(seed)
    gt, d = random_case(rng, n_images=12, k=4, n_dets=150)
    blacklist = {(int(rng.integers(1, 13)), int(rng.integers(1, 5))) for _ in range(3)}
    r = evaluate(gt, d, 4, blacklist=blacklist)
    k = max(int(lab) for rec in gt for lab in rec.labels)  # the devkit's K
    d = d.take(d.class_id <= k)  # its loop over classes ends at K
    np.testing.assert_allclose(r.ap, devkit_reference(gt, d, k, blacklist), rtol=0, atol=1e-12)


def large_case(rng: np.random.Generator, n_images: int, k: int, per_image: int):
    """Vectorised generator: 1-4 objects per image, detections jittered around them."""
    gt = []
    for i in range(1, n_images + 1):
        n = rng.integers(1, 5)
        xy = rng.integers(0, 300, (n, 2))
        gt.append(
            image(i, np.hstack([xy, xy + rng.integers(30, 200, (n, 2))]), rng.integers(1, k + 1, n))
        )
    src = np.concatenate([r.boxes for r in gt]).astype(np.float64) - [0, 0, 1, 1]
    src_image = np.repeat([r.index for r in gt], [len(r.labels) for r in gt])
    src_label = np.concatenate([r.labels for r in gt])
    pick = rng.integers(0, len(src), n_images * per_image)
    label = np.where(
        rng.random(len(pick)) < 0.5, src_label[pick], rng.integers(1, k + 1, len(pick))
    )
    boxes = src[pick] + rng.normal(0, 15, (len(pick), 4))
    return gt, SubmissionArrays(src_image[pick], label, rng.random(len(pick)), boxes)


def test_speed_2000_images_x_100_detections():
    """Not a timed assertion: 200,000 detections must score, and fast enough to notice."""
    gt, d = large_case(np.random.default_rng(0), n_images=2000, k=200, per_image=100)
    t0 = time.perf_counter()
    r = evaluate(gt, d, 200)
    print(f"evaluate: 2,000 images x 100 detections in {time.perf_counter() - t0:.2f} s")
    assert r.num_dets.sum() == 200_000
    assert 0 < r.mAP < 1
