"""Image loading: any file, array or PIL image -> RGB ``uint8[H, W, 3]``.

Every detector input passes through here, so the rules are stated once:

- **Files** are decoded with Pillow, and only in the formats of :data:`ALLOWED_FORMATS`
  (JPEG, PNG, BMP, TIFF, WebP, GIF, PPM/PGM/PBM), whatever the file's name: Pillow's
  other plugins are never tried, so a PostScript file named ``.jpg`` is refused instead of
  being handed to Ghostscript (an external interpreter, with no timeout). The pixel count is checked against ``max_pixels``
  from the header, *before* decoding (decompression bombs never allocate), and EXIF
  orientation is applied (``ImageOps.exif_transpose``) so boxes refer to the image as
  a viewer shows it. Animated files (GIF, WebP) give their first frame.
- **Truncated files are errors**: Pillow's ``ImageFile.LOAD_TRUNCATED_IMAGES`` is left
  off; a cut JPEG or PNG raises instead of returning grey rows.
- **Modes**: L, 1, P, CMYK, YCbCr, LAB, HSV -> RGB. 16-bit (``I;16*``, and ``I``, which
  Pillow produces for 16-bit PNG/TIFF) is scaled by 255/65535 with rounding (Pillow's own
  ``convert`` clips instead of scaling). Float (``F``) samples are taken as [0, 1].
- **Alpha** (RGBA, LA, PA, P with a transparency entry, premultiplied modes) is
  composited onto **white**, the way a viewer shows a transparent image on a page:
  transparent pixels often hold arbitrary colour (frequently black) that a plain
  alpha drop would expose to the classifier.
- **Errors** are :class:`ImageLoadError`, one line starting with the path:
  ``"photos/x.jpg: truncated or corrupt image data (image file is truncated ...)"``.

Arrays (``HxW``, ``HxWx1``, ``HxWx3``, ``HxWx4``; uint8, uint16, bool, other integers in
0..255, or floats in [0, 1]) and PIL images go through :func:`as_rgb_array` with the same
rules. :func:`read_image` takes any of the three.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from detector.core.config import DataConfig
from detector.core.messages import one_line

DEFAULT_MAX_PIXELS = DataConfig.max_pixels  # larger images are refused

# Lower-case suffixes found by list_images (compared case-insensitively: .JPEG, .Png, ...).
IMAGE_EXTENSIONS = frozenset(
    {
        ".jpg",
        ".jpeg",
        ".jpe",
        ".png",
        ".bmp",
        ".tif",
        ".tiff",
        ".webp",
        ".gif",
        ".ppm",
        ".pgm",
        ".pbm",
        ".pnm",
    }
)

# Pillow format names tried by Image.open; every other plugin (EPS runs Ghostscript; PSD,
# FITS, ... are rarely-audited decoders) is never tried. "PPM" covers PGM, PBM and PNM;
# "JPEG" also opens multi-picture (MPO) camera files.
ALLOWED_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "GIF", "PPM")

_WHITE = 255


class ImageLoadError(ValueError):
    """An image that cannot be used; the one-line message starts with the path (or "array")."""


ImageLike = str | os.PathLike | np.ndarray | Image.Image


def read_image(x: ImageLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """A path, numpy array or PIL image -> RGB ``uint8[H, W, 3]`` (see the module rules)."""
    if isinstance(x, (str, os.PathLike)):
        return load_image(x, max_pixels=max_pixels)
    return as_rgb_array(x, max_pixels=max_pixels)


def load_image(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Decode an image file to RGB.

    Args:
        path: the image file.
        max_pixels: refuse images with more pixels than this (checked from the header).
    Returns:
        image (uint8[H, W, 3]): RGB, EXIF orientation applied, C-contiguous.
    Raises:
        ImageLoadError: missing, empty, non-image, corrupt, truncated, zero-size or too
            large files; the message is one line starting with ``path``.
    """
    path = Path(path)
    _check_file(path)
    try:
        with Image.open(path, formats=ALLOWED_FORMATS) as im:
            _check_size(im.size, max_pixels, str(path))
            im.load()  # the decode; raises on truncated data (LOAD_TRUNCATED_IMAGES is off)
            return _pil_to_rgb(im)
    except ImageLoadError:
        raise
    except UnidentifiedImageError:
        raise ImageLoadError(
            f"{path}: not an image in an accepted format ({', '.join(ALLOWED_FORMATS)})"
        ) from None
    except Image.DecompressionBombError as e:
        # Pillow's own cap (2 x Image.MAX_IMAGE_PIXELS) also applies when max_pixels is larger.
        raise ImageLoadError(f"{path}: too many pixels ({one_line(e)})") from None
    except MemoryError:
        raise ImageLoadError(f"{path}: out of memory while decoding") from None
    except Exception as e:  # OSError, SyntaxError, ValueError, struct.error, ... from decoders
        raise ImageLoadError(
            f"{path}: truncated or corrupt image data ({type(e).__name__}: {one_line(e)})"
        ) from None


