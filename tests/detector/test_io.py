"""detector.core.io on real files of every awkward kind, written to tmp_path with Pillow."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from detector.core.io import ImageLoadError, as_rgb_array, list_images, load_image, read_image


def _rgb(h: int = 12, w: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _error(path: Path, **kw) -> str:
    with pytest.raises(ImageLoadError) as info:
        load_image(path, **kw)
    msg = str(info.value)
    assert msg.startswith(str(path) + ": ")
    assert "\n" not in msg
    return msg


# ---- good files, every mode ------------------------------------------------------------


def test_rgb_png_is_exact(tmp_path):
    rgb = _rgb()
    Image.fromarray(rgb).save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert out.dtype == np.uint8 and out.shape == (12, 16, 3) and out.flags.c_contiguous
    np.testing.assert_array_equal(out, rgb)


def test_rgb_jpeg_close(tmp_path):
    rgb = np.full((16, 16, 3), (200, 40, 90), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "a.JPEG", quality=95)
    out = load_image(tmp_path / "a.JPEG")
    assert np.abs(out.astype(int) - rgb).max() <= 4


def test_grayscale_l_and_1bit(tmp_path):
    g = np.arange(12 * 16, dtype=np.uint8).reshape(12, 16)
    Image.fromarray(g, mode="L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    for c in range(3):
        np.testing.assert_array_equal(out[:, :, c], g)
    bits = np.zeros((8, 8), dtype=bool)
    bits[2:4, 2:6] = True
    Image.fromarray(bits).convert("1").save(tmp_path / "b.png")
    out = load_image(tmp_path / "b.png")
    np.testing.assert_array_equal(out[:, :, 0], np.where(bits, 255, 0))


def test_16bit_scaled_not_clipped(tmp_path):
    # Pillow's convert("L") would clip 257 -> 255; scaling maps 257 -> 1, 32768 -> 128.
    a = np.array([[0, 257, 32768, 65535]], dtype=np.uint16)
    Image.fromarray(a).save(tmp_path / "d.png")
    assert Image.open(tmp_path / "d.png").mode.startswith("I")
    out = load_image(tmp_path / "d.png")
    np.testing.assert_array_equal(out[0, :, 0], [0, 1, 128, 255])
    np.testing.assert_array_equal(out[0, :, 2], [0, 1, 128, 255])


def test_cmyk_tiff_exact_and_jpeg(tmp_path):
    rgb = _rgb(seed=1)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.tif")
    np.testing.assert_array_equal(load_image(tmp_path / "c.tif"), rgb)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "c.jpg", quality=95)
    assert Image.open(tmp_path / "c.jpg").mode == "CMYK"
    assert load_image(tmp_path / "c.jpg").shape == (12, 16, 3)


def test_rgba_composited_on_white(tmp_path):
    rgba = np.array([[[100, 50, 0, 255], [100, 50, 0, 0], [100, 50, 0, 128]]], dtype=np.uint8)
    Image.fromarray(rgba, mode="RGBA").save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    # 100*128/255 + 255*127/255 = 177.2 -> 177; 50 -> 152.1 -> 152; 0 -> 127
    np.testing.assert_array_equal(out[0], [[100, 50, 0], [255, 255, 255], [177, 152, 127]])


def test_la_composited_on_white(tmp_path):
    la = np.array([[[10, 255], [10, 0]]], dtype=np.uint8)
    Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
    out = load_image(tmp_path / "la.png")
    np.testing.assert_array_equal(out[0], [[10, 10, 10], [255, 255, 255]])


def test_palette_with_and_without_transparency(tmp_path):
    im = Image.new("P", (2, 1))
    im.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    im.putpixel((0, 0), 0)
    im.putpixel((1, 0), 1)
    im.save(tmp_path / "p.png")
    np.testing.assert_array_equal(load_image(tmp_path / "p.png")[0], [[255, 0, 0], [0, 0, 255]])
    im.save(tmp_path / "pt.png", transparency=1)
    out = load_image(tmp_path / "pt.png")
    np.testing.assert_array_equal(out[0], [[255, 0, 0], [255, 255, 255]])


def test_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (4, 4), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "a.gif", save_all=True, append_images=frames[1:])
    out = load_image(tmp_path / "a.gif")
    assert out.shape == (4, 4, 3) and tuple(out[0, 0]) == (255, 0, 0)


def test_exif_orientation_applied(tmp_path):
    rgb = np.zeros((10, 20, 3), dtype=np.uint8)  # stored: 20 wide, 10 high
    rgb[0, 0] = (255, 0, 0)  # red at stored top-left
    im = Image.fromarray(rgb)
    exif = im.getexif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    im.save(tmp_path / "r.png", exif=exif)
    out = load_image(tmp_path / "r.png")
    assert out.shape == (20, 10, 3)
    # rotating 90 degrees clockwise moves the top-left pixel to the top-right
    assert tuple(out[0, 9]) == (255, 0, 0) and tuple(out[0, 0]) == (0, 0, 0)


# ---- bad files: one-line errors naming the file ----------------------------------------


def test_truncated_jpeg_and_png_are_errors(tmp_path):
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.jpg", quality=90)
    data = (tmp_path / "full.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    assert "truncated" in _error(tmp_path / "cut.jpg")
    Image.fromarray(_rgb(64, 64)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    _error(tmp_path / "cut.png")


def test_empty_text_missing_directory(tmp_path):
    (tmp_path / "empty.jpg").write_bytes(b"")
    assert "empty file" in _error(tmp_path / "empty.jpg")
    (tmp_path / "text.jpg").write_text("this is not a JPEG\n")
    assert "not an image" in _error(tmp_path / "text.jpg")
    assert "no such file" in _error(tmp_path / "missing.png")
    (tmp_path / "dir.png").mkdir()
    assert "directory" in _error(tmp_path / "dir.png")


_EPS = (
    "%!PS-Adobe-3.0 EPSF-3.0\n"
    "%%BoundingBox: 0 0 16 16\n"
    "%%EndComments\n"
    "newpath 0 0 moveto 16 0 lineto 16 16 lineto closepath fill\n"
    "showpage\n"
    "%%EOF\n"
)


def test_postscript_named_jpg_never_reaches_ghostscript(tmp_path, monkeypatch):
    """An EPS file named .jpg is refused by format; Pillow's EPS plugin (which runs the
    Ghostscript interpreter) is never asked to decode it."""
    from PIL import EpsImagePlugin

    marker = tmp_path / "gs_ran"
    fake_gs = tmp_path / "gs"
    fake_gs.write_text(f"#!/bin/sh\ntouch {marker}\nexit 1\n")
    fake_gs.chmod(0o755)
    monkeypatch.setattr(EpsImagePlugin, "gs_binary", str(fake_gs))
    (tmp_path / "photo.jpg").write_text(_EPS)
    msg = _error(tmp_path / "photo.jpg")
    assert "not an image" in msg and "JPEG" in msg
    assert not marker.exists()


def test_formats_outside_the_allowlist_are_refused(tmp_path):
    Image.fromarray(_rgb()).save(tmp_path / "a.tga")  # Pillow decodes TGA, we do not
    (tmp_path / "b.jpg").write_bytes((tmp_path / "a.tga").read_bytes())
    assert "not an image" in _error(tmp_path / "b.jpg")
    for ext in ("bmp", "tiff", "webp", "gif", "ppm", "pgm", "pbm"):
        mode = "1" if ext == "pbm" else "L" if ext == "pgm" else "RGB"
        Image.fromarray(_rgb()).convert(mode).save(tmp_path / f"ok.{ext}")
        assert load_image(tmp_path / f"ok.{ext}").shape == (12, 16, 3)


def _png_claiming_size(path: Path, width: int, height: int) -> None:
    """A small real PNG whose IHDR (with a valid CRC) claims ``width x height``."""
    Image.fromarray(_rgb(8, 8)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = bytes(data[12:16]) + struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:24] = struct.pack(">II", width, height)
    data[29:33] = struct.pack(">I", zlib.crc32(ihdr) & 0xFFFFFFFF)
    path.write_bytes(bytes(data))


def test_too_many_pixels_checked_before_decoding(tmp_path):
    Image.fromarray(_rgb(10, 20)).save(tmp_path / "ok.png")
    assert "too many pixels (20x10 = 200 > max_pixels 199)" in _error(
        tmp_path / "ok.png", max_pixels=199
    )
    assert load_image(tmp_path / "ok.png", max_pixels=200).shape == (10, 20, 3)
    # The header claims 5000x5000 but holds 8x8 of data: refused by size, never decoded.
    _png_claiming_size(tmp_path / "bomb.png", 5000, 5000)
    assert "too many pixels" in _error(tmp_path / "bomb.png", max_pixels=1_000_000)
    assert "corrupt" in _error(tmp_path / "bomb.png")  # with room to decode: bad data
    # Beyond Pillow's own cap (2 x MAX_IMAGE_PIXELS) Pillow refuses first; same error kind.
    _png_claiming_size(tmp_path / "huge.png", 100_000, 100_000)
    assert "too many pixels" in _error(tmp_path / "huge.png", max_pixels=10**12)


# ---- arrays and PIL images ---------------------------------------------------------------


def test_arrays_of_each_shape_and_dtype():
    g = np.array([[0, 128], [255, 7]], dtype=np.uint8)
    np.testing.assert_array_equal(as_rgb_array(g)[:, :, 1], g)
    np.testing.assert_array_equal(as_rgb_array(g[:, :, None])[:, :, 2], g)
    rgb = _rgb(3, 4)
    out = as_rgb_array(rgb)
    np.testing.assert_array_equal(out, rgb)
    np.testing.assert_array_equal(as_rgb_array(rgb[:, ::-1]), rgb[:, ::-1])  # non-contiguous
    assert as_rgb_array(rgb[:, ::-1]).flags.c_contiguous
    rgba = np.dstack([rgb, np.zeros((3, 4), np.uint8)])
    assert (as_rgb_array(rgba) == 255).all()
    u16 = np.array([[0, 257, 65535]], dtype=np.uint16)
    np.testing.assert_array_equal(as_rgb_array(u16)[0, :, 0], [0, 1, 255])
    f = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    np.testing.assert_array_equal(as_rgb_array(f)[0, :, 0], [0, 128, 255])
    np.testing.assert_array_equal(as_rgb_array(np.array([[True, False]]))[0, :, 0], [255, 0])
    np.testing.assert_array_equal(as_rgb_array(np.array([[3, 200]]))[0, :, 0], [3, 200])


@pytest.mark.parametrize(
    "bad, words",
    [
        (np.zeros((0, 5, 3), np.uint8), "zero-size"),
        (np.zeros((4, 5, 2), np.uint8), "shape"),
        (np.zeros((2, 4, 5, 3), np.uint8), "shape"),
        (np.full((2, 2), 1.5, np.float32), "[0, 1]"),
        (np.full((2, 2), np.nan), "NaN"),
        (np.full((2, 2), 300), "0..255"),
        (np.zeros((2, 2), np.complex64), "dtype"),
    ],
)
def test_bad_arrays(bad, words):
    with pytest.raises(ImageLoadError, match="array") as info:
        as_rgb_array(bad)
    assert words in str(info.value)


def test_pil_images_and_read_image_dispatch(tmp_path):
    rgb = _rgb(5, 6)
    np.testing.assert_array_equal(as_rgb_array(Image.fromarray(rgb)), rgb)
    np.testing.assert_array_equal(
        as_rgb_array(Image.fromarray(rgb).convert("L"))[:, :, 0],
        np.asarray(Image.fromarray(rgb).convert("L")),
    )
    Image.fromarray(rgb).save(tmp_path / "x.png")
    np.testing.assert_array_equal(read_image(str(tmp_path / "x.png")), rgb)
    np.testing.assert_array_equal(read_image(tmp_path / "x.png"), rgb)
    np.testing.assert_array_equal(read_image(rgb), rgb)
    with pytest.raises(ImageLoadError, match="too many pixels"):
        read_image(rgb, max_pixels=29)
    with pytest.raises(ImageLoadError, match="expected a path"):
        read_image(42)  # type: ignore[arg-type]


# ---- listing -----------------------------------------------------------------------------


def test_list_images_sorted_case_insensitive(tmp_path):
    for name in ["b.JPEG", "a.png", "c.Jpg", "notes.txt", ".hidden.jpg", "d.webp", "e.TIFF"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "z.bmp").write_bytes(b"x")
    (tmp_path / ".cache").mkdir()
    (tmp_path / ".cache" / "y.jpg").write_bytes(b"x")
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path)]
    assert names == ["a.png", "b.JPEG", "c.Jpg", "d.webp", "e.TIFF"]
    names = [p.relative_to(tmp_path).as_posix() for p in list_images(tmp_path, recursive=True)]
    assert names == ["a.png", "b.JPEG", "c.Jpg", "d.webp", "e.TIFF", "sub/z.bmp"]
    assert list_images(tmp_path / "sub") == [tmp_path / "sub" / "z.bmp"]


def test_list_images_empty_and_missing(tmp_path):
    assert list_images(tmp_path) == []
    with pytest.raises(NotADirectoryError, match="not a directory"):
        list_images(tmp_path / "nope")
