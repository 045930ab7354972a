"""Dataset readers: ILSVRC DET, COCO json and PASCAL VOC, all yielding :class:`ImageRecord`."""

from detector.datasets.classes import default_classes, load_classes
from detector.datasets.ilsvrc import IlsvrcDet, parse_annotation, read_blacklist

__all__ = ["IlsvrcDet", "default_classes", "load_classes", "parse_annotation", "read_blacklist"]
