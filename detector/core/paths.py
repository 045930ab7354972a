"""Where generated things live: the cache root for the demo dataset, demo models and proposals.

``INCEPTION_RCNN_CACHE`` overrides the root (CI points it at a temporary folder);
otherwise ``$XDG_CACHE_HOME/inception-rcnn`` or ``~/.cache/inception-rcnn``.
"""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """Root folder for everything the project generates on first use."""
    if env := os.environ.get("INCEPTION_RCNN_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or "~/.cache"
    return Path(base).expanduser() / "inception-rcnn"


def expand(path: str) -> Path:
    """A config path with ``~`` and ``$VARS`` expanded."""
    return Path(os.path.expandvars(os.path.expanduser(path)))


def demo_models_dir() -> Path:
    """Where ``python -m detector.demo`` puts the demo's MultiBox and ensemble members."""
    return cache_root() / "demo" / "models"