def as_rgb_array(x: np.ndarray | Image.Image, max_pixels: int | None = None) -> np.ndarray:
    """An in-memory image -> RGB ``uint8[H, W, 3]``, C-contiguous (a copy when converted).

    Args:
        x: numpy array ``HxW``, ``HxWx1``, ``HxWx3`` (RGB) or ``HxWx4`` (RGBA); dtype uint8,
            uint16 (scaled by 255/65535), bool, another integer type with values in 0..255,
            or float with values in [0, 1]. Or a PIL image of any mode (EXIF orientation
            applied).
        max_pixels: optional limit on H*W.
    Raises:
        ImageLoadError: unsupported shape, dtype or value range; zero-size; too many pixels.
    """
    if isinstance(x, Image.Image):
        _check_size(x.size, max_pixels, "PIL image")
        try:
            return _pil_to_rgb(x)
        except Exception as e:
            raise ImageLoadError(f"PIL image: cannot convert ({one_line(e)})") from None
    if not isinstance(x, np.ndarray):
        raise ImageLoadError(f"{type(x).__name__}: expected a path, numpy array or PIL image")
    return _array_to_rgb(x, max_pixels)


class ImageListError(ValueError):
    """An image source that cannot be listed; the one-line message starts with its path."""


@dataclass
class ImageListing:
    """The images a source names (:func:`find_images`).

    Attributes:
        root: the folder the names are relative to (the folder itself, the list file's
            folder, or the single image's folder).
        images: the image files, in order; ``names[i]`` is ``images[i]`` relative to ``root``
            (POSIX; an absolute path for a listed file outside ``root``).
        unlistable: ``"<folder>: <reason>"`` for subfolders that could not be read (recursive).
        skipped: image files in subfolders that were left out (not recursive).
        kind: "folder", "list" or "image".
    """

    root: Path
    images: list[Path]
    names: list[str]
    unlistable: list[str] = field(default_factory=list)
    skipped: int = 0
    kind: str = "folder"


def find_images(source: str | os.PathLike, recursive: bool = False) -> ImageListing:
    """The images of a folder, of a text file listing them, or a single image file.

    - A **folder**: the image files in it (:data:`IMAGE_EXTENSIONS`, case-insensitive), sorted
      by relative POSIX path; hidden files and folders (name starting with ".") are skipped,
      symlinked folders are not followed. With ``recursive``, subfolders too; a subfolder that
      cannot be listed is reported in ``unlistable`` (never skipped silently). Without it,
      ``skipped`` counts the images the subfolders hold.
    - A file with an image suffix: that **image** alone.
    - Any other file: a UTF-8 **list**, one path per line, relative to the list's folder (or
      absolute); blank lines and lines starting with "#" are skipped, repeated paths kept once,
      the order kept. Listed files are not checked here: a missing one fails when loaded.

    Raises:
        ImageListError: the source does not exist, the folder cannot be listed, or the file is
            neither an image nor a text list.
    """
    src = Path(source)
    try:
        is_dir = src.is_dir()
        exists = is_dir or src.exists()
    except OSError as e:
        raise ImageListError(f"{src}: cannot read ({one_line(e)})") from None
    if not exists:
        raise ImageListError(f"{src}: no such folder or file")
    if is_dir:
        return _list_folder(src, recursive)
    if _is_image_name(src.name):
        return ImageListing(src.parent, [src], [src.name], kind="image")
    return _read_list(src)


