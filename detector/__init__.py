"""Region classification with an ensemble of GoogLeNets: ``from detector import Detector``.

``Detector`` is imported lazily so that light users of the package (the evaluator, the
dataset readers, the config) do not pay for importing torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from detector.detector import Detector
    from detector.structures import Detections, Proposals

__all__ = ["Detector", "Detections", "Proposals"]


def __getattr__(name: str) -> Any:
    if name == "Detector":
        from detector.detector import Detector

        return Detector
    if name in ("Detections", "Proposals"):
        from detector import structures

        return getattr(structures, name)
    raise AttributeError(f"module 'detector' has no attribute {name!r}")
