"""Class lists: the devkit's ``map_det.txt`` (``<wnid> <id> <name>``), our ``det_classes.tsv``,
or the 2014 devkit's ``data/meta_det.mat`` (MATLAB; read with scipy)."""

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


MAX_DET_ID = 200  # meta_det.mat: synsets with a DET id above this are hierarchy nodes, not classes


def load_classes(path: str | Path) -> ClassList:
    """Read ``map_det.txt``, ``det_classes.tsv`` or ``meta_det.mat``; ids must be 1..K in
    some order.

    Raises ValueError naming the file and line for a malformed line or a gap in the ids.
    """
    path = Path(path)
    if path.suffix.lower() == ".mat":
        return load_meta_det(path)
    rows: dict[int, tuple[str, str]] = {}
    for lineno, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip() or line.startswith("#") or line.startswith("id\t"):
            continue
        class_id, wnid, name = _parse_class_line(line, path, lineno)
        if class_id in rows:
            raise ValueError(f"{path}:{lineno}: class id {class_id} appears twice")
        rows[class_id] = (wnid, name)
    return _class_list(rows, path)


def load_meta_det(path: str | Path) -> ClassList:
    """The devkit's ``meta_det.mat``: its ``synsets`` struct array, the entries whose DET id
    (``ILSVRC2014_DET_ID``, or another year's ``*_DET_ID``) is 1..:data:`MAX_DET_ID`, by id;
    their ``WNID`` and ``name``. ValueError naming the file when it is not such a file."""
    from scipy.io import loadmat

    path = Path(path)
    try:
        synsets = loadmat(str(path), squeeze_me=True, struct_as_record=False)["synsets"]
        rows = dict(_meta_det_row(s) for s in synsets.reshape(-1))
    except Exception as e:  # not MATLAB, no synsets, missing fields
        raise ValueError(
            f"{path}: not a devkit meta_det.mat with synsets (DET id, WNID, name): "
            f"{type(e).__name__}: {e}"
        ) from None
    classes = {i: row for i, row in rows.items() if 1 <= i <= MAX_DET_ID}
    if not classes:
        raise ValueError(f"{path}: no synset with a DET id in 1..{MAX_DET_ID}")
    return _class_list(classes, path)


def _meta_det_row(synset) -> tuple[int, tuple[str, str]]:
    id_field = next(f for f in synset._fieldnames if f.endswith("DET_ID"))
    return int(getattr(synset, id_field)), (str(synset.WNID), str(synset.name))


def _class_list(rows: dict[int, tuple[str, str]], path: Path) -> ClassList:
    """The classes by id; ValueError naming ``path`` unless the ids are 1..K."""
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