def list_images(directory: str | os.PathLike, recursive: bool = False) -> list[Path]:
    """Image files in ``directory``, sorted by relative POSIX path (see :func:`find_images`).

    Raises:
        NotADirectoryError: ``directory`` does not exist or is not a directory.
        ImageListError: it cannot be listed.
    """
    root = Path(directory)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a directory")
    return find_images(root, recursive).images


def _list_folder(root: Path, recursive: bool) -> ImageListing:
    unlistable: list[str] = []
    files, subfolders = _scan(root, root, unlistable)
    skipped = 0
    if recursive:
        while subfolders:
            more_files, more_folders = _scan(subfolders.pop(), root, unlistable)
            files += more_files
            subfolders += more_folders
    else:
        skipped = sum(1 for p in _walk_quietly(subfolders) if _is_image_name(p.name))
    images = sorted(
        (p for p in files if _is_image_name(p.name)),
        key=lambda p: p.relative_to(root).as_posix(),
    )
    names = [p.relative_to(root).as_posix() for p in images]
    return ImageListing(root, images, names, sorted(unlistable), skipped, "folder")


def _scan(folder: Path, root: Path, unlistable: list[str]) -> tuple[list[Path], list[Path]]:
    """Files and (not hidden, not symlinked) subfolders of one folder; a folder that cannot be
    read is an error for ``root`` and a line in ``unlistable`` for any other."""
    try:
        with os.scandir(folder) as it:
            entries = list(it)
    except OSError as e:
        reason = e.strerror or one_line(e)
        if folder == root:
            raise ImageListError(f"{root}: cannot list the folder ({reason})") from None
        unlistable.append(f"{folder.relative_to(root).as_posix()}: {reason}")
        return [], []
    files, folders = [], []
    for entry in entries:
        if entry.name.startswith("."):
            continue
        try:
            if entry.is_dir():
                if not entry.is_symlink():
                    folders.append(Path(entry.path))
                continue
        except OSError:
            pass  # cannot tell: take it as a file (loading it reports the problem)
        files.append(Path(entry.path))
    return files, folders


def _walk_quietly(folders: list[Path]) -> Iterable[Path]:
    """Every file under ``folders`` (for counting only; unreadable folders are passed over)."""
    for folder in folders:
        for dirpath, dirnames, filenames in os.walk(folder):
            dirnames[:] = [d for d in dirnames if not d.startswith(".")]
            for name in filenames:
                yield Path(dirpath) / name


def _read_list(path: Path) -> ImageListing:
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ImageListError(f"{path}: cannot read ({one_line(e)})") from None
    try:
        text = data.decode("utf-8")
        if "\x00" in text:
            raise UnicodeError("NUL byte")
    except UnicodeError:
        raise ImageListError(
            f"{path}: neither an image ({', '.join(sorted(IMAGE_EXTENSIONS))}) nor a text "
            "file listing images"
        ) from None
    root = Path(os.path.abspath(path.parent))
    images: list[Path] = []
    names: list[str] = []
    seen: set[str] = set()
    for line in text.splitlines():
        entry = line.strip()
        if not entry or entry.startswith("#"):
            continue
        image = Path(os.path.normpath(root / entry))
        try:
            name = image.relative_to(root).as_posix()
        except ValueError:
            name = image.as_posix()  # outside the list's folder: named by its absolute path
        if name not in seen:
            seen.add(name)
            images.append(image)
            names.append(name)
    return ImageListing(root, images, names, kind="list")


