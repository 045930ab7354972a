"""Class lists: the devkit's ``map_det.txt`` (``<wnid> <id> <name>``) or our ``det_classes.tsv``."""

from __future__ import annotations

from pathlib import Path

from detector.core.structures import ClassList

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DEFAULT_CLASSES = (
    DATA_DIR / "det_classes.tsv"
)  # the 200 ILSVRC 2014 DET classes (devkit meta_det.mat)


def default_classes() -> ClassList:
    """The 200 ILSVRC DET classes, in devkit id order."""
    return load_classes(DEFAULT_CLASSES)


def load_classes(path: str | Path) -> ClassList:
    """Read ``map_det.txt`` or ``det_classes.tsv``; ids must be 1..K in some order.

    Raises ValueError naming the file and line for a malformed line or a gap in the ids.
    """
    path = Path(path)
    rows: dict[int, tuple[str, str]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#") or line.startswith("id\t"):
            continue
        class_id, wnid, name = _parse_class_line(line, path, lineno)
        if class_id in rows:
            raise ValueError(f"{path}:{lineno}: class id {class_id} appears twice")
        rows[class_id] = (wnid, name)
    if sorted(rows) != list(range(1, len(rows) + 1)):
        raise ValueError(f"{path}: class ids must be 1..{len(rows)} without gaps")
    ordered = [rows[i] for i in range(1, len(rows) + 1)]
    return ClassList(wnids=[w for w, _ in ordered], names=[n for _, n in ordered])


def _parse_class_line(line: str, path: Path, lineno: int) -> tuple[int, str, str]:
    """``<id>\\t<wnid>\\t<name>`` (tsv) or ``<wnid> <id> <name with spaces>`` (map_det.txt)."""
    if "\t" in line:
        parts = line.split("\t")
        if len(parts) >= 3 and parts[0].strip().isdigit():
            return int(parts[0]), parts[1].strip(), parts[2].strip()
    parts = line.split(None, 2)
    if len(parts) >= 2 and parts[1].isdigit():
        return int(parts[1]), parts[0], parts[2].strip() if len(parts) == 3 else parts[0]
    raise ValueError(f"{path}:{lineno}: expected '<wnid> <id> <name>', got {line!r}")
