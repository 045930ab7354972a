"""What reading a split gives: its records, its classes, and the images it left out (why)."""

from __future__ import annotations

from dataclasses import dataclass, field

from detector.core.structures import ClassList, ImageRecord

# Reasons a reader leaves an image of a split's lists out (keys of SplitContents.left_out).
TRAIN_PART = "train_part_excluded"  # listed in train_part_X only (data.train_part=false)
XML_MISSING = "xml_missing"  # a val / train_pos image without XML (data.missing_xml=skip)
NOT_IN_VAL_LIST = "not_in_val_list"  # a val1/val2 name that the tree's val list lacks
NO_IMAGE_FILE = "no_image_file"  # a train_pos image whose file the tree lacks
OVER_BOX_CAP = "over_box_cap"  # a train_pos image past its classes' N boxes (train_pos_<N>)


@dataclass
class SplitContents:
    """One split as read.

    Attributes:
        records: the split's images, in order (composed splits: part after part).
        classes: the class list.
        layout: the ILSVRC tree's layout (``repack`` or ``ilsvrc2014``); the format otherwise.
        left_out: reason -> image ids the lists name that are not among ``records``.
    """

    records: list[ImageRecord]
    classes: ClassList
    layout: str
    left_out: dict[str, list[str]] = field(default_factory=dict)

    def leave_out(self, reason: str, image_id: str) -> None:
        self.left_out.setdefault(reason, []).append(image_id)
