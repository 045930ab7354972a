"""What a trainer would train on: the ``--dry-run`` of ``detector.train`` and
``proposals.multibox train``.

:func:`training_set_summary` reads the training split as the trainers do
(``detector.datasets.read_split``, then the images that have a file, then
``train.max_images`` for the region classifier) and describes the result as one
JSON-ready dict: images per source, ground-truth boxes per class, the images background
regions may come from (``train.background_from``), and every image left out, by reason.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from detector.core.config import Config
from detector.core.structures import ClassList, ImageRecord
from detector.datasets import read_split
from detector.training.sampling import gives_background, teaches

CLASSIFIER, MULTIBOX = "classifier", "multibox"
EXAMPLES = 3  # image ids shown per reason an image was left out
# Reasons this summary adds to the reader's (detector.datasets.contents).
NO_FILE = "no_image_file"
MAX_IMAGES = "beyond_train_max_images"
NOTHING_TO_LEARN = "no_objects_and_no_background"


def dry_run(cfg: Config, trainer: str, error: Callable[[BaseException, int], int]) -> int:
    """A trainer's ``--dry-run``: print the training set as one JSON object and return 0, or
    report the reading error (a missing XML, list or layout, naming the file) through the
    command's ``error`` and return its status 1."""
    try:
        summary = training_set_summary(cfg, trainer)
    except (ValueError, OSError) as e:
        return error(e, 1)
    print(json.dumps(summary))
    return 0


def training_set_summary(cfg: Config, trainer: str = CLASSIFIER) -> dict[str, Any]:
    """The training set of ``cfg.data.train_split`` for ``trainer`` (:data:`CLASSIFIER` or
    :data:`MULTIBOX`); ``cfg`` is resolved. Reading errors (a missing XML, ...) propagate."""
    contents = read_split(cfg.data, cfg.data.train_split)
    dropped = {reason: list(ids) for reason, ids in contents.left_out.items()}
    records = _kept(contents.records, cfg, trainer, dropped)
    background = [r for r in records if gives_background(r, cfg.train.background_from)]
    return {
        "trainer": trainer,
        "root": cfg.data.root,
        "format": cfg.data.format,
        "layout": contents.layout,
        "split": cfg.data.train_split,
        "images": len(records),
        "images_per_source": dict(Counter(r.source for r in records)),
        "boxes": int(sum(len(r.labels) for r in records)),
        "boxes_per_class": boxes_per_class(records, contents.classes),
        "exhaustive_images": sum(r.exhaustive for r in records),
        "background_from": cfg.train.background_from,
        "background_images": len(background),
        "dropped": {reason: len(ids) for reason, ids in sorted(dropped.items())},
        "dropped_examples": {reason: ids[:EXAMPLES] for reason, ids in sorted(dropped.items())},
    }


def _kept(
    records: list[ImageRecord], cfg: Config, trainer: str, dropped: dict[str, list[str]]
) -> list[ImageRecord]:
    """The records the trainer uses, in the trainers' order of filters (an image file, then
    ``train.max_images``); the others go into ``dropped`` by reason."""
    with_file = []
    for r in records:
        if r.path is None or not Path(r.path).exists():
            dropped.setdefault(NO_FILE, []).append(r.image_id)
        else:
            with_file.append(r)
    limit = cfg.train.max_images if trainer == CLASSIFIER else 0
    if limit and len(with_file) > limit:
        dropped.setdefault(MAX_IMAGES, []).extend(r.image_id for r in with_file[limit:])
        with_file = with_file[:limit]
    kept = []  # both trainers leave out what teaches nothing (detector.training.sampling)
    for r in with_file:
        if not teaches(r, cfg.train.background_from):
            dropped.setdefault(NOTHING_TO_LEARN, []).append(r.image_id)
        else:
            kept.append(r)
    return kept


def boxes_per_class(records: list[ImageRecord], classes: ClassList) -> dict[str, int]:
    """Ground-truth boxes per class wnid, classes in id order, those with boxes only."""
    counts = Counter(int(label) for r in records for label in r.labels)
    return {classes.wnids[c - 1]: counts[c] for c in sorted(counts)}
