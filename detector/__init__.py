"""R-CNN with an ensemble of GoogLeNets: ``from detector import Detector``.

    from detector import Detector, load_config, resolve_config

    det = Detector.from_config(resolve_config(load_config("demo")))
    detections = det("photo.jpg")

Names are imported lazily so that light users of the package (the evaluator, the dataset
readers, the config) do not pay for importing torch.
"""

from __future__ import annotations

import importlib
from typing import Any

# public name -> the module that defines it
_EXPORTS = {
    "Detector": "detector.detector",
    "Detections": "detector.core.structures",
    "Proposals": "detector.core.structures",
    "load_config": "detector.core.config",
    "resolve_config": "detector.resolve",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
