"""MultiBox priors: k-means cluster centres of the normalised training boxes.

Each of the K prediction slots of the MultiBox network predicts a correction to one prior
(Erhan et al. 2014; Szegedy et al. 2014, section 8), so the priors should tile the space of
boxes the data actually holds. k-means runs on the corner coordinates (normalised xyxy),
the representation the network regresses.
"""

from __future__ import annotations

import numpy as np
from sklearn.cluster import KMeans


def kmeans_priors(boxes: np.ndarray, k: int, seed: int = 0, n_init: int = 3) -> np.ndarray:
    """Cluster normalised boxes into ``k`` priors.

    Args:
        boxes (float32[M, 4]): training boxes, normalised xyxy in [0, 1].
        k: number of priors (the network's slots).
        seed: k-means seed; the result is a deterministic function of (boxes, k, seed).
        n_init: k-means restarts (kept small: M is large on ILSVRC).
    Returns:
        priors (float32[k, 4]): normalised xyxy, clipped to [0, 1], sorted canonically
        (descending area, then by coordinates) so the slot order does not depend on k-means'
        internal label order.

    With fewer distinct boxes than ``k`` (tiny datasets, tests) k-means is undefined: the
    distinct boxes are all kept and the rest is filled from :func:`grid_boxes`, a fixed
    multi-scale grid (the whole image, then 2x2 cells, then 3x3, ...).
    """
    if k <= 0:
        raise ValueError(f"kmeans_priors: k must be positive, got {k}")
    boxes = _validated(boxes)
    distinct = np.unique(boxes, axis=0) if len(boxes) else boxes
    if len(distinct) <= k:
        centres = np.concatenate([distinct, grid_boxes(k - len(distinct))])
    else:
        km = KMeans(n_clusters=k, n_init=n_init, random_state=seed)
        centres = km.fit(boxes.astype(np.float64)).cluster_centers_
    return _canonical(_tidy(centres))


def grid_boxes(n: int) -> np.ndarray:
    """The first ``n`` boxes of the grid sequence: 1x1 cell, 2x2 cells, 3x3 cells, ...

    Returns:
        boxes (float32[n, 4]): normalised xyxy, row-major within each scale.
    """
    out: list[tuple[float, float, float, float]] = []
    cells = 1
    while len(out) < n:
        for i in range(cells):
            for j in range(cells):
                out.append((j / cells, i / cells, (j + 1) / cells, (i + 1) / cells))
        cells += 1
    return np.array(out[:n], dtype=np.float32).reshape(-1, 4)


def _validated(boxes: np.ndarray) -> np.ndarray:
    boxes = np.asarray(boxes, dtype=np.float32).reshape(-1, 4)
    if not np.all(np.isfinite(boxes)):
        raise ValueError("kmeans_priors: boxes contain NaN or inf")
    if len(boxes) and (boxes.min() < -1e-3 or boxes.max() > 1 + 1e-3):
        raise ValueError("kmeans_priors: boxes must be normalised to [0, 1] (divide by W, H)")
    return np.clip(boxes, 0.0, 1.0)


def _tidy(centres: np.ndarray) -> np.ndarray:
    c = np.clip(np.asarray(centres, dtype=np.float64), 0.0, 1.0)
    # a centre is a mean of valid boxes, so x1 <= x2 holds; sort anyway against rounding
    c = np.stack(
        [
            np.minimum(c[:, 0], c[:, 2]),
            np.minimum(c[:, 1], c[:, 3]),
            np.maximum(c[:, 0], c[:, 2]),
            np.maximum(c[:, 1], c[:, 3]),
        ],
        axis=1,
    )
    return c.astype(np.float32)


def _canonical(priors: np.ndarray) -> np.ndarray:
    area = (priors[:, 2] - priors[:, 0]) * (priors[:, 3] - priors[:, 1])
    order = np.lexsort((priors[:, 3], priors[:, 2], priors[:, 1], priors[:, 0], -area))
    return priors[order]