def _is_image_name(name: str) -> bool:
    return not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _check_file(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        raise ImageLoadError(f"{path}: no such file") from None
    except OSError as e:
        raise ImageLoadError(f"{path}: cannot read ({one_line(e)})") from None
    if path.is_dir():
        raise ImageLoadError(f"{path}: is a directory, not an image")
    if st.st_size == 0:
        raise ImageLoadError(f"{path}: empty file (0 bytes)")


def _check_size(size: tuple[int, int], max_pixels: int | None, name: str) -> None:
    """``size`` is PIL's (width, height)."""
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageLoadError(f"{name}: zero-size image ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise ImageLoadError(
            f"{name}: too many pixels ({w}x{h} = {w * h:,} > max_pixels {max_pixels:,})"
        )


def _pil_to_rgb(im: Image.Image) -> np.ndarray:
    """Decoded PIL image of any mode -> RGB uint8 array, EXIF orientation applied."""
    im = _exif_upright(im)
    mode = im.mode
    if mode == "RGB":
        return np.array(im, dtype=np.uint8)
    if mode.startswith("I;16") or mode == "I":
        return _gray_to_rgb(_scale_16bit(np.asarray(im)))
    if mode == "F":
        return _array_to_rgb(np.asarray(im, dtype=np.float32), None, name="float image")
    if _has_alpha(im):
        return _composite_on_white(np.array(im.convert("RGBA"), dtype=np.uint8))
    return np.array(im.convert("RGB"), dtype=np.uint8)


def _exif_upright(im: Image.Image) -> Image.Image:
    try:
        return ImageOps.exif_transpose(im)
    except Exception:
        # A malformed EXIF block must not cost the image: keep the stored orientation.
        return im


def _has_alpha(im: Image.Image) -> bool:
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return True
    return im.mode == "P" and "transparency" in im.info


def _array_to_rgb(a: np.ndarray, max_pixels: int | None, name: str = "array") -> np.ndarray:
    """numpy image (see :func:`as_rgb_array`) -> RGB uint8."""
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (3, 4)):
        raise ImageLoadError(f"{name}: shape {a.shape} is not HxW, HxWx1, HxWx3 or HxWx4")
    _check_size((a.shape[1], a.shape[0]), max_pixels, f"{name} of shape {a.shape}")
    a = _to_uint8(a, name)
    if a.ndim == 2:
        return _gray_to_rgb(a)
    if a.shape[2] == 4:
        return _composite_on_white(a)
    return np.ascontiguousarray(a)


def _to_uint8(a: np.ndarray, name: str) -> np.ndarray:
    """Samples of any supported dtype -> uint8 (a view when already uint8)."""
    if a.dtype == np.uint8:
        return a
    if a.dtype == np.bool_:
        return a.astype(np.uint8) * np.uint8(255)
    if a.dtype == np.uint16:
        return _scale_16bit(a)
    if np.issubdtype(a.dtype, np.floating):
        if not np.all(np.isfinite(a)):
            raise ImageLoadError(f"{name}: float image holds NaN or infinity")
        if a.size and (a.min() < 0.0 or a.max() > 1.0):
            raise ImageLoadError(
                f"{name}: float values must be in [0, 1], got [{a.min():g}, {a.max():g}]"
            )
        return np.rint(a.astype(np.float64) * 255.0).astype(np.uint8)
    if np.issubdtype(a.dtype, np.integer):
        if a.size and (a.min() < 0 or a.max() > 255):
            raise ImageLoadError(
                f"{name}: {a.dtype} values must be in 0..255 (pass uint16 for 16-bit data)"
            )
        return a.astype(np.uint8)
    raise ImageLoadError(f"{name}: unsupported dtype {a.dtype}")


def _scale_16bit(a: np.ndarray) -> np.ndarray:
    """16-bit samples (0..65535; wider integers clipped) -> uint8, 65535 -> 255, rounded."""
    a = np.clip(a.astype(np.int64), 0, 65535)
    return ((a * 255 + 32767) // 65535).astype(np.uint8)


def _gray_to_rgb(g: np.ndarray) -> np.ndarray:
    """uint8[H, W] -> uint8[H, W, 3]."""
    return np.ascontiguousarray(np.repeat(g[:, :, None], 3, axis=2))


def _composite_on_white(rgba: np.ndarray) -> np.ndarray:
    """uint8[H, W, 4] (straight alpha) -> uint8[H, W, 3] over a white background."""
    rgb = rgba[:, :, :3].astype(np.uint32)
    alpha = rgba[:, :, 3:4].astype(np.uint32)
    out = (rgb * alpha + _WHITE * (255 - alpha) + 127) // 255
    return np.ascontiguousarray(out.astype(np.uint8))
